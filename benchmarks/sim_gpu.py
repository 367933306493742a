"""``smysl serve`` in front of a simulated GPU: where a request's time goes, on any CPU machine.

The engine process's forward pass is replaced (benchmarks/sim_gpu/sitecustomize.py) by one
"device" thread that takes ``--sim`` "A_MS,B_US" per pass (A ms plus B us per token padded to
its CUDA graph bucket; ",pow2" for power-of-two buckets) and returns at once, as the CUDA
engine does; everything else (HTTP workers, batcher, engine pipe and loop) is the shipped
code. A client process of ``--clients`` keep-alive connections sends one short text per TEI
``/embed`` request; printed: requests a second, the means from the server's /metrics (the
client's wait, the server's own time, a request's wait for a batch, the engine round trip,
requests per batch), the simulated device's passes, padding and busy share, and each
process's share of a core (a process near 1.0 bounds the rest).

    .venv/bin/python benchmarks/sim_gpu.py --workers 1 --clients 64 --sim 0.5,1.2
    .venv/bin/python benchmarks/sim_gpu.py --workers 2 --clients 64 --sim 10,1
    .venv/bin/python benchmarks/sim_gpu.py --workers 4 --sim 2,1 --gpu-check-load

The second, a slow device, leaves neither this machine's cores nor Python to set the rate:
what it shows is the server's structure (how many passes a request waits for, how many
requests a pass carries; docs/benchmarks.md, thirty-fifth session).

The default ``--sim`` scales the 0.6B on an H200 (~1.2 ms a launch-bound pass, ~365K tokens
a second warm) by this kind of VM's ~2.3x faster Python per request (~0.4 ms against ~0.9 ms
in an H200 host's HTTP worker under load, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from common import ROOT
from gpu_check import latency_parts, scrape
from load_test import Server, build_random, load_texts
from server_cpu import busiest, load, tree_cpu


def device_stats(folder: str) -> dict[str, float]:
    """The simulated device's counters (the engine process writes them every second)."""
    out: dict[str, float] = {}
    for f in Path(folder).glob("*.json"):
        out = json.loads(f.read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sim", default="0.5,1.2")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--serve-args", default="", help="more 'smysl serve' arguments")
    ap.add_argument("--shape", default="tiny", choices=["tiny", "wide"],
                    help="the random model: tiny (64-float rows) or wide (the 0.6B's 1,024, "
                         "in one layer: its rows' cost in the server)")
    ap.add_argument("--gpu-check-load", action="store_true",
                    help="gpu_check.py's load instead: the clients in 4 processes, connecting "
                         "at once (a burst of connections, as a pool's), each text once")
    args = ap.parse_args()
    stats = tempfile.mkdtemp(prefix="smysl-sim-")
    os.environ.update(SMYSL_SIM_GPU=args.sim, SMYSL_SIM_STATS=stats,
                      PYTHONPATH=str(ROOT / "benchmarks" / "sim_gpu"))
    model = str(build_random(args.shape, Path(tempfile.gettempdir()) / "smysl-bench"))
    texts = load_texts(1000)
    srv = Server(model, "--threads", "1", "--max-wait-ms", "0", "--max-batch-tokens", "32768",
                 "--workers", args.workers, *args.serve_args.split())
    try:
        srv.wait_ready(120)
        asyncio.run(load(srv.url, texts, 500, args.clients, "/embed"))  # warm
        time.sleep(1.2)
        s0, m0, c0 = device_stats(stats), scrape(srv.url), tree_cpu(srv.proc.pid)
        if args.gpu_check_load:
            import numpy as np
            from gpu_check import _clients

            args.requests = min(args.requests, len(texts))
            width = 1024 if args.shape == "wide" else 64  # the simulated rows: unit vectors
            ref = np.zeros((args.requests, width), np.float32)
            ref[:, 0] = 1.0
            got = _clients(srv.url, texts[: args.requests], args.clients, ref)
            wall, client_cpu = got.wall, got.client_cpu
        else:
            c = time.process_time()  # the client runs in this process
            wall = asyncio.run(load(srv.url, texts, args.requests, args.clients, "/embed"))
            client_cpu = [(time.process_time() - c) / wall]
        c1, m1 = tree_cpu(srv.proc.pid), scrape(srv.url)
        time.sleep(1.2)
        s1 = device_stats(stats)
    finally:
        srv.stop()
    n = args.requests
    # closed loop: each client's mean wait is its share of the wall time
    p = latency_parts(m0, m1, [wall * args.clients / n])
    passes = s1["passes"] - s0["passes"]
    print(f"--sim {args.sim}, --workers {args.workers}, {args.clients} clients: "
          f"{n / wall:,.0f} requests/s")
    print(f"means: client {p['client_ms']:.2f} ms, server {p['server_ms']:.2f} ms (queue "
          f"{p['queue_ms']:.2f}, engine round trip {p['compute_ms']:.2f}), "
          f"{p['requests_per_batch']:.1f} requests a batch")
    print(f"device: {passes} passes ({n / passes:.1f} requests each), padded / real tokens "
          f"{(s1['padded'] - s0['padded']) / (s1['tokens'] - s0['tokens']):.2f}, busy "
          f"{(s1['busy'] - s0['busy']) / wall:.2f}")
    print("share of a core: " + ", ".join(
        f"{r} {x:.2f}" for r, x in busiest(c0, c1, wall, srv.proc.pid)[:6])
        + "; clients " + ", ".join(f"{x:.2f}" for x in client_cpu))


if __name__ == "__main__":
    main()
