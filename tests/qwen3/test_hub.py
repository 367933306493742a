"""Finding and reading checkpoints; loader errors that say what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smysl import Embedder
from smysl.qwen3.hub import ModelNotFoundError, download, read_checkpoint, resolve
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


def test_unreachable_hub_is_a_smysl_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 11 item 11: a failed download says what happened and what to do in smysl's words,
    without the Hub library's text (no `local_files_only`, no "Got: ...")."""
    import huggingface_hub.constants
    from live_http import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 2)
    with pytest.raises(ModelNotFoundError) as err:
        download("Qwen/Qwen3-Embedding-0.6B", cache_dir=str(tmp_path), fallback=False)
    text = str(err.value)
    assert "could not download model 'Qwen/Qwen3-Embedding-0.6B'" in text
    assert str(tmp_path) in text and "HF_ENDPOINT" in text
    assert "local_files_only" not in text and "Got:" not in text


def test_offline_error_names_smysl_pull_not_library_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 11 item 11: the offline error used to show `local_files_only=False`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        resolve("qwen3-embedding:4b")
    text = str(err.value)
    assert "smysl pull Qwen/Qwen3-Embedding-4B" in text and str(tmp_path) in text
    assert "local_files_only" not in text


class FakeHub:
    """The Hugging Face Hub's download API on a loopback port, serving ``files`` as ``repo`` at
    commit ``sha``: repo info, the tree listing, and ``resolve`` (HEAD and GET)."""

    def __init__(self, repo: str, files: dict[str, bytes], sha: str = "a" * 40) -> None:
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[str] = []
        requests = self.requests

        def etag(name: str, data: bytes) -> str:  # LFS files: sha256; others: a git-like sha1
            return (hashlib.sha256(data) if name.endswith(".safetensors")
                    else hashlib.sha1(data)).hexdigest()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, code: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                requests.append(f"{self.command} {path}")
                if path == f"/api/models/{repo}/revision/main":
                    return self.reply(200, json.dumps({"id": repo, "sha": sha, "siblings": [
                        {"rfilename": f} for f in files]}).encode())
                if path == f"/api/models/{repo}/tree/{sha}":
                    return self.reply(200, json.dumps([
                        {"type": "file", "path": f, "size": len(d), "oid": etag(f, d),
                         **({"lfs": {"oid": etag(f, d), "size": len(d), "pointerSize": 130}}
                            if f.endswith(".safetensors") else {})}
                        for f, d in files.items()]).encode())
                name = path.removeprefix(f"/{repo}/resolve/{sha}/")
                if name in files:
                    tag = f'"{etag(name, files[name])}"'
                    return self.reply(200, files[name], X_Repo_Commit=sha, ETag=tag,
                                      X_Linked_Etag=tag, X_Linked_Size=str(len(files[name])))
                return self.reply(404, b"{}", X_Error_Code="RepoNotFound")

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pull_downloads_the_engine_files_through_the_hub(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """issue 11 item 12: `smysl pull` (Ollama's `pull`) downloads into the HF cache through
    smysl.qwen3.hub with a progress bar; the files the engine does not read stay on the Hub;
    an unknown repo is a smysl error."""
    import huggingface_hub.constants as hub_constants

    from smysl.cli import main

    files = {str(p.relative_to(tiny_dir)): p.read_bytes() for p in tiny_dir.rglob("*")
             if p.is_file()}
    files["pytorch_model.bin"] = b"not for the engine"
    hub = FakeHub("Qwen/Qwen3-Embedding-0.6B", files)
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        assert main(["pull", "qwen3-embedding:0.6b"]) == 0
        out, err = capsys.readouterr()
        snap = tmp_path / "hf" / "models--Qwen--Qwen3-Embedding-0.6B" / "snapshots" / ("a" * 40)
        assert out.strip().endswith(f"-> {snap}") and "64 dims" in out
        assert "pulling Qwen/Qwen3-Embedding-0.6B" in err and "Fetching" in err  # the bar
        for name, data in files.items():
            assert (snap / name).is_file() == (name != "pytorch_model.bin")
            if name != "pytorch_model.bin":
                assert (snap / name).read_bytes() == data
        assert "GET /Qwen/Qwen3-Embedding-0.6B/resolve/" + "a" * 40 + "/model.safetensors" \
            in hub.requests
        # the pulled model loads offline, as any cached one
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert resolve("Qwen/Qwen3-Embedding-0.6B") == snap
        monkeypatch.delenv("HF_HUB_OFFLINE")
        assert main(["pull", "Qwen/No-Such-Model"]) == 2
        err = capsys.readouterr().err
        assert "no model 'Qwen/No-Such-Model' on the Hugging Face Hub" in err
        assert "RepositoryNotFoundError" not in err and "local_files_only" not in err
    finally:
        hub.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_read_rows_seeks_the_rows_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    from smysl.qwen3.hub import Checkpoint, read_rows

    table = torch.randn(50, 12).to(dtype)
    save_file({"other": torch.zeros(3, 2), "head": table}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(root=tmp_path, name="m", config={},
                      weights=(tmp_path / "model.safetensors",),
                      tokenizer_file=tmp_path / "tokenizer.json")
    got = read_rows(ckpt, ["missing", "head"], [49, 0, 7])
    assert got is not None and got.dtype == np.float32
    assert np.array_equal(got, table[[49, 0, 7]].float().numpy())
    assert read_rows(ckpt, ["missing"], [0]) is None
    with pytest.raises(ValueError, match="row 50 outside head"):
        read_rows(ckpt, ["head"], [50])
