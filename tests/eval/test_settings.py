"""What decides the scores and what tells runs apart: the cache key, the embedder's settings in
the reports, labels of two setups of one model, comparability of compared runs, instruction keys,
degenerate vectors and Matryoshka sizes below a model's minimum.

A fake embedder (vectors from a hash of the first ``max_tokens`` characters of each formatted
text) keeps these fast; the end-to-end ones need the shared datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import DATASETS

from smysl.base import BaseEmbedder, ModelInfo, Progress
from smysl.cli import main
from smysl.eval import EvalConfig, evaluate_model
from smysl.eval import metrics as m
from smysl.eval.data import load_xquad
from smysl.eval.embeddings import ModelEmbeddings
from smysl.eval.report import comparability, load_runs, run_labels, write_reports
from smysl.eval.tasks import select
from smysl.rerank import BaseReranker

needs_data = pytest.mark.skipif(not (DATASETS / "stsb").is_dir(), reason="no shared datasets")


class Hashed(BaseEmbedder):
    """64 dimensions (Matryoshka from 32 unless ``matryoshka=False``); each row a function of
    the first ``max_tokens`` characters of the formatted text; one fingerprint whatever the
    settings, as a checkpoint's is whatever ``--max-tokens`` says."""

    name = "hashed"
    backend = "fake"
    dimensions = 64

    def __init__(self, *, max_tokens: int | None = None, quantization: str | None = None,
                 matryoshka: bool = True) -> None:
        self.max_tokens = max_tokens
        self.quantization = quantization
        self.min_dimensions = 32 if matryoshka else 64
        self.texts = 0

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        self.texts += len(texts)
        rows = []
        for t in texts:
            seed = hashlib.sha1(t[: self.max_tokens].encode()).digest()[:8]
            rows.append(np.random.default_rng(int.from_bytes(seed, "little")).standard_normal(64))
        return np.asarray(rows, dtype=np.float32)

    def info(self) -> ModelInfo:
        return dataclasses.replace(super().info(), dtype="float32", device="cpu",
                                   quantization=self.quantization, fingerprint=self.fingerprint())

    def fingerprint(self) -> str:
        return "0123456789abcdef0123456789abcdef"


class Flat(BaseReranker):
    """Scores every pair the same."""

    name = "flat"
    backend = "fake"

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        return np.zeros(len(documents))


