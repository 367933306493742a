"""The engine: a loaded Qwen3 encoder that runs batches of token ids (the contract it
meets, :class:`~smysl.qwen3.contract.EngineLike`, and how one starts, live in
:mod:`smysl.qwen3.contract`, without torch).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from smysl.base import Pending
from smysl.options import FLAGS
from smysl.qwen3 import tuning
from smysl.qwen3.contract import (
    CUDA_GRAPH_TOKENS,
    EngineConfig,
    EngineLike,
    batch_tokens,
    run_ahead,
)
from smysl.qwen3.cpu import (
    CpuFeatures,
    auto_dtype,
    available_memory,
    detect,
    int8_activation_bits,
    int8_attention_dtype,
    int8_kernel,
    packs_linear,
)
from smysl.qwen3.ggml_quants import Weight
from smysl.qwen3.heap import loading
from smysl.qwen3.hub import Checkpoint
from smysl.qwen3.lanes import Lanes, LanesClosed, Slots, default_lanes, per_thread_counts
from smysl.qwen3.loader import LinearFactory, load_encoder
from smysl.qwen3.model import (
    PackedLinear,
    Qwen3Config,
    Qwen3Encoder,
    same_bits_on,
    shared_probes,
    warm_same_bit_rows,
)
from smysl.qwen3.passes import PassThread
from smysl.qwen3.prefix import layout
from smysl.shown import first_line

if TYPE_CHECKING:
    from smysl.qwen3.cuda import Runner

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


#: Tokens per slice of the per-token work (projections, MLP) on CPU (a pass's default budget:
#: :data:`smysl.qwen3.contract.BATCH_TOKENS`). The slice's ``[tokens, 2*ffn]`` MLP activations
#: want to stay in the caches: on a 2-core EPYC (1 MiB L2 per core, 32 MiB L3), with batches of
#: ~1,000 tokens of short texts, 256-token slices were within 1% of the best size for the 0.6B,
#: 4B and 8B shapes in fp32, bf16, int8 and int4, while 1,024-token slices were up to 1.6x
#: slower (int8 on the 4B; docs/benchmarks.md). GPUs want big slices: see :func:`chunk_tokens`.
CHUNK_TOKENS = {"cpu": 256}
#: CPU slices with int4 layers: above ``quantize.DEQUANT_ROWS`` rows each layer dequantises its
#: weights once per call, so bigger slices amortise that. One 2,048-token pass on two 8B-shape
#: layers: 884 tok/s with 256-token slices, 1,347 with 1,024, 1,426 with 2,048 (the int4
#: kernel alone: 734 at best); the whole 8B Q4_K_M: 41.7 tok/s with 1,024, 41.1 with 2,048,
#: whose activations raised the peak by 180 MiB (docs/benchmarks.md).
INT4_CHUNK_TOKENS = 1024
#: CPU bulk calls: a batch of one input longer than this runs on all threads, not in a lane
#: (:mod:`smysl.qwen3.lanes`): its GEMMs are large enough to use them, and alone in a lane it
#: would leave the other lanes idle at the end of the call.
LANE_TOKENS = 1024
#: CUDA: the most bytes of one slice's ``[chunk, 2*ffn]`` bf16 MLP activations. A slice costs
#: ~40 kernel launches per layer whatever its size; 4,096-token slices left the 0.6B host-bound
#: on an H200 (docs/benchmarks.md), while 32K-token inputs on the 8B stay within 4 GiB.
CUDA_SLICE_BYTES = 1 << 29


#: What lanes that change bits (:meth:`Engine.lanes_change_bits`) cost, said when they are kept.
LANES_COST = ("so a text's vector from a bulk call may differ in its last bits from the same text "
              "embedded alone")

#: Seconds :meth:`Engine.close` waits for the CPU passes in flight to stop (each stops after
#: the layer it is in: well under this on any model, unless a pass's whole layer is longer).
CLOSE_WAIT_S = 30.0


def chunk_tokens(device_type: str, intermediate_size: int, kernel: str = "torch") -> int:
    """Tokens per slice of the per-token work: CPU 256, or :data:`INT4_CHUNK_TOKENS` with
    ``kernel`` "int4" where its layers dequantise large batches; CUDA the largest power of two
    up to 32,768 whose MLP activations fit :data:`CUDA_SLICE_BYTES` (0.6B 32,768, 4B/8B
    8,192)."""
    if device_type != "cuda":
        if kernel == "int4":
            from smysl.qwen3.quantize import dequantising

            if dequantising():  # else the int4 kernel alone, best at 256 like the rest
                return INT4_CHUNK_TOKENS
        return CHUNK_TOKENS.get(device_type, 4096)
    n = 32768
    while n > 4096 and n * 2 * intermediate_size * 2 > CUDA_SLICE_BYTES:
        n //= 2
    return n


def resolve_config(cfg: EngineConfig, stored: torch.dtype | None = None,
            features: CpuFeatures | None = None) -> tuple[torch.device, torch.dtype]:
    """(device, matmul dtype). ``stored`` (the checkpoint's dtype) and ``features`` (the
    CPU's; default this machine's) decide ``dtype="auto"`` on CPU (see
    :func:`smysl.qwen3.cpu.auto_dtype`)."""
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(dev)
    except RuntimeError as e:  # "foo", "cuda:x": torch's own words, raised as a traceback
        raise ValueError(f"unknown device {cfg.device!r} (use auto, cpu, cuda or cuda:N): "
                         f"{first_line(e)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {cfg.device!r} (use auto, cpu or cuda)")
    features = features or detect()
    if cfg.dtype == "auto" and device.type == "cpu" and cfg.quantize is None:
        dtype, why = auto_dtype(features, stored)
        log.info("dtype auto on %s: %s, because %s", features.describe(),
                 str(dtype).removeprefix("torch."), why)
    elif cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif cfg.dtype in _DTYPES:
        dtype = _DTYPES[cfg.dtype]
    else:
        raise ValueError(f"unsupported dtype {cfg.dtype!r} (use auto, float32, bfloat16, "
                         "float16)")
    if cfg.quantize not in (None, "int8", "int4"):
        raise ValueError(f"unsupported quantize {cfg.quantize!r} (use int8, int4 or none)")
    if cfg.quantize == "int8" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError("int8 quantisation runs on CPU with dtype float32")
    if cfg.quantize == "int4":
        if cfg.dtype == "auto":
            dtype = torch.bfloat16
        if dtype != torch.bfloat16:
            raise ValueError("int4 quantisation runs with dtype bfloat16 (activations)")
    if device.type == "cpu" and dtype != torch.float32 and not (
            dtype == torch.bfloat16 and features.native_bf16):
        # measured: the whole model 2.5-4x slower than float32 on an EPYC capped at AVX2 or
        # AVX512_CORE; a bf16 matmul ~100x slower on a real AVX2-only Zen 3
        log.warning("%s matmuls are emulated on %s: expect the model 2.5-4x (oneDNN's "
                    "emulation) to ~100x (an AVX2-only Zen 3) slower than in float32",
                    str(dtype).removeprefix("torch."), features.describe())
    return device, dtype


#: A quantised GGUF file is dequantised (the fastest path where bf16 is native) unless that
#: would take more than this share of the memory available at load; then its blocks are kept.
KEEP_BLOCKS_ABOVE = 0.7


def keep_gguf_blocks(ckpt: Checkpoint, cfg: EngineConfig, device: torch.device,
                     dtype: torch.dtype) -> bool:
    """Whether a GGUF file loaded with ``quantize`` unset and ``dtype="auto"`` keeps its
    quantised blocks (``quantize="int4"``, bf16 activations) because its dequantised weights
    (``dtype``) would not fit in :data:`KEEP_BLOCKS_ABOVE` of the memory available
    (:func:`~smysl.qwen3.cpu.available_memory`; on CUDA the device's free memory; the 8B
    Q4_K_M: 15 GB in bf16, 5.9 GB kept, so it runs on an 8 GB machine or GPU). Logged with the
    numbers; an explicit ``dtype`` or ``quantize`` always wins."""
    if ckpt.format != "gguf" or cfg.quantize is not None or cfg.dtype != "auto":
        return False
    from smysl.qwen3.gguf import dequantized_bytes

    need = dequantized_bytes(ckpt.root, dtype.itemsize)
    available: int | None = None
    if need is not None:
        available = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
                     else available_memory())
    if need is None or available is None or need <= KEEP_BLOCKS_ABOVE * available:
        return False
    log.warning("%s dequantised to %s would take %.1f GiB of the %.1f GiB available: keeping "
                "its quantised blocks (quantize=int4; pass dtype= or quantize= to choose)",
                ckpt.root.name, str(dtype).removeprefix("torch."), need / 2**30,
                available / 2**30)
    return True


def packed_linear(weight: Weight) -> nn.Module:
    """The CPU float layer (:class:`PackedLinear`); GGUF blocks reach a layer factory only when
    they are kept (int4), so this one always gets a dequantised tensor."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError("packed linear layers take float weights")
    return PackedLinear(weight)


