"""Lexical search on Qdrant: BM25 term weights in a named sparse vector, IDF from Qdrant
(local mode here; SMYSL_QDRANT_URL runs the same against a live server)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from smysl.toolkit import lexical
from smysl.toolkit.memory import MemoryStore
from smysl.toolkit.store import StoreConfig
from smysl.toolkit.stores import open_store
from toolkit.helpers import unit_rows

qdrant = pytest.importorskip("smysl.toolkit.qdrant")
pytest.importorskip("qdrant_client")
pytest.importorskip("Stemmer")

D = 8

CORPUS = [
    "Кошки любят спать на солнце",
    "Собака лает на кошку во дворе",
    "The dog was running in the park",
    "Dogs and cats are friends",
    "A cat sleeps all day long",
    "Спать днём полезно для здоровья",
    "river lake",
    "river lake",
    "river lake",
    "mountain lake",
    "Программирование на Python и Rust",
    "Python programming with numbers 2024",
    "",  # a record without terms
    "covid19 statistics ёлка и елка",
]


@pytest.fixture(params=["qdrant", "qdrant-live"])
def store(request):
    if request.param == "qdrant-live":
        url = os.environ.get("SMYSL_QDRANT_URL")
        if not url:
            pytest.skip("set SMYSL_QDRANT_URL to run against a live Qdrant")
        cfg = StoreConfig(backend="qdrant", uri=url, table=f"smysl-test-{uuid.uuid4().hex[:8]}")
    else:
        cfg = StoreConfig(backend="qdrant", uri=":memory:")
    s = open_store(cfg, D)
    yield s
    if request.param == "qdrant-live":
        s.client.delete_collection(cfg.table)  # type: ignore[attr-defined]
    s.close()


def fill(store, texts, payloads=None, seed=0):
    x = unit_rows(len(texts), D, seed=seed)
    pays = [{"text": t, "n": i, **(payloads[i] if payloads else {})}
            for i, t in enumerate(texts)]
    ids = [f"d{i}" for i in range(len(texts))]
    store.upsert(ids, x, pays)
    return ids, x, pays


def ids_of(hits):
    return [h.id for h in hits]


def q(text):
    return lexical.analyze(text)


def test_russian_morphology_and_english_stems(store) -> None:
    fill(store, CORPUS)
    (cat_ru,) = store.search_text([q("кошка")], 10)
    assert "d0" in ids_of(cat_ru) and "d1" in ids_of(cat_ru)  # кошки, кошку
    (sleep,) = store.search_text([q("Спать")], 10)
    assert set(ids_of(sleep)) == {"d0", "d5"}  # case folded
    (dog,) = store.search_text([q("dog runs")], 10)
    assert ids_of(dog)[0] == "d2"  # dog + running: both terms
    assert "d3" in ids_of(dog)  # dogs
    (tree,) = store.search_text([q("Ёлка")], 10)
    assert ids_of(tree) == ["d13"]
    (num,) = store.search_text([q("covid19")], 10)
    assert ids_of(num) == ["d13"]
    assert all(h.score > 0 for hits in (cat_ru, dog, tree) for h in hits)


def test_ranking_two_terms_and_rare_terms(store) -> None:
    fill(store, ["cat dog", "cat bird", "fish frog", *["river lake"] * 5, "mountain lake"])
    (hits,) = store.search_text([q("cat dog")], 10)
    assert ids_of(hits) == ["d0", "d1"] and hits[0].score > hits[1].score
    (hits,) = store.search_text([q("river mountain")], 10)
    assert ids_of(hits)[0] == "d8"  # the one rare term outweighs the common one
    assert hits[0].score > hits[1].score
    assert set(ids_of(hits)) == {f"d{i}" for i in range(3, 9)}
    (hits,) = store.search_text([q("river mountain")], 2)
    assert len(hits) == 2  # k


def test_hits_are_built_like_vector_hits(store) -> None:
    _, x, pays = fill(store, CORPUS, [{"lang": "ru" if i % 2 else "en"}
                                      for i in range(len(CORPUS))])
    (hits,) = store.search_text([q("кошка")], 10)
    for h in hits:
        n = int(h.id[1:])
        assert h.payload == pays[n] and h.vector is None
    (hits,) = store.search_text([q("кошка")], 10, with_vectors=True)
    for h in hits:
        assert h.vector is not None and h.vector.dtype == np.float32
        np.testing.assert_allclose(h.vector, x[int(h.id[1:])], atol=1e-6)
    # the dense side reads only the dense vector, whatever else a point holds
    (vh,) = store.search(x[0], 3, with_vectors=True)
    np.testing.assert_allclose(vh[0].vector, x[0], atol=1e-6)
    (r,) = store.get(["d0"])
    np.testing.assert_allclose(r.vector, x[0], atol=1e-6)
    assert r.payload == pays[0]
    scanned = {rec.id: rec.vector for b in store.scan(5) for rec in b}
    assert len(scanned) == len(CORPUS)
    np.testing.assert_allclose(scanned["d3"], x[3], atol=1e-6)


def test_where_filter(store) -> None:
    texts = ["cat one", "cat two", "cat three", "cat four", "dog five"]
    fill(store, texts, [{"lang": ["en", "de"][i % 2]} for i in range(len(texts))])
    (hits,) = store.search_text([q("cat")], 10, where={"lang": "de"})
    assert set(ids_of(hits)) == {"d1", "d3"}
    (hits,) = store.search_text([q("cat")], 10, where={"n": {"$gte": 2}, "lang": "en"})
    assert ids_of(hits) == ["d2"]
    (hits,) = store.search_text([q("dog")], 10, where={"lang": "de"})
    assert hits == []


def test_empty_and_several_queries(store) -> None:
    fill(store, CORPUS)
    assert store.search_text([], 5) == []
    out = store.search_text([[], q("кошка"), q("!!!"), q("unknownword"), q("python")], 5)
    assert out[0] == [] and out[2] == [] and out[3] == []
    assert "d0" in ids_of(out[1]) and set(ids_of(out[4])) == {"d10", "d11"}
    # a repeated query term counts once
    assert [h.score for h in store.search_text([["python", "python"]], 5)[0]] == pytest.approx(
        [h.score for h in store.search_text([["python"]], 5)[0]])
    with pytest.raises(ValueError, match="k must be"):
        store.search_text([q("cat")], 0)


def test_replacing_a_text_changes_what_is_found(store) -> None:
    _, x, _ = fill(store, ["cat here", "dog there", "bird"])
    assert ids_of(store.search_text([q("cat")], 5)[0]) == ["d0"]
    store.upsert(["d0"], x[:1], [{"text": "a dog now"}])
    assert store.search_text([q("cat")], 5)[0] == []
    assert set(ids_of(store.search_text([q("dog")], 5)[0])) == {"d0", "d1"}
    store.upsert(["d1"], x[1:2], [{"other": 1}])  # no text: no terms
    assert ids_of(store.search_text([q("dog")], 5)[0]) == ["d0"]
    store.delete(["d0"])
    assert store.search_text([q("dog")], 5)[0] == []


def test_agrees_with_memory_store_on_matches() -> None:
    texts = [*CORPUS, "кошка и собака", "Running cats, sleeping dogs", "lake river mountain"]
    extra = [{"lang": "ru" if i % 3 else "en"} for i in range(len(texts))]
    qs = [q(t) for t in ("кошка", "dog cat", "спать собака", "lake", "python 2024",
                         "mountain river", "nothing here", "ёлка")]
    mem = MemoryStore(D)
    with open_store(StoreConfig(backend="qdrant", uri=":memory:"), D) as qd:
        for s in (mem, qd):
            fill(s, texts, extra)
        for where in (None, {"lang": "ru"}):
            got = qd.search_text(qs, 100, where=where)
            ref = mem.search_text(qs, 100, where=where)
            for g, r, terms in zip(got, ref, qs, strict=True):
                assert set(ids_of(g)) == set(ids_of(r)), terms
                if len(r) > 1 and r[0].score > 1.5 * r[1].score:  # a clear winner wins in both
                    assert g[0].id == r[0].id, terms


def test_scores_equal_bm25_over_the_collections_mean_length(tmp_path) -> None:
    """A review's: a fixed mean of 256 terms (chunks hold ~100) reordered the top 10 of 15 of
    15 XQuAD questions against BM25 over the same terms, scores about twice theirs. The mean
    of the first write's texts is now the collection's, kept in its metadata: the scores are
    the memory store's (BM25 over the table's own mean)."""
    texts = [*CORPUS, "кошка и собака", "Running cats, sleeping dogs", "lake river mountain"]
    qs = [q(t) for t in ("кошка", "dog cat", "спать собака", "lake", "python 2024",
                         "mountain river", "ёлка")]
    mem = MemoryStore(D)
    fill(mem, texts)
    cfg = StoreConfig(backend="qdrant", uri=str(tmp_path / "qd"))
    with open_store(cfg, D) as qd:
        fill(qd, texts)
        lengths = [len(lexical.record_terms(t)) for t in texts]
        mean = sum(lengths) / sum(1 for n in lengths if n)
        assert qd.bm25_mean_terms() == pytest.approx(mean)
        for got, ref in zip(qd.search_text(qs, 100), mem.search_text(qs, 100), strict=True):
            assert {h.id: h.score for h in got} == pytest.approx({h.id: h.score for h in ref})
    with open_store(cfg) as qd:  # reopened: later writes keep the mean their points have
        qd.upsert(["new"], unit_rows(1, D, seed=3), [{"text": "кошка кошка"}])
        assert qd.bm25_mean_terms() == pytest.approx(mean)
        (w,) = [h.score for h in qd.search_text([q("кошка")], 100)[0] if h.id == "new"]
        holding = sum("кошк" in lexical.record_terms(t) for t in [*texts, "кошка"])
        with_terms = sum(bool(lexical.record_terms(t)) for t in [*texts, "кошка"])
        # Qdrant's IDF counts the points that have a sparse vector: those with terms
        want = lexical.tf_weight(2, 2, mean) * lexical.idf(holding, with_terms)
        assert w == pytest.approx(want)  # weighed over the kept mean, not the new text's
    # a small first write (a handful of texts): no mean to go by, the default kept
    with open_store(StoreConfig(backend="qdrant", uri=":memory:"), D) as small:
        fill(small, texts[:5])
        assert small.bm25_mean_terms() == qdrant.AVG_TERMS


def test_optimize_reweighs_once_the_mean_has_moved(monkeypatch) -> None:
    """A review's, on XQuAD: an ingestion's first batch (English chunks, 72 terms) set the
    mean of a corpus whose mean was 28; 15 of 19 questions' top 10 differed from BM25 (1 of
    19, a tie, once reweighed). optimize (the end of every ingestion) rewrites the weights
    over the collection's own mean when the texts written since have moved it."""
    long_texts = [" ".join(f"word{i} common{j}" for j in range(20)) for i in range(20)]
    short = [t for t in CORPUS if t]
    texts = long_texts + short
    qs = [q(t) for t in ("кошка", "dog cat", "lake", "common3 word4", "python")]
    mem = MemoryStore(D)
    fill(mem, texts)
    with open_store(StoreConfig(backend="qdrant", uri=":memory:"), D) as qd:
        x = unit_rows(len(texts), D, seed=0)
        ids = [f"d{i}" for i in range(len(texts))]
        pays = [{"text": t, "n": i} for i, t in enumerate(texts)]
        qd.upsert(ids[:20], x[:20], pays[:20])  # the first write: long texts only
        qd.upsert(ids[20:], x[20:], pays[20:])
        first = qd.bm25_mean_terms()
        assert first == pytest.approx(40.0)
        before = qd.search_text(qs, 100)
        assert any({h.id: h.score for h in g} != pytest.approx({h.id: h.score for h in r})
                   for g, r in zip(before, mem.search_text(qs, 100), strict=True))
        qd.optimize()
        lengths = [len(lexical.record_terms(t)) for t in texts]
        assert qd.bm25_mean_terms() == pytest.approx(sum(lengths) / len(lengths))
        for got, ref in zip(qd.search_text(qs, 100), mem.search_text(qs, 100), strict=True):
            assert {h.id: h.score for h in got} == pytest.approx({h.id: h.score for h in ref})
        # no drift since: nothing is rewritten
        calls: list[object] = []
        monkeypatch.setattr(qd.client, "update_vectors", lambda *a, **k: calls.append(a))
        qd.optimize()
        assert calls == []


