"""Finding and reading checkpoints; loader errors that say what is wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import refused

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
    # weights in PyTorch's pickle format only: said so, with the way out (a review's: they were
    # "*.safetensors (none)")
    e = _copy(tiny_dir, tmp_path / "bin")
    (e / "model.safetensors").rename(e / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"\*\.safetensors \(none; pytorch_model\.bin is "
                                         r"PyTorch's pickle format, not read here: convert it"):
        read_checkpoint(e)


def test_a_damaged_tokenizer_or_config_names_its_file(tiny_dir: Path, tmp_path: Path) -> None:
    """A review's: an empty or cut tokenizer.json (an interrupted copy) passed the file check
    and failed in the tokenizers library as a bare ``Exception: EOF while parsing a value``;
    one that parses but is no tokenizer, and a cut config.json, named no file either."""
    from smysl.commands.models import show_entry
    from smysl.tokenize import Tokenizer

    d = _copy(tiny_dir, tmp_path)
    whole = (d / "tokenizer.json").read_text(encoding="utf-8")
    for cut in ("", "\n", whole[: len(whole) // 2]):
        (d / "tokenizer.json").write_text(cut, encoding="utf-8")
        refused(d, r"missing or incomplete files: tokenizer\.json \(empty or cut short\)")
        assert "tokenizer.json (empty or cut short)" in (show_entry(str(d)).problem or "")
    (d / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{d}/tokenizer\.json: not a tokenizer the "
                                         "tokenizers library reads"):
        Tokenizer(d / "tokenizer.json", 512)
    (d / "tokenizer.json").write_text(whole, encoding="utf-8")
    config = (d / "config.json").read_text(encoding="utf-8")
    (d / "config.json").write_text(config[:-40], encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{d}/config\.json: not valid JSON"):
        read_checkpoint(d)


def test_another_architecture_is_named_before_its_tokenizer_or_head(tiny_dir: Path,
                                                                   tmp_path: Path) -> None:
    """A BERT folder was refused for "no <|endoftext|> token" (embedder) or "lacks
    lm_head.weight" (reranker): its model_type is what is wrong."""
    from smysl.qwen3.reranker import Reranker

    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    says = r"not a Qwen3 checkpoint \(model_type 'bert'\); .* loads as st:"
    with pytest.raises(ValueError, match=says):
        Embedder.load(str(d), device="cpu")
    with pytest.raises(ValueError, match=says):
        Reranker.load(str(d), device="cpu")


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


