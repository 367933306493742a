"""Dedup at scale and the memory store's top-k: ``find_duplicates`` on real MiniLM vectors.

The intents set (test + train, the English originals: its ``answer`` column) embedded with
``st:all-minilm-l6-v2`` (384-d),
padded to each size with jittered copies of its rows (noise 0.01, renormalised): near-duplicates
as a real corpus has them. Per size: the whole dedup's wall time and report; with
``--probe``, 512 searches of k=11 in the memory store and in a LanceDB IVF index (built first)
at each size, the comparison behind the exact default.

    .venv/bin/python benchmarks/bench_dedup.py --sizes 20000,50000 --probe 100000
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time

import numpy as np
from common import DATASETS, OUT


def intents_vectors() -> np.ndarray:
    """MiniLM vectors of every intents text (cached under the benchmark folder)."""
    cache = OUT / "intents-minilm.npy"
    if cache.exists():
        return np.load(cache)
    import smysl

    texts = []
    for part in ("test", "train"):
        with open(DATASETS / "intents" / f"intents_{part}.csv", encoding="utf-8") as f:
            texts += [row["answer"] for row in csv.DictReader(f)]
    with smysl.load("st:all-minilm-l6-v2") as model:
        x = model.embed(texts, truncate=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def padded(base: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    extra = base[rng.integers(0, len(base), max(0, n - len(base)))]
    extra = extra + rng.normal(scale=0.01, size=extra.shape).astype(np.float32)
    x = np.vstack([base, extra])[:n].astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    from smysl.toolkit.dedup import DedupConfig, find_duplicates
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,50000", help="items per dedup run")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--probe", default="", help="sizes for the memory vs LanceDB search probe")
    args = ap.parse_args()
    base = intents_vectors()
    print("| items | seconds | pairs | groups | duplicates | kept |\n|---|---|---|---|---|---|")
    for n in (int(v) for v in args.sizes.split(",") if v):
        x = padded(base, n)
        t = time.perf_counter()
        r = find_duplicates(x, DedupConfig(threshold=args.threshold)).report()
        print(f"| {n:,} | {time.perf_counter() - t:.1f} | {r['pairs']:,} | {r['groups']:,} | "
              f"{r['duplicates']:,} | {r['kept']:,} |", flush=True)
    if args.probe:
        print("\n| rows | store | index build s | 512 searches s |\n|---|---|---|---|")
    for n in (int(v) for v in args.probe.split(",") if v):
        x = padded(base, n)
        for name in ("memory", "lancedb-ivf"):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = (StoreConfig(backend="memory") if name == "memory"
                       else StoreConfig(uri=tmp, table="t"))
                s = open_store(cfg, x.shape[1])
                for a in range(0, n, 4096):
                    s.upsert([str(i) for i in range(a, min(a + 4096, n))], x[a : a + 4096])
                t = time.perf_counter()
                if name != "memory":
                    s.build_index()
                built = time.perf_counter() - t
                t = time.perf_counter()
                s.search(x[:512], 11, exact=name == "memory")
                print(f"| {n:,} | {name} | {built:.1f} | {time.perf_counter() - t:.2f} |",
                      flush=True)
                s.close()


if __name__ == "__main__":
    main()
