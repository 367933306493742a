"""Reranking tasks (issue 15): the embedder's top candidates reranked, scored before and after.

Metrics on hand-made rankings with a fake reranker that puts the relevant document first; the
whole task end to end with the tiny random embedder and a tiny random Qwen3-Reranker on a few
XQuAD queries; task selection; score reuse within a run and across runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import DATASETS

from smysl.eval import EvalConfig, evaluate_model
from smysl.eval import metrics as m
from smysl.eval.data import load_xquad
from smysl.eval.report import load_runs, write_reports
from smysl.eval.rerank import (
    RerankScores,
    rerank_candidates,
    select_all,
    spread,
)
from smysl.eval.tasks import QA
from smysl.rerank import BaseReranker

needs_data = pytest.mark.skipif(not (DATASETS / "xquad").is_dir(), reason="no shared datasets")


class GoldFirst(BaseReranker):
    """Scores 1 for a query's relevant documents (``relevant[query]``, texts), 0.1 for the
    others; records each call."""

    name = "gold-first"
    backend = "fake"

    def __init__(self, relevant: dict[str, set[str]], *, instruction_aware: bool = True) -> None:
        self.relevant = relevant
        self.instruction_aware = instruction_aware
        self.calls: list[tuple[str, list[str], str | None, bool]] = []

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        self.calls.append((query, list(documents), instruction, truncate))
        gold = self.relevant.get(query, set())
        return np.array([1.0 if d in gold else 0.1 for d in documents])


class Fingerprinted(GoldFirst):
    def fingerprint(self) -> str:
        return "0123456789abcdef0123"


# --------------------------------------------------------------------------- hand-made rankings
def _hand_made() -> tuple[list[str], list[str], list[list[str]], dict[str, str],
                          dict[str, set[str]]]:
    """Three queries with 20 candidates each: the relevant document at rank 3, at rank 12
    (outside the top 10), and not among the candidates at all."""
    cands = [[f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)],
             [f"c{i}" for i in range(20)]]
    qrels = {"q1": {"a2"}, "q2": {"b11"}, "q3": {"c99"}}
    text = {d: f"text of {d}" for row in cands for d in row}
    return ["q1", "q2", "q3"], ["one?", "two?", "three?"], cands, text, qrels


def test_gold_first_reranker_gives_one_where_the_gold_is_a_candidate() -> None:
    qids, queries, cands, text, qrels = _hand_made()
    fake = GoldFirst({"one?": {"text of a2"}, "two?": {"text of b11"}})
    after, relevant, other = rerank_candidates(RerankScores(fake), qids, queries, cands, text,
                                               qrels, "Find it")
    # one rerank call per query with all its candidates in first-stage order, truncating
    assert [(q, docs) for q, docs, _, _ in fake.calls] == [
        (q, [text[c] for c in row]) for q, row in zip(queries, cands, strict=True)]
    assert all(i == "Find it" and t for _, _, i, t in fake.calls)
    assert after[0][0] == "a2" and after[1][0] == "b11" and "c99" not in after[2]
    # ties keep the first stage's order
    assert after[0][1:] == [c for c in cands[0] if c != "a2"]
    assert relevant == [1.0, 1.0] and len(other) == 58 and set(other) == {0.1}

    ks = (1, 10, 20)
    before = m.ranking_scores(cands, qids, qrels, ks)
    # by hand: q1 relevant at rank 3, q2 at rank 12, q3 missing
    assert before["ndcg_at_10"] == pytest.approx((1 / math.log2(4)) / 3)
    assert before["mrr_at_10"] == pytest.approx((1 / 3) / 3)
    assert before["mrr_at_20"] == pytest.approx((1 / 3 + 1 / 12) / 3)
    assert before["recall_at_20"] == pytest.approx(2 / 3)
    for qid, row in zip(qids[:2], after[:2], strict=True):  # the gold is a candidate: perfect
        one = m.ranking_scores([row], [qid], qrels, ks)
        assert one["ndcg_at_10"] == one["mrr_at_10"] == one["ndcg_at_1"] == 1.0
    three = m.ranking_scores([after[2]], ["q3"], qrels, ks)  # missing stays missing
    assert three["ndcg_at_10"] == three["mrr_at_10"] == three["recall_at_20"] == 0.0
    whole = m.ranking_scores(after, qids, qrels, ks)
    assert whole["ndcg_at_10"] == whole["mrr_at_10"] == pytest.approx(2 / 3)
    assert whole["recall_at_20"] == before["recall_at_20"]  # reranking cannot add candidates
    assert [m.first_relevant_rank(r, qrels[q]) for q, r in zip(qids, cands, strict=True)] == [
        3, 12, None]


def test_ranking_scores_ideal_counts_relevant_documents_outside_the_list() -> None:
    # two relevant documents, one ranked first, the other not among the candidates
    out = m.ranking_scores([["x", "y"]], ["q"], {"q": {"x", "z"}}, ks=(10,))
    assert out["ndcg_at_10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert out["recall_at_10"] == 0.5 and out["mrr_at_10"] == 1.0 and out["map_at_10"] == 0.5


def test_scores_are_reused_within_a_run_and_across_runs_with_a_fingerprint(
        tmp_path: Path) -> None:
    docs = ["d1", "d2", "d1", "d3"]  # a document given twice is scored once
    fake = Fingerprinted({"q": {"d2"}})
    store = RerankScores(fake, cache_dir=tmp_path)
    first = store.scores("q", docs, None)[0]
    assert first.tolist() == [0.1, 1.0, 0.1, 0.1] and store.pairs == 3
    assert store.scores("q", docs[:2], None)[0].tolist() == [0.1, 1.0] and store.pairs == 3
    store.scores("q", docs[:1], "other instruction")  # another instruction: scored afresh
    assert store.pairs == 4 and len(fake.calls) == 2
    store.save()
    again = RerankScores(Fingerprinted({"q": {"d2"}}), cache_dir=tmp_path)
    assert again.scores("q", docs, None)[0].tolist() == first.tolist() and again.pairs == 0
    assert again.scores("q", docs[:1], "other instruction")[0].tolist() == [0.1]
    assert again.pairs == 0 and again.seconds == 0.0
    # another fingerprint (other weights, other settings) never reuses those scores
    other = RerankScores(GoldFirst({"q": {"d2"}}), cache_dir=tmp_path)
    other.scores("q", docs, None)
    assert other.pairs == 3


class Saturated(Fingerprinted):
    """P("yes") saturated at 1.0 for every document; the keys (logit differences) still
    rank them: the last document best, as a Qwen3-Reranker sure of all of them."""

    def _scores_and_keys(self, query: str, documents: list[str], *, instruction: str | None,
                         truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((query, list(documents), instruction, truncate))
        return np.ones(len(documents)), np.arange(len(documents), dtype=np.float64) + 20

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        return self._scores_and_keys(query, documents, instruction=instruction,
                                     truncate=truncate)[0]


def test_saturated_scores_rank_by_the_rerankers_keys_cached_or_not(tmp_path: Path) -> None:
    """Ranked by the scores alone, every confident document tied and the first stage's order
    came back: the evaluation ranked otherwise than ``rerank`` and the server."""
    qids, queries, cands, text, qrels = _hand_made()
    fake = Saturated({})
    want = [[cands[0][i] for i, _ in fake.rerank(queries[0], [text[c] for c in cands[0]])]]
    assert want[0][0] == "a19"
    store = RerankScores(fake, cache_dir=tmp_path)
    after, relevant, _ = rerank_candidates(store, qids[:1], queries[:1], cands[:1], text, qrels,
                                           None)
    assert after == want and relevant == [1.0]
    store.save()
    cached = RerankScores(Saturated({}), cache_dir=tmp_path)
    after, _, _ = rerank_candidates(cached, qids[:1], queries[:1], cands[:1], text, qrels, None)
    assert after == want and cached.pairs == 0
    # a cache written before the keys were kept is scored again, not ranked by its scores
    (path,) = tmp_path.rglob("*.npz")
    with np.load(path) as z:
        np.savez(path, keys=z["keys"], scores=z["scores"])
    old = RerankScores(Saturated({}), cache_dir=tmp_path)
    after, _, _ = rerank_candidates(old, qids[:1], queries[:1], cands[:1], text, qrels, None)
    assert after == want and old.pairs == 20


# --------------------------------------------------------------------------- selection
def test_reranking_tasks_run_only_with_a_reranker() -> None:
    tasks, reranks = select_all((), reranker=False)
    assert reranks == [] and len(tasks) == 12
    tasks, reranks = select_all((), reranker=True)
    assert [r.name for r in reranks] == ["xquad-ru-rerank", "xquad-en-rerank"]
    tasks, reranks = select_all(("xquad-ru", "sts-en"), reranker=True)
    assert [t.name for t in tasks] == ["xquad-ru", "sts-en"]
    assert [r.name for r in reranks] == ["xquad-ru-rerank"]
    tasks, reranks = select_all(("rerank",), reranker=True)
    assert tasks == [] and len(reranks) == 2
    tasks, reranks = select_all(("xquad-en-rerank",), reranker=True)
    assert tasks == [] and [r.retrieval for r in reranks] == ["xquad-en"]
    # a prefix brings the retrieval tasks and, with a reranker, their reranking tasks
    assert len(select_all(("xquad",), reranker=True)[1]) == 2
    assert select_all(("xquad",), reranker=False)[1] == []
    with pytest.raises(ValueError, match="needs a reranker"):
        select_all(("rerank",), reranker=False)
    with pytest.raises(ValueError, match="no selected task reranks"):
        select_all(("sts",), reranker=True)
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*xquad-en-rerank"):
        select_all(("nope",), reranker=True)
    assert spread(10, 3) == [0, 4, 9] and spread(5, None) == spread(5, 9) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- end to end
def _cfg(tmp_path: Path, **kw: object) -> EvalConfig:
    base: dict[str, object] = dict(models=("tiny",), tasks=("xquad-ru", "xquad-en"), limit=8,
                                   dimensions=(32,), out_dir=tmp_path / "out", progress=False,
                                   reranker="tiny-reranker")
    base.update(kw)
    return EvalConfig(**base)  # type: ignore[arg-type]


@needs_data
def test_end_to_end_with_the_tiny_embedder_and_reranker(tiny, tiny_reranker,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = evaluate_model(tiny, cfg, reranker=tiny_reranker)
    assert [t.task for t in result.tasks] == ["xquad-ru", "xquad-en"]
    assert [r.task for r in result.reranking] == ["xquad-ru-rerank", "xquad-en-rerank"]
    # the first stage reuses the retrieval tasks' embeddings: nothing embedded twice
    plain = evaluate_model(tiny, replace(cfg, reranker=None))
    assert plain.reranking == [] and result.texts_embedded == plain.texts_embedded
    for task, r in zip(result.tasks, result.reranking, strict=True):
        # "before" is the retrieval task's own ranking at the native size
        for metric in ("ndcg_at_10", "mrr_at_10", "recall_at_1"):
            assert r.before[metric] == pytest.approx(task.scores[64][metric], abs=1e-12)
        assert (r.reranker, r.backend, r.instruction, r.query_instruction) == (
            tiny_reranker.name, "qwen3", QA, QA)
        assert r.size == {"queries": 8, "of_queries": 8, "docs": 5, "pairs": 40}
        assert r.candidates == 50
        assert r.pairs_scored == 40 and r.pairs_per_s and r.pairs_per_s > 0
        assert r.recall == 1.0  # 5 paragraphs, all candidates
        assert 0 <= r.after["ndcg_at_10"] <= 1 and r.relevant_score_mean is not None
        # the reranked order is the reranker's own, query by query
        data = load_xquad(cfg.data_dir, r.language, r.language, limit=8)
        q = tiny.embed(data.queries, instruction=QA)
        d = tiny.embed(data.docs)
        for i, cands in enumerate(m.top_documents(q, d, data.doc_ids, 50)):
            ranked = tiny_reranker.rerank(data.queries[i], [data.docs[data.doc_ids.index(c)]
                                                            for c in cands],
                                          instruction=QA, truncate=True)
            gold = data.qrels[data.query_ids[i]]
            assert r.rank_after[i] == m.first_relevant_rank([cands[j] for j, _ in ranked], gold)
            assert r.rank_before[i] == m.first_relevant_rank(cands, gold)
    assert result.reranker is not None and result.reranker["backend"] == "qwen3"
    assert result.reranker["device"] == "cpu"

    files = write_reports([result], cfg)
    out = cfg.out_dir
    assert out is not None
    task = json.loads(next(p for p in files if p.name == "xquad-ru-rerank.json").read_text())
    assert task["model"] == result.model and task["candidates"] == 50
    assert {"before", "after", "recall_at_candidates", "pairs_scored", "rerank_seconds",
            "pairs_per_s", "rank_before", "rank_after", "reranker", "backend"} <= set(task)
    assert task["after"]["ndcg_at_10"] == result.reranking[0].after["ndcg_at_10"]
    runs = load_runs(out)
    assert [r["task"] for r in runs[0]["reranking"]] == ["xquad-ru-rerank", "xquad-en-rerank"]
    assert runs[0]["reranker"]["name"] == tiny_reranker.name
    summary = (out / "summary.md").read_text()
    assert "## Reranking" in summary and "| recall@50 |" in summary
    r0 = result.reranking[0]
    assert (f"| xquad-ru-rerank | {result.model} | {tiny_reranker.name} | 8 | "
            f"{r0.before['ndcg_at_10']:.4f} → {r0.after['ndcg_at_10']:.4f}") in summary
    assert (out / "reranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run without reranking has no section and no plot
    cfg2 = _cfg(tmp_path / "plain", reranker=None)
    write_reports([plain], cfg2)
    assert cfg2.out_dir is not None
    assert "## Reranking" not in (cfg2.out_dir / "summary.md").read_text()
    assert not (cfg2.out_dir / "reranking.png").exists()


@needs_data
def test_missing_gold_stays_missing_and_scores_are_shared_between_models(  # type: ignore[no-untyped-def]
        tiny, tmp_path: Path) -> None:
    # 12 of 25 paragraphs by a random embedder: some queries keep their gold, some lose it
    cfg = _cfg(tmp_path, tasks=("rerank",), limit=150, rerank_top=12, rerank_queries=8,
               instructions={"xquad-en-rerank": "Find the paragraph"},
               cache_dir=tmp_path / "cache")  # the paragraphs embedded once, not 4 times
    relevant: dict[str, set[str]] = {}
    for lang in ("ru", "en"):
        data = load_xquad(cfg.data_dir, lang, lang, limit=150)
        text = dict(zip(data.doc_ids, data.docs, strict=True))
        for qid, query in zip(data.query_ids, data.queries, strict=True):
            relevant.setdefault(query, set()).update(text[d] for d in data.qrels[qid])
    fake = GoldFirst(relevant)
    store = RerankScores(fake)
    result = evaluate_model(tiny, cfg, reranker=fake, rerank_scores=store)
    assert result.tasks == [] and len(result.reranking) == 2
    # reranking alone, with a Matryoshka sweep asked: reports without the per-task plots
    names = {p.name for p in write_reports([result], cfg)}
    assert {"reranking.png", "xquad-en-rerank.json", "summary.md"} <= names
    assert "quality_vs_dimensions.png" not in names
    for r in result.reranking:
        assert r.size == {"queries": 8, "of_queries": 150, "docs": 25, "pairs": 96}
        assert [b is None for b in r.rank_before] == [a is None for a in r.rank_after]
        assert all(a == 1 for a in r.rank_after if a is not None)
        assert r.recall == pytest.approx(np.mean([b is not None for b in r.rank_before]))
        # gold first wherever it is a candidate: nDCG@10 = MRR@10 = recall@12
        assert r.after["ndcg_at_10"] == r.after["mrr_at_10"] == pytest.approx(r.recall)
        assert r.after["ndcg_at_10"] > r.before["ndcg_at_10"]
        assert set(r.after) == set(r.before) == {
            f"{k}_at_{n}" for k in ("ndcg", "mrr", "recall", "map")
            for n in (1, 3, 5, 10, 12)}
    ranks = [b for r in result.reranking for b in r.rank_before]
    assert None in ranks and any(b is not None for b in ranks)
    assert [r.instruction for r in result.reranking] == [QA, "Find the paragraph"]
    assert len(fake.calls) == 16 and all(len(docs) == 12 for _, docs, _, _ in fake.calls)
    # a second embedder in the same run reuses every score it can
    again = evaluate_model(tiny, cfg, reranker=fake, rerank_scores=store)
    assert [r.pairs_scored for r in again.reranking] == [0, 0]
    assert again.reranking[0].after == result.reranking[0].after
    # a reranker without instructions gets none; --no-instructions gives none either
    blind = GoldFirst(relevant, instruction_aware=False)
    assert all(r.instruction is None
               for r in evaluate_model(tiny, cfg, reranker=blind).reranking)
    off = evaluate_model(tiny, _cfg(tmp_path, tasks=("xquad-en-rerank",), limit=150,
                                    rerank_top=5, rerank_queries=2, use_instructions=False,
                                    cache_dir=tmp_path / "cache"), reranker=fake)
    assert off.reranking[0].instruction is None and off.reranking[0].query_instruction is None


@needs_data
def test_evaluate_model_loads_the_configs_reranker(tiny, tiny_reranker, tiny_reranker_dir,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    """A review's: `evaluate_model(embedder, EvalConfig(..., reranker=DIR))` reranked nothing
    and said nothing; the config's reranker is now loaded for the call."""
    cfg = _cfg(tmp_path, tasks=("xquad-en",), reranker=str(tiny_reranker_dir))
    given = evaluate_model(tiny, cfg, reranker=tiny_reranker)
    loaded = evaluate_model(tiny, cfg)
    assert [r.task for r in loaded.reranking] == ["xquad-en-rerank"]
    assert loaded.reranking[0].after == given.reranking[0].after
    assert loaded.reranker is not None and loaded.reranker["load_seconds"] > 0


