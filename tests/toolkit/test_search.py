"""Search and RAG retrieval: exact search equals a numpy brute force, instructions, MMR, output."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.ingest import Document, IngestConfig
from smysl.toolkit.search import SearchConfig, build_context, format_json, format_table, mmr
from smysl.toolkit.store import Hit, StoreConfig
from toolkit.helpers import DATASETS, brute_force

pytest.importorskip("lancedb")


def xquad_subset(paragraphs: int, questions: int) -> tuple[list[Document], list[str], list[str]]:
    path = DATASETS / "xquad" / "xquad.en.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    docs, qs, gold = [], [], []
    for a, art in enumerate(data):
        for p, par in enumerate(art["paragraphs"]):
            doc_id = f"{a}-{p}"
            docs.append(Document(doc_id, par["context"], {"article": a}))
            qs += [q["question"] for q in par["qas"][:1]]
            gold += [doc_id]
    return docs[:paragraphs], qs[:questions], gold[:questions]


def ndcg10(ranked: list[list[str]], gold: list[str]) -> float:
    """Single relevant document per query: 1 / log2(rank + 1) when within the top 10."""
    return float(np.mean([1 / np.log2(r.index(g) + 2) if g in r[:10] else 0.0
                          for r, g in zip(ranked, gold, strict=True)]))


def test_exact_search_equals_brute_force_on_xquad(minilm, tmp_path) -> None:
    docs, questions, gold = xquad_subset(30, 30)
    with Index.create_or_open(minilm, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add(docs, IngestConfig())
        hits = ix.search(questions, SearchConfig(k=10))
        # the reference: every stored vector, numpy, same query vectors
        records = [r for b in ix.store.scan() for r in b]
        db = np.stack([r.vector for r in records])
        q = minilm.embed(questions)  # MiniLM takes no instruction: queries are bare
        np.testing.assert_allclose(ix.embed_queries(questions), q, atol=1e-6)
    ref_idx, ref_scores = brute_force(db, q, 10)
    for h, idx, sc in zip(hits, ref_idx, ref_scores, strict=True):
        assert [x.id for x in h] == [records[i].id for i in idx]
        np.testing.assert_allclose([x.score for x in h], sc, atol=1e-5)

    def docs_of(ids: list[str]) -> list[str]:  # chunks -> documents, first occurrence
        return list(dict.fromkeys(i.rsplit("#", 1)[0] for i in ids))

    ours = ndcg10([docs_of([x.id for x in h]) for h in hits], gold)
    ref = ndcg10([docs_of([records[i].id for i in idx]) for idx in ref_idx], gold)
    assert ours == ref and ours > 0.5  # MiniLM retrieves most answers among 30 paragraphs


def test_query_instruction_and_filters(tiny, tmp_path) -> None:
    texts = [f"document number {i} about {t}" for i, t in enumerate(["cats", "dogs"] * 10)]
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add_texts(texts, metadata=[{"topic": t} for t in ["cats", "dogs"] * 10])
        # Qwen3 is instruction-aware: queries get the model's default task, or the one given
        np.testing.assert_allclose(ix.embed_queries(["q"]), tiny.embed_queries(["q"]),
                                   atol=1e-6)
        np.testing.assert_allclose(ix.embed_queries(["q"], "qa"),
                                   tiny.embed(["q"], instruction="qa"), atol=1e-6)
        np.testing.assert_allclose(ix.embed_queries(["q"], ""), tiny.embed(["q"]), atol=1e-6)
        (hits,) = ix.search("which animal?", SearchConfig(k=5, where={"topic": "dogs"}))
        assert len(hits) == 5 and all(h.payload["topic"] == "dogs" for h in hits)
        (mmr_hits,) = ix.search("which animal?", SearchConfig(k=4, mmr=True, fetch_k=12))
        assert len({h.id for h in mmr_hits}) == 4


def test_an_over_long_query_is_refused_unless_truncate(tiny, tmp_path) -> None:
    """A query longer than the model takes was cut without a word (and searched for its
    beginning): now an InputTooLongError naming it, or cut when ``truncate`` asks for it."""
    from smysl.tokenize import InputTooLongError

    long = "why " * 600  # the tiny model takes 512 tokens
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(backend="memory"))) as ix:
        ix.add_texts(["cats purr", "dogs bark"])
        with pytest.raises(InputTooLongError) as err:
            ix.search(["cats?", long], SearchConfig(k=1))
        assert err.value.index == 1 and "truncate" in str(err.value)
        (_, hits) = ix.search(["cats?", long], SearchConfig(k=1, truncate=True))
        np.testing.assert_allclose(ix.embed_queries([long], truncate=True),
                                   tiny.embed_queries([long], truncate=True), atol=1e-6)
        assert len(hits) == 1
        ix.search(long, SearchConfig(k=1, mode="text"))  # words alone: nothing embedded


def test_mmr_demotes_near_duplicates() -> None:
    q = np.array([1.0, 0.0, 0.0], np.float32)
    vecs = np.array([[0.9, 0.436, 0], [0.9, 0.436, 0], [0.8, -0.6, 0], [0.1, 0.0, 0.995]],
                    np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    hits = [Hit(str(i), float(v @ q), {}, v) for i, v in enumerate(vecs)]
    assert [h.id for h in mmr(q, hits, 3, lam=1.0)] == ["0", "1", "2"]  # pure relevance
    assert [h.id for h in mmr(q, hits, 2, lam=0.5)] == ["0", "2"]  # the duplicate waits
    with pytest.raises(ValueError, match="vectors"):
        mmr(q, [Hit("a", 1.0, {})], 1)


def test_output_formats_and_rag_context() -> None:
    hits = [[Hit("d#0", 0.91234567, {"text": "first  chunk\ntext", "doc_id": "d"}),
             Hit("e#2", 0.5, {"text": "x" * 300, "doc_id": "e"})], []]
    table = format_table(["q1", "q2"], hits, width=40)
    assert "0.9123" in table and "first chunk text" in table and "(no results)" in table
    assert max(len(line) for line in table.splitlines()) < 100
    lines = [json.loads(x) for x in format_json(["q1", "q2"], hits).splitlines()]
    assert lines[0]["hits"][0] == {"id": "d#0", "score": 0.912346,
                                   "payload": hits[0][0].payload}
    assert lines[1] == {"query": "q2", "hits": []}
    ctx = build_context(hits[0], max_chars=200)
    assert ctx.startswith("[1] d\nfirst  chunk\ntext") and "[2]" not in ctx
    # a long id shows its end: default ids are paths, alike at their start (and "#chunk"
    # was cut off)
    deep = [[Hit(f"/home/user/projects/notes/docs/{n}.md#3", 0.5, {"text": "t"})
             for n in ("alpha", "beta")]]
    rows = format_table(["q"], deep).splitlines()[-2:]
    shown = [r.split()[2] for r in rows]
    assert [len(x) for x in shown] == [28, 28] and shown[0].startswith("…")
    assert shown[0].endswith("/alpha.md#3") and shown[1].endswith("/beta.md#3")


CATALOG = [
    "Артикул 4417-БК: кабель медный, снят с производства в 2023 году.",
    "Кабели и провода для домашней проводки.",
    "Медные трубы для отопления и водоснабжения.",
    "Cable ties, 200 mm, pack of 100.",
    "Кошки любят спать на солнце.",
]


@pytest.fixture
def catalog(tiny, tmp_path):  # type: ignore[no-untyped-def]
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add_texts(CATALOG, ids=[f"c{i}" for i in range(len(CATALOG))],
                     metadata=[{"n": i} for i in range(len(CATALOG))])
        yield ix


def test_text_mode_finds_codes_and_word_forms_without_embedding(catalog, monkeypatch) -> None:
    """Mode ``text`` ranks by the query's words (BM25 over stems): an article number and an
    inflected word find their chunks, which a random model's vectors cannot; no query is
    embedded."""
    monkeypatch.setattr(catalog, "embed_queries", lambda *a, **k: pytest.fail("embedded"))
    code, forms, english, nothing = catalog.search(
        ["4417", "медного кабеля", "cable", "жирафы"], SearchConfig(k=3, mode="text"))
    assert [h.id for h in code] == ["c0#0"]
    assert [h.id for h in forms][:1] == ["c0#0"] and {h.id for h in forms} == {
        "c0#0", "c1#0", "c2#0"}  # кабель+медный, кабели, медные
    assert [h.id for h in english] == ["c3#0"]
    assert nothing == []
    (filtered,) = catalog.search("медный", SearchConfig(k=3, mode="text", where={"n": 2}))
    assert [h.id for h in filtered] == ["c2#0"]
    assert all(h.vector is None and "text" in h.payload for h in forms)
    # one metadata read a search checks both the model's binding and the words' terms with
    monkeypatch.undo()  # hybrid embeds
    reads = []
    real = catalog.store.read_meta
    monkeypatch.setattr(catalog.store, "read_meta", lambda: (reads.append(1), real())[1])
    for mode in ("text", "hybrid"):
        catalog.search("медный", SearchConfig(k=3, mode=mode))
    assert len(reads) == 2


def test_hybrid_mode_fuses_both_rankings(catalog) -> None:
    from smysl.toolkit.search import FusedHit

    (vec,) = catalog.search("4417 кабель", SearchConfig(k=5))
    (txt,) = catalog.search("4417 кабель", SearchConfig(k=5, mode="text"))
    (hyb,) = catalog.search("4417 кабель", SearchConfig(k=5, mode="hybrid", rrf_k=60))
    assert all(isinstance(h, FusedHit) for h in hyb)
    assert hyb[0].id == "c0#0" and hyb[0].text_rank == 1  # both terms: first by words
    for h in hyb:  # each hit's ranks and scores are those of the two searches
        v = [x.id for x in vec].index(h.id) + 1 if h.id in [x.id for x in vec] else None
        t = [x.id for x in txt].index(h.id) + 1 if h.id in [x.id for x in txt] else None
        assert (h.vector_rank, h.text_rank) == (v, t)
        assert h.score == pytest.approx(sum(1 / (60 + r) for r in (v, t) if r))
        if v:
            assert h.vector_score == pytest.approx(vec[v - 1].score, abs=1e-6)
        if t:
            assert h.text_score == pytest.approx(txt[t - 1].score, rel=1e-6)
    assert [h.score for h in hyb] == sorted((h.score for h in hyb), reverse=True)
    # text_weight: 0 leaves the vector ranking's order; a large one the word ranking's first
    (none,) = catalog.search("4417 кабель", SearchConfig(k=5, mode="hybrid", text_weight=0))
    assert [h.id for h in none] == [h.id for h in vec]
    (words,) = catalog.search("4417 кабель", SearchConfig(k=5, mode="hybrid", text_weight=50))
    assert [h.id for h in words][: len(txt)] == [h.id for h in txt]
    rows = json.loads(format_json(["q"], [hyb]))["hits"]
    assert rows[0]["text_rank"] == 1 and "vector_rank" in rows[0]
    table = format_table(["q"], [hyb])
    assert "fused" in table and "text#" in table


def test_search_modes_are_checked(catalog) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchConfig(mode="bm25")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MMR diversifies"):
        SearchConfig(mode="hybrid", mmr=True)
    for bad in ({"rrf_k": 0}, {"fetch_k": 0}, {"fetch_k": True}):
        with pytest.raises(ValueError, match="must be an integer"):
            SearchConfig(**bad)  # type: ignore[arg-type]
    for weight in (-1, 101, float("nan"), True):
        with pytest.raises(ValueError, match="text_weight must be"):
            SearchConfig(mode="hybrid", text_weight=weight)
    from smysl.toolkit.search import search_vectors

    with pytest.raises(ValueError, match="needs the queries' terms"):
        search_vectors(catalog.store, catalog.embed_queries(["q"]), SearchConfig(mode="hybrid"))


def test_an_index_of_an_earlier_smysl_gets_its_terms(catalog, tmp_path) -> None:
    """An index built before lexical search (no terms, no ``lexical`` metadata) refuses modes
    ``text``/``hybrid`` with what to do; :meth:`Index.add_terms` (run by every ``add``) gives
    its records terms once, leaving damaged records as they are."""
    from smysl.toolkit.index import LEXICAL

    store = catalog.store
    store._table.drop_index("terms_idx")
    store._table.drop_columns(["terms"])
    store.update_meta({LEXICAL: None})
    bad = store.get(["c4#0"])[0]  # text that no longer matches its hash: damaged
    store.upsert([bad.id], bad.vector[None], [{**bad.payload, "text": "Кошки спят"}])
    with pytest.raises(ValueError, match="built by an earlier smysl"):
        catalog.search("4417", SearchConfig(mode="text"))
    assert catalog.search("4417", SearchConfig(k=1))[0]  # vector search still works
    reopened = Index.create_or_open(catalog.embedder,
                                    IndexConfig(StoreConfig(uri=str(tmp_path / "kb"))))
    with reopened:
        assert reopened.add_terms() == len(CATALOG) - 1
        assert reopened.add_terms() == 0  # once
        # every rewritten row is in LanceDB's full-text index (no scan of the table per query)
        assert reopened.store._table.index_stats("terms_idx").num_unindexed_rows == 0
        (hits,) = reopened.search("4417", SearchConfig(mode="text"))
        assert [h.id for h in hits] == ["c0#0"]
        assert reopened.search("кошки", SearchConfig(mode="text")) == [[]]  # the damaged one
        reopened.add_texts(["Кошки любят спать на солнце."], ids=["c4"])  # repaired: found
        assert [h.id for h in reopened.search("кошки", SearchConfig(mode="text"))[0]] == [
            "c4#0"]


def test_add_terms_brings_back_nothing_another_process_changed(catalog, monkeypatch) -> None:
    """Records deleted or rewritten by another process after the scan read them are not
    written back as they were: each batch is read again just before it is written."""
    from smysl.toolkit.index import LEXICAL

    store = catalog.store
    store.update_meta({LEXICAL: None})
    scan = store.scan

    def racing_scan(*a, **k):  # type: ignore[no-untyped-def]
        for batch in scan(*a, **k):
            catalog.delete(["c1"])  # "another process", between the scan and the write
            catalog.add_texts(["Артикул 5520-ЖК: другой кабель."], ids=["c0"])
            yield batch

    monkeypatch.setattr(store, "scan", racing_scan)
    catalog.add_terms()
    assert store.get(["c1#0"]) == []
    assert store.get(["c0#0"])[0].payload["text"] == "Артикул 5520-ЖК: другой кабель."
    monkeypatch.undo()
    (hits,) = catalog.search("5520", SearchConfig(mode="text"))
    assert [h.id for h in hits] == ["c0#0"]


def test_add_terms_does_not_mark_a_store_that_cannot_keep_terms(catalog, monkeypatch) -> None:
    """A store that cannot search by words after the rewrite (a Qdrant server too old to add
    the sparse vector) raises, and the index is not marked as having terms."""
    from smysl.toolkit.index import LEXICAL

    store = catalog.store
    store.update_meta({LEXICAL: None})

    def refuses(*a, **k):  # type: ignore[no-untyped-def]
        raise ValueError("collection was created before lexical search: rebuild it")

    monkeypatch.setattr(store, "search_text", refuses)
    with pytest.raises(ValueError, match="rebuild it"):
        catalog.add_terms()
    assert LEXICAL not in store.read_meta()


def test_search_config_takes_whole_numbers_of_hits() -> None:
    # k=2.5 reached the memory store and failed there: "slice indices must be integers"
    for bad in (2.5, True, 0):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            SearchConfig(k=bad)  # type: ignore[arg-type]
    assert SearchConfig(k=np.int64(5)).k == 5  # type: ignore[arg-type]


def _chunked_store():  # type: ignore[no-untyped-def]
    """Chunks at known angles from the query [1, 0, 0, 0]: document A's 8 nearest, then B's
    2, C's 1, a record without a doc_id, and a far document D; every text holds "кабель"."""
    from smysl.toolkit.memory import MemoryStore

    order = [("A", 8), ("B", 2), ("C", 1), (None, 1), ("D", 3)]
    ids, vecs, payloads = [], [], []
    for doc, n in order:
        for c in range(n):
            t = 0.01 * (len(ids) + 1) + (1.2 if doc == "D" else 0.0)
            ids.append(f"{doc}#{c}" if doc else "x")
            vecs.append([np.cos(t), np.sin(t), 0.0, 0.0])
            payloads.append({"text": f"кабель {doc or 'x'} {c}",
                             **({"doc_id": doc, "chunk": c} if doc else {})})
    store = MemoryStore(4)
    store.upsert(ids, np.array(vecs, np.float32), payloads)
    return store


