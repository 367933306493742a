"""The encoder on CUDA: varlen attention, packed host buffers, CUDA graphs for small batches.

On a GPU the forward pass of an embedding model is cheap next to the host work around it, so
this module is about launches and copies (issue 12 in docs/benchmarks.md):

* :class:`VarlenPlan`: one FlashAttention-2 varlen call per layer over the packed stream (no
  padding, no per-sequence calls, no cuDNN execution plan per new shape); the last layer runs
  each sequence's last query alone (``cu_seq_q = arange(B + 1)``, ``max_q = 1``).
* :func:`pack`: everything a forward pass needs from the host in one int32 array, so one pinned
  host-to-device copy per batch.
* :class:`Graphs`: the forward pass captured once per token bucket (16 ... 2,048 tokens, fixed
  sequence slots) and replayed when a batch fits: a short query costs one graph launch instead
  of ~40 kernel launches per layer.
* :class:`Runner`: the forward pass on the fused Triton kernels of :mod:`smysl.qwen3.kernels`
  (bfloat16/float16) once they agree with the eager one at load, else eager.

Everything here must run on torch 2.11 and 2.13 alike: the attention kernels are called through
their aten ops, whose leading arguments have not changed (``torch.nn.attention.varlen`` in 2.11
may pick cuDNN, and it allocates an extra tensor per call).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smysl.qwen3.model import Linear, Qwen3Encoder

log = logging.getLogger(__name__)

#: q [Tq, Hq, D], k/v [Tk, Hkv, D], cu_q [B+1], cu_k [B+1], max_q, max_k, causal -> [Tq, Hq, D]
VarlenFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int,
                     int, bool], torch.Tensor]


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                 cu_k: torch.Tensor, max_q: int, max_k: int, causal: bool) -> torch.Tensor:
    """FlashAttention-2 over packed sequences (bf16/fp16); GQA native (Hkv divides Hq).
    ``causal`` aligns each sequence's queries with the end of its keys."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0,
                                                   causal, False)[0]


