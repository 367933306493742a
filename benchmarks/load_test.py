"""Load test for ``smysl serve``: loopback only, bounded in time and request count.

It measures, in one run on one machine:

1. offline batch throughput: ``Embedder.embed(texts)`` in one call (the reference vectors too);
2. ``single``: N concurrent clients, each sending one text per request, rotating over the OpenAI
   (float and base64), Ollama ``/api/embed`` and TEI ``/embed`` routes, until every text was sent
   once; every returned vector is compared with the offline vector of the same text;
3. ``batch``: the same with small batches (2..8 texts) per request; 1.-3. repeat for
   ``--rounds`` rounds, each ratio taken against the offline runs just before and after it
   (the median over rounds is the headline);
4. ``overload``: a second server with a tiny queue and more clients than it holds, sending without
   pause: 429s with Retry-After, no other errors, correct vectors in every 200, and normal service
   right after.

Usage (random Qwen3 checkpoints are built with transformers and the shared Qwen3 tokenizer)::

    .venv/bin/python benchmarks/load_test.py --random tiny --texts 1024 --clients 64
    .venv/bin/python benchmarks/load_test.py --model /path/to/checkpoint --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import ROOT, SHARED

APIS = ("openai-float", "openai-base64", "ollama", "tei")

#: Random checkpoint shapes: (hidden, layers, heads, kv heads, head dim, intermediate).
SHAPES = {
    "tiny": (64, 2, 4, 2, 16, 128),
    "small": (384, 6, 6, 2, 64, 1024),
    "0.6b": (1024, 28, 16, 8, 128, 3072),  # Qwen3-Embedding-0.6B's shape, random weights
    # the 0.6B's vector width in one cheap layer: a server's per-request cost with its
    # 1,024-float rows (pickled from the engine process, written as JSON), not its compute
    "wide": (1024, 1, 2, 1, 64, 256),
}


def build_random(shape: str, root: Path) -> Path:
    """A random Qwen3 checkpoint of ``shape`` with the real tokenizer (cached in ``root``)."""
    path = root / f"qwen3-random-{shape}"
    if (path / "config.json").is_file():
        return path
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3Model

    hidden, layers, heads, kv, head_dim, inter = SHAPES[shape]
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151669, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=head_dim, max_position_embeddings=8192,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True)  # type: ignore[call-arg]
    model = Qwen3Model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHARED / "qwen3-tokenizer" / name, path / name)
    return path


def load_texts(n: int) -> list[str]:
    """``n`` distinct real sentences (STS-B en and ru), varied in length."""
    out: list[str] = []
    seen: set[str] = set()
    for lang in ("en", "ru"):
        for split in ("test", "dev"):
            f = SHARED / "datasets" / "stsb" / f"stsb-{lang}-{split}.csv"
            if not f.is_file():
                continue
            with f.open(encoding="utf-8") as fh:
                for row in csv.reader(fh):
                    for t in row[:2]:
                        if t and t not in seen:
                            seen.add(t)
                            out.append(t)
    if len(out) < n:  # synthetic fallback, still distinct
        out += [f"synthetic sentence {i} " + "слово " * (i % 9) for i in range(n - len(out))]
    random.Random(0).shuffle(out)
    return out[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``smysl serve`` in a subprocess on 127.0.0.1."""

    def __init__(self, model: str, *extra: str, device: str = "cpu",
                 cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "smysl.cli", "serve", "--model", model, "--host",
               "127.0.0.1", "--port", str(self.port), "--device", device, *extra]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> int:
        self.proc.terminate()  # SIGTERM: graceful shutdown
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in APIS})
    statuses: dict[int, int] = field(default_factory=dict)
    texts_ok: int = 0
    mismatched: int = 0
    max_diff: float = 0.0
    retry_after_missing: int = 0
    transport_errors: int = 0
    wall_s: float = 0.0

    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]


def request_for(api: str, texts: list[str]) -> tuple[str, dict[str, object]]:
    if api.startswith("openai"):
        return "/v1/embeddings", {"model": "served", "input": texts,
                                  "encoding_format": api.split("-")[1]}
    if api == "ollama":
        return "/api/embed", {"model": "served", "input": texts}
    return "/embed", {"inputs": texts}


