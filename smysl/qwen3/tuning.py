"""Per-machine tuning of the CPU engine, measured by ``smysl tune`` and read by engines at load.

Four settings depend on the processor more than on anything else: torch's thread count (its
default, one per physical core, is not always fastest: hyper-threads, a busy host, small
batches), the tokens per slice of the per-token work (``Engine.chunk``: the MLP's activations
want to stay in the caches), the lanes of a bulk call (``smysl.qwen3.lanes``: how much of a pass
does not scale with threads) and, for int4 layers, the row count from which they dequantise
their weights for a bf16 GEMM instead of running torch's int4 kernel (it depends on the ratio of
those two kernels' rates). The defaults (torch's threads, ``engine.CHUNK_TOKENS``,
``engine.INT4_CHUNK_TOKENS``, ``lanes.default_lanes``, ``quantize.DEQUANT_ROWS``) were measured
on one machine
(docs/benchmarks.md). :func:`tune_threads` and :func:`tune` measure them on this one, on the
loaded model's own layers, and :func:`store` keeps the results in a JSON file: the thread count
keyed by the CPU, its features, the CPUs the process may use, torch, the path (kernel and
dtype) and the layer shapes (:func:`threads_key`), the slices by the same but with the thread
count instead of the CPUs (:func:`key`), the lanes with the slices; engines read them when they
start (:func:`lookup_threads`, :func:`lookup`). No setting changes a float32, bf16 or int8
vector (on the CPUs tested, not even the thread count: see ``docs/engine.md``); int4's move in
the last bits (its layers dequantise by row count).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from smysl.cpus import usable_cpus
from smysl.files import file_lock, replace_file
from smysl.qwen3.cpu import detect
from smysl.tokenize import EOS_ID

if TYPE_CHECKING:
    from smysl.qwen3.engine import Engine
    from smysl.qwen3.model import Qwen3Config

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Slice sizes tried by default (tokens).
SLICES = (128, 256, 512, 1024, 2048)
#: The largest slice accepted from the file or ``--slices``: slices are what bounds a long
#: input's activations (a 32K-token slice of the 8B's MLP is ~3 GB in float32).
MAX_SLICE = 8192
#: The most threads accepted from the file (more would be a damaged entry).
MAX_THREADS = 4096
#: Row counts at which an int4 layer's two regimes are compared.
ROWS = (64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Slice sizes this close to the fastest (relative) count as tied with it.
TIE = 0.02
#: ``dequant_rows`` meaning "never": the int4 kernel was faster at every row count measured.
NEVER = 1 << 30


@dataclass(frozen=True)
class Tuned:
    """What :func:`tune` measured for one engine path on this machine."""

    #: Tokens per slice of the per-token work.
    chunk: int
    #: int4 engines: rows from which the layers dequantise (:data:`NEVER`: they never do);
    #: None for other paths.
    dequant_rows: int | None = None
    #: When it was measured (UTC, ISO 8601).
    measured: str = ""
    #: Seconds per workload pass for each slice size tried (the evidence, for ``smysl tune``).
    seconds: dict[int, float] = field(default_factory=dict)
    #: Lanes of a bulk call (:mod:`smysl.qwen3.lanes`); None: not measured (an older entry).
    lanes: int | None = None
    #: Seconds per bulk workload for each lane count tried.
    lane_seconds: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Threads:
    """What :func:`tune_threads` measured for one engine path on this machine."""

    #: torch's thread count for this path.
    threads: int
    #: When it was measured (UTC, ISO 8601).
    measured: str = ""
    #: Seconds per workload pass for each thread count tried.
    seconds: dict[int, float] = field(default_factory=dict)


def key(engine: Engine) -> str:
    """The cache key of ``engine``'s path on this machine: CPU and features, torch, threads,
    kernel, dtype and layer shapes (anything that moves the measured optimum); for int4 also
    the planes per layer (a Q8_0 file's two cost twice a Q4_K's one to rebuild)."""
    from smysl.qwen3.quantize import Int4GemmLinear, Int4Linear

    parts = [detect().key(), f"torch {torch.__version__}",
             f"{torch.get_num_threads()} threads", engine.kernel,
             engine.dtype, _shape(engine.model.cfg)]
    planes = sorted({m.planes for m in engine.model.modules()
                     if isinstance(m, Int4Linear | Int4GemmLinear)})
    if planes:
        parts.append("planes " + ",".join(map(str, planes)))
    return " | ".join(parts)


def threads_key(kernel: str, dtype: torch.dtype, cfg: Qwen3Config) -> str:
    """The cache key of a path's thread count: CPU and features, the CPUs this process may use
    (a count measured on 64 vCPUs is no answer on 4 of the same CPU), torch, kernel, dtype and
    layer shapes. Known before the weights load, which then run under it (prepacking too)."""
    return " | ".join(["threads", detect().key(), f"{usable_cpus()} CPUs",
                       f"torch {torch.__version__}", kernel,
                       str(dtype).removeprefix("torch."), _shape(cfg)])


def _shape(cfg: Qwen3Config) -> str:
    return (f"h{cfg.hidden_size} i{cfg.intermediate_size} q{cfg.num_attention_heads} "
            f"kv{cfg.num_key_value_heads} d{cfg.head_dim}")


def cache_file() -> Path:
    """``$SMYSL_TUNING`` or ``$XDG_CACHE_HOME/smysl/tuning.json`` (``~/.cache`` by default)."""
    if os.environ.get("SMYSL_TUNING"):
        return Path(os.environ["SMYSL_TUNING"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "smysl" / "tuning.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring the tuning file %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _entry(k: str, path: Path | None, parse: Callable[[dict[str, Any], str, dict[int, float]],
                                                     _T]) -> _T | None:
    """``parse(entry, measured, seconds)`` of the stored entry for ``k``; None when absent or
    damaged (logged)."""
    entry = _read(path or cache_file()).get(k)
    if not isinstance(entry, dict):
        return None
    try:
        return parse(entry, str(entry.get("measured", "")),
                     {int(s): float(v) for s, v in dict(entry.get("seconds", {})).items()})
    except (KeyError, TypeError, ValueError) as e:
        log.warning("ignoring a damaged tuning entry for %s: %s", k, e)
        return None


def lookup(k: str, path: Path | None = None) -> Tuned | None:
    """The stored tuning for key ``k``, or None (absent, or an entry that does not parse)."""
    tuned = _entry(k, path, lambda e, measured, seconds: Tuned(
        chunk=int(e["chunk"]),
        dequant_rows=None if e.get("dequant_rows") is None else int(e["dequant_rows"]),
        measured=measured, seconds=seconds,
        lanes=None if e.get("lanes") is None else int(e["lanes"]),
        lane_seconds={int(n): float(v) for n, v in dict(e.get("lane_seconds", {})).items()}))
    if tuned is None:
        return None
    if not 1 <= tuned.chunk <= MAX_SLICE or (tuned.dequant_rows is not None
                                              and tuned.dequant_rows < 1) or (
            tuned.lanes is not None and not 1 <= tuned.lanes <= MAX_THREADS):
        log.warning("ignoring a tuning entry with sizes out of range for %s (slices 1..%d, "
                    "lanes 1..%d)", k, MAX_SLICE, MAX_THREADS)
        return None
    return tuned


def lookup_threads(k: str, path: Path | None = None) -> Threads | None:
    """The stored thread count for :func:`threads_key` ``k``, or None (absent or damaged)."""
    found = _entry(k, path, lambda e, measured, seconds: Threads(
        threads=int(e["threads"]), measured=measured, seconds=seconds))
    if found is None:
        return None
    if not 1 <= found.threads <= MAX_THREADS:
        log.warning("ignoring a tuning entry with %d threads for %s (1..%d)", found.threads, k,
                    MAX_THREADS)
        return None
    return found


def store(k: str, tuned: Tuned | Threads, path: Path | None = None) -> Path:
    """Add or replace the entry for ``k``: under a lock (``smysl tune`` in two processes kept
    only the last one's entries) and through a temporary file renamed into place (a reader
    sees the old file or the new one, never half of one)."""
    path = path or cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        data = _read(path)
        data[k] = asdict(tuned)
        replace_file(path, json.dumps(data, indent=1, sort_keys=True))
    return path


def apply(engine: Engine, tuned: Tuned) -> None:
    """Use ``tuned`` in ``engine`` (its slice size; its int4 layers' threshold), and log it
    (its lanes: the engine reads them itself, unless given ``lanes=``)."""
    from smysl.qwen3.quantize import Int4Linear

    engine.chunk, rows = tuned.chunk, tuned.dequant_rows
    if rows is not None:
        for m in engine.model.modules():
            if isinstance(m, Int4Linear):
                m.dequant_rows = rows
    log.info("slices of %d tokens%s%s, as measured on this machine on %s", tuned.chunk,
             "" if rows is None else ", int4 never dequantised" if rows == NEVER else
             f", int4 dequantised from {rows} rows",
             "" if tuned.lanes is None else f", {engine.lanes} lane(s) for bulk calls",
             tuned.measured or "an unknown date")


#: Environment variables by which a caller (or Ray, for its actors) already sets the count.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The thread count an engine of this process applied from the file (the count is
#: process-wide: a second engine with another entry keeps it rather than retune the first).
_applied: int | None = None
#: The thread count an engine of this process was given (``threads=``), kept the same way.
_given: int | None = None


def environment_threads() -> str | None:
    """The :data:`THREAD_VARIABLES` that set a thread count (``OMP_NUM_THREADS=8``), or None:
    a count the environment sets is the user's, and no measured one replaces it."""
    found = [f"{v}={os.environ[v]}" for v in THREAD_VARIABLES if os.environ.get(v)]
    return " / ".join(found) or None


def load_threads(k: str) -> Threads | None:
    """Apply the stored thread count for :func:`threads_key` ``k`` (logged) and return it, for
    an engine that was given no ``threads``. Not applied (None) when absent, when
    :data:`THREAD_VARIABLES` set a count, above :func:`usable_cpus`, or when another engine in
    this process already applied a different one."""
    global _applied
    found = lookup_threads(k)
    if found is None:
        return None
    if (variables := environment_threads()) is not None:
        log.info("not applying the measured %d threads: %s is set", found.threads, variables)
        return None
    if found.threads > usable_cpus():
        log.warning("ignoring a measured %d threads: this process may use %d CPUs",
                    found.threads, usable_cpus())
        return None
    if _applied is not None and _applied != found.threads:
        log.info("keeping %d threads (applied for another engine in this process) over the "
                 "%d measured for this path", _applied, found.threads)
        return None
    torch.set_num_threads(found.threads)
    _applied = found.threads
    log.info("%d threads, as measured on this machine on %s", found.threads,
             found.measured or "an unknown date")
    return found


def set_threads(n: int) -> None:
    """Apply an engine's ``threads=n`` (process-wide), remembered: :func:`fit_threads` of a
    later engine leaves it alone."""
    global _given
    torch.set_num_threads(n)
    _given = n


def fit_threads() -> None:
    """torch's default thread count (one per core it sees) cut to :func:`usable_cpus`, for an
    engine given no ``threads`` and none measured: torch sees the affinity but not a container's
    CPU quota, and 32 threads on a 4-CPU quota stall at every throttled period. Left alone when
    :data:`THREAD_VARIABLES` set a count (the user's), or an engine of this process was given
    one or applied a measured one (the count is process-wide)."""
    if _given is not None or _applied is not None:
        return
    cpus = usable_cpus()
    if torch.get_num_threads() > cpus and environment_threads() is None:
        log.info("%d torch threads instead of %d: this process may use %d CPUs (a CPU quota)",
                 cpus, torch.get_num_threads(), cpus)
        torch.set_num_threads(cpus)


def short_texts(rng: random.Random, tokens: int) -> list[list[int]]:
    """Short texts (20-100 tokens and EOS) up to ``tokens``: the engine's usual batch."""
    batch: list[list[int]] = []
    while True:
        seq = [rng.randrange(1000, 100000) for _ in range(rng.randrange(20, 100))] + [EOS_ID]
        if sum(map(len, batch)) + len(seq) > tokens:
            return batch
        batch.append(seq)


def _workload(batch_tokens: int, long_tokens: int) -> list[list[list[int]]]:
    """One batch of short texts up to ``batch_tokens`` and one input of ``long_tokens``."""
    rng = random.Random(0)
    return [short_texts(rng, batch_tokens),
            [[rng.randrange(1000, 100000) for _ in range(long_tokens - 1)] + [EOS_ID]]]


def _time(engine: Engine, settings: tuple[int, ...], use: Callable[[int], None], layers: int,
          rounds: int, work: list[list[list[int]]], bulk: bool = False) -> dict[int, float]:
    """Seconds per pass of ``work`` over ``engine``'s first ``layers`` layers under each setting
    (``use(setting)`` applies it): settings interleaved round by round so a drifting machine
    hits them alike, each one's best round kept, a warm-up pass first (oneDNN builds its
    kernels per new shape and thread count). ``bulk``: the batches go in as one bulk call
    (``Engine.forward_many``), else one ``forward`` each. The caller restores what ``use``
    changed."""
    model = engine.model
    full = model.layers
    seconds = dict.fromkeys(settings, float("inf"))
    try:
        model.layers = full[:layers]
        for r in range(rounds + 1):
            for s in settings:
                use(s)
                t = time.perf_counter()
                if bulk:
                    list(engine.forward_many(work))
                else:
                    for b in work:
                        engine.forward(b)
                if r:  # round 0 is the warm-up
                    seconds[s] = min(seconds[s], time.perf_counter() - t)
    finally:
        model.layers = full
    return seconds


def _pick(seconds: dict[int, float], current: int) -> int:
    """The fastest setting; the current one when it is within :data:`TIE` of it (noise on a
    shared machine)."""
    near = [s for s in seconds if seconds[s] <= (1 + TIE) * min(seconds.values())]
    return current if current in near else min(near, key=lambda s: seconds[s])


def thread_counts(cpus: int | None = None) -> tuple[int, ...]:
    """Thread counts :func:`tune_threads` tries: powers of two up to the CPUs this process may
    use (:func:`usable_cpus`), that count itself and torch's current count."""
    n = cpus or usable_cpus()
    return tuple(sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n}
                        | {n, torch.get_num_threads()}))