def _cfg(tmp_path: Path, **kw: object) -> EvalConfig:
    base: dict[str, object] = dict(models=("hashed",), tasks=("sts-en",), limit=8,
                                   out_dir=tmp_path / "out", progress=False, plots=False)
    base.update(kw)
    return EvalConfig(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cache key
def test_cache_is_not_reused_across_max_tokens(tmp_path: Path) -> None:
    texts = ["a long enough sentence to be cut", "another one, also long enough"]
    first = ModelEmbeddings(Hashed(max_tokens=40), cache_dir=tmp_path, progress=False)
    first.ensure(texts, None)
    cut = ModelEmbeddings(Hashed(max_tokens=4), cache_dir=tmp_path, progress=False)
    cut.ensure(texts, None)
    assert cut.throughput.texts == 2  # the same fingerprint, another truncation: embedded
    assert not np.allclose(cut.get(texts, None), first.get(texts, None))
    same = ModelEmbeddings(Hashed(max_tokens=40), cache_dir=tmp_path, progress=False)
    same.ensure(texts, None)
    assert same.throughput.texts == 0
    assert np.array_equal(same.get(texts, None), first.get(texts, None))


# --------------------------------------------------------------------------- settings, labels
@needs_data
def test_reports_keep_the_embedder_settings_and_tell_two_setups_apart(tmp_path: Path) -> None:
    plain = evaluate_model(Hashed(), _cfg(tmp_path))
    int8 = evaluate_model(Hashed(quantization="int8"), _cfg(tmp_path))
    assert plain.info is not None and int8.info is not None
    assert (plain.info["dtype"], plain.info["quantization"], plain.info["device"]) == (
        "float32", None, "cpu")
    assert int8.info["quantization"] == "int8"
    assert int8.info["fingerprint"] == "0123456789abcdef0123456789abcdef"
    assert plain.protocol["limit"] == 8 and plain.protocol["clustering_sample_size"] == 16_384
    runs = [plain.to_json(), int8.to_json()]
    assert run_labels(runs) == ["hashed (float32)", "hashed (int8)"]
    assert run_labels([runs[0], runs[0]]) == ["hashed #1", "hashed #2"]
    assert run_labels(runs[:1]) == ["hashed"]  # no collision: the name alone
    # one checkpoint under its repo id and its alias (the docs' --compare example): a
    # review's, the columns said nothing of which was int8
    named = [{**runs[0], "model": "Qwen/Qwen3-Embedding-0.6B"},
             {**runs[1], "model": "qwen3-embedding:0.6b"}]
    assert run_labels(named) == ["Qwen/Qwen3-Embedding-0.6B (float32)",
                                 "qwen3-embedding:0.6b (int8)"]
    # one quantisation computing in two dtypes (a Q8_0 GGUF in float32 and bfloat16)
    q8 = [{**runs[1], "info": {**runs[1]["info"], "quantization": "Q8_0", "dtype": dt}}
          for dt in ("float32", "bfloat16")]
    assert run_labels(q8) == ["hashed (float32)", "hashed (bfloat16)"]
    # the docs' example: an int8 run compared with the earlier one, each labelled
    cfg = _cfg(tmp_path / "a")
    write_reports([plain], cfg)
    stored = json.loads((cfg.out_dir / "results.json").read_text())  # type: ignore[operator]
    assert stored["models"][0]["info"]["dtype"] == "float32"
    later = _cfg(tmp_path / "b", compare=(cfg.out_dir,))
    write_reports([int8], later)
    summary = (later.out_dir / "summary.md").read_text()  # type: ignore[operator]
    assert "| task | metric | hashed (int8) | hashed (float32) |" in summary
    assert "## hashed (int8)" in summary and "## hashed (float32)" in summary


@needs_data
def test_a_compared_subset_run_is_flagged(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    subset = _cfg(tmp_path / "subset", limit=8)
    write_reports([evaluate_model(Hashed(), subset)], subset)
    # results written before the per-model record: the limit comes from the file's meta
    path = subset.out_dir / "results.json"  # type: ignore[operator]
    stored = json.loads(path.read_text())
    for model in stored["models"]:
        del model["protocol"], model["info"]
    stored["meta"] = {k: stored["meta"][k] for k in (
        "created", "data_dir", "limit", "seed", "n_experiments", "samples_per_label",
        "reranker", "rerank_top", "rerank_queries")}
    path.write_text(json.dumps(stored))
    assert load_runs(subset.out_dir)[0]["protocol"]["limit"] == 8  # type: ignore[arg-type]

    full = _cfg(tmp_path / "full", limit=None, compare=(subset.out_dir,))
    with caplog.at_level(logging.WARNING, logger="smysl.eval.report"):
        write_reports([evaluate_model(Hashed(quantization="int8"), full)], full)
    summary = (full.out_dir / "summary.md").read_text()  # type: ignore[operator]
    assert ("**Not comparable: runs on different data (--limit): hashed (int8) all of it, "
            "hashed limit=8.**") in summary
    assert "Not comparable" in caplog.text
    # settings the old file did not record are named, not guessed
    assert ("**hashed did not record max_iter, clustering_bootstraps, clustering_sample_size, "
            "retrieval_ks, use_instructions, instructions (older results): they may "
            "differ.**") in summary
    assert "| task | metric | hashed (int8) | hashed |" in summary


def test_runs_that_compare_give_no_warning() -> None:
    run = {"model": "m", "protocol": EvalConfig(models=("m",)).protocol()}
    assert comparability([run, dict(run)]) == []
    one = {"model": "m", "protocol": EvalConfig(models=("m",), limit=5).protocol()}
    assert comparability([one]) == [
        "Subset run (limit=5): not comparable with published scores."]
    # the instruction overrides decide the scores too (they were not recorded); their order
    # does not
    a = EvalConfig(models=("m",), instructions={"sts-en": "x", "xquad-en": "y"}).protocol()
    b = EvalConfig(models=("m",), instructions={"xquad-en": "y", "sts-en": "x"}).protocol()
    assert comparability([{"model": "m", "protocol": a}, {"model": "m", "protocol": b}]) == []
    lines = comparability([{"model": "m", "protocol": a}, run])
    assert len(lines) == 1 and lines[0].startswith("Runs differ in instructions"), lines
    # a review's: the same protocol on another --data folder (200 of the 1,379 pairs) was
    # set side by side without a word
    full = {**run, "tasks": [{"task": "sts-en", "size": {"pairs": 1379}}]}
    part = {**run, "tasks": [{"task": "sts-en", "size": {"pairs": 200}}]}
    assert comparability([full, dict(full)]) == []
    assert comparability([full, part]) == [
        "Not comparable: sts-en was scored on different data: m #1 1,379 pairs, m #2 200 "
        "pairs."]
    # rows a classification's sampling picks depend on its seed, not on the data
    a = {**run, "tasks": [{"task": "intents-ru", "size": {"train_used": 544, "test": 5000}}]}
    b = {**run, "tasks": [{"task": "intents-ru", "size": {"train_used": 540, "test": 5000}}]}
    assert comparability([a, b]) == []


# --------------------------------------------------------------------------- instructions
def test_an_instruction_for_no_task_is_refused_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = Hashed()
    with pytest.raises(ValueError, match=r"unknown task 'xquad'.*xquad-ru, "):
        evaluate_model(model, _cfg(tmp_path, instructions={"xquad": "Find it"}),
                       tasks=select(["sts-en"]))
    assert model.texts == 0
    # the CLI refuses it before loading the model (st:x would fail to load otherwise)
    assert main(["eval", "--model", "st:x", "--instruction", "stsen=Similar",
                 "--out", str(tmp_path)]) == 2
    assert "unknown task 'stsen'" in capsys.readouterr().err


# --------------------------------------------------------------------------- degenerate runs
@needs_data
def test_identical_vectors_and_a_nan_main_score_are_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 5 characters: every text is cut to the same "Instr" of its instruction prefix
    cfg = _cfg(tmp_path)
    with caplog.at_level(logging.WARNING, logger="smysl.eval.runner"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's ConstantInputWarning: the NaN itself
        result = evaluate_model(Hashed(max_tokens=5), cfg)
    (task,) = result.tasks
    assert np.isnan(task.main(64))
    assert task.warnings == [
        "all 8 texts1 vectors are identical (texts cut to the same tokens by --max-tokens?)",
        "all 8 texts2 vectors are identical (texts cut to the same tokens by --max-tokens?)",
        "main score cosine_spearman is NaN at 64 d"]
    assert "main score cosine_spearman is NaN" in caplog.text
    write_reports([result], cfg)
    summary = (cfg.out_dir / "summary.md").read_text()  # type: ignore[operator]
    assert "## Warnings" in summary
    assert "- hashed sts-en: main score cosine_spearman is NaN at 64 d" in summary
    healthy = evaluate_model(Hashed(), cfg)
    assert healthy.tasks[0].warnings == []


@needs_data
def test_a_subset_too_small_for_its_labels_is_warned(tmp_path: Path) -> None:
    """A review's: ``--limit 40`` on the intents (68 labels) clustered 40 texts of 40 labels,
    and a random model scored V-measure 1.0000; classification had test labels no training
    text carried. Both now carry a warning, in the summary too."""
    cfg = _cfg(tmp_path, tasks=("intents-clustering-ru", "intents-ru"), limit=40)
    result = evaluate_model(Hashed(), cfg)
    clustering, classification = result.tasks
    assert clustering.warnings == [
        "the 40 texts hold 40 labels, fewer than two texts a label: the V-measure says little "
        "of the model (a larger --limit)"]
    (line,) = classification.warnings
    assert "test labels have no training text in this subset (--limit)" in line, line
    write_reports([result], cfg)
    summary = (cfg.out_dir / "summary.md").read_text()  # type: ignore[operator]
    assert "- hashed intents-clustering-ru: the 40 texts hold 40 labels" in summary
    full = evaluate_model(Hashed(), _cfg(tmp_path, tasks=("intents-clustering-ru",),
                                         limit=400))
    assert full.tasks[0].warnings == []


# --------------------------------------------------------------------------- Matryoshka sizes
def test_sizes_below_a_matryoshka_minimum_are_refused_before_embedding(tmp_path: Path) -> None:
    model = Hashed()
    with pytest.raises(ValueError, match=r"hashed: dimensions must be in 32\.\.64 .* got 16"):
        evaluate_model(model, _cfg(tmp_path, dimensions=(16, 48)))
    assert model.texts == 0
    # a model not trained for Matryoshka: any smaller size, as a study of naive truncation
    result = evaluate_model(Hashed(matryoshka=False), _cfg(tmp_path, dimensions=(16, 128)),
                            tasks=[])
    assert result.evaluated_dimensions == [16, 64] and result.skipped_dimensions == [128]


# --------------------------------------------------------------------------- first stage ties
@needs_data
def test_reranking_first_stage_breaks_ties_as_the_retrieval_task(tmp_path: Path) -> None:
    # every vector the same: the whole ranking is ties, decided by doc id (descending)
    cfg = _cfg(tmp_path, tasks=("xquad-en",), limit=30, rerank_top=3, reranker="flat")
    result = evaluate_model(Hashed(max_tokens=0), cfg, reranker=Flat())
    (task,), (rerank,) = result.tasks, result.reranking
    for metric in ("ndcg_at_3", "mrr_at_3", "map_at_3", "recall_at_1", "recall_at_3"):
        assert rerank.before[metric] == task.scores[64][metric]
    data = load_xquad(cfg.data_dir, "en", limit=30)
    order = sorted(data.doc_ids, reverse=True)
    assert rerank.rank_before == [
        r if (r := m.first_relevant_rank(order, data.qrels[q])) and r <= 3 else None
        for q in data.query_ids]


# --------------------------------------------------------------------------- clustering
def test_clustering_default_follows_mteb_max_documents_per_cluster() -> None:
    assert EvalConfig(models=("m",)).clustering_sample_size == 16_384
    rng = np.random.default_rng(0)
    labels = [f"l{i % 5}" for i in range(300)]
    x = rng.standard_normal((300, 8)) + np.eye(8)[[i % 5 for i in range(300)]] * 2
    got = m.clustering_scores(x, labels, n_bootstrap=2)
    # MTEB's _evaluate_clustering_bootstrapped with its defaults, written out
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    state, y = random.Random(42), np.asarray(labels)
    km = MiniBatchKMeans(n_clusters=5, batch_size=512, init="k-means++", n_init=1,
                         random_state=42)
    want = []
    for _ in range(2):
        rows = state.choices(range(300), k=16_384)
        want.append(float(v_measure_score(y[rows], km.fit_predict(x[rows]))))
    assert got["v_measures"] == want


def test_one_model_or_task_may_be_given_bare_and_a_limit_of_one_is_refused() -> None:
    """``EvalConfig(models="st:...")`` iterated the string ("'s' is not a model directory");
    ``limit=1`` failed in scipy ("`x` and `y` must have length at least 2")."""
    cfg = EvalConfig(models="st:all-minilm-l6-v2", tasks="sts-en", dimensions=64,
                     retrieval_ks=[1, 10], compare="runs/a")  # type: ignore[arg-type]
    assert cfg.models == ("st:all-minilm-l6-v2",) and cfg.tasks == ("sts-en",)
    assert cfg.dimensions == (64,) and cfg.retrieval_ks == (1, 10)
    assert cfg.compare == (Path("runs/a"),)
    with pytest.raises(ValueError, match="limit must be at least 2, got 1"):
        EvalConfig(models=("m",), limit=1)