@needs_data
def test_scores_before_a_failure_are_kept(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A reranker (a paid API, say) failing at query 5: the pairs scored before were lost,
    --cache or not, and a rerun paid for them again. Now they are saved."""

    class FailsLate(Fingerprinted):
        def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                    truncate: bool) -> np.ndarray:
            if len(self.calls) == 4:
                raise RuntimeError("HTTP 503")
            return super()._scores(query, documents, instruction=instruction,
                                   truncate=truncate)

    cfg = _cfg(tmp_path, tasks=("xquad-en-rerank",), limit=150, rerank_top=5,
               rerank_queries=8, cache_dir=tmp_path / "cache")
    with pytest.raises(RuntimeError, match="503"):
        evaluate_model(tiny, cfg, reranker=FailsLate({}))
    fine = Fingerprinted({})
    evaluate_model(tiny, cfg, reranker=fine)
    assert len(fine.calls) == 4  # the first four queries came from the cache


def test_a_rerankers_instruction_expands_a_preset(tiny_reranker) -> None:  # type: ignore[no-untyped-def]
    """`--instruction xquad-en-rerank=qa` sent the word "qa" to the reranker, while the
    embedder's `xquad-en=qa` was the preset's sentence (and the key was checked as one)."""
    from smysl.eval import EvalConfig
    from smysl.eval.rerank import RERANK_TASKS, reranker_instruction
    from smysl.prompts import TASK_PRESETS

    task = RERANK_TASKS["xquad-en-rerank"]
    # blanks are no instruction, as for the embedders (they went to the reranker as they were)
    for given, want in (("qa", TASK_PRESETS["qa"]), ("Find it", "Find it"), ("", None),
                        ("   ", None)):
        cfg = EvalConfig(models=("m",), instructions={task.name: given})
        assert reranker_instruction(tiny_reranker, cfg, task) == want, given


def test_a_reranking_score_missing_in_a_compared_run_is_a_dash() -> None:
    """A reranking task that scored NaN (written to results.json as null) crashed the report
    of a later run comparing against it (`--compare`): no summary.md was written."""
    from smysl.eval.report import reranking_markdown

    row = {"task": "xquad-ru-rerank", "reranker": "r", "backend": "smysl", "instruction": None,
           "candidates": 50, "size": {"queries": 0}, "recall_at_candidates": None,
           "before": {"ndcg_at_10": None, "mrr_at_10": None},
           "after": {"ndcg_at_10": None, "mrr_at_10": 0.5},
           "pairs_scored": 0, "rerank_seconds": 0.0, "pairs_per_s": None}
    lines = reranking_markdown([{"model": "m", "reranking": [row]}], ["m"])  # type: ignore[list-item]
    assert "| – → – | – → 0.5000 |" in "\n".join(lines)
