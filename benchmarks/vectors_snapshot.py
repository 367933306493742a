"""Vectors of the bench corpus from whichever smysl is importable, to compare two versions.

A refactor that claims "no behaviour change" is checked bit for bit: snapshot the old tree and
the new one on the same machine and thread count, then compare.

    git worktree add /tmp/old <old-commit>
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/vectors_snapshot.py save /tmp/snap old
    PYTHONPATH=.        .venv/bin/python benchmarks/vectors_snapshot.py save /tmp/snap new
    .venv/bin/python benchmarks/vectors_snapshot.py compare /tmp/snap old new

Random weights of the real 0.6B shape (speed and exactness do not depend on weight values);
fp32, int8 and bf16 (emulated where the CPU lacks AVX512-BF16: slow); documents at the native
size, queries at 256 dims, raw rows of token ids. Uses only the API both versions share
(``smysl.Embedder.load``, ``embed_*``, ``tokenize``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, random_checkpoint

#: The CPU compute paths compared: name -> Embedder.load options.
PATHS: dict[str, dict[str, str]] = {"fp32": {"dtype": "float32"}, "int8": {"quantize": "int8"},
                                    "bf16": {"dtype": "bfloat16"}}


def save(out: Path, tag: str) -> None:
    import torch

    import smysl

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "ckpt-0.6b"
    if not (ckpt / "config.json").exists():
        random_checkpoint("0.6b", ckpt)
    torch.set_num_threads(2)
    texts = corpus(0.05)
    print(f"{tag}: smysl from {smysl.__file__}, {len(texts)} texts", file=sys.stderr)
    for path, opts in PATHS.items():
        t0 = time.perf_counter()
        emb = smysl.Embedder.load(str(ckpt), device="cpu", threads=2, **opts)
        ids = emb.tokenize(texts[:20])
        np.savez(out / f"{tag}-{path}.npz", docs=emb.embed_documents(texts),
                 queries=emb.embed_queries(texts, dimensions=256),
                 raw=emb.embed_token_ids(ids, normalize=False))
        print(f"{tag} {path}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def compare(out: Path, a: str, b: str) -> int:
    bad = 0
    for path in PATHS:
        x, y = np.load(out / f"{a}-{path}.npz"), np.load(out / f"{b}-{path}.npz")
        for key in x.files:
            same = np.array_equal(x[key], y[key])
            bad += not same
            diff = "bit-identical" if same else f"max |diff| {np.abs(x[key] - y[key]).max():.2e}"
            print(f"{path} {key} {x[key].shape}: {diff}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "save":
        save(Path(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
    else:
        sys.exit(__doc__)
