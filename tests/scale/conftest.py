"""Scale fixtures: the PostgreSQL server of the toolkit tests (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL + pgvector server started for this test session."""
    from toolkit.pgserver import postgres_server

    with postgres_server() as dsn:
        yield dsn