def efficient_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                     cu_k: torch.Tensor, max_q: int, max_k: int, causal: bool) -> torch.Tensor:
    """float32 (flash has no fp32 kernel): memory-efficient attention, which takes packed
    sequences as one ``[1, T, heads, D]`` batch but no GQA, so K/V heads are repeated."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    # custom_mask_type 1: causal from the top left (queries and keys of a sequence align)
    out = torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu_q, cu_k, max_q, max_k, 0.0, 1 if causal else 0)[0]
    return out[0]


def varlen_fn(dtype: torch.dtype) -> VarlenFn:
    """The varlen kernel for a matmul dtype."""
    return efficient_varlen if dtype == torch.float32 else flash_varlen


#: ids, positions [T]; ends [B]; plan; chunk -> [B, H] float32: :meth:`Qwen3Encoder.run`, or
#: :func:`smysl.qwen3.kernels.run` bound to the model.
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "VarlenPlan", int], torch.Tensor]


class VarlenPlan:
    """Attention over the packed stream: one varlen call per layer.

    ``cu`` [B+1] int32: sequence starts in the stream (and its length last); ``cu_last``
    [B+1] int32: ``arange(B + 1)``, one query per sequence in the last layer; ``max_len``: at
    least the longest sequence (a captured graph passes its bucket's token count).
    """

    def __init__(self, cu: torch.Tensor, cu_last: torch.Tensor, max_len: int,
                 attn: VarlenFn) -> None:
        self.cu, self.cu_last, self.max_len, self.attn = cu, cu_last, max_len, attn

    @classmethod
    def for_lengths(cls, lengths: Sequence[int], device: torch.device, dtype: torch.dtype,
                    attn: VarlenFn | None = None) -> VarlenPlan:
        """A plan for ``lengths``, its index tensors built on the host and moved once."""
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        return cls(cu.to(device), torch.arange(len(lengths) + 1, dtype=torch.int32).to(device),
                   max(lengths), attn or varlen_fn(dtype))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attn(q, k, v, self.cu, self.cu, self.max_len, self.max_len, True)

    def attend_last(self, q_last: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        # the last query sees its whole sequence: no mask
        return self.attn(q_last, k, v, self.cu_last, self.cu, 1, self.max_len, False)


# ---------------------------------------------------------------------------- host packing
def pack(batch: Sequence[Sequence[int]], slots: Sequence[int]) -> np.ndarray:
    """One int32 array ``[ids T | positions T | ends S | cu S+1 | cu_last S+1]`` for a batch.

    ``slots``: the length of every sequence of the forward pass, the batch's own first, then
    any padding sequences (token id 0) that fill a graph bucket; ``T = sum(slots)``.
    """
    lens = np.asarray(slots, dtype=np.int64)
    t, s = int(lens.sum()), len(lens)
    out = np.zeros(2 * t + 3 * s + 2, dtype=np.int32)
    n = sum(len(x) for x in batch)
    out[:n] = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int32, count=n)
    cu = np.zeros(s + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    out[t : 2 * t] = np.arange(t) - np.repeat(cu[:-1], lens)  # position within its sequence
    out[2 * t : 2 * t + s] = cu[1:] - 1
    out[2 * t + s : 2 * t + 2 * s + 1] = cu
    out[2 * t + 2 * s + 1 :] = np.arange(s + 1)
    return out


def unpack(data: torch.Tensor, tokens: int, slots: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of a :func:`pack` array: ids, positions [T]; ends [S]; cu, cu_last [S+1]."""
    t, s = tokens, slots
    return (data[:t], data[t : 2 * t], data[2 * t : 2 * t + s],
            data[2 * t + s : 2 * t + 2 * s + 1], data[2 * t + 2 * s + 1 :])


def device_inputs(data: torch.Tensor, slots: Sequence[int], max_len: int, attn: VarlenFn
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, VarlenPlan]:
    """A :func:`pack` array on the device -> the forward pass's ids, positions [T], ends [S]
    and its :class:`VarlenPlan` (``max_len``: at least the longest sequence)."""
    ids, pos, ends, cu, cu_last = unpack(data, sum(slots), len(slots))
    return ids, pos, ends, VarlenPlan(cu, cu_last, max_len, attn)


# ---------------------------------------------------------------------------- CUDA graphs
@dataclass(frozen=True)
class Bucket:
    """A captured shape: ``tokens`` in the stream, split into exactly ``slots`` sequences."""

    tokens: int
    slots: int


def buckets(largest: int) -> list[Bucket]:
    """Powers of two from 16 to 256 tokens, then four steps an octave (320, 384, 448, 512,
    640 ...) up to ``largest``; a quarter as many slots as tokens, at most 129 (64 concurrent
    ~20-token queries fit 1,280 tokens; 128 sequences and a slot for the spare tokens: with 128
    slots at most, 128 short sequences fitted only a bucket they filled exactly, and ran
    eagerly). A replay computes its whole bucket: with powers of two all the way, a server's
    batch of 1,100 tokens ran as 2,048, where the GPU's time grows with the tokens (0.6B on an
    H200: ~365K tokens/s warm); now a batch past 256 tokens pads less than a quarter. Below
    that a pass costs about the same at any size (launch-bound)."""
    out, t = [], 16
    while t <= largest:
        out.append(Bucket(t, min(max(t // 4, 1), 129)))
        t = t * 2 if t < 256 else t + (1 << (t.bit_length() - 1)) // 4
    return out


def slot_lengths(lengths: Sequence[int], bucket: Bucket) -> list[int] | None:
    """The bucket's sequence lengths for a batch, or None when it does not fit.

    The batch's sequences come first, unchanged; the spare tokens form the free slots (one
    token each, the rest in the last), so no slot is empty and no real sequence is padded.
    """
    pad, free = bucket.tokens - sum(lengths), bucket.slots - len(lengths)
    if pad < 0 or free < 0 or free > pad or (pad > 0 and free == 0):
        return None
    return [*lengths, *([1] * (free - 1)), pad - (free - 1)] if free else list(lengths)


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, data: torch.Tensor, out: torch.Tensor
                 ) -> None:
        self.graph, self.data, self.out = graph, data, out  # data: static input; out: [S, H]


class Graphs:
    """The forward pass captured as one CUDA graph per :class:`Bucket`, all sharing one memory
    pool (replays never overlap: one stream, one engine lock)."""

    def __init__(self, forward: Forward, device: torch.device, dtype: torch.dtype,
                 largest: int, chunk: int) -> None:
        self.forward, self.device, self.chunk = forward, device, chunk
        self.attn = varlen_fn(dtype)
        self.buckets = buckets(largest)
        self._captured: dict[Bucket, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.capture_s = 0.0

    @property
    def sizes(self) -> list[int]:
        """Token counts of the captured buckets."""
        return sorted(b.tokens for b in self._captured)

    def capture_all(self) -> None:
        """Capture every bucket, largest first (the shared pool grows once)."""
        for b in sorted(self.buckets, key=lambda b: -b.tokens):
            self._capture(b)

    def find(self, lengths: Sequence[int]) -> tuple[Bucket, list[int]] | None:
        """The smallest captured bucket a batch fits, with its slot lengths."""
        for b in self.buckets:
            if b in self._captured and (slots := slot_lengths(lengths, b)) is not None:
                return b, slots
        return None

    def replay(self, bucket: Bucket, host: torch.Tensor) -> torch.Tensor:
        """host: the :func:`pack` array (pinned) -> [slots, H] float32, valid until the next
        replay (the caller copies its rows out first, on the same stream)."""
        c = self._captured[bucket]
        c.data.copy_(host, non_blocking=True)
        c.graph.replay()
        return c.out

    def _capture(self, b: Bucket) -> None:
        t0 = time.perf_counter()
        slots = slot_lengths([1], b)
        assert slots is not None, b  # every bucket has room for one token (buckets())
        data = torch.from_numpy(pack([[0]], slots)).to(self.device)
        ids, pos, ends, plan = device_inputs(data, slots, b.tokens, self.attn)
        # a warm-up pass on a side stream first: cuBLAS and the allocator set themselves up
        # outside the capture, as torch.cuda.graphs asks
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.forward(ids, pos, ends, plan, self.chunk)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.forward(ids, pos, ends, plan, self.chunk)
        self._captured[b] = _Captured(graph, data, out)
        self.capture_s += time.perf_counter() - t0


# ---------------------------------------------------------------------------- the runner
#: The largest per-row relative difference between what a layer adds on the fused kernels
#: and on the eager ops, from the same input (:func:`smysl.qwen3.kernels.layer_error`), that
#: :class:`Runner` accepts at load: they differ only in float32 summation order and in
#: ``exp``'s last bits, a rare one-unit flip of a rounding (a tiny float16 model in Triton's
#: interpreter: 8e-5; bfloat16's units are 8x coarser). RoPE turned the wrong way there: 0.04.
FUSED_MAX_ERROR = 0.02
#: The least per-row cosine between a whole fused pass and a whole eager one: a looser bound,
#: since two bfloat16 passes drift apart with depth (0.99979 over the 8B's 36 layers of random
#: weights on an H200 refused kernels under a bound of 0.9999); it catches what the layers'
#: check cannot, a layer's output handed on wrongly.
WHOLE_MIN_COSINE = 0.999


#: Row counts an octave of the linear layers' products run once at load (:meth:`Runner._sweep`);
#: 0: none.
SWEEP_STEPS = 8


class Runner:
    """Forward passes on one CUDA device: packs a batch, copies it in once (pinned,
    non-blocking), replays a graph or runs eagerly, and copies the pooled rows out once.

    :meth:`launch` returns as soon as the work is queued, so the caller can assemble the next
    batch while this one runs (:meth:`smysl.qwen3.engine.Engine.forward_many`).
    """

    def __init__(self, model: Qwen3Encoder, device: torch.device, dtype: torch.dtype,
                 chunk: int, graphs: int, kernels: bool = True, warm_tokens: int = 0) -> None:
        self.model, self.device, self.chunk = model, device, chunk
        self.attn = varlen_fn(dtype)
        self.graphs: Graphs | None = None
        #: Token counts of the eager passes run at load (:meth:`_warm`).
        self.warmed: list[int] = []
        #: Row counts of the linear layers' products run at load (:meth:`_sweep`).
        self.swept: list[int] = []
        # Triton launches on the current device, not its tensors' (cuda:N with N > 0)
        with torch.cuda.device(device):
            fused = self._fused() if kernels and dtype in (torch.bfloat16, torch.float16) else None
            #: Whether passes run on the fused Triton kernels (:mod:`smysl.qwen3.kernels`).
            self.fused = fused is not None
            self.forward: Forward = fused or model.run
            if graphs:
                self._capture_graphs(dtype, graphs)
            if warm_tokens:
                self._warm(warm_tokens)

    def _warm(self, budget: int) -> None:
        """Eager passes of 4,096, 8,192, ... tokens up to the batch ``budget`` or the slice of
        the per-token work (:attr:`chunk`: 32,768 on the 0.6B, 8,192 on the 4B/8B, whose
        larger batches run the same matrix shapes), once at load. A process's first pass of a
        new size ran 1.2x slower than the next one on an H200 (0.6B, 77K tokens: 210 against
        169 ms of forward passes), and a second model in the same process was as fast as a
        warm pass after the first's memory had been handed back: kernels first used then,
        likely (cuBLAS picks others for larger matrices, and CUDA loads each on its first
        launch), not the allocator. So the memory these passes took is handed back after
        them (the caching allocator would keep their peak for the life of the process). A
        size that runs out of memory ends the warm-up (a real batch of it is split then,
        :meth:`Engine.submit`)."""
        largest = min(budget, self.chunk)
        sizes, t = [], max(4096, 2 * max(self.graph_sizes, default=0))  # past the graphs
        while t < largest:
            sizes.append(t)
            t *= 2
        start = time.perf_counter()
        short = False
        for t in [*sizes, largest]:
            lengths: list[int] = []  # sequences of 1, 2, 4 ... 2,048 tokens, and again
            left = t
            while left:
                lengths.append(min(left, 1 << (len(lengths) % 12)))
                left -= lengths[-1]
            try:
                self._launch([[0] * n for n in lengths])()
            except torch.cuda.OutOfMemoryError:
                short = True  # freed below: here the traceback still holds the pass's tensors
                break
            self.warmed.append(t)
        passes = time.perf_counter() - start
        if not short:
            try:
                self.swept = self._sweep(largest)
                torch.cuda.synchronize(self.device)
            except torch.cuda.OutOfMemoryError:
                short = True  # the sweep is a warm-up too: a smaller one is no failure
        torch.cuda.empty_cache()
        log.info("eager passes of %s tokens run at load in %.2f s%s; matrix products of 1 ... "
                 "%d rows (%d sizes) in %.2f s", self.warmed, passes,
                 " (stopped: out of memory)" if short else "", largest, len(self.swept),
                 time.perf_counter() - start - passes)

    @torch.inference_mode()
    def _sweep(self, largest: int) -> list[int]:
        """Each linear layer shape's product once for row counts from 1 to ``largest``,
        :data:`SWEEP_STEPS` an octave -> those counts. The passes above meet a few row counts
        only, and a batch's are its token count (a slice's) and, in the last layer, its
        sequence count: any number. cuBLAS picks its kernel by the matrix shape, and CUDA
        loads each kernel on its first launch, so a process's first passes met kernels the
        warm-up had not (the suspect of the 0.6B's first pass at 0.82 of warm, H200). Only
        the products run here: ~12 TFLOP on the 0.6B, ~43 on the 8B (estimates; tens of ms
        on an H200 besides the loading)."""
        if not SWEEP_STEPS:
            return []
        layers: dict[tuple[int, ...], Linear] = {}
        for mod in self.model.layers[0].modules():
            if isinstance(mod, Linear):  # quantised layers have their own kernels
                layers.setdefault(tuple(mod.weight.shape), mod)
        rows = sorted({largest} | {round(2 ** (i / SWEEP_STEPS))
                                   for i in range(int(SWEEP_STEPS * np.log2(largest)) + 1)})
        for mod in layers.values():
            x = torch.zeros(largest, mod.weight.shape[1], dtype=mod.weight.dtype,
                            device=self.device)
            for m in rows:
                mod(x[:m])
            del x
        return rows if layers else []

    def _capture_graphs(self, dtype: torch.dtype, largest: int) -> None:
        g = Graphs(self.forward, self.device, dtype, largest, self.chunk)
        stream = torch.cuda.current_stream(self.device)
        try:
            g.capture_all()
        except Exception as e:  # eager still works; say why graphs do not
            # torch's graph context leaves its capture stream only after capture_end: when
            # that raised, this thread would run its eager passes on the side stream
            torch.cuda.set_stream(stream)
            # an error in the captured pass comes back as capture_end's, with it as context
            during = f" (during: {e.__context__!r})" if e.__context__ is not None else ""
            log.warning("CUDA graphs disabled, capture failed: %s: %s%s", type(e).__name__, e,
                        during)
            with contextlib.suppress(Exception):  # a sticky error is the first pass's to say
                torch.cuda.synchronize(self.device)
        else:
            self.graphs = g
            log.info("captured CUDA graphs for %s tokens in %.2f s", g.sizes, g.capture_s)

    def _fused(self) -> Forward | None:
        """The fused forward pass, if Triton runs it here and it agrees with the eager pass on
        a small batch (3 sequences, 41 tokens): each layer's update within
        :data:`FUSED_MAX_ERROR`, the whole pass within :data:`WHOLE_MIN_COSINE`, all finite;
        else None, with a warning that says why."""
        try:
            from smysl.qwen3 import kernels
        except Exception as e:  # not installed, or an install that fails on import
            log.warning("fused CUDA kernels off (eager pass): Triton cannot be imported: %s: %s",
                        type(e).__name__, e)
            return None
        fused: Forward = functools.partial(kernels.run, self.model)
        gen = torch.Generator().manual_seed(0)
        batch = [torch.randint(0, self.model.cfg.vocab_size, (n,), generator=gen).tolist()
                 for n in (7, 33, 1)]
        lengths = [len(s) for s in batch]
        data = torch.from_numpy(pack(batch, lengths)).to(self.device)
        ids, pos, ends, plan = device_inputs(data, lengths, max(lengths), self.attn)
        try:  # in 16-token slices: the slicing of the per-token work is checked too
            want = self.model.run(ids, pos, ends, plan, 16)
            got = fused(ids, pos, ends, plan, 16)
            cos = float(torch.nn.functional.cosine_similarity(want, got).min())
            layers = kernels.layer_error(self.model, ids, pos, ends, plan, 16)
        except Exception as e:  # a Triton that cannot compile here, say: eager still works
            log.warning("fused CUDA kernels off (eager pass): %s: %s", type(e).__name__, e)
            with contextlib.suppress(Exception):  # a sticky CUDA error raises here again
                torch.cuda.synchronize(self.device)
            return None
        if not torch.isfinite(want).all():
            log.warning("fused CUDA kernels off (eager pass): the eager pass of the check batch "
                        "is not finite, nothing to compare with")
            return None
        if not (torch.isfinite(got).all() and cos >= WHOLE_MIN_COSINE
                and layers <= FUSED_MAX_ERROR):
            log.warning("fused CUDA kernels off (eager pass): they disagree with it at load "
                        "(a layer's update off by %.2e, bound %g; whole pass min cosine %.6f, "
                        "bound %g)", layers, FUSED_MAX_ERROR, cos, WHOLE_MIN_COSINE)
            return None
        log.info("fused CUDA kernels on (against the eager pass: a layer's update off by at "
                 "most %.2e; whole pass min cosine %.7f)", layers, cos)
        return fused

    @property
    def graph_sizes(self) -> list[int]:
        return self.graphs.sizes if self.graphs else []

    def launch(self, batch: Sequence[Sequence[int]]) -> Callable[[], np.ndarray]:
        """Queue one forward pass; the returned call waits for it -> [B, H] float32 rows."""
        with torch.cuda.device(self.device):
            return self._launch(batch)

    def _launch(self, batch: Sequence[Sequence[int]]) -> Callable[[], np.ndarray]:
        lengths = [len(s) for s in batch]
        found = self.graphs.find(lengths) if self.graphs else None
        slots = found[1] if found else lengths
        host = torch.from_numpy(pack(batch, slots)).pin_memory()
        if found and self.graphs:
            out = self.graphs.replay(found[0], host)
        else:
            data = host.to(self.device, non_blocking=True)
            out = self.forward(*device_inputs(data, slots, max(lengths), self.attn), self.chunk)
        rows = torch.empty((len(batch), out.shape[1]), dtype=torch.float32, pin_memory=True)
        rows.copy_(out[: len(batch)], non_blocking=True)
        # blocking: its waiter sleeps until the pass ends (woken by the driver, ~tens of us)
        # instead of spinning; the spin cost an engine process a whole CPU core for as long
        # as passes ran (1.05 of a core under 64 HTTP clients on an H200), a core that the
        # HTTP workers on the same host need
        done = torch.cuda.Event(blocking=True)
        done.record()

        def result() -> np.ndarray:
            done.synchronize()
            return rows.numpy().copy()

        return result
