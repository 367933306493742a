"""``smysl eval`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwen_tiny import DATASETS

from smysl.cli import main


def test_list_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "x", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    assert "sts-ru" in out and "xquad-en-ru" in out and "nDCG@10" in out


@pytest.mark.skipif(not (DATASETS / "stsb").is_dir(), reason="no shared datasets")
def test_small_run_writes_reports(tiny_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(tiny_dir), "--tasks", "sts-en,xquad-en", "--limit", "8",
               "--dimensions", "32", "--out", str(out), "--no-progress", "--device", "cpu",
               "--instruction", "xquad-en=Find the paragraph"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    tasks = {t["task"]: t for t in results["models"][0]["tasks"]}
    assert set(tasks) == {"sts-en", "xquad-en"}
    assert tasks["xquad-en"]["instruction"] == "Find the paragraph"
    assert (out / "quality_vs_dimensions.png").is_file()
    assert "sts-en" in capsys.readouterr().out


def test_bad_arguments_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "st:x", "--tasks", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", "x", "--dimensions", "a,b"])
    # a review's: reranking flags without --reranker ran to exit 0, ignored
    for flags, says in ((["--rerank-top", "5"], "--rerank-top applies to reranking"),
                        (["--rerank-queries", "3", "--rerank-top", "5"],
                         "--rerank-top and --rerank-queries apply to reranking")):
        assert main(["eval", "--model", "st:x", *flags, "--out", str(tmp_path)]) == 2
        assert says + ": add --reranker MODEL" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_list_tasks_shows_the_reranking_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "x", "--list-tasks"]) == 0
    assert "xquad-ru-rerank" in capsys.readouterr().out


@pytest.mark.skipif(not (DATASETS / "xquad").is_dir(), reason="no shared datasets")
def test_reranker_run_writes_the_reranking_reports(tiny_dir: Path, tiny_reranker_dir: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(tiny_dir), "--reranker", str(tiny_reranker_dir),
               "--tasks", "xquad-en", "--limit", "8", "--rerank-top", "4", "--out", str(out),
               "--no-progress", "--device", "cpu", "--max-batch-tokens", "512"])
    assert rc == 0
    model = json.loads((out / "results.json").read_text())["models"][0]
    assert [t["task"] for t in model["tasks"]] == ["xquad-en"]
    (rerank,) = model["reranking"]
    assert rerank["task"] == "xquad-en-rerank" and rerank["candidates"] == 4
    assert rerank["size"] == {"queries": 8, "of_queries": 8, "docs": 5, "pairs": 32}
    assert {"ndcg_at_10", "mrr_at_10", "recall_at_4"} <= set(rerank["before"])
    # the device reaches the reranker; the size flags stay the embedding model's
    assert model["reranker"]["device"] == "cpu" and model["reranker"]["backend"] == "qwen3"
    assert model["reranker"]["source"] == str(tiny_reranker_dir.resolve())
    assert "## Reranking" in (out / "summary.md").read_text()
    assert (out / "reranking.png").is_file()
    assert "xquad-en-rerank nDCG@10" in capsys.readouterr().out


def test_reranking_needs_a_reranker_and_a_task_to_rerank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "st:x", "--tasks", "rerank", "--out", str(tmp_path)]) == 2
    assert "needs a reranker" in capsys.readouterr().err
    assert main(["eval", "--model", "st:x", "--reranker", "r", "--tasks", "sts",
                 "--out", str(tmp_path)]) == 2
    assert "no selected task reranks" in capsys.readouterr().err


def test_reranker_gets_the_loading_flags_its_backend_takes() -> None:
    from smysl.options import ModelOptions
    from smysl.registry import reranker_options

    flags = ModelOptions(device="cpu", dtype="float32", max_tokens=128, max_batch_tokens=512,
                         revision="abc", quantize="int8")
    assert reranker_options("Qwen/Qwen3-Reranker-0.6B", flags) == ModelOptions(
        device="cpu", dtype="float32")
    assert reranker_options("siliconflow:BAAI/bge-reranker-v2-m3", flags) == ModelOptions()


@pytest.mark.skipif(not (DATASETS / "stsb").is_dir(), reason="no shared datasets")
def test_reports_never_lose_or_misstate_a_run(tiny_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's findings: `--compare DIR --out DIR` replaced DIR's results.json before
    reading it (the run compared with itself, the earlier model gone); an `--out` that is a
    file was a traceback after every task was scored; a missing dataset of a later task was
    found after the earlier ones were scored, and nothing was written; a report written over
    an earlier one left its per-task files and plots; a second -t or -d replaced the first;
    -t "" ran every task; NaN scores made the JSON files invalid."""
    run = ["eval", "--model", str(tiny_dir), "--limit", "8", "--no-progress", "--device", "cpu"]
    first = tmp_path / "first"
    assert main([*run, "-t", "sts-en", "-t", "xquad-en", "-d", "32", "-d", "48", "--out",
                 str(first)]) == 0
    model = json.loads((first / "results.json").read_text())["models"][0]
    assert [t["task"] for t in model["tasks"]] == ["sts-en", "xquad-en"]
    assert model["evaluated_dimensions"] == [32, 48, 64]
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    partial = tmp_path / "partial"
    (partial / "stsb").mkdir(parents=True)
    for f in (DATASETS / "stsb").iterdir():
        (partial / "stsb" / f.name).write_bytes(f.read_bytes())
    for argv, says in (
            (["-t", "sts-en", "--compare", str(first), "--out", str(first)],
             "is also a --compare folder"),
            (["-t", "sts-en", "--out", str(tmp_path / "afile")], "is a file, not a folder"),
            (["-t", "sts-en", "--out", str(tmp_path / "afile" / "sub")], "is a file"),
            (["-t", "sts-en,xquad-en", "--data", str(partial), "--out", str(tmp_path / "p")],
             "evaluation data not found: " + str(partial / "xquad" / "xquad.en.json"))):
        assert main([*run, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
        assert "cosine_spearman =" not in err  # refused before anything was scored
    assert not (tmp_path / "p").exists()
    assert json.loads((first / "results.json").read_text())["models"][0] == model
    with pytest.raises(SystemExit):
        main([*run, "-t", ""])
    # a limit the instruction alone fills is refused (its vectors would be the instruction's)
    assert main([*run, "-t", "sts-ru", "--max-tokens", "2", "--no-plots", "--out",
                 str(tmp_path / "refused")]) == 2
    assert "instruction alone has" in capsys.readouterr().err
    # a report over an earlier one replaces it whole; a NaN score is null (a correlation of
    # constants: every text cut to its EOS alone, before --max-tokens 1 was refused)
    from smysl.eval import metrics

    monkeypatch.setattr(metrics, "sts_scores", lambda *a: {"cosine_spearman": float("nan"),
                                                            "cosine_pearson": float("nan")})
    assert main([*run, "-t", "sts-ru", "--no-instructions", "--no-plots",
                 "--out", str(first)]) == 0
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    slug = next(p.name for p in first.iterdir() if p.is_dir())
    assert files == sorted(["results.json", f"{slug}/sts-ru.json", "summary.md"]), files
    def strict(path: Path) -> dict:  # type: ignore[type-arg]
        """JSON as JSON.parse reads it: a bare NaN is an error."""
        return dict(json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)))

    task = strict(first / "results.json")["models"][0]["tasks"][0]
    assert task["task"] == "sts-ru" and task["scores"]["64"]["cosine_spearman"] is None
    assert strict(first / slug / "sts-ru.json")["scores"]["64"]["cosine_spearman"] is None


def test_a_folder_without_a_report_of_ours_keeps_its_files(tmp_path: Path) -> None:
    """Clearing an earlier report deleted plots and the like from a folder whose results.json
    was not smysl's."""
    from smysl.eval.report import _clear_report

    for name, text in (("results.json", '{"not": "ours"}'), ("reranking.png", "mine"),
                       ("notes.txt", "mine")):
        (tmp_path / name).write_text(text)
    _clear_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "reranking.png", "results.json"]
