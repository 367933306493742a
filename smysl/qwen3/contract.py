"""The engine contract, and how one starts: packed token ids in, pooled rows out.

This is the whole interface between the model and everything above it (like TEI's ``Backend``):
callers hand it one batch of token-id sequences, it returns ``[B, hidden]`` float32 pooled rows.
Batching, tokenisation and prompts live elsewhere; model internals never leak past here.

Nothing here imports torch: a process that only talks to an engine in another process (an
HTTP worker of ``smysl serve --workers``, the server in front of its engine process) works
without it. The engine itself is :class:`smysl.qwen3.engine.Engine`.
"""

from __future__ import annotations

import copy
import importlib.util
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import numpy as np

from smysl.base import Pending
from smysl.options import ModelOptions

if TYPE_CHECKING:
    from smysl.qwen3.hub import Checkpoint

#: The default token budget of a forward pass, per device type (CPU: ~1,000-token batches of
#: short texts keep the slices' activations in the caches; docs/benchmarks.md).
BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}


def require_torch() -> None:
    """Raise ImportError, with the fix, when torch cannot be imported: a local model computes
    with it (in this process or in its engine process). Called before any file is read."""
    if importlib.util.find_spec("torch") is None:
        raise ImportError("a local model computes with torch, which this Python cannot import: "
                          "pip install torch (smysl pins the version it is tested with), or "
                          "use a remote model (openrouter:..., tei:URL, ...)")