def test_optimize_rewrites_nothing_for_replaced_points_and_skips_deleted_ones(monkeypatch
                                                                           ) -> None:
    """A diff review's: replaced points count again in the tally of terms written, so
    re-ingesting the same long documents looked like drift and rewrote every point; and a
    point deleted (by another ingestion) between the scan and the rewrite failed the call."""
    texts = [f"word{i} " * 3 + "common " * (i % 5) for i in range(40)]
    with open_store(StoreConfig(backend="qdrant", uri=":memory:"), D) as qd:
        ids, x, pays = fill(qd, texts)
        mean = qd.bm25_mean_terms()
        calls: list[int] = []
        real = qd.client.update_vectors
        monkeypatch.setattr(qd.client, "update_vectors",
                            lambda *a, **k: calls.append(len(k["points"])) or real(*a, **k))
        long = [i for i, t in enumerate(texts) if t.count("common") == 4]
        for _ in range(5):  # the longest texts written again and again: the same points
            qd.upsert([ids[i] for i in long], x[long], [pays[i] for i in long])
        qd.optimize()
        assert calls == [] and qd.bm25_mean_terms() == mean
        # a real drift, and a point deleted while the rewrite runs
        short = [f"tiny{i}" for i in range(200)]
        qd.upsert([f"s{i}" for i in range(200)], unit_rows(200, D, seed=5),
                  [{"text": t} for t in short])

        def deleting(*a, **k):  # type: ignore[no-untyped-def]
            if not calls:
                qd.delete([ids[0]])
            calls.append(len(k["points"]))
            return real(*a, **k)

        monkeypatch.setattr(qd.client, "update_vectors", deleting)
        qd.optimize()
        assert len(calls) >= 2  # the batch, then its points still there
        # the mean of the texts scanned (the deleted one's included: it went after the scan)
        lengths = [len(lexical.record_terms(t)) for t in [*texts, *short]]
        assert qd.bm25_mean_terms() == pytest.approx(sum(lengths) / len(lengths))
        hits = {h.id: h.score for h in qd.search_text([q("tiny7")], 5)[0]}
        left = len(lengths) - 1
        want = lexical.tf_weight(1, 1, qd.bm25_mean_terms()) * lexical.idf(1, left)
        assert hits == pytest.approx({"s7": want})


