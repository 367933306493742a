"""End to end on a small subset with the tiny random Qwen3 model (instruction-aware, Matryoshka)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import DATASETS

import smysl
from smysl.eval import TASKS, EvalConfig, evaluate_model
from smysl.eval import metrics as m
from smysl.eval.data import load_sts
from smysl.eval.report import load_runs, write_reports
from smysl.eval.tasks import QA, SIMILAR, select

pytestmark = pytest.mark.skipif(not (DATASETS / "stsb").is_dir(), reason="no shared datasets")


def _cfg(tmp_path: Path, **kw: object) -> EvalConfig:
    base: dict[str, object] = dict(
        models=("tiny",), dimensions=(32, 48, 128), limit=16, out_dir=tmp_path / "out",
        progress=False, n_experiments=2, clustering_bootstraps=2, clustering_sample_size=64)
    base.update(kw)
    return EvalConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sweep(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = _cfg(tmp, cache_dir=tmp / "cache")
    return cfg, evaluate_model(tiny, cfg)


def test_every_task_scored_at_every_dimension(sweep) -> None:  # type: ignore[no-untyped-def]
    _, result = sweep
    assert result.evaluated_dimensions == [32, 48, 64] and result.skipped_dimensions == [128]
    assert [t.task for t in result.tasks] == list(TASKS)
    for t in result.tasks:
        for dim in (32, 48, 64):
            assert np.isfinite(t.main(dim)) and -1 <= t.main(dim) <= 1
    # random weights still rank a question's own paragraph above chance on a handful of docs
    assert result.texts_embedded > 0 and result.texts_per_s and result.tokens_per_s


def test_matryoshka_scores_equal_asking_the_model_for_fewer_dimensions(tiny, sweep) -> None:  # type: ignore[no-untyped-def]
    cfg, result = sweep
    pairs = load_sts(cfg.data_dir, "en", limit=cfg.limit)
    sts = next(t for t in result.tasks if t.task == "sts-en")
    for dim in (32, 48):
        a = tiny.embed(pairs.texts1, instruction=SIMILAR, dimensions=dim)
        b = tiny.embed(pairs.texts2, instruction=SIMILAR, dimensions=dim)
        want = m.sts_scores(a, b, pairs.gold)["cosine_spearman"]
        assert sts.scores[dim]["cosine_spearman"] == pytest.approx(want, abs=1e-6)
    assert sts.scores[32] != sts.scores[64]


def test_instructions_per_task_kind_and_overrides(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tasks = select(["sts-en", "xquad-en", "intents-en"])
    cfg = _cfg(tmp_path, dimensions=(), limit=6, instructions={"intents-en": ""})
    result = evaluate_model(tiny, cfg, tasks=tasks)
    by = {t.task: t.instruction for t in result.tasks}
    assert by == {"sts-en": SIMILAR, "xquad-en": QA, "intents-en": None}
    plain = evaluate_model(tiny, _cfg(tmp_path, dimensions=(), limit=6, use_instructions=False),
                           tasks=tasks)
    assert all(t.instruction is None for t in plain.tasks)
    # the instruction changes the query vectors, hence the scores
    assert plain.tasks[0].scores[64] != result.tasks[0].scores[64]


def test_each_distinct_text_is_embedded_once(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tasks = select(["intents-en", "intents-clustering-en", "xquad-en", "xquad-ru-en"])
    cfg = _cfg(tmp_path, dimensions=(), limit=10, use_instructions=False)
    result = evaluate_model(tiny, cfg, tasks=tasks)
    texts: set[str] = set()
    for task in tasks:
        for req in task.prepare(cfg, None).requests:
            texts.update(req.texts)
    assert result.texts_embedded == len(texts)  # clustering reuses the classification test set


def test_disk_cache_reuses_embeddings(tiny, sweep) -> None:  # type: ignore[no-untyped-def]
    cfg, first = sweep
    again = evaluate_model(tiny, cfg)
    assert again.texts_embedded == 0 and again.texts_per_s is None
    assert [t.scores for t in again.tasks] == [t.scores for t in first.tasks]


def test_reports_written(sweep, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = sweep
    files = write_reports([result], cfg)
    out = cfg.out_dir
    names = {p.name for p in files}
    assert {"results.json", "summary.md", "quality_vs_dimensions.png",
            "quality_vs_throughput.png", "sts-en.json"} <= names
    task = json.loads(next(p for p in files if p.name == "xquad-ru-en.json").read_text())
    assert task["main_metric"] == "ndcg_at_10" and set(task["scores"]) == {"32", "48", "64"}
    summary = (out / "summary.md").read_text()
    assert "| sts-ru | Spearman (cosine) |" in summary and "Subset run" in summary
    for png in ("quality_vs_dimensions.png", "quality_vs_throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a later run can compare against this one
    runs = load_runs(out)
    assert runs[0]["model"] == result.model and runs[0]["evaluated_dimensions"] == [32, 48, 64]


def test_a_failing_second_model_keeps_the_firsts_reports(tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`-m MODEL -m /bad/path`: the first model was evaluated, then the error, and no report
    at all; a bad --compare folder or a misspelt instruction was found only after the
    evaluation. Now the finished model's reports are written, and the other mistakes stop the
    run before any model loads."""
    from smysl.eval.runner import run

    cfg = _cfg(tmp_path, models=(str(tiny_dir), str(tmp_path / "nonexistent")),
               tasks=("sts-en",), dimensions=())
    with pytest.raises((ValueError, FileNotFoundError), match="nonexistent"):
        run(cfg)
    (only,) = load_runs(tmp_path / "out")
    assert only["tasks"][0]["task"] == "sts-en"
    # a review's: the report of the first model alone looked like a whole run of it
    stopped = f"failed at {tmp_path / 'nonexistent'}: no results of {tmp_path / 'nonexistent'}"
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert meta["stopped"] == stopped
    assert f"**This run {stopped}.**" in (tmp_path / "out" / "summary.md").read_text()
    for bad, match in ((dict(compare=(tmp_path / "no_such_run",)), "no_such_run"),
                       (dict(instructions={"sts-en": "retreival"}), "misspelt")):
        cfg = _cfg(tmp_path, models=(str(tmp_path / "never loaded"),), tasks=("sts-en",),
                   **bad)
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run(cfg)


