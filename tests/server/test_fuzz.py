"""Schema-driven fuzzing of every route in /openapi.json (schemathesis): no input may cause a 5xx.

Runs in process on the tiny model with a bounded number of examples per operation; the
benchmarks/fuzz_server.py script runs the same check with many more examples.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from smysl.server import ServerConfig, create_app  # noqa: E402

# The tiny model is session-scoped, but schemathesis needs the app at import time: build it
# lazily from the same checkpoint fixture through a module-level holder.
_APP: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _app(tiny):  # type: ignore[no-untyped-def]
    _APP["app"] = create_app(tiny, ServerConfig(max_inputs=64, max_request_bytes=256 * 1024))
    yield
    _APP.clear()


class _LazyApp:
    """ASGI app that forwards to the app built by the fixture."""

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        app = _APP.get("app")
        if app is None:  # schema loading happens before fixtures: serve a schema-only app
            from server_helpers import HashEmbedder

            app = _APP.setdefault("schema", create_app(HashEmbedder()))
        await app(scope, receive, send)  # type: ignore[operator]


schema = schemathesis.openapi.from_asgi("/openapi.json", _LazyApp())


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(checks=[not_a_server_error])
