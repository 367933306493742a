"""LanceDB store details the shared store tests (test_store.py) do not reach."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("lancedb")


def test_stderr_stays_the_process_s_beside_other_threads(capfd) -> None:
    """fd 2 belongs to the whole process: a LanceDB call beside other threads leaves it alone.
    Two calls whose holds overlapped (A in, B in, A out, B out) used to leave stderr pointing
    at A's deleted temporary file for good, and what other threads wrote meanwhile was lost."""
    from smysl.toolkit.lancedb import _held_stderr

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with _held_stderr():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with _held_stderr():
            b_in.set()
            os.write(2, b"during\n")  # another thread's line, written while both calls run
            a_out.wait(10)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "during\nafter\n"


def test_a_process_of_one_thread_holds_native_lines_back() -> None:
    """The CLI's case: a failed call drops what LanceDB wrote during it, a successful one
    replays it after the call. ``import lancedb`` starts LanceDB's event loop thread, which
    runs the calls, and an interactive ``smysl index add`` has a progress bar, whose first
    one starts tqdm's monitor thread: a process of them and one other thread holds lines back
    too."""
    code = """if True:
        import os, sys, threading
        import lancedb
        from tqdm import tqdm
        from tqdm._monitor import TMonitor
        from smysl.toolkit.lancedb import _held_stderr
        bar = tqdm(total=3, file=open(os.devnull, "w"))
        others = threading.enumerate()[1:]
        assert len(others) == 2 and others[0].name == "LanceDBBackgroundEventLoop", others
        assert isinstance(others[1], TMonitor), others
        with _held_stderr():
            os.write(2, b"kept\\n")
            sys.stdout.write("inside\\n"); sys.stdout.flush()
        try:
            with _held_stderr():
                os.write(2, b"dropped\\n")
                raise ValueError
        except ValueError:
            pass
        os.write(2, b"end\\n")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert (out.stdout, out.stderr) == ("inside\n", "kept\nend\n")


def test_one_store_serves_several_threads(tmp_path) -> None:
    """Reads from eight threads at once (the server's ``/search`` runs a store's calls on
    ``--index-threads`` threads) give what they give one at a time, beside a writer."""
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store
    from toolkit.helpers import check_reads_beside_a_writer, unit_rows

    x = unit_rows(400, 32, seed=11)
    texts = [f"common word{i % 13} row{i}" for i in range(len(x))]
    with open_store(StoreConfig(backend="lancedb", uri=str(tmp_path / "kb"), table="t"),
                    32) as s:
        assert s.concurrent_reads
        s.upsert([str(i) for i in range(len(x))], x,
                 [{"text": t, "g": i % 4} for i, t in enumerate(texts)])

        check_reads_beside_a_writer(s, x, texts, reads=64)


def _earlier_smysl_table(path, monkeypatch):  # type: ignore[no-untyped-def]
    """A LanceDB store whose table is made as a smysl before typed columns made it (no mark)."""
    from smysl.toolkit import lancedb
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    with monkeypatch.context() as m:
        m.setattr(lancedb, "_TYPED_MARK", {})
        return open_store(StoreConfig(uri=str(path)), 8)


def test_a_field_an_earlier_smysl_kept_no_column_for_is_refused_not_half_found(
        tmp_path, monkeypatch) -> None:
    """An earlier smysl made no filter column for `язык`: after an upgrade, a row added made
    one, and `язык=ru` found 1 of 2 (a delete by it would remove part of them)."""
    from smysl.toolkit.lancedb import _column
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store
    from toolkit.helpers import unit_rows

    x = unit_rows(3, 8, seed=2)
    store = _earlier_smysl_table(tmp_path / "kb", monkeypatch)
    store.upsert(["a", "b"], x[:2], [{"язык": "ru", "n": None}, {"язык": "en", "n": None}])
    store._table.drop_columns([_column("язык")])  # as the earlier smysl wrote it
    store.close()
    store = open_store(StoreConfig(uri=str(tmp_path / "kb")))
    store.upsert(["c"], x[2:], [{"язык": "ru"}])
    with pytest.raises(ValueError, match=r"2 record.* in no filter column .*--rebuild"):
        store.count({"язык": "ru"})
    store.close()
    fresh = open_store(StoreConfig(uri=str(tmp_path / "new")), 8)  # this smysl's own rows
    fresh.upsert(["a", "b", "c"], x, [{"язык": "ru"}, {"язык": None}, {"язык": ["ru"]}])
    assert fresh.count({"язык": "ru"}) == 1
    fresh.close()


def test_values_an_earlier_smysl_kept_in_no_column_are_refused_not_missed(
        tmp_path, monkeypatch) -> None:
    """Before typed columns a value of another type than its field's first (a score stored as
    1, later as 2.5) went to no filter column: after an upgrade `score > 2` missed it without
    a word. Such a table is checked, and the filter refused until a rebuild; a table made
    since (marked) holds no such rows and is not scanned."""
    from smysl.toolkit.lancedb import _column
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store
    from toolkit.helpers import unit_rows

    x = unit_rows(3, 8, seed=2)
    store = _earlier_smysl_table(tmp_path / "kb", monkeypatch)
    store.upsert(["a"], x[:1], [{"score": 1, "lang": "ru"}])
    store.upsert(["b"], x[1:2], [{"score": 2.5, "lang": "en"}])
    store._table.drop_columns([_column("score") + "~f"])  # as the earlier smysl wrote it
    store.close()
    store = open_store(StoreConfig(uri=str(tmp_path / "kb")))
    store.upsert(["c"], x[2:], [{"score": 3.5, "lang": "ru"}])  # this smysl: a typed column
    assert store.count({"lang": "ru"}) == 2  # a field without such rows filters
    with pytest.raises(ValueError, match=r"filter field 'score': 1 record.* another type .*"
                                         r"--rebuild"):
        store.count({"score": {"$gt": 2}})
    store.close()
    fresh = open_store(StoreConfig(uri=str(tmp_path / "new")), 8)
    fresh.upsert(["a"], x[:1], [{"score": 1}])
    fresh.upsert(["b"], x[1:2], [{"score": 2.5}])
    assert fresh.count({"score": {"$gt": 2}}) == 1
    fresh.close()


def test_word_scores_after_a_delete_are_those_of_the_rows_left(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """LanceDB's full-text index scored words with the deleted rows' statistics (document
    count, lengths, frequencies) until the next ``optimize``: scores moved after
    ``smysl index delete`` and ranks could. The store rebuilds its word index after a delete;
    the scores are the memory store's over the rows left."""
    import numpy as np

    from smysl.toolkit import lexical
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.memory import MemoryStore
    from smysl.toolkit.store import StoreConfig

    texts = [f"кабель медный {i} " + " ".join(["провод"] * (i % 5)) for i in range(40)]
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add_texts(texts, ids=[f"d{i}" for i in range(40)])
        assert ix.delete([f"d{i}" for i in range(30)]) == 30
        left = [r for batch in ix.store.scan() for r in batch]
        ref = MemoryStore(ix.store.dimensions)
        ref.upsert([r.id for r in left], np.stack([r.vector for r in left]),
                   [r.payload for r in left])
        q = [lexical.query_terms("медный провод")]
        got = {h.id: h.score for h in ix.store.search_text(q, 10)[0]}
        want = {h.id: h.score for h in ref.search_text(q, 10)[0]}
    assert got.keys() == want.keys() and len(got) == 10
    for i in got:
        assert got[i] == pytest.approx(want[i], rel=1e-4), (i, got[i], want[i])