def tune_threads(engine: Engine, counts: tuple[int, ...] | None = None, layers: int = 2,
                 rounds: int = 3, batch_tokens: int = 1024, long_tokens: int = 2048) -> Threads:
    """Measure torch's thread count for ``engine``'s path (:func:`thread_counts` by default) on
    its first ``layers`` layers and the :func:`tune` workload, at the engine's slice size.
    torch's current count is kept when within :data:`TIE` of the fastest, and restored after."""
    counts = counts or thread_counts()
    current = torch.get_num_threads()
    try:
        seconds = _time(engine, counts, torch.set_num_threads, layers, rounds,
                        _workload(batch_tokens, long_tokens))
    finally:
        torch.set_num_threads(current)
    return Threads(threads=_pick(seconds, current), seconds=seconds,
                   measured=datetime.now(UTC).isoformat(timespec="seconds"))


def tune(engine: Engine, slices: tuple[int, ...] = SLICES, layers: int = 2, rounds: int = 3,
         batch_tokens: int = 1024, long_tokens: int = 2048) -> Tuned:
    """Measure the slice size (and, for int4, the dequantising threshold) on ``engine``'s
    first ``layers`` layers (real shapes, real kernels; the rest would only repeat them).

    Workload per slice size: one batch of short texts up to ``batch_tokens`` and one input of
    ``long_tokens``, timed as :func:`_time` does. The engine's current size is kept when it is
    within :data:`TIE` of the fastest. int4: the dequantising threshold is measured first and
    the slices are timed under it. Then the lanes at the chosen size (:func:`tune_lanes`). The
    engine is left as it was.
    """
    from smysl.qwen3.quantize import Int4Linear

    chunk = engine.chunk
    rows = _dequant_rows(engine) if engine.kernel == "int4" else None
    int4 = [m for m in engine.model.modules() if isinstance(m, Int4Linear)]
    before = [m.dequant_rows for m in int4]

    def use(s: int) -> None:
        engine.chunk = s
    try:
        for m in int4:
            m.dequant_rows = rows
        seconds = _time(engine, slices, use, layers, rounds,
                        _workload(batch_tokens, long_tokens))
    finally:
        engine.chunk = chunk
        for m, r in zip(int4, before, strict=True):
            m.dequant_rows = r
    best = _pick(seconds, chunk)
    lanes, lane_seconds = tune_lanes(engine, best, layers, rounds, batch_tokens)
    return Tuned(chunk=best, dequant_rows=rows, seconds=seconds, lanes=lanes,
                 lane_seconds=lane_seconds,
                 measured=datetime.now(UTC).isoformat(timespec="seconds"))