def device_type(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``: the kind of an engine's :attr:`EngineLike.device`."""
    return device.partition(":")[0]


def batch_tokens(device: str) -> int:
    """The default token budget of a forward pass on ``device`` (:data:`BATCH_TOKENS`)."""
    return BATCH_TOKENS.get(device_type(device), 4096)


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the model runs (:func:`smysl.qwen3.engine.resolve_config` turns it into a
    torch device and dtype, in the engine's process)."""

    #: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    #: "auto" (CUDA: bfloat16; CPU: bfloat16 for a bf16 checkpoint where the CPU computes bf16
    #: natively, else float32 — see :func:`smysl.qwen3.cpu.auto_dtype`), "float32" (the exact
    #: path), "bfloat16" or "float16".
    dtype: str = "auto"
    #: None; "int8" (int8 linear layers, activations quantised on each call: per row on x86,
    #: 8 bits on VNNI/AMX CPUs and 7 elsewhere; per tensor off x86, see ``cpu.int8_kernel``;
    #: float32; CPU only); or "int4"
    #: (4-bit weights in groups of 32 where the source allows, else 8-bit weight-only (CUDA:
    #: bf16); bf16 activations; a GGUF file's blocks become 4-bit planes, exact for Q8_0, Q5_K
    #: and Q4_K: :func:`smysl.qwen3.ggml_quants.planes`; on CUDA rebuilt per call for cuBLAS,
    #: :class:`smysl.qwen3.quantize.Int4GemmLinear`).
    quantize: str | None = None
    #: CPU threads for torch; None: what ``smysl tune`` measured for this path on this
    #: machine (unless ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set it), else torch's default
    #: (one per physical core it may run on), at most :func:`smysl.cpus.usable_cpus` (a CPU quota).
    threads: int | None = None
    #: CPU: batches of a bulk call (``embed`` of many inputs) computed at once, each on
    #: ``threads // lanes`` threads (:mod:`smysl.qwen3.lanes`); None: what ``smysl tune``
    #: measured for this path, else :func:`~smysl.qwen3.lanes.default_lanes`. One batch alone,
    #: and one input over :data:`smysl.qwen3.engine.LANE_TOKENS`, run on all threads.
    lanes: int | None = None
    #: CUDA only: capture the forward pass as CUDA graphs for batches of up to this many tokens
    #: (buckets of 16, 32, ... tokens; captured at load, ~1 s); 0 turns graphs off; None:
    #: :data:`CUDA_GRAPH_TOKENS`. Set on CPU, a warning says it is not used.
    cuda_graphs: int | None = None
    #: CUDA, bfloat16/float16: RMSNorm, q/k norm + RoPE and SwiGLU as fused Triton kernels
    #: (:mod:`smysl.qwen3.kernels`), once they agree with the eager pass at load; eager when
    #: Triton is missing or they do not (a warning says why). False: always eager; None: True.
    cuda_kernels: bool | None = None
    #: An engine process's token budget: requests that arrive together are merged into one
    #: pass up to it, and a CPU pass with an input over it runs the requests within it
    #: between its layers (:class:`smysl.qwen3.worker._Hub`). The model's
    #: ``max_batch_tokens`` (a server's ``--max-batch-tokens``), so the server's batches and
    #: the engine process draw the same line; None: :func:`batch_tokens` of the device.
    batch_tokens: int | None = None


#: :attr:`EngineConfig.cuda_graphs` when unset: the largest batch captured, in tokens.
CUDA_GRAPH_TOKENS = 2048


class EngineLike(Protocol):
    """What everything above the engine uses: :class:`smysl.qwen3.engine.Engine` in this
    process, :class:`smysl.qwen3.worker.EngineProcess` running one in a child process, or
    :class:`smysl.qwen3.client.EngineClient` on another process's engine process."""

    hidden_size: int
    vocab_rows: int
    max_positions: int
    #: Where the model computes, as torch names it: "cpu", "cuda", "cuda:1".
    device: str
    #: What its matmuls compute in: "float32", "bfloat16" or "float16".
    dtype: str
    #: The CPU and the features that decide its paths (:meth:`smysl.qwen3.cpu.CpuFeatures.describe`)
    #: when the engine computes on CPU, else None.
    cpu: str | None
    #: Weight quantisation ("int8", "int4": the option the engine was loaded with; its
    #: :attr:`kernel` says what the layers run) or None.
    quantization: str | None
    #: Parameter count of the model as loaded (before quantisation).
    parameters: int
    #: Process id of the child process running the engine, None when in this process.
    pid: int | None
    #: Token counts of the batch shapes captured as CUDA graphs (empty on CPU).
    cuda_graphs: list[int]
    #: What the linear layers run: "onednn" (CPU, weights prepacked at load), "onednn-int8",
    #: "fbgemm-int8" or "torch-int8" (``quantize="int8"``, see ``cpu.int8_kernel``),
    #: "int4" (4-bit planes: CPU, or CUDA), "int8-weight" (``quantize="int4"`` on a float
    #: GGUF file, never re-quantised: 8-bit weight-only), "torch" (``F.linear``: CUDA, or a
    #: CPU oneDNN cannot serve); "+triton" appended on CUDA when the fused Triton kernels run
    #: the norms, RoPE and SwiGLU (:attr:`EngineConfig.cuda_kernels`).
    kernel: str
    #: What a quantised path's vectors depend on besides the weights, the kernel and the dtype,
    #: where the CPU decides it: int8's activation codes (8 or 7 bits, or per tensor) and its
    #: attention dtype ("onednn-int8 7-bit, attention float32"); "" elsewhere. Part of the
    #: fingerprint: two kernels' int8 vectors differ by ~1e-2 (cosine 0.999).
    numerics: str
    #: Tokens per slice of the per-token work (CPU: the default, or ``smysl tune``'s).
    chunk: int
    #: Batches of a bulk call computed at once (CPU, :attr:`EngineConfig.lanes`); else 1.
    lanes: int
    #: Passes a caller may start behind the one whose rows it waits for. 0 on CPU, where
    #: :meth:`submit` returns after the pass (holding its rows back for the next batch would
    #: only delay them); 1 on CUDA, where it returns once the pass is queued (the caller
    #: assembles its next batch meanwhile); :data:`~smysl.qwen3.client.MERGED_AHEAD` for an
    #: engine process on CUDA, which merges what arrives while its pass runs into the next.
    queues: int

    @property
    def threads(self) -> int | None:
        """torch's CPU threads of an engine on CPU, None on CUDA."""
        ...

    @property
    def tuned_at(self) -> str | None:
        """When ``smysl tune`` measured :attr:`chunk` on this machine (UTC, ISO 8601); None
        when the engine runs on the defaults."""
        ...

    @property
    def alive(self) -> bool:
        """Whether forward passes can still run (an engine process may have died)."""
        ...

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        """Pooled rows ``[len(batch), hidden]``; ``heads[i]``: leading tokens of sequence ``i``
        that sequences with the same head compute once (CPU; see :mod:`smysl.qwen3.prefix`)."""
        ...

    def forward_many(self, batches: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
        """:meth:`forward` of each batch, results in order (on CUDA the next batch is assembled
        and queued while the previous one runs; on CPU batches may run in lanes)."""
        ...

    def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """Start one :meth:`forward` pass; the returned call waits for its rows and raises what
        the pass raised. Several may be in flight; each call returns its own pass's rows. Its
        ``cancel()`` stops the pass early where the engine can (an engine process)."""
        ...

    def start(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """:meth:`submit`, returning at once, its ``cancel()`` able to stop the pass: what a
        server starts its batches with. An engine in this process on CPU runs it in a thread
        of its own (:mod:`smysl.qwen3.passes`); elsewhere it is :meth:`submit`."""
        ...

    def share(self) -> EngineLike:
        """A picklable handle other processes compute with on this engine (an engine
        process's :class:`~smysl.qwen3.client.EngineClient`); NotImplementedError in process."""
        ...

    def close(self) -> None: ...


#: A batch as a caller hands it to ``submit``: token-id sequences, or indices into them.
_Batch = TypeVar("_Batch")
#: Starts one pass -> the call that waits for its rows.
Submit = Callable[[_Batch], Pending]


def run_ahead(submit: Submit[_Batch], batches: Iterable[_Batch], queues: int
              ) -> Iterator[np.ndarray]:
    """Rows of each batch in order, passes started with ``submit``, up to ``queues``
    (:attr:`EngineLike.queues`) started before the oldest one's rows are read, so the device
    runs batch n while the caller's iterator assembles batch n + 1."""
    pending: deque[Callable[[], np.ndarray]] = deque()
    try:
        for batch in batches:
            pending.append(submit(batch))
            if len(pending) > queues:
                yield pending.popleft()()
        while pending:
            yield pending.popleft()()
    finally:  # a caller that stopped early: collect what is in flight (an engine process's
        # reply must not stay unread on its pipe)
        _wait_all(pending, quiet=True)


def start_all(submit: Submit[_Batch], batches: Iterable[_Batch]
              ) -> tuple[Callable[[], list[np.ndarray]], Callable[[], None]]:
    """Start a pass for every batch now (the caller bounds them: one server batch) -> (the
    call that waits for all their rows, in order; the call that cancels them all). Every
    pass is waited for, even after one failed (an engine process answers in turn); the
    first failure is raised after that."""
    waits: list[Pending] = []
    try:
        for batch in batches:
            waits.append(Pending.of(submit(batch)))
    except BaseException:
        _wait_all(waits, quiet=True)
        raise

    def cancel() -> None:
        for w in waits:
            w.cancel()

    return lambda: _wait_all(waits), cancel


def _wait_all(waits: Iterable[Callable[[], np.ndarray]], *, quiet: bool = False
              ) -> list[np.ndarray]:
    rows: list[np.ndarray] = []
    error: Exception | None = None
    for wait in waits:
        try:
            rows.append(wait())
        except Exception as e:
            error = error or e
    if error is not None and not quiet:
        raise error
    return rows


def request_tokens(request: tuple[list[list[int]], list[int] | None]) -> int:
    """A forward request's tokens: its (batch, heads)' sequences together."""
    return sum(map(len, request[0]))


def merge(requests: Sequence[tuple[list[list[int]], list[int] | None]], budget: int
          ) -> list[list[int]]:
    """Which requests ((batch, heads) each, in arrival order) share a forward pass: runs of
    requests without heads whose tokens fit ``budget`` together; a request with heads (a
    shared prefix, computed per batch) or over the budget alone. -> groups of indices."""
    groups: list[list[int]] = []
    tokens = 0
    for i, (_, heads) in enumerate(requests):
        n = request_tokens(requests[i])
        if heads is None and groups and tokens + n <= budget and requests[groups[-1][0]][1] is None:
            groups[-1].append(i)
            tokens += n
        else:
            groups.append([i])
            tokens = n
    return groups


class OnEngine:
    """Sharing, closing and :attr:`queues` for the engine's front-ends
    (:class:`~smysl.qwen3.embedder.Embedder`, :class:`~smysl.qwen3.reranker.Reranker`): all
    three are their engine's."""

    engine: EngineLike

    @property
    def queues(self) -> int:
        """Passes that may be started behind a running one (:attr:`EngineLike.queues`)."""
        return self.engine.queues

    def share(self) -> Self:
        """A picklable twin on this front-end's engine process (see
        :meth:`~smysl.qwen3.worker.EngineProcess.share`); NotImplementedError when the engine
        runs in this process."""
        twin = copy.copy(self)
        twin.engine = self.engine.share()
        return twin

    def close(self) -> None:
        """Stop the engine process, if the engine runs in one."""
        self.engine.close()


def start_engine(ckpt: Checkpoint, opts: ModelOptions) -> EngineLike:
    """The engine ``opts`` ask for: in this process, or in a child (``opts.process``; see
    :mod:`smysl.qwen3.worker`). The one place the embedder and the reranker start theirs."""
    cfg = EngineConfig(device=opts.device or "auto", dtype=opts.dtype or "auto",
                       quantize=opts.quantize, threads=opts.threads, lanes=opts.lanes,
                       cuda_graphs=opts.cuda_graphs, cuda_kernels=opts.cuda_kernels,
                       batch_tokens=opts.max_batch_tokens)
    if opts.process:  # this process needs no torch then
        from smysl.qwen3.worker import EngineProcess

        return EngineProcess(ckpt, cfg)
    from smysl.qwen3.engine import Engine

    return Engine.from_checkpoint(ckpt, cfg)