@pytest.mark.parametrize("change", ["delete", "rewrite"])
def test_word_scores_after_a_small_change_straight_on_the_store(change: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Deleting or rewriting under a tenth of a file, on the store itself (as ``smysl index
    delete`` and a second ``smysl index add`` of edited files do): LanceDB's ``optimize``
    left such rows in its word statistics, so the scores stayed those of the rows before.
    The store rebuilds its word index before its next word search, once for any number of
    changes."""
    from smysl.toolkit import lexical
    from smysl.toolkit.memory import MemoryStore
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store
    from toolkit.helpers import unit_rows

    n = 60
    x = unit_rows(n, 8, seed=3)
    pays = [{"text": f"кабель {i} " + ("медный провод" if i < 10 else "алюминий")}
            for i in range(n)]
    store = open_store(StoreConfig(uri=str(tmp_path / "kb")), 8)
    store.upsert([f"d{i}" for i in range(n)], x, pays)
    store.optimize()  # the rows into the word index (ingestion's end does this)
    rebuilds = []
    index_terms = store._index_terms

    def counted(**kwargs):  # type: ignore[no-untyped-def]
        rebuilds.append(kwargs)
        return index_terms(**kwargs)

    store._index_terms = counted
    ids = [f"d{i}" for i in range(n)]
    for i in range(4):  # 4 of 60 rows, one call each
        if change == "delete":
            assert store.delete([ids[i]]) == 1
            ids[i] = ""
        else:
            pays[i] = {"text": f"кабель {i} алюминий"}
            store.upsert([ids[i]], x[i : i + 1], [pays[i]])
    kept = [i for i in range(n) if ids[i]]
    ref = MemoryStore(8)
    ref.upsert([ids[i] for i in kept], x[kept], [pays[i] for i in kept])
    q = [lexical.query_terms("медный провод")]
    got = {h.id: h.score for h in store.search_text(q, 10)[0]}
    want = {h.id: h.score for h in ref.search_text(q, 10)[0]}
    store.search_text(q, 10)
    store.close()
    assert rebuilds == [{"replace": True}]
    assert got.keys() == want.keys() and len(got) == 6
    for i in got:
        assert got[i] == pytest.approx(want[i], rel=1e-4), (i, got[i], want[i])


def test_a_delete_s_rebuild_waits_for_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A process that deletes and ends (``smysl index delete``) leaves the word index
    rebuilt for the others: its store rebuilds on close."""
    from smysl.toolkit import lexical
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store
    from toolkit.helpers import unit_rows

    x = unit_rows(40, 8, seed=4)
    pays = [{"text": "провод" if i < 20 else "кабель"} for i in range(40)]
    with open_store(StoreConfig(uri=str(tmp_path / "kb")), 8) as store:
        store.upsert([f"d{i}" for i in range(40)], x, pays)
        store.optimize()
    q = [lexical.query_terms("провод")]
    with open_store(StoreConfig(uri=str(tmp_path / "kb"))) as store:
        before = store.search_text(q, 1)[0][0].score
        store.delete([f"d{i}" for i in range(2, 20)])  # 18 of 40, one word's
    with open_store(StoreConfig(uri=str(tmp_path / "kb"))) as other:
        after = other.search_text(q, 1)[0][0].score
    fresh = open_store(StoreConfig(uri=str(tmp_path / "fresh")), 8)
    fresh.upsert([f"d{i}" for i in (0, 1, *range(20, 40))], x[[0, 1, *range(20, 40)]],
                 [pays[i] for i in (0, 1, *range(20, 40))])
    fresh.optimize()
    assert after == pytest.approx(fresh.search_text(q, 1)[0][0].score, rel=1e-4) != before
    fresh.close()
