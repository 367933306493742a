"""Finding and reading checkpoints; loader errors that say what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smysl import Embedder
from smysl.qwen3.hub import ModelNotFoundError, read_checkpoint, resolve
from smysl.registry import ALIASES


def test_local_directory_resolves_to_itself(tiny_dir: Path) -> None:
    assert resolve(str(tiny_dir)) == tiny_dir


def test_uncached_repo_offline_is_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match=r"Hugging Face cache.*offline"):
        resolve("Qwen/Qwen3-Embedding-0.6B", cache_dir=str(tmp_path / "cache"))


def test_cached_repo_loads_offline(tiny_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # lay the tiny checkpoint out as a Hugging Face cache snapshot
    repo = tmp_path / "cache" / "models--Qwen--Qwen3-Embedding-0.6B"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve("qwen3-embedding:0.6b", cache_dir=str(tmp_path / "cache"))
    assert got == snap
    assert ALIASES["qwen3-embedding:8b"] == "Qwen/Qwen3-Embedding-8B"


@pytest.mark.parametrize("bad", ["./no/such/dir", "not-a-repo-id", "/abs/missing"])
def test_nonsense_model_names(bad: str) -> None:
    with pytest.raises(ModelNotFoundError):
        resolve(bad)


def _copy(tiny_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_missing_files(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        read_checkpoint(d)
    (d / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json"):
        read_checkpoint(d)


def test_non_last_token_pooling_is_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_lasttoken=False, pooling_mode_mean_tokens=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="last-token"):
        read_checkpoint(d)


def test_weights_that_do_not_match_the_config(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        Embedder.load(str(d), device="cpu")
    cfg["intermediate_size"] = 128
    cfg["num_hidden_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks weights"):
        Embedder.load(str(d), device="cpu")