def test_an_interrupted_model_keeps_the_tasks_it_scored(tiny_dir, tmp_path, monkeypatch
                                                        ) -> None:  # type: ignore[no-untyped-def]
    """A Ctrl-C in a model's last task kept none of the tasks it had scored (an hour's run,
    say). They are written, the run marked as stopped, and the interrupt still stops it."""
    import smysl.eval.runner as runner

    real = runner.query_instruction

    def interrupt_second(model, cfg, task):  # type: ignore[no-untyped-def]
        if task.name == "sts-ru":
            raise KeyboardInterrupt
        return real(model, cfg, task)

    monkeypatch.setattr(runner, "query_instruction", interrupt_second)
    cfg = _cfg(tmp_path, models=(str(tiny_dir),), tasks=("sts-en", "sts-ru"), dimensions=())
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg)
    (only,) = load_runs(tmp_path / "out")
    assert [t["task"] for t in only["tasks"]] == ["sts-en"]
    assert only["stopped"] == "interrupted after 1 of 2 tasks"
    assert only["embed_seconds"] > 0 and only["texts_embedded"] > 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "interrupted after 1 of 2 tasks: the tasks it did not reach have no score" in summary
    into: list = []  # from Python, the same
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(smysl.load(str(tiny_dir), device="cpu"), cfg, into=into)
    assert into[0].stopped == "interrupted after 1 of 2 tasks"


