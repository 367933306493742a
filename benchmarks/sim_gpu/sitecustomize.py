"""A simulated GPU inside smysl's engine process, for ``benchmarks/sim_gpu.py`` only.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; with ``SMYSL_SIM_GPU`` set
("A_MS,B_US" or "A_MS,B_US,pow2") this one patches :class:`smysl.qwen3.engine.Engine` when
the engine process imports :mod:`smysl.qwen3.worker`: ``submit`` queues the pass on one FIFO
"device" thread that takes A_MS + B_US per token of the pass (the tokens padded to the CUDA
graph bucket the batch would replay, powers of two with ``pow2``) and returns at once
(``queues``, as on CUDA); the rows are unit vectors. The engine's merge budget is CUDA's.
With ``SMYSL_SIM_GPU=real`` the device thread runs the engine's own CPU pass instead (its rows,
its errors, raised when the rows are read): the CUDA path's concurrency with real vectors, for
``benchmarks/fault_campaign.py``.
Every second the device's counters go to ``$SMYSL_SIM_STATS/<pid>.json``. The HTTP workers,
the batcher, the pipe to the engine process and its loop are the shipped ones, so their
latency can be studied on a CPU machine; the real pass's host work (packing, pinned copies,
launches) is left out, so the engine process's share of a core reads low.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any

SPEC = os.environ.get("SMYSL_SIM_GPU")


def _patch(engine_mod: Any, worker_mod: Any) -> None:
    import json
    import queue
    import threading
    import time

    import numpy as np

    from smysl.qwen3 import cuda
    from smysl.qwen3.contract import BATCH_TOKENS

    real = SPEC == "real"
    parts = (SPEC or "").split(",") if not real else ["0", "0"]
    fixed, per_token = float(parts[0]) / 1e3, float(parts[1]) / 1e6
    # the engine's default graphs (cuda_graphs 2048), or powers of two as before
    buckets = ([cuda.Bucket(1 << i, min(max((1 << i) // 4, 1), 128)) for i in range(4, 12)]
               if len(parts) > 2 and parts[2] == "pow2" else cuda.buckets(2048))
    stats = {"passes": 0, "tokens": 0, "padded": 0, "busy": 0.0}

    def padded(lengths: list[int]) -> int:
        """Tokens the pass computes: its graph bucket's (the first with room for its tokens
        and its sequences, as the engine picks), else its own (eager)."""
        fits = (b.tokens for b in buckets if cuda.slot_lengths(lengths, b) is not None)
        return next(fits, sum(lengths))

    def device(work: queue.SimpleQueue) -> None:
        while True:
            seconds, done = work.get()
            start = time.perf_counter()
            if callable(seconds):  # a real pass
                seconds()
                stats["busy"] += time.perf_counter() - start
                done.set()
                continue
            end = start + seconds
            while (left := end - time.perf_counter()) > 2e-4:  # sleep, then spin the rest
                time.sleep(left - 2e-4)
            while time.perf_counter() < end:
                pass
            stats["busy"] += time.perf_counter() - start
            done.set()

    def report(path: str) -> None:
        while True:
            time.sleep(1.0)
            with open(path + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(path + ".tmp", path)

    engine_cls = engine_mod.Engine
    init = engine_cls.__init__
    cpu_submit = engine_cls.submit

    def sim_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.queues = True
        self.sim_work = queue.SimpleQueue()
        threading.Thread(target=device, args=(self.sim_work,), daemon=True).start()
        out = os.environ.get("SMYSL_SIM_STATS")
        if out:
            threading.Thread(target=report, args=(os.path.join(out, f"{os.getpid()}.json"),),
                             daemon=True).start()

    def submit(self: Any, batch: list[list[int]], heads: list[int] | None = None) -> Any:
        lengths = [len(s) for s in batch]
        tokens, pad = sum(lengths), padded(lengths)
        stats["passes"] += 1
        stats["tokens"] += tokens
        stats["padded"] += pad
        rows = np.zeros((len(batch), self.hidden_size), np.float32)
        rows[:, 0] = 1.0
        done = threading.Event()
        got: list[Any] = []

        def run() -> None:
            try:
                got.append(cpu_submit(self, batch, heads)())
            except Exception as e:
                got.append(e)

        self.sim_work.put((run if real else fixed + per_token * pad, done))

        def result() -> np.ndarray:
            done.wait()
            if not real:
                return rows
            if isinstance(got[0], Exception):
                raise got[0]
            return got[0]

        return result

    engine_cls.__init__ = sim_init
    engine_cls.submit = submit
    worker_mod.batch_tokens = lambda device: BATCH_TOKENS["cuda"]


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the engine once :mod:`smysl.qwen3.worker` (the engine process's main) loads."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "smysl.qwen3.worker":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            import smysl.qwen3.engine as engine_mod

            _patch(engine_mod, module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if SPEC:
    sys.meta_path.insert(0, _Finder())