def test_per_document_caps_the_chunks_of_one_document() -> None:
    """One long document filled the hits; ``per_document`` keeps at most N chunks of each,
    widening the search past the capped ones until ``k`` (or the store's end), in every mode
    and for MMR's candidates."""
    from smysl.toolkit.search import search_vectors

    store = _chunked_store()
    q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    terms = [["кабел"]]

    def ids(config: SearchConfig) -> list[str]:
        (hits,) = search_vectors(store, q, config, terms=terms)
        return [h.id for h in hits]

    assert ids(SearchConfig(k=4)) == ["A#0", "A#1", "A#2", "A#3"]
    assert ids(SearchConfig(k=4, per_document=1)) == ["A#0", "B#0", "C#0", "x"]
    assert ids(SearchConfig(k=5, per_document=2)) == ["A#0", "A#1", "B#0", "B#1", "C#0"]
    assert ids(SearchConfig(k=9, per_document=1)) == ["A#0", "B#0", "C#0", "x", "D#0"]
    for mode in ("text", "hybrid"):
        got = ids(SearchConfig(k=4, mode=mode, per_document=1))  # type: ignore[arg-type]
        docs = [i.split("#")[0] for i in got]
        assert len(got) == 4 and len(set(docs)) == 4, (mode, got)
    got = ids(SearchConfig(k=3, mmr=True, fetch_k=4, per_document=1))
    assert sorted(got) == ["A#0", "B#0", "C#0"]  # out of the capped candidates
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="per_document must be"):
            SearchConfig(per_document=bad)  # type: ignore[arg-type]


