"""Fixtures of the server tests (helpers live in ``server_helpers``)."""

from __future__ import annotations

import pytest
from server_helpers import HashEmbedder


@pytest.fixture
def hash_backend() -> HashEmbedder:
    """A fresh generic backend without tokenizer (gate open)."""
    return HashEmbedder()