def lane_counts(threads: int) -> tuple[int, ...]:
    """Lane counts :func:`tune_lanes` tries: 1 and the powers of two that divide ``threads``
    (each lane gets an equal share)."""
    return tuple(n for n in (1 << i for i in range(threads.bit_length())) if threads % n == 0)


def tune_lanes(engine: Engine, chunk: int, layers: int = 2, rounds: int = 3,
               batch_tokens: int = 1024, batches: int = 8) -> tuple[int, dict[int, float]]:
    """(lanes, seconds per lane count): :func:`lane_counts` of torch's threads, timed on
    ``batches`` batches of short texts as one bulk call, at slice size ``chunk``; the engine's
    current count is kept when within :data:`TIE` of the fastest. The engine is left as it
    was."""
    # counts that would give a text other bits in a bulk call than alone are not tried
    counts = tuple(n for n in lane_counts(torch.get_num_threads())
                   if not engine.lanes_change_bits(n))
    before, before_chunk = engine.lanes, engine.chunk
    if len(counts) == 1:
        return counts[0], {}
    rng = random.Random(1)
    work = [b for b in (short_texts(rng, batch_tokens) for _ in range(batches)) if b]
    try:
        engine.chunk = chunk
        seconds = _time(engine, counts, engine.set_lanes, layers, rounds, work, bulk=True)
    finally:
        engine.set_lanes(before)
        engine.chunk = before_chunk
    return _pick(seconds, before if before in counts else 1), seconds


@torch.inference_mode()
def _dequant_rows(engine: Engine, rounds: int = 3) -> int:
    """The smallest of :data:`ROWS` from which the largest dequantising int4 layer runs faster
    dequantised than through the int4 kernel at that and every larger count (:data:`NEVER`
    when at none)."""
    from smysl.qwen3.quantize import Int4Linear, dequantises

    layers = [m for m in engine.model.modules()
              if isinstance(m, Int4Linear) and dequantises(m.out_features)]
    if not layers:
        return NEVER
    layer = max(layers, key=lambda m: m.out_features * m.in_features)
    faster: dict[int, bool] = {}
    before = layer.dequant_rows
    for rows in ROWS:  # (in inference mode, as in the engine's forward pass)
        x = torch.randn(rows, layer.in_features).to(torch.bfloat16)
        best = {}
        for threshold in (NEVER, 1):  # kernel, then dequantised
            layer.dequant_rows = threshold
            layer(x)  # warm-up
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - t)
            best[threshold] = min(times)
        faster[rows] = best[1] < best[NEVER]
    layer.dequant_rows = before
    for rows in ROWS:
        if all(faster[r] for r in ROWS if r >= rows):
            return rows
    return NEVER