def test_per_document_looks_only_so_deep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few documents of many chunks each widened the search to the whole store (200,000
    chunks: 15 s and 509 MiB); it stops at PER_DOCUMENT_DEPTH chunks (100 x k where more)
    and gives what it found there."""
    from smysl.toolkit import search as search_module
    from smysl.toolkit.memory import MemoryStore
    from smysl.toolkit.search import search_vectors

    monkeypatch.setattr(search_module, "PER_DOCUMENT_DEPTH", 1000)  # a small store suffices
    n = 3000
    t = 0.0005 * np.arange(n)
    vecs = np.stack([np.cos(t), np.sin(t), np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
    docs = ["A"] * 1500 + ["B"] * (n - 1500)  # B starts past the 1,000 nearest
    store = MemoryStore(4)
    store.upsert([f"c{i}" for i in range(n)], vecs, [{"doc_id": d} for d in docs])
    depths: list[int] = []
    search = store.search

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        depths.append(args[1])
        return search(*args, **kwargs)

    store.search = counted  # type: ignore[method-assign]
    q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    ties = search_module._TIES  # asked for past the depth: ties at the cut go by id
    (hits,) = search_vectors(store, q, SearchConfig(k=2, per_document=1))
    assert [h.id for h in hits] == ["c0"] and max(depths) == 1000 + ties
    depths.clear()
    (hits,) = search_vectors(store, q, SearchConfig(k=20, per_document=1))  # 100 x k: 2,000
    assert [h.id for h in hits] == ["c0", "c1500"] and max(depths) == 2000 + ties


def test_per_document_tells_documents_apart_by_their_json() -> None:
    """``doc_id: null`` is no document (each such chunk is its own), and 1, 1.0, true and
    "1" are four: they were one key of a dict."""
    from smysl.toolkit.search import per_document
    from smysl.toolkit.store import Hit

    ids = [None, None, 1, 1.0, True, "1", 1, [1], [1]]
    hits = [Hit(f"h{i}", 1.0, {"doc_id": d}) for i, d in enumerate(ids)]
    assert [h.id for h in per_document(hits, 1)] == [f"h{i}" for i in (0, 1, 2, 3, 4, 5, 7)]


def test_per_document_caps_the_reranked_candidates() -> None:
    from smysl.rerank import BaseReranker
    from smysl.toolkit.search import RerankedHit, search_vectors

    class Reverse(BaseReranker):
        name, backend = "reverse", "fake"

        def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                    truncate: bool) -> np.ndarray:
            return np.arange(len(documents), dtype=np.float64)

    store = _chunked_store()
    (hits,) = search_vectors(store, np.array([[1.0, 0, 0, 0]], np.float32),
                             SearchConfig(k=3, rerank_top=4, per_document=1),
                             reranker=Reverse(), texts=["q"])
    assert all(isinstance(h, RerankedHit) for h in hits)
    assert [h.id for h in hits] == ["x", "C#0", "B#0"]  # the last of the capped 4 first


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_only_the_queries_short_of_hits_are_searched_again(mode: str) -> None:
    """A batch of queries where one needs a deeper search (one document's chunks fill its
    hits, or its hits fail the check) searches that one again, not the whole batch; each
    query's hits are those it gets searched alone."""
    from smysl.toolkit.memory import MemoryStore
    from smysl.toolkit.search import search_vectors

    class Counted(MemoryStore):
        rows: ClassVar[list[int]] = []

        def search(self, queries, k, **kw):  # type: ignore[no-untyped-def]
            self.rows.append(len(np.atleast_2d(queries)))
            return super().search(queries, k, **kw)

        def search_text(self, terms, k, **kw):  # type: ignore[no-untyped-def]
            self.rows.append(len(terms))
            return super().search_text(terms, k, **kw)

    near = [("A", 0.01 * i, "кабель") for i in range(6)]  # one document near angle 0
    far = [(d, 1.5 + 0.01 * i, "провод") for i, d in enumerate("EFG")]  # three near pi/2
    store = Counted(4)
    store.upsert([f"{d}#{n}" for n, (d, _, _) in enumerate(near + far)],
                 np.array([[np.cos(a), np.sin(a), 0, 0] for _, a, _ in near + far], np.float32),
                 [{"doc_id": d, "text": w} for d, _, w in near + far])
    q = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    terms = [["кабел"], ["провод"]]
    for config, check in ((SearchConfig(k=2, mode=mode, fetch_k=2, per_document=1), None),  # type: ignore[arg-type]
                          (SearchConfig(k=2, mode=mode, fetch_k=2),  # type: ignore[arg-type]
                           lambda h: h.id not in ("A#0", "A#1"))):
        alone = [search_vectors(store, q[i : i + 1], config, terms=terms[i : i + 1],
                                check=check)[0] for i in range(2)]
        store.rows.clear()
        both = search_vectors(store, q, config, terms=terms, check=check)
        assert [[h.id for h in x] for x in both] == [[h.id for h in x] for x in alone]
        assert len({h.payload["doc_id"] for h in both[1]} - {"A"}) == 2
        kinds = 2 if mode == "hybrid" else 1  # the vector and the word searches
        # the whole batch once per kind of search, then only the query short of hits
        assert store.rows.count(2) == kinds and set(store.rows) == {1, 2}, (
            mode, check, store.rows)


