"""The fast path of the embedding routes answers exactly as FastAPI's routes do."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from smysl.server import ServerConfig, create_app
from smysl.server.fast import FastRoutes

LONG = " ".join(f"w{i}" for i in range(2000))
# (path, body or raw bytes, extra headers): valid requests of every fast route, the errors
# their handlers raise, and bodies the fast path leaves to FastAPI (validation, bad JSON, a
# content type FastAPI does not read as JSON)
CASES: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/embeddings", {"input": ["Привет, мир!", "fox"], "model": "served"}, {}),
    ("/v1/embeddings", {"input": "fox", "encoding_format": "base64", "dimensions": 32}, {}),
    ("/v1/embeddings", {"input": [[1, 2, 3], [4, 5]]}, {}),
    ("/v1/embeddings", {"input": "fox", "instruction": "retrieval"}, {}),
    ("/v1/embeddings", {"input": "fox", "model": "other"}, {}),
    ("/v1/embeddings", {"input": "fox", "dimensions": 7}, {}),
    ("/v1/embeddings", {"input": [""]}, {}),
    ("/v1/embeddings", {"input": LONG}, {}),
    ("/v1/embeddings", {"input": 5}, {}),
    ("/v1/embeddings", {"inputs": "fox"}, {}),
    ("/v1/embeddings", b'{"input": "fox"', {}),
    ("/v1/embeddings", b'{"input": "\\ud800"}', {}),
    ("/v1/embeddings", {"input": "fox"}, {"content-type": "text/plain"}),
    ("/v1/embeddings", {"input": "fox"}, {"content-type": "application/vnd.x+json"}),
    ("/api/embed", {"input": ["fox", "dog"], "dimensions": 48}, {}),
    ("/api/embed", {"input": []}, {}),
    ("/api/embed", {"input": LONG, "truncate": False}, {}),
    ("/api/embed", {"input": "fox"}, {"content-type": "application/x-www-form-urlencoded"}),
    ("/api/embeddings", {"prompt": "fox"}, {}),
    ("/api/embeddings", {"prompt": ""}, {}),
    ("/api/embeddings", {"prompt": "fox", "dimensions": 48, "input_type": "query"}, {}),
    ("/api/embeddings", {"prompt": LONG, "truncate": False}, {}),
    ("/embed", {"inputs": "fox", "normalize": False}, {}),
    ("/embed", {"inputs": ["fox"], "prompt_name": "query"}, {}),
    ("/embed", {"inputs": ["fox"], "prompt_name": "nope"}, {}),
    ("/embed", {"inputs": [LONG], "truncate": True, "truncation_direction": "Left"}, {}),
    ("/embed", {"inputs": "fox", "truncate": "yes"}, {}),
    ("/", {"inputs": "fox"}, {}),
    ("/embed", {"inputs": [[1, 2, 3], [4, 5]]}, {}),  # token ids: refused without --token-ids
    ("/embed", {"inputs": ["fox", [4, 5]]}, {}),
    ("/embed", {"inputs": [1.5]}, {}),
    ("/similarity", {"inputs": {"source_sentence": "fox", "sentences": ["dog", "fox"]},
                     "parameters": {"prompt_name": "query"}}, {}),
    ("/similarity", {"inputs": {"source_sentence": "fox", "sentences": []}}, {}),
    ("/similarity", {"inputs": {"source_sentence": "fox"}}, {}),
    ("/", {"inputs": {"source_sentence": "fox", "sentences": ["dog"]}}, {}),
    ("/", {"inputs": {"source_sentence": "fox"}}, {}),
    ("/invocations", {"inputs": 5}, {}),
    # no content type at all (requests.post(url, data=...)): read as JSON on either path
    ("/v1/embeddings", {"input": "fox"}, {"content-type": ""}),
    ("/v1/embeddings", {"input": 5}, {"content-type": ""}),
    ("/embed", {"inputs": ["fox"]}, {"content-type": ""}),
    ("/invocations", {"inputs": ["fox", "dog"]}, {}),
    ("/embeddings", {"input": ["fox"], "dimensions": 40}, {}),
    ("/embeddings", {"input": 5}, {}),
]
#: Headers and fields that measure time, not content.
TIMED = {"x-queue-time", "x-compute-time", "x-total-time", "date", "content-length"}


def answers(tiny: Any, fast: bool) -> list[tuple[int, dict[str, str], Any]]:
    out = []
    with pytest.MonkeyPatch.context() as mp:
        if not fast:
            mp.setattr(FastRoutes, "take", lambda self, scope, body: None)
        with TestClient(create_app(tiny, ServerConfig())) as client:
            for path, body, headers in CASES:
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                sent = {"content-type": "application/json", **headers}
                r = client.post(path, content=data, headers={k: v for k, v in sent.items() if v})
                payload = r.json()
                if isinstance(payload, dict):
                    payload.pop("total_duration", None)  # Ollama's timing field
                kept = {k: v for k, v in r.headers.items() if k not in TIMED}
                out.append((r.status_code, kept, payload))
    return out


def test_fast_path_answers_as_fastapi(tiny) -> None:  # type: ignore[no-untyped-def]
    fast, slow = answers(tiny, True), answers(tiny, False)
    for case, a, b in zip(CASES, fast, slow, strict=True):
        assert a == b, case[:2]
    assert {s for s, _, _ in fast} >= {200, 400, 404, 422}  # the cases reach every outcome
    bare = [(case[0], a[0]) for case, a in zip(CASES, fast, strict=True)
            if case[2] == {"content-type": ""}]
    assert bare == [("/v1/embeddings", 200), ("/v1/embeddings", 400), ("/embed", 200)]
    assert "input" in fast[CASES.index(("/v1/embeddings", {"input": 5}, {"content-type": ""}))
                            ][2]["error"]["message"]


def test_fast_routes_registered(tiny) -> None:  # type: ignore[no-untyped-def]
    app = create_app(tiny, ServerConfig())
    schema = app.openapi()["paths"]
    for path in ("/v1/embeddings", "/api/embed", "/api/embeddings", "/embed"):
        assert "post" in schema[path]  # FastAPI still declares them
    assert "/invocations" not in schema and "/embeddings" not in schema  # aliases: out


def test_fast_path_taken_and_counted(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    taken: list[str] = []
    original = FastRoutes.take

    def spy(self: FastRoutes, scope: Any, body: bytes) -> Any:
        hit = original(self, scope, body)
        if hit is not None:
            taken.append(scope["path"])
        return hit

    monkeypatch.setattr(FastRoutes, "take", spy)
    with TestClient(create_app(tiny, ServerConfig())) as client:
        assert client.post("/embed", json={"inputs": "fox"}).status_code == 200
        # TEI answers both with 422: the handler's error, then the model's
        assert client.post("/embed", json={"inputs": "fox", "prompt_name": "x"}).status_code == 422
        assert client.post("/embed", json={"inputs": 1}).status_code == 422
        metrics = client.get("/metrics").text
    assert taken == ["/embed", "/embed"]  # the 422 went through FastAPI
    assert 'smysl_requests_total{api="tei",route="/embed",status="200"} 1.0' in metrics
    assert 'smysl_errors_total{api="tei",kind="invalid"} 2.0' in metrics
