"""Lexical search: the analyser, BM25, rank fusion, and every store's ``search_text`` against
the in-memory reference (LanceDB's BM25 equals it; the others rank the same records)."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from smysl.toolkit import lexical
from smysl.toolkit.memory import MemoryStore
from smysl.toolkit.store import StoreConfig
from smysl.toolkit.stores import open_store

pytest.importorskip("Stemmer")

TEXTS = [
    "Кошки любят спать на солнце.",
    "Кошка спала на диване, а собака у двери.",
    "The cats sat on the mat; a cat is sleeping.",
    "Налоговый кодекс, статья 220: имущественный налоговый вычет.",
    "Артикул 4417-БК снят с производства в 2023 году.",
    "Ёлка и елка — одно дерево.",
    "",
    "Собаки и кошки: уход за домашними животными.",
]


def test_russian_forms_meet_at_their_stem() -> None:
    forms = ["кошка", "кошки", "кошкам", "Кошкой", "КОШЕК"]
    stems = {t for f in forms for t in lexical.analyze(f)}
    assert stems <= {"кошк", "кошек"}  # Snowball keeps the fleeting-vowel genitive plural apart
    assert lexical.analyze("кошки") == lexical.analyze("кошкам") == lexical.analyze("Кошкой")
    assert lexical.analyze("ёлка") == lexical.analyze("елка")  # ё is read as е


def test_english_numbers_and_other_words() -> None:
    assert lexical.analyze("Cats are sleeping") == ["cat", "are", "sleep"]
    # numbers and mixed words stay as they are; punctuation and underscores split words
    assert lexical.analyze("COVID19 in 2023: snake_case, 4417-БК") == [
        "covid19", "in", "2023", "snake", "case", "4417", "бк"]
    assert lexical.analyze("ＡＢＣ") == ["abc"]  # NFKC: full-width letters
    assert lexical.analyze("  ... ") == [] and lexical.terms_text(None) == ""
    assert lexical.analyze("x" * (lexical.MAX_TERM_CHARS + 1) + " ok") == ["ok"]
    assert lexical.analyze("東京タワー") == ["東京タワー"]  # other scripts: a run is one term


def test_combining_marks_stay_in_their_word() -> None:
    """A stress mark (Russian dictionaries, Wikipedia) does not split a word and is dropped
    before stemming; other scripts keep their marks (a Devanagari vowel sign)."""
    assert lexical.analyze("за́мок Толсто́й") == lexical.analyze("замок Толстой")
    assert lexical.analyze("नमस्ते") == ["नमस्ते"]
    assert lexical.analyze("cafe\u0301") == lexical.analyze("café") == ["café"]  # NFKC


def test_query_terms_are_distinct_and_bounded() -> None:
    assert lexical.query_terms("кошка, кошки и собака") == ["кошк", "и", "собак"]
    many = " ".join(f"w{i}" for i in range(3 * lexical.MAX_QUERY_TERMS))
    assert lexical.query_terms(many) == [f"w{i}" for i in range(lexical.MAX_QUERY_TERMS)]


def test_bm25_prefers_more_and_rarer_terms() -> None:
    docs = [lexical.analyze(t) for t in TEXTS]
    stats = lexical.corpus(docs)
    assert stats.docs == len(TEXTS) and stats.doc_freq["кошк"] == 3
    q = lexical.analyze("кошка собака")
    scores = [lexical.bm25(q, d, stats) for d in docs]
    assert scores[1] > scores[0] > 0  # both terms beat one
    assert scores[6] == 0.0 and scores[3] == 0.0
    # a term in one document weighs more than one in three
    assert lexical.bm25(["вычет"], docs[3], stats) > lexical.bm25(["кошк"], docs[0], stats)
    assert lexical.bm25(q + q, docs[1], stats) == scores[1]  # a repeated query term counts once
    idf = math.log(1 + (stats.docs - 1 + 0.5) / 1.5)
    d = docs[3]  # the textbook formula, by hand
    norm = lexical.BM25_K1 * (1 - lexical.BM25_B + lexical.BM25_B * len(d) / stats.avg_length)
    assert lexical.bm25(["220"], d, stats) == pytest.approx(idf * 2.2 / (1 + norm))


def test_memory_store_word_search_is_bm25_through_rewrites_and_deletes() -> None:
    """The memory store's postings give :func:`lexical.bm25` with the statistics of every
    live record that has text (a filter chooses the hits, not their scores), to float
    precision and in the same order, after records are rewritten with other words, lose
    their text, are deleted and come back."""
    rng = np.random.default_rng(3)
    vocab = ["кошка", "кошки", "собака", "и", "в", "дом", "cat", "cats", "the", "4417", "ёлка"]
    store = MemoryStore(4)
    live: dict[str, dict] = {}

    def write(ids: list[str]) -> None:
        pays = [({"text": " ".join(rng.choice(vocab, rng.integers(1, 15)))} if rng.random() > .1
                 else {}) | {"g": int(rng.integers(0, 3))} for _ in ids]
        vecs = rng.normal(size=(len(ids), 4)).astype(np.float32)
        store.upsert(ids, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), pays)
        live.update(zip(ids, pays, strict=True))

    write([f"d{i}" for i in range(60)])
    write([f"d{i}" for i in range(0, 60, 3)])  # rewritten: other words, or none
    store.delete([f"d{i}" for i in range(1, 60, 7)])
    for i in range(1, 60, 7):
        live.pop(f"d{i}")
    write(["d8", "d99"])  # one deleted comes back, one is new
    queries = [lexical.query_terms(q) for q in ("кошка и собака", "cats the", "в", "4417 ёлки",
                                                "zebra", "")]
    # the statistics are of every record (a filter chooses hits, not their scores)
    stats = lexical.corpus([t for t in (lexical.record_terms(p.get("text"))
                                        for p in live.values()) if t])
    for where in (None, {"g": [0, 2]}):
        kept = {i: lexical.record_terms(p.get("text")) for i, p in live.items()
                if where is None or p["g"] in where["g"]}
        for q, hits in zip(queries, store.search_text(queries, 100, where=where), strict=True):
            want = sorted(((i, lexical.bm25(q, t, stats)) for i, t in kept.items()),
                          key=lambda x: -x[1])
            want = [(i, sc) for i, sc in want if sc > 0]
            np.testing.assert_allclose([h.score for h in hits], [sc for _, sc in want],
                                       rtol=1e-12)
            # the same ids in the same order, up to the order among equal scores
            by_score = {round(sc, 9): set() for _, sc in want}
            for i, sc in want:
                by_score[round(sc, 9)].add(i)
            assert [(round(h.score, 9), h.id in by_score[round(h.score, 9)]) for h in hits] == [
                (round(sc, 9), True) for _, sc in want]
            assert all(h.payload == live[h.id] for h in hits)
    # a deleted record's words leave the postings (ids that come and go take no memory)
    store.upsert(["gone"], np.eye(1, 4, dtype=np.float32), [{"text": "однократное слово"}])
    assert store.search_text([lexical.query_terms("однократное")], 5)[0][0].id == "gone"
    store.delete(["gone"])
    assert not {t for t in store._postings if "однократн" in t}
    assert store.search_text([lexical.query_terms("однократное")], 5) == [[]]


def test_reciprocal_rank_fusion() -> None:
    fused = lexical.fuse([["a", "b", "c"], ["c", "d", "a"]], 3, rrf_k=60)
    assert [i for i, _, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63) and fused[0][2] == [1, 3]
    assert fused[2][2] == [2, None]
    # ties keep first appearance; a repeat within one ranking counts at its best rank
    assert [i for i, _, _ in lexical.fuse([["x", "y"], ["y", "x"]], 2)] == ["x", "y"]
    assert lexical.fuse([["a", "a"]], 5) == [("a", 1 / 61, [1])]
    assert lexical.fuse([[], []], 3) == []
    # a weighted ranking: w / (rrf_k + rank)
    weighted = lexical.fuse([["x", "y"], ["y", "x"]], 2, rrf_k=60, weights=[1.0, 3.0])
    assert [i for i, _, _ in weighted] == ["y", "x"]
    assert weighted[0][1] == pytest.approx(1 / 62 + 3 / 61)
    with pytest.raises(ValueError, match="2 rankings but 1 weights"):
        lexical.fuse([["x"], ["y"]], 2, weights=[1.0])


STORES = ["memory", "lancedb", "qdrant", "postgres"]


def _store(kind: str, tmp_path, request, dims: int = 4):  # type: ignore[no-untyped-def]
    if kind == "memory":
        return MemoryStore(dims)
    if kind == "postgres":  # a fresh table on the session's server
        return open_store(StoreConfig(backend="postgres",
                                      uri=request.getfixturevalue("postgres_dsn"),
                                      table=f"t_{uuid.uuid4().hex[:12]}"), dims)
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
        return open_store(StoreConfig(backend="qdrant", uri=":memory:"), dims)
    pytest.importorskip("lancedb")
    return open_store(StoreConfig(uri=str(tmp_path / "kb")), dims)


def _fill(store) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    ids = [f"d{i}" for i in range(len(TEXTS))]
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(TEXTS), store.dimensions)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.upsert(ids, vecs, [{"text": t, "n": i, "lang": "en" if i == 2 else "ru"}
                             for i, t in enumerate(TEXTS)])
    return ids, vecs


QUERIES = ["кошка", "собаки и кошки", "cat", "налоговый вычет", "4417", "ёлки", "дом", "..."]


@pytest.mark.parametrize("kind", STORES)
def test_search_text_refuses_a_string_for_terms(kind, tmp_path, request) -> None:
    """A string where a list of queries or a query's terms go was read letter by letter:
    one-letter terms, found nowhere, and no word of why."""
    store = _store(kind, tmp_path, request)
    _fill(store)
    with pytest.raises(TypeError, match="not a string"):
        store.search_text("кошка", 5)
    with pytest.raises(TypeError, match=r"query 1 .*lexical\.analyze"):
        store.search_text([["кошк"], "кошка"], 5)
    with pytest.raises(TypeError, match="query 0"):
        store.search_text([[1, 2]], 5)
    with pytest.raises(ValueError, match="k must be"):
        store.search_text([["кошк"]], 0)
    assert [h.id for h in store.search_text(iter([lexical.analyze("кошка")]), 5)[0]]
    # a query given as an iterator is read once, not emptied by the check
    assert [h.id for h in store.search_text([iter(lexical.analyze("кошка"))], 5)[0]]


@pytest.mark.parametrize("kind", STORES)
def test_search_text_finds_what_the_reference_finds(kind, tmp_path, request) -> None:
    ref = MemoryStore(4)
    _fill(ref)
    store = _store(kind, tmp_path, request)
    ids, vecs = _fill(store)
    terms = [lexical.analyze(q) for q in QUERIES]
    want = ref.search_text(terms, 20)
    got = store.search_text(terms, 20)
    for q, w, g in zip(QUERIES, want, got, strict=True):
        assert {h.id for h in g} == {h.id for h in w}, q
        if w:
            assert g[0].id == w[0].id, q
        assert [h.score for h in g] == sorted((h.score for h in g), reverse=True)
        if kind == "lancedb":  # the same BM25 over the same terms
            np.testing.assert_allclose([h.score for h in g], [h.score for h in w], rtol=1e-5)
    assert got[-1] == [] and got[6] == []  # no terms; no record holds the term
    assert {h.id for h in got[0]} == {"d0", "d1", "d7"}
    assert got[4][0].id == "d4" and got[4][0].payload["text"] == TEXTS[4]
    (hits,) = store.search_text([terms[0]], 5, where={"n": {"$gte": 1}}, with_vectors=True)
    assert {h.id for h in hits} == {"d1", "d7"}
    for h in hits:
        np.testing.assert_allclose(h.vector, vecs[ids.index(h.id)], atol=1e-6)
    assert store.search_text([terms[0]], 1)[0][0].id == want[0][0].id
    # a filter chooses the hits, not their scores: every store's statistics are the table's
    # (LanceDB's once its index covers every row; rows outside it are scored with the
    # statistics of those the filter leaves)
    store.optimize()
    every = {h.id: h.score for h in store.search_text([terms[1]], 20)[0]}
    (some,) = store.search_text([terms[1]], 20, where={"lang": "ru"})
    assert some and len(some) < len(TEXTS)
    for h in some:
        assert h.score == pytest.approx(every[h.id], rel=1e-6), h.id
    # a long query (a document pasted as one): the first MAX_QUERY_TERMS distinct terms
    long = lexical.query_terms(" ".join([TEXTS[4]] + [f"x{i}" for i in range(3000)]))
    assert [h.id for h in store.search_text([long], 3)[0]] == ["d4"]
    with pytest.raises(ValueError, match="k must be"):
        store.search_text([terms[0]], 0)


@pytest.mark.parametrize("kind", STORES)
def test_rewritten_and_deleted_records_leave_the_text_search(kind, tmp_path, request) -> None:
    store = _store(kind, tmp_path, request)
    _, vecs = _fill(store)
    store.upsert(["d4"], vecs[4:5], [{"text": "другой текст"}])
    store.delete(["d0"])
    (gone,), (found,), (cats,) = (store.search_text([lexical.analyze(q)], 10)
                                  for q in ("4417", "другой", "кошки"))
    assert gone == [] and [h.id for h in found] == ["d4"]
    assert {h.id for h in cats} == {"d1", "d7"}
    store.optimize()  # LanceDB folds the new rows into its full-text index
    assert {h.id for h in store.search_text([lexical.analyze("кошки")], 10)[0]} == {"d1", "d7"}


def test_lancedb_table_of_an_earlier_smysl_gets_its_terms_column(tmp_path) -> None:
    lancedb = pytest.importorskip("lancedb")
    import pyarrow as pa

    from smysl.toolkit.lancedb import LanceStore

    # a table as an earlier smysl made it: id, vector, payload
    db = lancedb.connect(str(tmp_path / "kb"))
    db.create_table("chunks", schema=pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), 4)), pa.field("payload", pa.string())]))
    old = LanceStore(StoreConfig(uri=str(tmp_path / "kb")))
    assert old.search_text([["кошк"]], 5) == [[]]  # nothing to match, and nothing written
    _fill(old)
    assert {h.id for h in old.search_text([["кошк"]], 5)[0]} == {"d0", "d1", "d7"}
    old.build_index()  # too few rows for an ANN index: the full-text one does not count as one
    assert not old._has_index()
    again = LanceStore(StoreConfig(uri=str(tmp_path / "kb")))
    assert [h.id for h in again.search_text([["4417"]], 5)[0]] == ["d4"]


def test_a_store_of_another_package_without_word_search_still_works() -> None:
    """``search_text`` is not abstract: a store written against the earlier contract still
    opens and searches by vector; asked for words, it says it has none, and an index on it is
    not marked as having terms."""
    from smysl.toolkit.index import LEXICAL, Index
    from smysl.toolkit.store import VectorStore

    class Older(MemoryStore):
        search_text = VectorStore.search_text

    store = Older(4)
    _, vecs = _fill(store)
    assert store.search(vecs[0], 1)[0][0].id == "d0"
    with pytest.raises(NotImplementedError, match="Older has no search by words"):
        store.search_text([["кошк"]], 1)

    class Fake:  # what add_terms needs of the model: nothing beyond a cache key
        def fingerprint(self) -> str:
            return "fake"

    index = Index(store, Fake(), checksums=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no search by words"):
        index.add_terms()
    assert LEXICAL not in store.read_meta()
