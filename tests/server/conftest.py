"""Fixtures of the server tests (helpers live in ``server_helpers``)."""

from __future__ import annotations

import pytest
from server_helpers import HashEmbedder

from smysl.server import workers


@pytest.fixture(autouse=True)
def _no_port_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """``smysl serve``'s check of its port before loading: the tests that fake ``serve``
    would claim 8000 and their own ports for real (the check's test puts it back:
    ``server_helpers.REAL_CLAIM_PORT``)."""
    monkeypatch.setattr(workers, "claim_port", lambda host, port: None)


@pytest.fixture
def hash_backend() -> HashEmbedder:
    """A fresh generic backend without tokenizer (gate open)."""
    return HashEmbedder()
