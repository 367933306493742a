"""Search and RAG retrieval: exact search equals a numpy brute force, instructions, MMR, output."""

from __future__ import annotations

import json

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