def stored_dtype(config: dict[str, object]) -> torch.dtype | None:
    """The dtype a checkpoint's ``config.json`` says its weights are stored in, if it says."""
    name = config.get("torch_dtype") or config.get("dtype")
    return _DTYPES.get(str(name)) if name else None


class PassStopped(RuntimeError):
    """A forward pass stopped before its end (CPU), or not started: its engine was closed
    meanwhile, or the bulk call it ran for ended early (see :meth:`Engine.close`)."""


class Engine:
    """Runs a loaded Qwen3 encoder on batches of token-id sequences: one at a time on all
    threads, or, in a bulk call on CPU, :attr:`lanes` at a time (:mod:`smysl.qwen3.lanes`)."""

    #: In this process: no child pid, and never dead.
    pid: int | None = None
    alive: bool = True

    def __init__(self, model: Qwen3Encoder, device: torch.device, dtype: torch.dtype,
                 quantization: str | None = None, cuda_graphs: int = 0,
                 kernel: str = "torch", tuned_threads: tuning.Threads | None = None,
                 lanes: int | None = None, cuda_kernels: bool = False,
                 budget: int | None = None) -> None:
        self.model = model
        self.kernel = kernel
        self.numerics = ""
        if quantization == "int8":
            codes = (f"{int8_activation_bits(detect())}-bit" if kernel == "onednn-int8"
                     else "per-tensor")
            attention = str(model.attn_dtype or dtype).removeprefix("torch.")
            self.numerics = f"{kernel} {codes}, attention {attention}"
        #: Where and in what the model computes; :attr:`device` and :attr:`dtype` (the
        #: contract's) are their names ("cpu", "cuda", "cuda:1"; "bfloat16").
        self.torch_device, self.torch_dtype = device, dtype
        self.device = str(device)
        self.dtype = str(dtype).removeprefix("torch.")
        self.cpu = detect().describe() if device.type == "cpu" else None
        self.quantization = quantization
        cfg = model.cfg
        self.hidden_size = cfg.hidden_size
        self.vocab_rows = cfg.vocab_size
        self.max_positions = cfg.max_position_embeddings
        # from the config: quantised layers hold no float parameters
        self.parameters = cfg.parameters
        self.chunk = chunk_tokens(device.type, cfg.intermediate_size, kernel)
        #: The token budget of a batch (:attr:`EngineConfig.batch_tokens`): a pass started
        #: with :meth:`start` with an input over it runs the others between its layers (CPU).
        self.budget = budget or batch_tokens(self.device)
        #: The thread count ``smysl tune`` measured for this path on this machine, when it was
        #: applied at load (:func:`tuning.load_threads`).
        self.tuned_threads = tuned_threads
        #: What ``smysl tune`` measured for this path on this machine, if it has (CPU).
        self.tuned = tuning.lookup(tuning.key(self)) if device.type == "cpu" else None
        #: CPU: batches of a bulk call computed at once (:attr:`EngineConfig.lanes`); 1 on CUDA.
        self.lanes = 1
        if device.type == "cpu":
            self.lanes = lanes or (self.tuned.lanes if self.tuned and self.tuned.lanes
                                   else default_lanes(torch.get_num_threads(), kernel))
            if lanes and lanes > torch.get_num_threads() and per_thread_counts():
                # as many run as fit the threads
                log.warning("lanes=%d: torch runs %d thread(s) here, so %d lane(s) of one "
                            "thread each run", lanes, torch.get_num_threads(),
                            torch.get_num_threads())
            if self.lanes > 1 and not per_thread_counts():
                log.warning("lanes: torch's thread count is process-wide here (its parallel "
                            "backend is not OpenMP): one lane")
                self.lanes = 1
            with shared_probes():  # the two checks below share their probe layers
                why = self.lanes_change_bits(self.lanes)
                if why and lanes:
                    log.warning("lanes=%d: %s, %s", lanes, why, LANES_COST)
                elif why:  # a text's vector must not depend on how it was called
                    log.info("one lane: %s", why)
                    self.lanes = 1
                threads = torch.get_num_threads()
                # measured now, not inside the first request (an 8B's ~3 s)
                warm_same_bit_rows(model, {threads, max(1, threads // self.lanes)})
        # one pass on all threads at a time, or one per lane: more would oversubscribe
        self._slots = Slots(self.lanes)
        self._lanes: Lanes[list[list[int]], np.ndarray] | None = None  # built on first use
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._lanes_lock = threading.Lock()
        #: Calls of :meth:`close` under way: while any runs, CPU passes stop at their next
        #: layer (a count: one close ending must not let a pass through while another waits).
        self._closing = 0
        #: Calls of :meth:`close` begun: a pass that began before one stops at its next layer
        #: even after that close returned (it gave up waiting, or ran inside this pass).
        self._closes = 0
        self._closing_lock = threading.Lock()
        #: Per thread: inside a ``between`` call of :meth:`submit` (its pass holds the slots).
        self._within = _Within()
        self._passes: PassThread | None = None  # CPU: :meth:`start`'s, built on first use
        self._passes_lock = threading.Lock()
        _ENGINES.add(self)
        if self.tuned is not None:
            tuning.apply(self, self.tuned)
        self._cuda: Runner | None = None
        if device.type == "cuda":
            from smysl.qwen3.cuda import Runner

            self._cuda = Runner(model, device, dtype, self.chunk, cuda_graphs, cuda_kernels,
                                warm_tokens=batch_tokens(self.device))
            if self._cuda.fused:
                self.kernel += "+triton"
        self.cuda_graphs = self._cuda.graph_sizes if self._cuda else []
        self.queues = 1 if self._cuda is not None else 0

    @property
    def tuned_at(self) -> str | None:
        """When :attr:`tuned` was measured ("unknown" for an entry without a date)."""
        return None if self.tuned is None else self.tuned.measured or "unknown"

    @property
    def threads(self) -> int | None:
        """torch's CPU threads on CPU (process-wide: this process's count), None on CUDA."""
        return torch.get_num_threads() if self.torch_device.type == "cpu" else None

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, cfg: EngineConfig) -> Engine:
        device, dtype = resolve_config(cfg, stored_dtype(ckpt.config))
        if keep_gguf_blocks(ckpt, cfg, device, dtype):
            cfg = replace(cfg, quantize="int4")
            device, dtype = resolve_config(cfg, stored_dtype(ckpt.config))
        if device.type == "cpu":
            off_device = [k for k, v in (("cuda_graphs", cfg.cuda_graphs),
                                         ("cuda_kernels", cfg.cuda_kernels)) if v is not None]
        else:
            off_device = ["lanes"] if cfg.lanes else []
        if off_device:  # one config for CPU and GPU hosts is fine, but say it
            log.warning("%s: set, but not used on %s", ", ".join(
                f"{k} ({FLAGS[k]})" for k in off_device), device.type.upper())
        if cfg.threads:
            tuning.set_threads(cfg.threads)
        linear: LinearFactory | None = None
        kernel = "torch"
        if cfg.quantize == "int8":  # layers quantised as they load (peak: one float layer)
            from smysl.qwen3.quantize import int8_linear

            kernel = int8_kernel(detect())
            linear = int8_linear(kernel)
            codes = (f", {int8_activation_bits(detect())}-bit activation codes per row"
                     if kernel == "onednn-int8" else ", activations per tensor")
            log.info("linear layers: int8 on %s%s", kernel, codes)
        elif cfg.quantize == "int4":
            from smysl.qwen3.quantize import int4_linear

            linear, kernel = int4_linear(gguf=ckpt.format == "gguf", device=device), "int4"
            from smysl.qwen3.gguf import FLOAT_TYPES

            if ckpt.format == "gguf" and ckpt.weight_type in FLOAT_TYPES:
                # a GGUF's floats are never re-quantised to 4 bits (int4_linear): say what
                # the layers are (the kernel said int4 for 8-bit weight-only layers)
                kept = "8-bit weight-only" if device.type == "cpu" else "bf16"
                log.warning("%s holds %s weights, which quantize=int4 does not re-quantise: "
                            "its layers are %s; a Q4 GGUF file or the safetensors checkpoint "
                            "gives 4-bit layers", ckpt.root.name, ckpt.weight_type, kept)
                # the option stays the quantisation (the fingerprint's: the same layers as
                # before); the kernel says what runs
                kernel = "int8-weight" if device.type == "cpu" else "torch"
        elif device.type == "cpu" and packs_linear(dtype):
            linear, kernel = packed_linear, "onednn"
            log.info("linear layers: oneDNN, %s weights prepacked at load",
                     str(dtype).removeprefix("torch."))
        tuned_threads = None  # before loading: prepacking and quantising run under it too
        if device.type == "cpu" and not cfg.threads:
            tuned_threads = tuning.load_threads(tuning.threads_key(
                kernel, dtype, Qwen3Config.from_dict(ckpt.config)))
            if tuned_threads is None:
                tuning.fit_threads()
        with loading():
            model = load_encoder(ckpt, device, dtype, linear,
                                 keep_blocks=cfg.quantize == "int4")
        if cfg.quantize == "int8":
            model.attn_dtype = int8_attention_dtype(detect())
        # float32 stays the reference's operation order (the exact path)
        model.exact_qk = device.type != "cpu" or (dtype == torch.float32 and not cfg.quantize)
        graphs = CUDA_GRAPH_TOKENS if cfg.cuda_graphs is None else cfg.cuda_graphs
        return cls(model, device, dtype, cfg.quantize, graphs, kernel, tuned_threads,
                   cfg.lanes, cfg.cuda_kernels is not False, cfg.batch_tokens)

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        """One forward pass: token-id sequences -> float32 ``[len(batch), hidden]`` pooled rows.

        Rows are the final-norm hidden state of each sequence's last token, not yet normalised.
        ``heads`` (CPU): sequences whose first ``heads[i]`` tokens are equal compute them once
        (:mod:`smysl.qwen3.prefix`); a row depends on its own head, never on the batch. CUDA
        computes every sequence whole.
        """
        return self.submit(batch, heads)()

    def forward_many(self, batches: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
        """Pooled rows of each batch in order. CUDA: one batch stays queued ahead, so the GPU
        runs batch n while the caller's iterator assembles batch n + 1. CPU with
        :attr:`lanes` > 1: batches run in the lanes, :attr:`lanes` at a time, except a lone
        batch and one input over :data:`LANE_TOKENS` (all threads)."""
        if self.lanes > 1:
            it = iter(batches)
            head = list(itertools.islice(it, 2))
            if len(head) < 2:  # nothing to overlap with
                yield from map(self.forward, head)
                return
            lanes = self._lane_pool()
            if lanes is not None:
                yield from lanes.map(itertools.chain(head, it), alone=self.forward,
                                     whole=lambda b: len(b) == 1 and len(b[0]) > LANE_TOKENS)
                return
            batches = itertools.chain(head, it)
        yield from run_ahead(self.submit, batches, self.queues)

    def submit(self, batch: list[list[int]], heads: list[int] | None = None,
               between: Callable[[], None] | None = None) -> Pending:
        """Start one forward pass; the returned call waits for its rows (on CPU the pass has
        run already). A batch that runs out of CUDA memory is split and retried in halves.

        ``between`` (CPU): called after each layer of the pass, in this thread; it may run
        other passes of this engine there (:class:`~smysl.qwen3.worker._Hub` runs short
        requests between the layers of a long input's pass), which then use the threads and
        slots this pass holds."""
        if self._closing:  # nothing new starts while a close waits (CUDA passes check nothing)
            raise PassStopped("the forward pass was not started: its engine is closing")
        if self._within.passing:  # from ``between``: this thread's pass holds the slots
            rows = self._cpu_pass(batch, heads)
            return Pending(lambda: rows)
        try:
            with self._slots.hold(self._slots.size):
                if self._cuda is not None:
                    return Pending(self._cuda.launch(batch))
                rows = self._cpu_pass(batch, heads, between=between)
                return Pending(lambda: rows)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        first, second = self.submit(batch[:half]), self.submit(batch[half:])  # CUDA: no heads
        return Pending(lambda: np.concatenate([first(), second()]))

    def start(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """:meth:`submit`, returning at once: on CPU the pass runs in this engine's pass
        thread (:mod:`smysl.qwen3.passes`), so its ``cancel()`` stops it at its next layer,
        and while a pass with an input over :attr:`budget` runs, the passes started meanwhile
        within it run between its layers. On CUDA :meth:`submit` queues it already."""
        if self._cuda is not None:
            return self.submit(batch, heads)
        with self._passes_lock:
            if self._passes is None:
                self._passes = PassThread(self, self.budget)
            passes = self._passes
        return passes.start(batch, heads)

    @property
    def running_lanes(self) -> int:
        """Lane threads running for this engine's bulk calls (0 before the first one)."""
        lanes = self._lanes
        return lanes.count if lanes is not None and lanes.pid == os.getpid() else 0

    def _cpu_pass(self, batch: list[list[int]], heads: list[int] | None = None,
                  stop: threading.Event | None = None,
                  between: Callable[[], None] | None = None) -> np.ndarray:
        """One CPU forward pass, in the calling thread on its torch threads (the caller holds
        the slots). It ends early with :class:`PassStopped` once :meth:`close` runs, or
        ``stop`` (a lane's bulk call ended) is set: checked before the first layer and after
        each, where ``between`` (:meth:`submit`) is called too."""
        closes = self._closes

        def check() -> None:
            if self._closing or self._closes != closes:
                raise PassStopped("the forward pass was stopped: its engine was closed")
            if stop is not None and stop.is_set():
                raise PassStopped("the forward pass was stopped: its bulk call ended, or its "
                                  "lanes were closed")
            if between is not None:
                self._within.passing = True
                try:
                    between()
                finally:
                    self._within.passing = False

        check()
        if heads is not None and any(heads):
            return self.model.run(*layout(batch, heads, self.torch_device),
                                  chunk=self.chunk, check=check).numpy()
        ids = torch.tensor([t for s in batch for t in s], dtype=torch.long)
        return self.model(ids, [len(s) for s in batch], chunk=self.chunk, check=check).numpy()

    def lanes_change_bits(self, lanes: int) -> str:
        """Why ``lanes`` lanes would give a text other bits in a bulk call than alone (this
        CPU's bf16 GEMMs follow the thread count: :func:`~smysl.qwen3.model.same_bits_on`),
        "" where they would not."""
        threads = torch.get_num_threads()
        if lanes < 2 or same_bits_on(self.model, (threads, threads // lanes)):
            return ""
        return (f"this CPU's {self.dtype} GEMMs give other bits on {threads} threads than on "
                f"{threads // lanes}")

    def set_lanes(self, lanes: int) -> None:
        """Use ``lanes`` lanes from the next bulk call on (``smysl tune``; not during a bulk
        call, which would fail with :class:`~smysl.qwen3.lanes.LanesClosed`); a warning
        where they change a text's bits (:meth:`lanes_change_bits`)."""
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if self.torch_device.type != "cpu" or lanes == self.lanes:
            return
        why = self.lanes_change_bits(lanes)
        if why:
            log.warning("lanes=%d: %s, %s", lanes, why, LANES_COST)
        self.close()
        self.lanes = lanes
        self._slots = Slots(lanes)

    def _lane_pool(self) -> Lanes[list[list[int]], np.ndarray] | None:
        """The lanes, started on the first bulk call (an engine that serves one batch at a
        time never starts them) and again when the caller's thread count changed or in a
        forked child; None when fewer than two lanes fit the caller's threads, or torch
        cannot give each lane its own count."""
        total = torch.get_num_threads()
        count = min(self.lanes, total)
        with self._lanes_lock:
            old = self._lanes
            if old is not None and (old.pid != os.getpid() or old.total != total):
                self._lanes = None  # first: a Ctrl-C in close must not leave closed lanes
                old.close()
                old = None
            if old is None and count > 1:
                # the lane threads hold the engine weakly: a dropped engine (and its weights)
                # is freed, and its lanes stop
                ref = weakref.WeakMethod(self._lane_forward)

                def run(batch: list[list[int]], stop: threading.Event) -> np.ndarray:
                    forward = ref()
                    if forward is None:
                        raise LanesClosed("the engine was freed")
                    return forward(batch, stop)

                with self._slots.hold(self._slots.size):  # no pass of ours while they start
                    self._lanes = Lanes(count, total // count, run)
                self._finalizer = weakref.finalize(self, self._lanes.close)
                log.info("bulk calls: %d lanes, %d thread(s) each", count, total // count)
            return self._lanes if self._lanes is not None and self._lanes.count else None

    def _lane_forward(self, batch: list[list[int]], stop: threading.Event) -> np.ndarray:
        """One batch in a lane (a lane thread; holds one of the slots)."""
        with self._slots.hold(1):
            return self._cpu_pass(batch, stop=stop)

    def share(self) -> EngineLike:
        raise NotImplementedError("an engine in this process cannot compute for other "
                                  "processes; run it in a child process (process=True)")

    def __reduce__(self) -> Any:
        # pickle reached the weights and failed deep in torch ("Cannot access storage of
        # OpaqueTensorImpl") for a model held by a framework adapter or a worker pool
        raise TypeError("a model whose engine runs in this process cannot be pickled (a worker "
                        "pool, a deep copy): load it with process=True and pickle "
                        "model.share(), which computes on that engine process")

    def close(self) -> None:
        """Stop the CPU passes in flight at their next layer (their callers get
        :class:`PassStopped`), wait until they have (at most :data:`CLOSE_WAIT_S`), and stop
        the lanes (the contract's hook for :class:`EngineProcess`). The engine stays usable:
        a later call starts again. A Ctrl-C during the wait is raised after it: a thread left
        inside torch at the interpreter's exit aborts the process."""
        interrupted: KeyboardInterrupt | None = None
        entered = False
        try:
            with self._closing_lock:
                self._closing += 1
                self._closes += 1
                entered = True
            if self._passes is not None:  # none of them may start once this returns
                self._passes.fail_queued(PassStopped("the forward pass was not started: its "
                                                     "engine was closed"))
            # a close from inside a pass of this thread (a signal handler's) cannot wait for
            # it: that pass stops at its next layer
            deadline = time.monotonic() + CLOSE_WAIT_S
            while not self._slots.held():
                try:
                    if not self._slots.idle(max(0.0, deadline - time.monotonic())):
                        # a pass still in a layer stops after it; a slot lost to a Ctrl-C at
                        # the wrong moment would otherwise block every later pass
                        log.warning("close: CPU passes still hold the engine after %.0f s; "
                                    "not waiting for them", CLOSE_WAIT_S)
                        self._slots = Slots(self.lanes)
                    break
                except KeyboardInterrupt as e:
                    interrupted = e
            if self._cuda is not None:
                # what is queued on the device ends first: a thread waiting for it (the
                # server's finisher, in torch's C++) must not be when the interpreter exits
                try:
                    torch.cuda.synchronize(self.torch_device)
                except Exception as e:  # a device error: the caller's own error matters more
                    log.warning("close: waiting for the device failed: %s", first_line(e))
            with self._lanes_lock:
                lanes, self._lanes = self._lanes, None
                if lanes is not None and self._finalizer is not None:
                    self._finalizer.detach()
            if lanes is not None:
                lanes.close()
        finally:
            if entered:
                with self._closing_lock:
                    self._closing -= 1
        if interrupted is not None:
            raise interrupted

    def _forked(self) -> None:
        """In a child forked from this process: no thread of the parent's runs here, so none
        gives back the slots or the locks it held at the fork."""
        self._slots = Slots(self.lanes)
        self._lanes_lock = threading.Lock()
        self._closing, self._closing_lock = 0, threading.Lock()
        self._passes, self._passes_lock = None, threading.Lock()


class _Within(threading.local):
    passing = False


#: The engines of this process (:meth:`Engine._forked`).
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork() -> None:
    for engine in list(_ENGINES):
        engine._forked()


if os.name == "posix":
    os.register_at_fork(after_in_child=_after_fork)