def vectors_of(api: str, body: object) -> np.ndarray:
    if api == "openai-float":
        return np.array([d["embedding"] for d in body["data"]], np.float32)  # type: ignore[index]
    if api == "openai-base64":
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                         for d in body["data"]])  # type: ignore[index]
    if api == "ollama":
        return np.array(body["embeddings"], np.float32)  # type: ignore[index]
    return np.array(body, np.float32)


class Conn:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams. httpx costs about a
    millisecond of CPU per request; on a small machine the load generator would otherwise
    measure itself rather than the server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: object) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body, ensure_ascii=False).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(url: str, work: list[tuple[str, list[int]]], texts: list[str], ref: np.ndarray,
                clients: int, time_limit: float) -> Tally:
    """``clients`` closed-loop clients (one connection each) share ``work`` (api, text
    indices); every returned vector is checked against ``ref``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    tally = Tally()
    queue = list(reversed(work))
    deadline = time.perf_counter() + time_limit

    async def client() -> None:
        conn = Conn(host, int(port))
        try:
            while queue and time.perf_counter() < deadline:
                api, idx = queue.pop()
                path, body = request_for(api, [texts[i] for i in idx])
                t0 = time.perf_counter()
                try:
                    status, headers, payload = await conn.post(path, body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    tally.transport_errors += 1
                    await conn.close()
                    continue
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                if status == 429:
                    if "retry-after" not in headers:
                        tally.retry_after_missing += 1
                    continue
                if status != 200:
                    continue
                tally.latencies[api].append(time.perf_counter() - t0)
                got = vectors_of(api, json.loads(payload))
                want = ref[idx]
                if got.shape != want.shape or not np.array_equal(got, want):
                    tally.mismatched += len(idx)
                    if got.shape == want.shape:
                        tally.max_diff = max(tally.max_diff, float(np.abs(got - want).max()))
                else:
                    tally.texts_ok += len(idx)
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(clients)])
    tally.wall_s = time.perf_counter() - start
    return tally


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q) * 1000) if xs else float("nan")


def summary(name: str, t: Tally) -> dict[str, object]:
    lat = t.all_latencies()
    return {
        "phase": name, "requests_ok": len(lat), "texts_ok": t.texts_ok,
        "mismatched": t.mismatched, "max_abs_diff": t.max_diff, "statuses": t.statuses,
        "transport_errors": t.transport_errors, "wall_s": round(t.wall_s, 3),
        "texts_per_s": round(t.texts_ok / t.wall_s, 1) if t.wall_s else 0.0,
        "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
        "per_api_p50_ms": {a: round(pct(v, 50), 2) for a, v in t.latencies.items() if v},
        "retry_after_missing": t.retry_after_missing,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory (or any model string)")
    src.add_argument("--random", choices=sorted(SHAPES), help="build a random Qwen3 checkpoint")
    p.add_argument("--random-dir", default=os.path.join(tempfile.gettempdir(), "smysl-bench"))
    p.add_argument("--texts", type=int, default=1024, help="distinct texts (each sent once)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase (cap)")
    p.add_argument("--overload-queue", type=int, default=8)
    p.add_argument("--overload-clients", type=int, default=64)
    p.add_argument("--overload-requests", type=int, default=600)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads, the same offline and in the server (vectors depend on "
                        "it); default leaves one core for HTTP and the clients")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of offline / single / batch; ratios are per round, then median")
    p.add_argument("--skip-overload", action="store_true")
    p.add_argument("--serve-args", default="", help="extra 'smysl serve' arguments")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server subprocess inherits it
    import torch

    from smysl import Embedder

    torch.set_num_threads(args.threads)
    model = args.model or str(build_random(args.random, Path(args.random_dir)))
    texts = load_texts(args.texts)
    extra = ["--served-name", "served", "--max-inputs", "4096", "--threads", str(args.threads)]
    if args.max_batch_tokens:
        extra += ["--max-batch-tokens", str(args.max_batch_tokens)]
    extra += args.serve_args.split()

    # 1. offline batch throughput (and the reference vectors), with the server idle; measured
    # again after every round
    emb = Embedder.load(model, device="cpu", max_batch_tokens=args.max_batch_tokens,
                        threads=args.threads)
    emb.embed(texts[:32])  # warm-up

    def offline() -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        vectors = emb.embed(texts)
        return vectors, len(texts) / (time.perf_counter() - t0)

    ref, offline_tps = offline()
    n_tokens = sum(emb.count_tokens(texts))
    results: dict[str, object] = {
        "model": model, "texts": len(texts), "tokens": n_tokens, "clients": args.clients,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "serve_args": extra, "load_average_start": os.getloadavg()[0],
    }
    rng = random.Random(1)
    single = [(APIS[i % 4], [i]) for i in range(len(texts))]
    batches: list[tuple[str, list[int]]] = []
    i = 0
    while i < len(texts):
        k = rng.randint(2, 8)
        batches.append((APIS[len(batches) % 4], list(range(i, min(i + k, len(texts))))))
        i += k

    # 2.-3. rounds of: single texts, small batches (every API in rotation), offline again. Each
    # round's ratio uses the offline runs just before and after it: this machine's speed drifts
    # by +-10% within a minute, so a ratio against a baseline taken minutes apart means little.
    server = Server(model, *extra)
    rounds: list[dict[str, object]] = []
    tallies: dict[str, list[Tally]] = {"single": [], "batch": []}
    try:
        server.wait_ready()
        warm = [(APIS[i % 4], [i]) for i in range(min(64, len(texts)))]
        asyncio.run(drive(server.url, warm, texts, ref, 8, 30))
        for _ in range(args.rounds):
            row: dict[str, object] = {"offline_before": round(offline_tps, 1)}
            for phase, work in (("single", single), ("batch", batches)):
                t = asyncio.run(drive(server.url, work, texts, ref, args.clients,
                                      args.time_limit))
                tallies[phase].append(t)
                row[phase] = summary(phase, t)
            again, after = offline()
            assert np.array_equal(again, ref), "offline embedding is not deterministic"
            row["offline_after"] = round(after, 1)
            base = (offline_tps + after) / 2
            for phase in ("single", "batch"):
                tps = row[phase]["texts_per_s"]  # type: ignore[index]
                row[f"{phase}_vs_offline"] = round(tps / base, 3)
            rounds.append(row)
            offline_tps = after
    finally:
        results["server_exit"] = server.stop()
    results["rounds"] = rounds
    for phase in ("single", "batch"):
        merged = Tally()
        for t in tallies[phase]:
            for api, xs in t.latencies.items():
                merged.latencies[api] += xs
            for code, n in t.statuses.items():
                merged.statuses[code] = merged.statuses.get(code, 0) + n
            merged.texts_ok += t.texts_ok
            merged.mismatched += t.mismatched
            merged.max_diff = max(merged.max_diff, t.max_diff)
            merged.transport_errors += t.transport_errors
            merged.wall_s += t.wall_s
        results[phase] = summary(phase, merged)
        ratios = [r[f"{phase}_vs_offline"] for r in rounds]
        results[f"{phase}_vs_offline"] = float(np.median(ratios))  # type: ignore[arg-type]
        results[f"{phase}_vs_offline_rounds"] = ratios

    # 4. overload: more clients than the queue holds, no think time
    if not args.skip_overload:
        server = Server(model, *extra, "--max-queue", str(args.overload_queue))
        try:
            server.wait_ready()
            work = [(APIS[i % 4], [i % len(texts)]) for i in range(args.overload_requests)]
            over = summary("overload", asyncio.run(
                drive(server.url, work, texts, ref, args.overload_clients, args.time_limit)))
            after = summary("after-overload", asyncio.run(
                drive(server.url, [(APIS[i % 4], [i]) for i in range(64)], texts, ref, 4,
                      args.time_limit)))
            results["overload"] = over
            results["after_overload"] = after
            results["overload_server_alive"] = server.proc.poll() is None
        finally:
            results["overload_server_exit"] = server.stop()

    results["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    ok = all(results[k]["mismatched"] == 0 and not any(  # type: ignore[index]
        code >= 500 for code in results[k]["statuses"])  # type: ignore[index]
        for k in ("single", "batch", "overload", "after_overload") if k in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
