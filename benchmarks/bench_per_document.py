"""Per-document search over a batch of queries where a few need a deeper search.

A memory store of 50,000 chunks (10,000 documents of 5, random 256-float rows) plus one
document of 2,000 chunks around one direction; 1,000 queries, 5 of them near that document.
With ``per_document=1`` and ``k=10``, those 5 find one hit of the big document among its
chunks and must search deeper (doubling ``k`` until 10 documents, ~4,000 hits); the other
995 have their 10 documents at once. Printed: the batch's time and a digest of every hit id
(to compare two versions: run it with ``PYTHONPATH`` at each).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_per_document.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np

from smysl.toolkit.memory import MemoryStore
from smysl.toolkit.search import SearchConfig, search_vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dim, docs, per, big_n = 256, 10_000, 5, 2_000
    small = rng.normal(size=(docs * per, dim)).astype(np.float32)
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    big = (direction + 0.05 * rng.normal(size=(big_n, dim))).astype(np.float32)
    rows = np.concatenate([small, big])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    store = MemoryStore(dim)
    store.upsert([str(i) for i in range(len(rows))], rows,
                 [{"doc_id": i // per} for i in range(len(small))] + [{"doc_id": "big"}] * big_n)
    q = rng.normal(size=(1_000, dim)).astype(np.float32)
    q[:5] = direction + 0.01 * rng.normal(size=(5, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    config = SearchConfig(k=10, per_document=1)
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        hits = search_vectors(store, q, config)
        took = time.perf_counter() - t0
        digest = hashlib.sha256(json.dumps([[h.id for h in x] for x in hits]).encode())
        print(f"1,000 queries (5 near a {big_n:,}-chunk document), k=10, per_document=1: "
              f"{took:.2f} s; hits {sum(map(len, hits)):,}, ids {digest.hexdigest()[:12]}")


if __name__ == "__main__":
    main()
