"""Eval fixtures: a tiny random Qwen3-Reranker built and loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qwen_tiny import build_tiny_reranker

from smysl.rerank import BaseReranker


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker(tmp_path_factory.mktemp("tiny-reranker") / "r", seed=4).path


@pytest.fixture(scope="session")
def tiny_reranker(tiny_reranker_dir: Path) -> Iterator[BaseReranker]:
    from smysl import load_reranker

    reranker = load_reranker(str(tiny_reranker_dir), device="cpu")
    yield reranker
    reranker.close()
