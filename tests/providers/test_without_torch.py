"""Remote models where ``import torch`` fails: ``smysl.load``, ``smysl serve`` and ``smysl index``.

Each case runs in a fresh interpreter with ``sys.modules["torch"] = None`` (every ``import
torch`` then raises ImportError), against the loopback fake API of ``provider_fakes``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_http import free_port
from provider_fakes import FakeServer, expected

BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"


def _python(code: str, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _cli(*argv: str) -> str:
    return f"from smysl.cli import main\nsys.exit(main({list(argv)!r}))\n"


@pytest.fixture
def env(tokenizer_path: Path) -> dict[str, str]:
    # provider_env (autouse) set fake keys and an offline, empty Hugging Face cache
    return {**os.environ, "SMYSL_TOKENIZER": str(tokenizer_path)}


def test_torch_is_really_blocked(env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-c", BLOCK + "import torch"], capture_output=True,
                         text=True, env=env)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr


def test_load_remote_model_without_torch(env: dict[str, str]) -> None:
    code = ("import smysl\n"
            "m = smysl.load('openrouter:qwen/qwen3-embedding-8b')\n"
            "print(m.info().backend, m.dimensions, 'torch' in sys.modules and "
            "sys.modules['torch'] is not None)\n")
    assert _python(code, env).split() == ["openrouter", "4096", "False"]


def test_local_model_without_torch_says_so(env: dict[str, str], tmp_path: Path) -> None:
    code = ("import smysl\n"
            f"try:\n    smysl.load({str(tmp_path)!r})\n"
            "except ImportError as e:\n    print('ImportError', e)\n")
    assert _python(code, env).startswith("ImportError")


def test_serve_a_tei_upstream_without_torch(env: dict[str, str]) -> None:
    with FakeServer(dims=48) as tei:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", BLOCK + _cli("serve", "--model", f"tei:{tei.url}",
                                                "--port", str(port))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
            texts = ["первый текст", "second text"]
            # provider_env sets SMYSL_API_KEY, which `smysl serve` requires of its clients
            r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=30,
                           headers={"Authorization": "Bearer sk-test"})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(got, expected(texts, 48, 48), atol=1e-6)
            info = httpx.get(f"{url}/info", timeout=5,
                             headers={"Authorization": "Bearer sk-test"}).json()
            assert info["model_dtype"] == "unknown"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_index_with_a_remote_model_without_torch(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("lancedb")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Кошки любят спать на солнце.", encoding="utf-8")
    (docs / "b.txt").write_text("Rust compiles to native code.", encoding="utf-8")
    with FakeServer(dims=32) as api:
        model = f"openai:{api.url}/v1#m"
        index = str(tmp_path / "kb")
        _python(_cli("index", "add", index, str(docs), "--model", model, "--no-progress"), env)
        out = _python(_cli("index", "search", index, "Rust compiles to native code.",
                           "--model", model, "--instruction", "", "--format", "json", "-k", "1"),
                      env)
    (line,) = out.splitlines()
    (hit,) = json.loads(line)["hits"]
    assert hit["payload"]["text"] == "Rust compiles to native code."
