"""The server's own CPU per request: what caps a GPU server's single-text throughput.

On a GPU the 0.6B embeds ~8,000 short texts a second; a Python HTTP process spends about a
millisecond of CPU on each request, so the event loop, not the GPU, bounds many small clients
(docs/benchmarks.md, issue 12). This measures that cost without a GPU: ``smysl serve`` of the
tiny random checkpoint (its compute is negligible), a client process of ``--clients``
keep-alive connections (``load_test.Conn``) sending one text per request, and the CPU time the
server's HTTP processes (the server; with ``--workers`` its workers and supervisor) and its
engine process spent (``/proc``, all threads) divided by the requests.

Usage::

    .venv/bin/python benchmarks/server_cpu.py --requests 4000 --rounds 3
    .venv/bin/python benchmarks/server_cpu.py --serve-args "--in-process"

``--other DIR`` runs the server from another checkout (a ``git worktree`` of an older
commit) for an A/B in one run; the rounds interleave the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT
from load_test import Conn, Server, build_random, load_texts

from smysl import procname

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of every process below it, by pid (gone ones left out)."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            out[p] = cpu_seconds(p)
            todo += children(p)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def role(pid: int, root: int) -> str:
    """What a process of a ``smysl serve`` tree is: the server, the engine process (CUDA or
    CPU), an HTTP worker, or another (Python's resource tracker), by the name smysl gives its
    processes (:mod:`smysl.procname`)."""
    if pid == root:
        return "server"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name == procname.ENGINE:
            cuda = "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
            return "engine (CUDA)" if cuda else "engine (CPU)"
        if name == procname.HTTP_WORKER:
            return "worker"
        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return "resource tracker"
    except OSError:
        pass
    return "other"


def busiest(before: dict[int, float], after: dict[int, float], wall: float, root: int
            ) -> list[tuple[str, float]]:
    """Each process's CPU over ``wall`` seconds as a share of one core, busiest first: a
    process near 1.0 is what bounds the server."""
    shares = [(role(p, root), (after[p] - before.get(p, 0.0)) / wall) for p in after]
    return sorted(shares, key=lambda x: -x[1])


async def load(url: str, texts: list[str], requests: int, clients: int, path: str) -> float:
    """``requests`` single-text requests over ``clients`` connections -> wall seconds."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    todo = list(range(requests))

    async def client() -> None:
        conn = Conn(host, int(port))
        while todo:
            i = todo.pop()
            body = ({"inputs": [texts[i % len(texts)]]} if path == "/embed"
                    else {"input": [texts[i % len(texts)]], "model": "m"})
            status, _, payload = await conn.post(path, body)
            assert status == 200, payload[:300]
        await conn.close()

    t = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(clients)])
    return time.perf_counter() - t


def batches(url: str) -> float:
    """Coalesced batches the server has computed (its Prometheus counter)."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("smysl_batch_requests_count"):
            return float(line.split()[-1])
    raise RuntimeError("no smysl_batch_requests_count in /metrics")


def one_round(model: str, extra: list[str], tree: str | None, texts: list[str],
              args: argparse.Namespace) -> dict[str, float]:
    # ``python -m`` puts its working directory first on sys.path: the tree it runs from
    srv = Server(model, *extra, cwd=Path(tree) if tree else ROOT)
    try:
        srv.wait_ready(120)
        asyncio.run(load(srv.url, texts, 200, args.clients, args.path))  # warm
        pid = srv.proc.pid
        kids = children(pid)
        if args.pin and (os.cpu_count() or 1) > 1:
            # the server alone on CPU 0; this client and the engine process share the rest
            others = set(range(1, os.cpu_count() or 2))
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {0})
            for k in kids:
                for tid in os.listdir(f"/proc/{k}/task"):
                    os.sched_setaffinity(int(tid), others)
            os.sched_setaffinity(0, others)
        b0 = batches(srv.url)
        c0 = tree_cpu(pid)
        wall = asyncio.run(load(srv.url, texts, args.requests, args.clients, args.path))
        c1 = tree_cpu(pid)
        n = args.requests
        # by role: with --workers the HTTP work is the workers' (the root supervises)
        spent: dict[str, float] = {}
        for k in c1:
            kind = role(k, pid)
            kind = ("engine" if kind.startswith("engine") else
                    "server" if kind in ("server", "worker") else kind)
            spent[kind] = spent.get(kind, 0.0) + c1[k] - c0.get(k, 0.0)
        return {"server_us": spent.get("server", 0.0) / n * 1e6,
                "engine_us": spent.get("engine", 0.0) / n * 1e6,
                "req_s": n / wall, "per_batch": n / (batches(srv.url) - b0)}
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--path", default="/embed", choices=["/embed", "/v1/embeddings"])
    p.add_argument("--serve-args", default="", help="extra 'smysl serve' arguments")
    p.add_argument("--other", help="also run the server from this source tree (A/B)")
    p.add_argument("--random-dir", default=os.path.join(tempfile.gettempdir(), "smysl-bench"))
    p.add_argument("--pin", action="store_true",
                   help="the server process alone on CPU 0 (less noise from sharing a core)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--shape", default="tiny", choices=["tiny", "wide"],
                    help="the random model: tiny (64-float rows) or wide (the 0.6B's 1,024, "
                         "in one layer: its rows' cost in the server)")
    args = p.parse_args(argv)

    model = str(build_random(args.shape, Path(args.random_dir)))
    texts = load_texts(1000)
    extra = shlex.split(args.serve_args)
    variants = {"this tree": None, **({args.other: args.other} if args.other else {})}
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for name, tree in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            row = one_round(model, extra, tree, texts, args)
            rows[name].append(row)
            print(f"round {r + 1} {name}: server {row['server_us']:,.0f} us/request, engine "
                  f"process {row['engine_us']:,.0f} us/request, {row['req_s']:,.0f} req/s, "
                  f"{row['per_batch']:.1f} requests/batch",
                  flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; {args.requests} requests of one text to {args.path}, "
          f"{args.clients} connections, serve args {extra or 'none'}\n")
    print("| server | server CPU / request (median) | engine process CPU / request | req/s "
          "| requests / batch |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        print(f"| {name} | {statistics.median(r['server_us'] for r in rs):,.0f} us | "
              f"{statistics.median(r['engine_us'] for r in rs):,.0f} us | "
              f"{statistics.median(r['req_s'] for r in rs):,.0f} | "
              f"{statistics.median(r['per_batch'] for r in rs):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
