"""Fault campaign for ``smysl serve`` (loopback only): faults mixed into real traffic.

One run, against ``smysl serve`` in a subprocess (the engine in its own child process, as in
production), on a random Qwen3 checkpoint with the real Qwen3 tokenizer (``--random small``, the
default: hidden 384, 6 layers, 8,192 positions; ``tiny``: hidden 64, 2 layers; ``0.6b``: the
real shape, slow on a CPU). On ``tiny`` a batch takes ~4 ms, so a few milliseconds of GIL waits
while a burst is tokenised weigh on the measured drain rate and Retry-After over-estimates
(2-4x); from ``small`` on batches are long enough for it to track the drain closely.

1. ``traffic``: ``--requests`` requests from ``--clients`` closed-loop clients over the OpenAI,
   Ollama and TEI routes; 5% are abandoned by their client mid-flight (the connection closes),
   10% are oversized or malformed (a body over the size limit, more tokens than
   ``max_request_tokens``, broken JSON, wrong types, a lone surrogate, an empty string, an
   unknown model), and the engine process is killed with SIGKILL half way. Every 200 is compared
   with in-process vectors (``Embedder.embed`` with the same thread count: must be bit-identical);
   a 5xx is allowed only as the documented 503 while the engine is down.
2. ``fairness``: 4 maximum-size requests (``max_request_tokens`` tokens each) run while 4 clients
   send one short text at a time: the short requests' p99 latency.
3. ``retry-after``: a second server with a small queue, filled with ordinary requests; each 429's
   Retry-After against how long the requests queued before it really took to drain.

    .venv/bin/python benchmarks/fault_campaign.py --random small

The engine process on a GPU runs its passes pipelined (several in flight, requests merged
while one runs); the same code with the CPU's passes, real vectors, on a "device" thread
(benchmarks/sim_gpu/sitecustomize.py), two HTTP workers:

    SMYSL_SIM_GPU=real PYTHONPATH=benchmarks/sim_gpu .venv/bin/python \
        benchmarks/fault_campaign.py --random small --serve-args "--workers 2"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import SHAPES, Conn, Server, build_random, load_texts, request_for, vectors_of

APIS = ("openai-float", "openai-base64", "ollama", "tei")
#: Bars from issue 11.
BACK_WITHIN_S, SHORT_P99_S, RETRY_RATIO = 10.0, 2.0, 2.0


async def raw_post(host: str, port: int, path: str, body: bytes,
                   content_type: str | None = "application/json",
                   abandon_after: float | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, body bytes as given; ``abandon_after`` closes the
    connection that many seconds after sending, answered or not (status 0 then)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        if abandon_after is not None:
            await asyncio.sleep(abandon_after)
            return 0, {}, b""
        raw = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head_b, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_b.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, payload


def bad_request(rng: random.Random, limit_bytes: int, cap: int) -> tuple[str, bytes, str]:
    """An oversized or malformed request: (path, body, what)."""
    kind = rng.randrange(7)
    if kind == 0:
        return "/v1/embeddings", b'{"input": "' + b"x" * (limit_bytes + 1024) + b'"}', "body"
    if kind == 1:
        ids = [[rng.randrange(1000, 100000) for _ in range(1023)] for _ in range(cap // 1000)]
        return "/v1/embeddings", json.dumps({"input": ids}).encode(), "tokens"
    if kind == 2:
        return "/api/embed", b'{"input": ["unterminated', "json"
    if kind == 3:
        return "/embed", b'{"inputs": 5, "normalize": "yes"}', "types"
    if kind == 4:
        return "/api/embed", b'{"input": "x", "instruction": "\\ud800 task"}', "surrogate"
    if kind == 5:
        return "/v1/embeddings", b'{"input": ["ok", ""]}', "empty"
    return "/v1/embeddings", b'{"input": "x", "model": "text-embedding-3-large"}', "model"


@dataclass
class Traffic:
    statuses: dict[int, int] = field(default_factory=dict)
    ok_vectors: int = 0
    wrong_vectors: int = 0
    bad_answered_2xx: int = 0
    documented_503: int = 0
    other_5xx: list[str] = field(default_factory=list)
    abandoned: int = 0
    #: connections reset while sending a body over the size limit (answered 413 early)
    oversize_resets: int = 0
    transport_errors: int = 0
    kill_at: float = 0.0
    back_at: float = 0.0
    wall_s: float = 0.0


async def traffic(url: str, engine_pid: int, texts: list[str], ref: np.ndarray, n: int,
                  clients: int, limit_bytes: int, cap: int, seed: int) -> Traffic:
    host, port_s = url.removeprefix("http://").rsplit(":", 1)
    port = int(port_s)
    rng = random.Random(seed)
    plan: list[tuple[str, Any]] = []  # (kind, text indices or a bad request)
    for i in range(n):
        r = rng.random()
        if r < 0.05:
            plan.append(("abandon", [rng.randrange(len(texts)) for _ in range(rng.randint(1, 4))]))
        elif r < 0.15:
            plan.append(("bad", bad_request(rng, limit_bytes, cap)))
        else:
            plan.append((APIS[i % len(APIS)],
                         [rng.randrange(len(texts)) for _ in range(rng.randint(1, 4))]))
    out = Traffic()
    down: list[tuple[float, float, int, bytes]] = []  # 5xx: (sent, answered, status, body)
    queue = list(reversed(list(enumerate(plan))))
    kill_index = n // 2
    t_start = time.perf_counter()

    async def watch_back() -> None:
        import httpx

        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                await asyncio.sleep(0.05)
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(f"{url}/health")).status_code == 200:
                        out.back_at = time.perf_counter()
                        return

    watcher: list[asyncio.Task[None]] = []

    async def client() -> None:
        conn = Conn(host, port)
        try:
            while queue:
                i, (kind, payload) = queue.pop()
                if i == kill_index and not out.kill_at:
                    os.kill(engine_pid, signal.SIGKILL)  # as the OOM killer would
                    out.kill_at = time.perf_counter()
                    watcher.append(asyncio.create_task(watch_back()))
                sent = time.perf_counter()
                try:
                    if kind == "abandon":
                        path, body = request_for(APIS[i % 4], [texts[j] for j in payload])
                        await raw_post(host, port, path, json.dumps(body).encode(),
                                       abandon_after=rng.uniform(0, 0.02))
                        out.abandoned += 1
                        continue
                    if kind == "bad":
                        path, data, _ = payload
                        status, _, body_b = await raw_post(host, port, path, data)
                    else:
                        path, body = request_for(kind, [texts[j] for j in payload])
                        status, _, body_b = await conn.post(path, body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if kind == "bad" and payload[2] == "body":
                        out.oversize_resets += 1
                    else:
                        out.transport_errors += 1
                    await conn.close()
                    continue
                out.statuses[status] = out.statuses.get(status, 0) + 1
                if status >= 500:
                    down.append((sent, time.perf_counter(), status, body_b))
                    continue
                if kind == "bad":
                    out.bad_answered_2xx += status < 300
                    continue
                if status == 200:
                    got = vectors_of(kind, json.loads(body_b))
                    want = ref[payload]
                    if got.shape == want.shape and np.array_equal(got, want):
                        out.ok_vectors += len(payload)
                    else:
                        out.wrong_vectors += len(payload)
        finally:
            await conn.close()

    await asyncio.gather(*[client() for _ in range(clients)])
    if watcher:
        await asyncio.wait_for(watcher[0], 120)
    out.wall_s = time.perf_counter() - t_start
    for sent, answered, status, body_b in down:
        in_window = out.kill_at <= answered and sent <= out.back_at + 0.5
        if status == 503 and in_window and b"is down" in body_b:
            out.documented_503 += 1
        else:
            out.other_5xx.append(f"{status} {body_b[:120]!r}")
    return out


async def fairness(url: str, cap: int, vocab: int, seed: int, seconds: float
                   ) -> tuple[list[float], list[float], int]:
    """For ``seconds``, 4 clients keep a maximum-size request (``cap`` tokens) running each while
    4 clients send one short text at a time: the short requests' latencies and server-side
    queue waits, and how many large requests completed."""
    host, port_s = url.removeprefix("http://").rsplit(":", 1)
    rng = random.Random(seed)
    per = 255  # + EOS = 256 tokens per input
    big: list[dict[str, object]] = [{"input": [[rng.randrange(1000, vocab) for _ in range(per)]
                      for _ in range(cap // (per + 1))]} for _ in range(4)]
    latencies: list[float] = []
    waits: list[float] = []
    done = [0]
    stop_at = time.perf_counter() + seconds

    async def large(body: dict[str, object]) -> None:
        conn = Conn(host, int(port_s))
        while time.perf_counter() < stop_at:
            status, _, payload = await conn.post("/v1/embeddings", body)
            assert status == 200, payload[:200]
            done[0] += 1
        await conn.close()

    async def short(k: int) -> None:
        conn = Conn(host, int(port_s))
        await asyncio.sleep(0.5)  # the large requests hold the compute thread first
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status, headers, _ = await conn.post("/v1/embeddings", {"input": f"short {k} {t0}"})
            assert status == 200
            latencies.append(time.perf_counter() - t0)
            waits.append(float(headers["x-queue-time"]) / 1000)
        await conn.close()

    await asyncio.gather(*[large(b) for b in big], *[short(k) for k in range(4)])
    return latencies, waits, done[0]


async def retry_after(url: str, texts: list[str], queue: int, cap: int, probes: int,
                      drain_s: float = 6.0) -> list[tuple[int, float]]:
    """Fill the queue with requests sized so that it holds about ``drain_s`` of work, probe for
    a 429 once it is full, and measure how long the requests accepted before it took to finish:
    (Retry-After, observed wait) per probe."""
    import httpx

    host, port_s = url.removeprefix("http://").rsplit(":", 1)
    port = int(port_s)
    rng = random.Random(7)
    unit = [" ".join(texts[rng.randrange(len(texts))] for _ in range(12)) for _ in range(8)]
    warm = Conn(host, port)
    t0 = time.perf_counter()
    for _ in range(3):  # also lets the server measure its drain rate on real batches
        _, headers, _ = await warm.post("/v1/embeddings", {"input": unit})
    unit_tokens = int(headers["x-compute-tokens"])
    rate = 3 * unit_tokens / (time.perf_counter() - t0)  # tokens per second, end to end
    await warm.close()
    units = max(1, min(cap // unit_tokens, round(drain_s * rate / (queue * unit_tokens))))
    body = {"input": unit * units}
    depth = re.compile(r"^smysl_queue_depth (\S+)$", re.M)
    out = []
    async with httpx.AsyncClient(timeout=10) as metrics:
        for _ in range(probes):
            conns = [Conn(host, port) for _ in range(queue)]
            tasks = [asyncio.ensure_future(c.post("/v1/embeddings", body)) for c in conns]
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline:  # until they are all queued (one may run)
                m = depth.search((await metrics.get(f"{url}/metrics")).text)
                if m and float(m[1]) >= queue - 1:
                    break
                await asyncio.sleep(0.02)
            retry = None
            while retry is None and time.perf_counter() < deadline:
                probe = Conn(host, port)
                conns.append(probe)
                task = asyncio.ensure_future(probe.post("/v1/embeddings", body))
                finished, _ = await asyncio.wait({task}, timeout=0.2)
                if finished and task.result()[0] == 429:
                    retry = int(task.result()[1]["retry-after"])
                else:
                    tasks.append(task)  # accepted: part of the queue now
            t0 = time.perf_counter()
            results = await asyncio.gather(*tasks)
            observed = time.perf_counter() - t0
            for c in conns:
                await c.close()
            if retry is not None and all(r[0] == 200 for r in results):
                out.append((retry, observed))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model")
    src.add_argument("--random", choices=sorted(SHAPES), default="small")
    p.add_argument("--random-dir", default=os.path.join(tempfile.gettempdir(), "smysl-bench"))
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-request-tokens", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-args", default="", help="more 'smysl serve' arguments (e.g. "
                   "--workers 2)")
    p.add_argument("--fairness-s", type=float, default=20.0,
                   help="seconds the large requests keep running in the fairness phase")
    args = p.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from smysl import Embedder

    torch.set_num_threads(args.threads)
    model = args.model or str(build_random(args.random, Path(args.random_dir)))
    texts = load_texts(2000)
    emb = Embedder.load(model, device="cpu", threads=args.threads)
    ref = emb.embed(texts)
    vocab = emb.engine.vocab_rows
    limit_mb = 1.0
    flags = ["--served-name", "served", "--threads", str(args.threads), "--max-request-mb",
             str(limit_mb), "--max-request-tokens", str(args.max_request_tokens),
             "--token-ids",  # the fairness part sends Qwen3 token ids (off by default)
             *args.serve_args.split()]
    print(f"model: {model} ({args.random if not args.model else 'given'}; hidden "
          f"{emb.dimensions}, batch budget {emb.batch_tokens} tokens), {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs", flush=True)

    rows: list[tuple[str, str, str, str]] = []
    server = Server(model, *flags)
    try:
        server.wait_ready()
        pid_m = re.search(r"engine in child process (\d+)", server.output())
        assert pid_m, server.output()
        t = asyncio.run(traffic(server.url, int(pid_m[1]), texts, ref, args.requests,
                                args.clients, int(limit_mb * 1024 * 1024),
                                args.max_request_tokens, args.seed))
        back = t.back_at - t.kill_at
        lat, waits, larges = asyncio.run(fairness(server.url, args.max_request_tokens, vocab,
                                                  args.seed, args.fairness_s))
    finally:
        code = server.stop()
    print(f"traffic: {args.requests} requests in {t.wall_s:.1f} s, statuses {t.statuses}, "
          f"{t.abandoned} abandoned, {t.oversize_resets} oversized bodies refused by a reset, "
          f"{t.transport_errors} other transport errors, "
          f"{t.ok_vectors} vectors checked; server exit code {code}", flush=True)
    if t.other_5xx:
        print("other 5xx:", *t.other_5xx[:10], sep="\n  ")
    rows.append(("wrong vectors (vs in-process)", str(t.wrong_vectors), "0",
                 "ok" if t.wrong_vectors == 0 else "FAIL"))
    rows.append(("bad requests answered 2xx", str(t.bad_answered_2xx), "0",
                 "ok" if t.bad_answered_2xx == 0 else "FAIL"))
    rows.append(("5xx besides the documented 503 window", str(len(t.other_5xx)), "0",
                 "ok" if not t.other_5xx else "FAIL"))
    rows.append(("documented 503s while the engine was down", str(t.documented_503), "-", "-"))
    rows.append(("engine back after kill", f"{back:.2f} s", f"< {BACK_WITHIN_S:g} s",
                 "ok" if 0 < back < BACK_WITHIN_S else "FAIL"))
    p99 = pct(lat, 99)
    rows.append((f"short request p99 latency while 4 x {args.max_request_tokens}-token requests "
                 f"run ({len(lat)} shorts, {larges} large done in {args.fairness_s:g} s; p50 "
                 f"{pct(lat, 50):.3f} s; server queue wait p99 {pct(waits, 99):.3f} s)",
                 f"{p99:.3f} s", f"< {SHORT_P99_S:g} s", "ok" if p99 < SHORT_P99_S else "FAIL"))
    rows.append(("transport errors (besides resets of oversized bodies)",
                 str(t.transport_errors), "0", "ok" if t.transport_errors == 0 else "FAIL"))

    small_queue = 32
    # one worker: the probe fills one queue (each worker has its own, and the kernel spreads
    # the requests over them)
    server = Server(model, *flags, "--max-queue", str(small_queue), "--workers", "1")
    try:
        server.wait_ready()
        probes = asyncio.run(retry_after(server.url, texts, small_queue,
                                         args.max_request_tokens, 3))
    finally:
        server.stop()
    for ra, obs in probes:
        ratio = max(ra / obs, obs / ra) if obs > 0 else float("inf")
        rows.append((f"Retry-After vs observed drain of a {small_queue}-request queue",
                     f"{ra} s vs {obs:.2f} s ({ratio:.2f}x)", f"within {RETRY_RATIO:g}x",
                     "ok" if ratio <= RETRY_RATIO else "FAIL"))
    if not probes:
        rows.append(("Retry-After probe", "no 429 seen", "a 429", "FAIL"))

    widths = [max(len(r[i]) for r in [("check", "measured", "bar", ""), *rows])
              for i in range(4)]
    for r in [("check", "measured", "bar", "result"), *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)))
    return 0 if all(r[3] in ("ok", "-") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