def test_cut_offs_without_10_still_score(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """retrieval_ks=(1, 5): a KeyError for nDCG@10, the main metric, after every text was
    embedded. 10 is always computed."""
    cfg = _cfg(tmp_path, tasks=("xquad-en",), dimensions=(), retrieval_ks=(1, 5))
    (task,) = evaluate_model(tiny, cfg).tasks
    scores = next(iter(task.scores.values()))
    assert {"ndcg_at_1", "ndcg_at_5", "ndcg_at_10"} <= set(scores)


def test_dimension_plot_keeps_each_runs_colour(sweep, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A run without a task another run has took that run's colour in the task's panel, and
    the legend listed the first panel's runs only."""
    from matplotlib.figure import Figure

    from smysl.eval.report import plot_dimensions

    _, result = sweep
    write_reports([result], _cfg(tmp_path))
    (full,) = load_runs(tmp_path / "out")
    first = full["tasks"][0]["task"]
    partial = {**full, "model": "partial", "tasks": full["tasks"][1:]}  # lacks the first task
    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    plot_dimensions([partial, full], tmp_path / "dims.png")
    (fig,) = figs
    assert len(fig.legends[0].get_texts()) == 2
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()) and len(colours) == 2, colours
    assert next(ax for ax in fig.axes if ax.get_title() == first).get_lines()[0].get_color() \
        == "C1"


def test_embeddings_before_a_failure_are_cached(tiny, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A model (a paid API, say) failing part way through a task's texts: every vector of
    that request was lost, --cache or not. Texts go a block at a time, and the blocks done are
    saved when a later one fails."""
    from toolkit.helpers import Counting

    from smysl.eval.embeddings import ModelEmbeddings

    class FailsLate(Counting):
        def _embed(self, texts, *, truncate, progress=None):  # type: ignore[no-untyped-def]
            if self.embedded >= 20:
                raise RuntimeError("HTTP 503")
            return super()._embed(texts, truncate=truncate, progress=progress)

    monkeypatch.setattr(ModelEmbeddings, "block", 8)
    texts = [f"text number {i}" for i in range(30)]
    failing = ModelEmbeddings(FailsLate(tiny), cache_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="503"):
        failing.ensure(texts, None)
    again = Counting(tiny)
    rerun = ModelEmbeddings(again, cache_dir=tmp_path, progress=False)
    rerun.ensure(texts, None)
    assert again.embedded == 30 - 24  # three blocks of 8 were done and kept
    np.testing.assert_allclose(rerun.get(texts, None), tiny.embed(texts), atol=1e-6)


def test_reports_as_a_review_read_them(sweep, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A review's: a NaN main score counted as 0 in the throughput plot's mean ("mean over 2
    tasks" of one score); `-m DIR -m st:DIR` (one name, two backends) wrote both runs' task
    files into one folder, the second over the first, labelled "#1"/"#2"; `rerank_top` set
    on a run that reranked nothing said the runs were not comparable."""
    from matplotlib.figure import Figure

    from smysl.eval.report import comparability, plot_throughput, run_folders, run_labels

    _, result = sweep
    write_reports([result], _cfg(tmp_path / "a"))
    (full,) = load_runs(tmp_path / "a" / "out")
    full = {**full, "texts_per_s": 100.0}
    dims, names = str(full["dimensions"]), [t["task"] for t in full["tasks"]][:2]
    nan = {**full, "model": "other", "tasks": [
        {**t, "scores": {**t["scores"], dims: {**t["scores"][dims], t["main_metric"]: None}}}
        if t["task"] == names[0] else t for t in full["tasks"]]}
    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    plot_throughput([full, nan], tmp_path / "t.png")
    (fig,) = figs
    means = [float(c.get_offsets()[0][1]) for c in fig.axes[0].collections]
    scored = [t for t in full["tasks"] if t["task"] != names[0]]
    want = np.mean([t["scores"][dims][t["main_metric"]] for t in scored])
    assert np.allclose(means, want), (means, want)  # the NaN task left out of both means
    assert f"over {len(scored)} tasks" in fig.axes[0].get_ylabel()
    # a run not yet written holds NaN itself, not the null it is written as (a diff review's)
    nan_now = {**nan, "tasks": [
        {**t, "scores": {**t["scores"], dims: {**t["scores"][dims],
                                               t["main_metric"]: float("nan")}}}
        if t["task"] == names[0] else t for t in full["tasks"]]}
    plot_throughput([full, nan_now], tmp_path / "t2.png")
    means = [float(c.get_offsets()[0][1]) for c in figs[-1].axes[0].collections]
    assert np.allclose(means, want), means
    # one checkpoint through two backends: a folder and a label each
    st = {**full, "info": {**full["info"], "backend": "st"}}
    assert run_labels([full, st]) == [f"{full['model']} (qwen3)", f"{full['model']} (st)"]
    folders = run_folders([full, st])
    assert len(set(folders)) == 2 and run_folders([full]) == [folders[0].split("_qwen3")[0]]
    twin = type(result)(**{**result.__dict__, "info": {**result.info, "backend": "st"}})
    files = write_reports([result, twin], _cfg(tmp_path / "b"))
    per_task = [p for p in files if p.name == "sts-en.json"]
    assert len(per_task) == 2 and len({p.parent for p in per_task}) == 2
    # reranking settings compare only runs that reranked
    other = {**full, "protocol": {**full["protocol"], "rerank_top": 5}}
    assert not any("rerank_top" in line for line in comparability([full, other]))
    assert any("rerank_top" in line for line in comparability(
        [{**full, "reranking": [{}]}, {**other, "reranking": [{}]}]))
    # --rerank-queries: a sample of the queries, said like --limit's subset (a review's)
    sample = {**full, "reranking": [{"size": {"queries": 20, "of_queries": 300}}],
              "protocol": {**full["protocol"], "rerank_queries": 20}}
    assert any("subset of the queries (rerank_queries=20)" in line
               for line in comparability([sample]))
    every = {**sample, "reranking": [{"size": {"queries": 12, "of_queries": 12}}]}
    for whole in ({**sample, "reranking": []}, every):  # none reranked; all of them were
        assert not any("subset of the queries" in line for line in comparability([whole]))


def test_a_rerank_instruction_without_a_reranker_and_a_bad_seed_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A review's: `--instruction xquad-ru-rerank=...` without --reranker did nothing, where
    --rerank-top is refused; `--seed -1` failed in numpy's words after the model loaded."""
    from smysl.eval import run as run_eval

    with pytest.raises(ValueError, match=r"instruction for 'xquad-ru-rerank' applies to "
                                         r"reranking: add a reranker"):
        run_eval(_cfg(tmp_path, models=("/nonexistent",), tasks=("xquad-ru",),
                      instructions={"xquad-ru-rerank": "find the answer"}))
    with pytest.raises(ValueError, match=r"seed must be in 0\.\.4294967295, got -1"):
        _cfg(tmp_path, seed=-1)


def test_a_run_with_no_throughput_is_said_not_dropped_silently(sweep, tmp_path, caplog,  # type: ignore[no-untyped-def]
                                                                monkeypatch) -> None:
    """A review's: a run whose vectors all came from --cache has no texts/s; it vanished from
    the throughput plot (and with every run cached, the plot from the report) without a word."""
    from matplotlib.figure import Figure

    from smysl.eval.report import plot_throughput

    _, result = sweep
    write_reports([result], _cfg(tmp_path))
    (full,) = load_runs(tmp_path / "out")
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: None)
    cached = {**full, "model": "cached", "texts_per_s": None}
    with caplog.at_level("WARNING", logger="smysl.eval.report"):
        plot_throughput([{**full, "texts_per_s": 10.0}, cached], tmp_path / "t.png")
    assert "cached: no throughput (every vector from the cache), left out of t.png" in \
        caplog.text


def test_a_pipe_or_newline_in_an_instruction_or_name_keeps_the_tables_columns(sweep, tmp_path  # type: ignore[no-untyped-def]
                                                                             ) -> None:
    """`--instruction 'sts-en=Find A | B'` ended the instruction's cell early (the row had one
    column too many), and a newline in it ended the row: the summary's table fell apart."""
    from smysl.eval.report import summary_markdown

    _, result = sweep
    write_reports([result], _cfg(tmp_path, plots=False))
    (full,) = load_runs(tmp_path / "out")
    odd = {**full, "model": "st:a|b", "tasks": [
        {**t, "instruction": "Find A | B\nor C"} if t["task"] == "sts-en" else t
        for t in full["tasks"]]}
    md = summary_markdown([odd])
    for table in md.split("\n\n"):
        rows = [line for line in table.splitlines() if line.startswith("|")]
        if rows:  # every row of a table has its header's number of cells
            widths = {len(re.split(r"(?<!\\)\|", row)) for row in rows}
            assert len(widths) == 1, rows
    assert "| Find A \\| B or C |" in md and "st:a\\|b" in md


@pytest.mark.parametrize(("module", "package"), [("sklearn.metrics", "scikit-learn"),
                                                 ("scipy.stats", "scipy"),
                                                 ("matplotlib", "matplotlib")])
def test_a_missing_extra_is_named_before_any_model_loads(tmp_path, monkeypatch, module,  # type: ignore[no-untyped-def]
                                                         package) -> None:
    """A review's: `smysl eval` without the eval extra loaded the model, then failed on
    scikit-learn. Now the run stops first, naming the install (matplotlib only for plots)."""
    import sys

    from smysl.eval import runner

    monkeypatch.setitem(sys.modules, module, None)  # import: ImportError
    # (the model's path does not exist: loading it would raise FileNotFoundError instead)
    cfg = _cfg(tmp_path, models=(str(tmp_path / "never loaded"),), tasks=("sts-en",))
    with pytest.raises(ImportError, match=rf"smysl eval needs {package}: pip install "
                                          r"'smysl\[eval\]'"):
        runner.run(cfg)
    if module == "matplotlib":  # no plots: not needed
        with pytest.raises(FileNotFoundError, match="never loaded"):
            runner.run(_cfg(tmp_path, models=(str(tmp_path / "never loaded"),),
                            tasks=("sts-en",), plots=False, out_dir=tmp_path / "o2"))


def test_an_interrupt_before_a_models_first_task_names_the_models_without_results(
        tiny_dir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A review's: a Ctrl-C while the second of three models loaded wrote the first model's
    report with nothing to say the other two were asked for."""
    import smysl.eval.runner as runner
    import smysl.registry

    real = smysl.registry.load
    calls: list[str] = []

    def load(name, options=None):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(name, options)

    monkeypatch.setattr("smysl.registry.load", load)
    models = (str(tiny_dir), "second", "third")
    with pytest.raises(KeyboardInterrupt):
        runner.run(_cfg(tmp_path, models=models, tasks=("sts-en",), dimensions=()))
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert meta["stopped"] == "interrupted at second: no results of second, third"
    assert "**This run interrupted at second: no results of second, third.**" in (
        tmp_path / "out" / "summary.md").read_text()


def test_instructions_a_model_does_not_read_are_refused_or_not_recorded(minilm, tiny,  # type: ignore[no-untyped-def]
                                                                        tmp_path, caplog
                                                                        ) -> None:
    """A review's: ``--instruction sts-en=foo`` ran without it on all-MiniLM-L6-v2 (no
    instructions) and with ``--no-instructions``, and was recorded in ``protocol`` all the
    same: a ``--compare`` said the runs differ, for the same vectors."""
    with pytest.raises(ValueError, match="instructions do nothing with use_instructions=False"):
        _cfg(tmp_path, use_instructions=False, instructions={"sts-en": "foo"})
    cfg = _cfg(tmp_path, tasks=("sts-en",), dimensions=(), instructions={"sts-en": "foo"})
    with caplog.at_level("WARNING"):
        given = evaluate_model(minilm, cfg)
    assert "takes no instruction: the --instruction for sts-en does nothing" in caplog.text
    plain = evaluate_model(minilm, _cfg(tmp_path, tasks=("sts-en",), dimensions=()))
    assert given.protocol == plain.protocol and given.protocol["instructions"] == {}
    assert given.tasks[0].scores == plain.tasks[0].scores
    # beside a model that read them, no "Runs differ in instructions" (a diff review's)
    from smysl.eval.report import comparability

    read = evaluate_model(tiny, cfg)
    assert read.protocol["instructions"] == {"sts-en": "foo"}
    lines = comparability([read.to_json(), given.to_json()])
    assert not [x for x in lines if "instructions" in x], lines
    # a reranking task's instruction still goes to the reranker: compared (a second review's)
    a, b = given.to_json(), given.to_json()
    a["protocol"]["instructions"], b["protocol"]["instructions"] = ({"xquad-ru-rerank": "A"},
                                                                    {"xquad-ru-rerank": "B"})
    assert [x for x in comparability([a, b]) if x.startswith("Runs differ in instructions")]


def test_a_damaged_cache_file_is_said_and_embedded_again(tiny, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A review's: a cut ``q-*.npz`` in ``--cache`` was a bare ``BadZipFile`` and no report."""
    from smysl.eval.embeddings import ModelEmbeddings

    texts = ["one text", "another text"]
    ModelEmbeddings(tiny, cache_dir=tmp_path, progress=False).ensure(texts, "qa")
    (path,) = tmp_path.rglob("q-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    again = ModelEmbeddings(tiny, cache_dir=tmp_path, progress=False)
    with caplog.at_level("WARNING"):
        again.ensure(texts, "qa")
    assert f"{path}: a damaged embedding cache" in caplog.text
    assert again.throughput.texts == 2
    np.testing.assert_allclose(again.get(texts, "qa"), tiny.embed(texts, instruction="qa"),
                               atol=1e-6)
    assert ModelEmbeddings(tiny, cache_dir=tmp_path, progress=False).get(texts, "qa").shape[0] == 2