def test_deletes_move_the_mean_length_as_writes_do() -> None:
    """A review's: deleting the 150 longest of 413 XQuAD contexts left the mean length
    where it was (the tally counted only texts written), and 13 of 20 top-10 orders differed
    from BM25 over the texts left. A delete now takes its texts out of the tally, and the
    next optimize (``Index.delete``'s, when a tenth of the records goes) reweighs."""
    texts = [" ".join(f"w{i}x{j}" for j in range(30)) + " shared" for i in range(20)] + [
        f"short{i} shared" for i in range(40)]
    qs = [q("shared"), q("short3 shared"), q("w2x5")]
    with open_store(StoreConfig(backend="qdrant", uri=":memory:"), D) as qd:
        ids, x, pays = fill(qd, texts)
        qd.optimize()
        assert qd.delete(ids[:20]) == 20  # the long ones
        qd.optimize()
        mem = MemoryStore(D)
        mem.upsert(ids[20:], x[20:], pays[20:])
        lengths = [len(lexical.record_terms(t)) for t in texts[20:]]
        assert qd.bm25_mean_terms() == pytest.approx(sum(lengths) / len(lengths))
        for got, ref in zip(qd.search_text(qs, 100), mem.search_text(qs, 100), strict=True):
            assert {h.id: h.score for h in got} == pytest.approx({h.id: h.score for h in ref})


