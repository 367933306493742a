"""The content-hash embedding cache: keys, persistence, and what reaches the model."""

from __future__ import annotations

import numpy as np

from smysl.toolkit.cache import CachedEmbedder, EmbeddingCache, cache_key
from toolkit.helpers import Counting


def test_keys_separate_model_instruction_dimensions_text() -> None:
    base = cache_key("m", None, 64, "t")
    assert base == cache_key("m", "", 64, "t")  # empty instruction means none
    others = {cache_key("m2", None, 64, "t"), cache_key("m", "qa", 64, "t"),
              cache_key("m", None, 32, "t"), cache_key("m", None, 64, "t2"),
              cache_key("m", None, 64, "t" + "\x00")}
    assert base not in others and len(others) == 5
    # presets resolve to their instruction text
    from smysl.prompts import TASK_PRESETS

    assert cache_key("m", "qa", 64, "t") == cache_key("m", TASK_PRESETS["qa"], 64, "t")


def test_cache_serves_repeats_and_persists(tiny, tmp_path) -> None:
    model = Counting(tiny)
    texts = ["alpha", "beta", "alpha", "gamma"]
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    ce = CachedEmbedder(model, cache)
    first = ce.embed(texts, truncate=True)
    assert model.embedded == 3 and ce.embedded == 3 and ce.cached == 1
    np.testing.assert_allclose(first, tiny.embed(texts), atol=1e-6)
    cache.close()

    again = CachedEmbedder(model, EmbeddingCache(tmp_path / "c.sqlite"))
    np.testing.assert_array_equal(again.embed(texts[::-1]), first[::-1])
    assert model.embedded == 3 and again.cached == 4
    # another instruction or size is another key: embedded afresh
    q = again.embed(["alpha"], instruction="qa")
    half = again.embed(["alpha"], dimensions=32)
    assert model.embedded == 5 and q.shape == (1, 64) and half.shape == (1, 32)
    np.testing.assert_allclose(half, tiny.embed(["alpha"], dimensions=32), atol=1e-6)
    assert len(again.cache) == 5  # type: ignore[arg-type]
