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


def test_a_busy_answer_while_opening_is_waited_out(tmp_path, monkeypatch) -> None:
    """Two processes opening a new cache file at once: switching it to WAL answered "database
    is locked" at once, without SQLite's busy wait (2 in 1,200 openings), and the run went on
    without its cache, saying the file was unreadable and should be deleted."""
    import sqlite3

    from smysl.toolkit import cache as cache_module

    connect, busy = sqlite3.connect, [2]

    class Busy:
        def __init__(self, *args, **kwargs) -> None:
            self.db = connect(*args, **kwargs)

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode") and busy[0]:
                busy[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

    monkeypatch.setattr(cache_module.sqlite3, "connect", Busy)
    c = EmbeddingCache(tmp_path / "c.sqlite")
    assert c.usable and c.problems == [] and busy == [0]
    c.put_many([b"k"], np.eye(1, 4, dtype=np.float32))  # a unit vector
    found, damaged = c.get_many([b"k"], 4)
    assert list(found) == [b"k"] and not damaged
    monkeypatch.setattr(cache_module, "LOCK_WAIT_S", 0)  # held for good: said so, not "delete"
    busy[0] = 10**6
    held = EmbeddingCache(tmp_path / "d.sqlite")
    assert not held.usable and "busy" in held.problems[0] and "delete" not in held.problems[0]