def test_term_weights() -> None:
    assert qdrant.term_weights(None) == {} and qdrant.term_weights("!!") == {}
    # stable across processes and releases: the indices are stored in collections
    assert qdrant.term_index("кошк") == 471136412 and qdrant.term_index("cat") == 112220608
    w = qdrant.term_weights("cat cat dog")
    k1, b = lexical.BM25_K1, lexical.BM25_B
    norm = k1 * (1 - b + b * 3 / qdrant.AVG_TERMS)
    assert w == pytest.approx({qdrant.term_index("cat"): 2 * (k1 + 1) / (2 + norm),
                               qdrant.term_index("dog"): (k1 + 1) / (1 + norm)})
    # a longer text weighs the same count of a term less
    assert qdrant.term_weights("cat " + "x " * 500)[qdrant.term_index("cat")] < \
        qdrant.term_weights("cat x")[qdrant.term_index("cat")]


def test_hash_collisions_add_up(monkeypatch) -> None:
    monkeypatch.setattr(qdrant, "term_index", lambda term: 7)
    w = qdrant.term_weights("cat dog")
    norm = lexical.BM25_K1 * (1 - lexical.BM25_B + lexical.BM25_B * 2 / qdrant.AVG_TERMS)
    assert w == pytest.approx({7: 2 * (lexical.BM25_K1 + 1) / (1 + norm)})