def test_unreachable_hub_is_a_smysl_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
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
    assert "could not reach the Hugging Face Hub to pull 'Qwen/Qwen3-Embedding-0.6B'" in text
    assert str(tmp_path) in text and "HF_ENDPOINT" in text
    assert "local_files_only" not in text and "Got:" not in text
    # a review's: with a copy in the cache, huggingface_hub returned it and `smysl pull`
    # printed it as pulled (exit 0)
    from qwen_tiny import build_tiny, fake_hub_cache

    from smysl.cli import main

    snap = fake_hub_cache(tmp_path / "hf", "Qwen/Qwen3-Embedding-0.6B",
                          build_tiny(tmp_path / "m").path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(["pull", "Qwen/Qwen3-Embedding-0.6B"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "could not reach the Hugging Face Hub" in err
    assert "the cached copy ('main') is left as it is and loads as before" in err
    # a cut copy in the cache: it does not "load as before" (a review's)
    blob = (snap / "model.safetensors").resolve()
    data = blob.read_bytes()
    blob.unlink()  # a hard link of the build's file: a new one, cut
    blob.write_bytes(data[: len(data) // 2])
    assert main(["pull", "Qwen/Qwen3-Embedding-0.6B"]) == 2
    err = capsys.readouterr().err
    assert "the cached copy ('main') cannot load (" in err and "truncated" in err
    assert "pull it again with network access" in err and "loads as before" not in err


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
        # the library froze it at its import, which an earlier test may have done offline
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
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


def test_pull_of_a_repo_of_gguf_files_says_so_and_fetches_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `smysl pull Qwen/Qwen3-Embedding-0.6B-GGUF` fetched none of its files (the
    engine's patterns skip GGUF) and said it had pulled, "None dims"."""
    import huggingface_hub.constants as hub_constants

    from smysl.cli import main

    repo = "Qwen/Qwen3-Embedding-0.6B-GGUF"
    hub = FakeHub(repo, {"Qwen3-Embedding-0.6B-Q8_0.gguf": b"GGUF" + bytes(60),
                         "Qwen3-Embedding-0.6B-f16.gguf": b"GGUF" + bytes(60),
                         "README.md": b"GGUF files"})
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        assert main(["pull", repo]) == 2
        err = capsys.readouterr().err
        assert (f"'{repo}' holds GGUF files (Qwen3-Embedding-0.6B-Q8_0.gguf, "
                "Qwen3-Embedding-0.6B-f16.gguf), not a transformers checkpoint: download the "
                f"one you want (`hf download {repo} Qwen3-Embedding-0.6B-Q8_0.gguf`) and pass "
                "its path as the model") in err
        assert not (tmp_path / "hf" / "models--Qwen--Qwen3-Embedding-0.6B-GGUF").exists()
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


# ---------------------------------------------------------------- incomplete and pinned copies
def _sharded(tmp_path: Path) -> Path:
    from qwen_tiny import build_tiny

    return build_tiny(tmp_path / "sharded", shard=True).path


def test_a_lost_shard_is_named_even_without_the_index(tmp_path: Path) -> None:
    """An interrupted download can lack both the index and a shard: the shards' names say how
    many there are, so the rest is not read as a smaller model (it failed later, naming
    tensors, not the file)."""
    from qwen_tiny import fake_hub_cache

    snap = fake_hub_cache(tmp_path / "hf", "Qwen/Qwen3-Embedding-0.6B", _sharded(tmp_path))
    (snap / "model.safetensors.index.json").unlink()
    (snap / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors \(missing\).*"
                                         r"smysl pull Qwen/Qwen3-Embedding-0\.6B"):
        read_checkpoint(snap)


def test_a_truncated_weight_file_is_refused_before_loading(tiny_dir: Path,
                                                           tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"model\.safetensors \(truncated: {len(data) // 2} "
                                         rf"of {len(data)} bytes\).*copy or convert"):
        read_checkpoint(d)


def test_a_revision_is_refused_for_a_local_path(tiny_dir: Path) -> None:
    """It was ignored: the directory loaded, and a commit-like revision even went into the
    fingerprint as if it had been checked out."""
    with pytest.raises(ValueError, match="applies to Hugging Face repo ids, not the local "
                                         "directory"):
        resolve(str(tiny_dir), revision="a" * 40)
    with pytest.raises(ValueError, match="revision"):
        Embedder.load(str(tiny_dir), device="cpu", revision="main")


def test_a_repo_cached_at_another_revision_only_says_which(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_tiny import fake_hub_cache

    snap = fake_hub_cache(tmp_path / "hf", "Qwen/Qwen3-Embedding-0.6B", tiny_dir)
    refs = snap.parent.parent / "refs"
    (refs / "main").rename(refs / "v1.0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match=r"cached at revision 'v1\.0': pass --revision"):
        resolve("qwen3-embedding:0.6b")
    assert resolve("qwen3-embedding:0.6b", revision="v1.0") == snap


def test_an_incomplete_snapshot_is_not_called_missing(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub knows a snapshot is incomplete from its cached file list; the error
    said "not in the Hugging Face cache", offline and with the Hub down alike."""
    import huggingface_hub.constants as hub_constants

    files = {str(p.relative_to(tiny_dir)): p.read_bytes() for p in tiny_dir.rglob("*")
             if p.is_file()}
    hub = FakeHub("Qwen/Qwen3-Embedding-0.6B", files)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        snap = download("Qwen/Qwen3-Embedding-0.6B", cache_dir=str(tmp_path))
    finally:
        hub.close()
    (snap / "model.safetensors").unlink()  # as an interrupted download leaves it
    # offline by the caller's choice (smysl show), no variable set: not "HF_HUB_OFFLINE"
    for offline, why in ((True, r"incomplete.* and only the cache was looked in"),
                         (False, "the Hugging Face Hub cannot be reached")):
        with pytest.raises(ModelNotFoundError) as err:
            download("Qwen/Qwen3-Embedding-0.6B", cache_dir=str(tmp_path), offline=offline)
        text = str(err.value)
        assert f"cached copy of model 'Qwen/Qwen3-Embedding-0.6B' in {snap} is incomplete" \
            in text and "*.safetensors (none)" in text, text
        assert re.search(why, text) and "smysl pull Qwen/Qwen3-Embedding-0.6B" in text, text
        assert "not in the Hugging Face cache" not in text


def test_hub_cache_follows_the_hub_librarys_precedence_at_call_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HOME (and the legacy HUGGINGFACE_HUB_CACHE, XDG_CACHE_HOME) set after
    huggingface_hub was imported were missed: its constants are computed at import."""
    import huggingface_hub.constants  # noqa: F401  (imported first, as transformers does)

    from smysl.qwen3.hub import hub_cache

    for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache() == tmp_path / "legacy"
    monkeypatch.setenv("SMYSL_TEST_ROOT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", "$SMYSL_TEST_ROOT/new")  # expanded, as the library does
    assert hub_cache() == tmp_path / "new"
    assert hub_cache(str(tmp_path / "given")) == tmp_path / "given"


def test_transformers_offline_is_offline_mode_too(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads TRANSFORMERS_OFFLINE as well; smysl tried the network and blamed
    it ("check the network") while the library refused to use it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"offline mode is on \(TRANSFORMERS_OFFLINE\)"):
        download("Qwen/Qwen3-Embedding-4B", cache_dir=str(tmp_path))
    from smysl.qwen3.hub import offline_variable

    assert offline_variable() == "TRANSFORMERS_OFFLINE"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # set: it decides, as in huggingface_hub
    assert offline_variable() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert offline_variable() == "HF_HUB_OFFLINE"


def test_models_show_and_pull_say_what_cannot_load(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`smysl models` listed an incomplete download and a repo cached without `main` as
    fine, `smysl pull` (offline) reported a partial copy as pulled, and a repo's size was that
    of every cached revision while its other facts (and `show`) were of one."""
    from qwen_tiny import fake_hub_cache

    from smysl.cli import main

    cache = tmp_path / "hf"
    part = fake_hub_cache(cache, "Qwen/Qwen3-Embedding-0.6B", _sharded(tmp_path))
    (part / "model-00001-of-00002.safetensors").unlink()
    pinned = fake_hub_cache(cache, "Qwen/Qwen3-Embedding-4B", tiny_dir)
    (pinned.parent.parent / "refs" / "main").rename(pinned.parent.parent / "refs" / "v1")
    whole = fake_hub_cache(cache, "Qwen/Qwen3-Embedding-8B", tiny_dir, commit="c" * 40)
    fake_hub_cache(cache, "Qwen/Qwen3-Embedding-8B", _sharded(tmp_path), commit="d" * 40)
    (whole.parent.parent / "refs" / "main").write_text("c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "model-00001-of-00002.safetensors (missing)" in rows["Qwen/Qwen3-Embedding-0.6B"][
        "problem"]
    assert "smysl pull Qwen/Qwen3-Embedding-0.6B" in rows["Qwen/Qwen3-Embedding-0.6B"]["problem"]
    assert rows["qwen3-embedding:0.6b"]["problem"] == rows["Qwen/Qwen3-Embedding-0.6B"]["problem"]
    assert "--revision v1" in rows["Qwen/Qwen3-Embedding-4B"]["problem"]
    eight = rows["Qwen/Qwen3-Embedding-8B"]
    assert eight["problem"] is None and eight["where"] == str(whole)
    assert main(["show", "Qwen/Qwen3-Embedding-8B", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == eight["size"]
    assert eight["size"] == sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file())
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "cannot load: `smysl show Qwen/Qwen3-Embedding-0.6B` says why" in table
    assert main(["show", "Qwen/Qwen3-Embedding-0.6B"]) == 1  # shown; cannot load
    assert "problem:      " in capsys.readouterr().out
    assert main(["show", "Qwen/Qwen3-Embedding-4B", "--revision", "v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["where"] == str(pinned)
    assert main(["pull", "Qwen/Qwen3-Embedding-0.6B"]) == 2
    err = capsys.readouterr().err
    assert "in the cache but cannot load" in err and "(missing)" in err


def test_a_main_whose_snapshot_is_missing_names_the_commit_that_is_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: an interrupted download of a newer `main` leaves refs/main naming a commit
    without a snapshot; the message said the model "is cached at revision 'main'"."""
    from qwen_tiny import build_tiny, fake_hub_cache

    commit = "d" * 40
    base = fake_hub_cache(tmp_path / "hf", "org/updated-embed", build_tiny(tmp_path / "m").path,
                          commit=commit)
    (tmp_path / "hf" / "models--org--updated-embed" / "refs" / "main").write_text("e" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match=f"it is cached at revision '{commit}'"):
        resolve("org/updated-embed")
    assert resolve("org/updated-embed", revision=commit) == base


@pytest.mark.parametrize(("model", "says"), [
    ("hf:Qwen/Qwen3-Embedding-0.6B", "no scheme 'hf' (smysl knows dashscope"),
    ("olama:x", "no scheme 'olama'"),
    # a server's address alone (a review's: "no scheme 'http'"): the schemes that reach one
    ("http://127.0.0.1:8000", "a server's address names no API: write "
                              "smysl:http://127.0.0.1:8000 (smysl serve), "
                              "openai:http://127.0.0.1:8000/v1#MODEL"),
    ("qwen3-embedding:9b", "no such alias (aliases: qwen3-embedding:0.6b"),
    ("gguf/missing.gguf", "'gguf/missing.gguf': no such file or directory"),
    ("Qwen/Qwen3 Embedding", "is not a model directory, GGUF file nor a Hugging Face repo id"),
])
def test_a_model_string_that_names_nothing_says_what_it_is_not(
        model: str, says: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: online, an unknown scheme or a repo id the Hub cannot hold failed as
    "check the network"; a mistyped .gguf path was looked up as a repo id."""
    import huggingface_hub.constants
    from live_http import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelNotFoundError) as err:
        resolve(model)
    assert says in str(err.value) and "network" not in str(err.value)
    if "/" in model and not model.endswith(".gguf"):  # and `smysl pull` says the same
        from smysl.cli import main

        assert main(["pull", model]) == 2
        err_text = capsys.readouterr().err
        assert "network" not in err_text and "repo id" in err_text, err_text


def test_a_snapshot_has_one_fingerprint_however_it_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: named by its commit, a snapshot's fingerprint took the commit in; named by
    its branch (or not at all) it did not: a classifier saved with one refused the other."""
    from qwen_tiny import build_tiny, fake_hub_cache

    commit = "c" * 40
    fake_hub_cache(tmp_path / "hf", "org/one-embed", build_tiny(tmp_path / "m").path,
                   commit=commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    prints = {Embedder.load("org/one-embed", device="cpu", revision=r).fingerprint()
              for r in (None, "main", commit)}
    assert len(prints) == 1


def test_an_unreachable_hub_names_the_models_this_machine_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: a newcomer without network got "check the network ... or pass a checkpoint
    directory", no word of a .gguf file, the Ollama store or `smysl models`."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # nobody answers
    with pytest.raises(ModelNotFoundError, match=r"check the network \(HF_ENDPOINT, "
                                                 r"HTTPS_PROXY\), or pass a model this machine "
                                                 r"has: a checkpoint directory, a \.gguf file, "
                                                 r"ollama-store:NAME \(`smysl models` lists"):
        download("Qwen/Qwen3-Embedding-0.6B", cache_dir=str(tmp_path))
