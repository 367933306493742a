"""The server's compute thread on a simulated GPU: is the device kept busy under many clients?

A CUDA engine's ``submit`` returns once a pass is queued; the server's compute thread then takes
and queues the next batch before it reads and posts the rows of the running one
(:meth:`smysl.server.batcher.Batcher._work`). This measures what that buys, without a GPU: the
engine is a stand-in whose passes run on a "device" thread that sleeps for a pass's time
(``--pass-ms`` per pass plus ``--token-us`` per token; the GIL is free meanwhile, as during a
real GPU pass), and everything above it is smysl's own code: the
:class:`~smysl.qwen3.embedder.Embedder` (``start_prepared``), the server's
:class:`~smysl.server.batcher.Batcher` and its event loop, with ``--clients`` closed-loop
clients of one pre-tokenised text each.

Both orders run interleaved, ``--rounds`` times: ``queued`` (the engine says it queues: the
compute thread keeps one batch ahead) and ``in turn`` (the same engine, each batch waited for
before the next is taken, as before). Reported: texts/s, the share of the wall time the device
was busy, and the mean batch size.

    .venv/bin/python benchmarks/bench_pipeline.py --pass-ms 2 --token-us 0.3 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

import numpy as np

from smysl.qwen3.contract import run_ahead
from smysl.qwen3.embedder import Embedder
from smysl.server.batcher import Batcher, EmbedBackend, Job
from smysl.server.metrics import Metrics
from smysl.tokenize import Tokenizer

HIDDEN = 1024


class SimulatedDevice:
    """The engine contract with passes on a device thread that sleeps for their time."""

    hidden_size = HIDDEN
    vocab_rows = 151669
    max_positions = 32768
    device = "cuda"
    dtype = "bfloat16"
    cpu = None
    quantization = None
    parameters = 0
    pid = None
    cuda_graphs: tuple[int, ...] = ()
    kernel = "simulated"
    numerics = ""
    chunk = 4096
    lanes = 1
    alive = True
    threads = None
    tuned_at = None

    def __init__(self, pass_s: float, token_s: float, queues: bool) -> None:
        self.pass_s, self.token_s, self.queues = pass_s, token_s, queues
        self.busy = 0.0
        self.passes = 0
        self._work: queue.SimpleQueue[tuple[int, int, Future[np.ndarray]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            rows, tokens, done = item
            t = self.pass_s + self.token_s * tokens
            time.sleep(t)
            self.busy += t
            self.passes += 1
            done.set_result(np.ones((rows, HIDDEN), np.float32))

    def submit(self, batch: list[list[int]], heads: list[int] | None = None
               ) -> Callable[[], np.ndarray]:
        done: Future[np.ndarray] = Future()
        self._work.put((len(batch), sum(map(len, batch)), done))
        if not self.queues:  # as on CPU: the pass has run when submit returns
            rows = done.result()
            return lambda: rows
        return done.result

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        return self.submit(batch, heads)()

    def forward_many(self, batches: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
        return run_ahead(self.submit, batches, self.queues)

    def close(self) -> None:
        self._work.put(None)


async def load(batcher: Batcher, seqs: list[list[int]], clients: int, per_request: int
               ) -> float:
    """``clients`` closed-loop clients send every sequence once, ``per_request`` a request
    -> wall seconds."""
    it = iter(range(0, len(seqs), per_request))

    async def client() -> None:
        for i in it:
            part = seqs[i : i + per_request]
            await batcher.submit(Job(("ids",), part, [len(s) for s in part], HIDDEN))

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t
    await batcher.close()
    return wall


def one(args: argparse.Namespace, tokenizer: Tokenizer, seqs: list[list[int]], queues: bool
        ) -> dict[str, float]:
    device = SimulatedDevice(args.pass_ms / 1000, args.token_us / 1e6, queues)
    emb = Embedder(device, tokenizer, name="simulated")  # type: ignore[arg-type]
    # the server's budgets on CUDA (smysl.server.service): the engine's batch, no wait
    batcher = Batcher(EmbedBackend(emb), Metrics(), max_batch_tokens=emb.batch_tokens,
                      max_batch_requests=256, max_wait_s=0, max_queue=1024)
    wall = asyncio.run(load(batcher, seqs, args.clients, args.per_request))
    device.close()
    return {"texts_s": len(seqs) / wall, "busy": device.busy / wall,
            "batch": len(seqs) / max(device.passes, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pass-ms", type=float, default=2.0)
    ap.add_argument("--token-us", type=float, default=0.3)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    ap.add_argument("--texts", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from common import TOKENIZER, corpus

    tokenizer = Tokenizer(str(TOKENIZER / "tokenizer.json"), 32768)
    texts = [t for t in corpus(1.0) if len(t) < 400]
    texts = (texts * (args.texts // len(texts) + 1))[: args.texts]
    seqs = tokenizer.encode(texts)  # EOS last
    results: dict[str, list[dict[str, float]]] = {"in turn": [], "queued": []}
    for _ in range(args.rounds):
        for name, queues in (("in turn", False), ("queued", True)):
            results[name].append(one(args, tokenizer, seqs, queues))
    mean = sum(map(len, seqs)) / len(seqs)
    print(f"simulated pass {args.pass_ms} ms + {args.token_us} us/token; {args.clients} "
          f"clients, {args.per_request} text(s) per request, {len(seqs)} texts of {mean:.0f} "
          f"tokens; medians of {args.rounds} interleaved rounds\n")
    print("| compute thread | texts/s | device busy | texts per pass |\n|---|---|---|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"| {name} | {med['texts_s']:,.0f} | {med['busy']:.0%} | {med['batch']:.1f} |")


if __name__ == "__main__":
    main()
