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
