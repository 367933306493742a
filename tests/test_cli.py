"""``smysl embed`` end to end in a subprocess-free way (main(argv) with stdin/stdout)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from smysl.cli import main
from smysl.qwen3.embedder import Embedder


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
         stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_embed_jsonl_from_stdin(tiny_dir: Path, tiny: Embedder, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir),
                                                "--device", "cpu", "--dimensions", "32"],
                          "первая строка\nsecond line\n")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["первая строка", "second line"]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.array_equal(got, tiny.embed(["первая строка", "second line"], dimensions=32))
    assert "embedded 2 texts -> 32 dims" in err


def test_embed_queries_to_npy(tiny_dir: Path, tiny: Embedder, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("what is rag\nhow to search\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu", "--task", "qa", "-i", str(src), "-o",
                                              str(out)])
    assert code == 0, err
    assert np.array_equal(np.load(out), tiny.embed_queries(["what is rag", "how to search"],
                                                           task="qa"))


def test_embed_errors_are_reported_not_raised(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu", "--dimensions", "7"], "x\n")
    assert code == 2 and "dimensions must be in 32..64" in err
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", "./missing-model"], "x\n")
    assert code == 2 and "not a model directory" in err
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu"], "word " * 3000 + "\n")
    assert code == 2 and "truncat" in err


def test_version_and_task_list_need_no_model(capsys: pytest.CaptureFixture[str]) -> None:
    import smysl
    from smysl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"smysl {smysl.__version__}"
    assert main(["eval", "--list-tasks"]) == 0
    assert "sts-ru" in capsys.readouterr().out
    assert main(["eval"]) == 2
    assert "--model" in capsys.readouterr().err