def _old_collection(path, n: int = 3) -> np.ndarray:
    """A collection as smysl made it before lexical search: one unnamed dense vector."""
    from qdrant_client import QdrantClient, models

    x = unit_rows(n, D, seed=9)
    client = QdrantClient(path=str(path))
    client.create_collection("chunks", vectors_config=models.VectorParams(
        size=D, distance=models.Distance.DOT))
    client.upsert("chunks", points=[
        models.PointStruct(id=qdrant.point_id(f"old{i}"), vector=x[i].tolist(),
                           payload={"text": f"cat number {i}", qdrant.ID_FIELD: f"old{i}"})
        for i in range(n)], wait=True)
    client.close()
    return x


def test_an_old_collection_gets_its_term_index_on_the_first_write(tmp_path) -> None:
    """``update_collection`` cannot add a named vector (local mode: "Vector text_terms does not
    exist in the collection"; a server only tunes existing ones), ``create_vector_name`` can.
    A store opened on an old collection reads it as before and refuses lexical search until a
    write adds the sparse vector; records written before then are found once rewritten."""
    x = _old_collection(tmp_path / "q")
    cfg = StoreConfig(backend="qdrant", uri=str(tmp_path / "q"))
    with open_store(cfg) as s:
        with pytest.raises(ValueError, match=r"created before lexical search.*--rebuild"):
            s.search_text([q("cat")], 5)
        assert s.count() == 3 and [r.id for r in s.get(["old1"])] == ["old1"]
        s.upsert(["new"], unit_rows(1, D, seed=3), [{"text": "a new cat"}])
        assert ids_of(s.search_text([q("cat")], 5)[0]) == ["new"]  # old points have none yet
    with open_store(cfg) as s:  # the vector stays, and rewritten records are found
        s.upsert(["old0"], x[:1], [{"text": "cat number 0"}])
        assert set(ids_of(s.search_text([q("cat")], 5)[0])) == {"new", "old0"}
        (r,) = s.get(["old2"])
        np.testing.assert_allclose(r.vector, x[2], atol=1e-6)
        assert ids_of(s.search(x[1], 1)[0]) == ["old1"]


def test_an_old_collection_a_server_cannot_extend_keeps_working(tmp_path, monkeypatch) -> None:
    """A Qdrant server older than 1.18 has no way to add the vector: writes go on without term
    weights, and lexical search says the collection must be rebuilt."""
    x = _old_collection(tmp_path / "q")
    with open_store(StoreConfig(backend="qdrant", uri=str(tmp_path / "q"))) as s:
        def refuse(*a, **kw):
            raise RuntimeError("404 Not Found")

        monkeypatch.setattr(s.client, "create_vector_name", refuse)  # type: ignore[attr-defined]
        for _ in range(2):
            s.upsert(["old0", "new"], np.vstack([x[:1], unit_rows(1, D, seed=4)]),
                     [{"text": "cat"}, {"text": "dog"}])
        assert s.count() == 4 and s.get(["new"])[0].payload == {"text": "dog"}
        with pytest.raises(ValueError, match=r"^qdrant collection 'chunks' was created before "
                                             r"lexical search.*smysl index add --rebuild\)$"):
            s.search_text([q("cat")], 5)


def test_a_new_folder_collection_keeps_its_terms(tmp_path) -> None:
    cfg = StoreConfig(backend="qdrant", uri=str(tmp_path / "q"))
    with open_store(cfg, D) as s:
        fill(s, CORPUS)
    with open_store(cfg) as s:
        assert "d0" in ids_of(s.search_text([q("кошки")], 5)[0])
    with open_store(cfg, D, replace=True) as s:  # a rebuild starts with the term index too
        fill(s, ["cat"])
        assert ids_of(s.search_text([q("cats")], 5)[0]) == ["d0"]