@pytest.mark.parametrize("backend", ["memory", "lancedb"])
def test_equal_scores_come_in_the_order_of_their_ids(tiny, tmp_path, backend: str) -> None:
    """A review's: equal scores (duplicate texts: equal cosines and equal BM25) came in the
    memory store's order of insertion and in LanceDB's own, so the stores' word rankings, and
    the hybrid rankings that fuse their ranks, differed. Ties go by id on every store, the
    cut at k included."""
    config = (StoreConfig(backend="memory") if backend == "memory"
              else StoreConfig(uri=str(tmp_path / "kb")))
    with Index.create_or_open(tiny, IndexConfig(config)) as ix:
        ix.add_texts(["медный кабель 4417"] * 3 + ["другой текст"], ids=["d9", "d1", "d5", "x"])
        for mode in ("vector", "text", "hybrid"):
            (hits,) = ix.search("медный кабель 4417", SearchConfig(k=2, mode=mode))
            assert [h.id for h in hits] == ["d1#0", "d5#0"], mode


def test_an_empty_query_is_refused_before_anything_is_embedded(catalog, tmp_path,
                                                                monkeypatch) -> None:
    """A review's: the CLI refused an empty query, the Python API embedded it and returned
    arbitrary neighbours (vector mode) or nothing (text mode), without a word."""
    from smysl.toolkit.index import search_words

    monkeypatch.setattr(catalog, "embed_queries", lambda *a, **k: pytest.fail("embedded"))
    for mode in ("vector", "text", "hybrid"):
        with pytest.raises(ValueError, match=r"a query is empty \(query 1\)"):
            catalog.search(["кабель", "  "], SearchConfig(mode=mode))
    with pytest.raises(ValueError, match=r"a query is empty \(query 0\)"):
        search_words(StoreConfig(uri=str(tmp_path / "kb")), [""], SearchConfig(mode="text"))
