"""Short requests while one long input computes: how long a query waits behind a document.

``smysl serve`` of a real-shape random checkpoint (CPU, engine in its child process, as a
newcomer runs it); one request with a single long input (``--long-tokens``), and meanwhile a
short query every ``--interval`` seconds, each on its own connection, until the long one is
answered. Reported: the long request's time, and the short ones' latency (p50, p95, max) among
those sent while it computed; every short reply is checked against the vector of the same
query asked on an idle server (bit for bit: the engine is batch-invariant). With
``--abandon S``: the long input again from a client that leaves after S seconds, then the time
of an input a quarter as long (did the abandoned pass run on?).

Usage::

    .venv/bin/python benchmarks/long_and_short.py --long-tokens 8192
    .venv/bin/python benchmarks/long_and_short.py --other /tmp/old-checkout   # A/B, one run

``--other DIR`` serves from another checkout (a ``git worktree`` of an older commit) first, on
the same checkpoint and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from common import ROOT, random_checkpoint
from load_test import Conn, Server

QUERY = "как устроен семантический поиск?"


def _vector(payload: bytes) -> np.ndarray:
    data = json.loads(payload)["data"][0]["embedding"]
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


async def _embed(port: int, text: str) -> tuple[float, int, bytes]:
    """(seconds, status, body) of one /v1/embeddings request on a fresh connection."""
    conn = Conn("127.0.0.1", port)
    t = time.perf_counter()
    try:
        status, _, body = await conn.post("/v1/embeddings", {
            "model": "served", "input": [text], "encoding_format": "base64"})
    finally:
        await conn.close()
    return time.perf_counter() - t, status, body


async def _round(port: int, long_text: str, interval: float) -> dict[str, object]:
    _, status, body = await _embed(port, QUERY)  # idle: the reference vector
    assert status == 200, body[:300]
    want = _vector(body)
    long = asyncio.ensure_future(_embed(port, long_text))
    start = time.perf_counter()
    shorts: list[asyncio.Future[tuple[float, int, bytes]]] = []
    while not long.done():
        shorts.append(asyncio.ensure_future(_embed(port, QUERY)))
        await asyncio.sleep(interval)
    long_s, long_status, long_body = await long
    done = await asyncio.gather(*shorts)
    lat = sorted(s for s, _, _ in done)
    bad = sum(st != 200 or not np.array_equal(_vector(b), want) for _, st, b in done)
    return {"long_status": long_status, "long_s": round(long_s, 2),
            "long_error": "" if long_status == 200 else long_body[:200].decode(errors="replace"),
            "shorts": len(lat), "short_p50_s": round(statistics.median(lat), 3),
            "short_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "short_max_s": round(lat[-1], 3), "short_wrong_or_failed": bad,
            "wall_s": round(time.perf_counter() - start, 2)}


async def _abandon(port: int, long_text: str, after: float, follow_text: str
                   ) -> dict[str, object]:
    """A client that sends the long input and leaves after ``after`` seconds (an HTTP
    client's timeout), then one that sends ``follow_text``: how long that one takes shows
    whether the abandoned pass ran on."""
    conn = Conn("127.0.0.1", port)
    sent = asyncio.ensure_future(conn.post("/v1/embeddings", {
        "model": "served", "input": [long_text], "encoding_format": "base64"}))
    await asyncio.sleep(after)
    sent.cancel()
    await conn.close()
    follow_s, status, _ = await _embed(port, follow_text)
    return {"abandoned_after_s": after, "follow_status": status,
            "follow_s": round(follow_s, 2)}


def run(checkout: Path, model: Path, long_text: str, interval: float, rounds: int,
        extra: list[str], abandon: float) -> list[dict[str, object]]:
    server = Server(str(model), "--served-name", "served", *extra, cwd=checkout)
    try:
        server.wait_ready(600)
        out = [asyncio.run(_round(server.port, long_text, interval)) for _ in range(rounds)]
        if abandon:
            out.append(asyncio.run(_abandon(server.port, long_text, abandon,
                                            long_text[: len(long_text) // 4])))
        return out
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="0.6b")
    p.add_argument("--long-tokens", type=int, default=8192)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--abandon", type=float, default=0.0,
                   help="then send the long input again, leave after this many seconds, and "
                        "time an input a quarter as long sent right after")
    p.add_argument("--other", type=Path, help="another checkout to serve from first (A/B)")
    p.add_argument("--serve-args", default="", help="extra `smysl serve` arguments")
    args = p.parse_args()
    root = Path(os.environ.get("SMYSL_BENCH_DIR", "/tmp/smysl-bench"))
    model = random_checkpoint(args.size, root / f"qwen3-{args.size}-random")
    # " word" is one token of the Qwen3 tokenizer: ~N tokens, and EOS
    long_text = "word " * (args.long_tokens - 1)
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
             if f in Path("/proc/cpuinfo").read_text().split()]
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "flags": flags,
                      "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                      "size": args.size, "long_tokens": args.long_tokens,
                      "interval_s": args.interval}))
    extra = args.serve_args.split()
    for name, checkout in (("other", args.other), ("this", ROOT)):
        if checkout is None:
            continue
        for r in run(checkout, model, long_text, args.interval, args.rounds, extra,
                     args.abandon):
            print(json.dumps({"checkout": name, **r}), flush=True)


if __name__ == "__main__":
    main()
