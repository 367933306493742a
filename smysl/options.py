"""How to load a model: one typed object built at the edge, used by every command and backend.

The CLI builds it from flags (:func:`smysl.commands._model.model_options`), the server from its
command line, Python callers from keyword arguments to :func:`smysl.load`. The registry hands it
to whichever backend the model string names; a backend takes the fields it can use and rejects
any other field that was *set* (see :meth:`ModelOptions.check`), so an option never silently
does nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smysl.base import check_flag, positive_int

#: Whether a local engine can run in a child process here (:attr:`ModelOptions.process`): the
#: child's loop waits on pipes with ``select()``, which on Windows takes sockets alone.
ENGINE_PROCESSES = os.name == "posix"


@dataclass(frozen=True)
class ModelOptions:
    """Loading options. ``None`` (and ``"auto"`` for device/dtype) means "the backend's default"."""

    #: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    device: str | None = None
    #: "auto", "float32", "bfloat16" or "float16".
    dtype: str | None = None
    #: Weight quantisation: "int8" (the local engine on CPU) or "int4" (CPU or CUDA).
    quantize: str | None = None
    #: CPU threads for the engine (torch); None: what ``smysl tune`` measured for the path on
    #: this machine, else torch's default (one per physical core).
    threads: int | None = None
    #: CPU: batches of a bulk call computed at once, each on ``threads // lanes`` threads;
    #: None: what ``smysl tune`` measured, else ``smysl.qwen3.lanes.default_lanes``.
    lanes: int | None = None
    #: Most tokens one input may have (EOS included); at most the model's own limit.
    max_tokens: int | None = None
    #: Token budget of one forward pass (local engine) or one request (providers).
    max_batch_tokens: int | None = None
    #: Most inputs in one forward pass or request.
    max_batch_size: int | None = None
    #: Hub revision (branch, tag or commit) of a downloaded checkpoint.
    revision: str | None = None
    #: Run the engine in a child process (own GIL). None: no, except under ``smysl serve``
    #: where :data:`ENGINE_PROCESSES` (not on Windows).
    process: bool | None = None
    #: CUDA: capture CUDA graphs for batches of up to this many tokens (0: none; default 2048).
    cuda_graphs: int | None = None
    #: CUDA, bfloat16/float16: False runs the eager pass instead of the fused Triton kernels
    #: (``smysl.qwen3.kernels``; None: fused where they pass their check at load).
    cuda_kernels: bool | None = None

    def __post_init__(self) -> None:
        for name in ("device", "dtype", "revision"):  # "" was taken for the default
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"{name} ({FLAGS[name]}) must not be empty")
        for name in ("threads", "lanes", "max_tokens", "max_batch_tokens", "max_batch_size"):
            value = getattr(self, name)
            count = positive_int(value)  # numpy integers too, as dimensions= takes them
            if value is not None and count is None:
                raise ValueError(f"{name} ({FLAGS[name]}) must be a positive integer, "
                                 f"got {value!r}")
            object.__setattr__(self, name, count)  # a plain int (frozen)
        if self.max_tokens == 1:  # truncated, every text was its EOS alone: one vector
            raise ValueError(f"max_tokens ({FLAGS['max_tokens']}) 1 leaves no token of a text "
                             "beside its EOS: at least 2")
        if self.threads is not None and self.lanes is not None and self.lanes > self.threads:
            # each lane runs threads // lanes threads: 0 (a lane per thread was run instead)
            raise ValueError(f"lanes ({FLAGS['lanes']}) {self.lanes} is more than threads "
                             f"({FLAGS['threads']}) {self.threads}: each lane runs on its "
                             "share of the threads; use at most as many lanes as threads")
        for name in ("process", "cuda_kernels"):  # process="no" started a child process
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_flag(getattr(self, name), name))
        if self.process and not ENGINE_PROCESSES:
            raise ValueError("process=True (the engine in a child process) needs Linux or "
                             "macOS; here the engine runs in this process (process=False)")
        g = self.cuda_graphs
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 0):
            raise ValueError(f"cuda_graphs ({FLAGS['cuda_graphs']}) must be 0 (off) or a token "
                             f"count, got {g!r}")

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[ModelOptions, dict[str, Any]]:
        """Keyword arguments -> (the :class:`ModelOptions` among them, the backend's own)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        mine = {k: v for k, v in kwargs.items() if k in fields}
        return cls(**mine), {k: v for k, v in kwargs.items() if k not in fields}

    def given(self) -> dict[str, Any]:
        """The fields that were set (not None, not "auto")."""
        return {f.name: v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None and v != "auto"}

    def check(self, supported: Iterable[str], model: str) -> None:
        """Raise ``ValueError`` naming every set field that a backend for ``model`` cannot use."""
        extra = sorted(set(self.given()) - set(supported))
        if extra:
            names = ", ".join(f"{k} ({FLAGS[k]})" for k in extra)
            raise ValueError(f"{model!r} does not use the option(s) {names}")

    def replace(self, **changes: Any) -> ModelOptions:
        """A copy with ``changes`` (field names) applied, checked as the constructor checks."""
        return dataclasses.replace(self, **changes)


#: CLI flag of each field, for error messages that name what the user typed.
FLAGS: dict[str, str] = {
    "device": "--device", "dtype": "--dtype", "quantize": "--quantize", "threads": "--threads",
    "lanes": "--lanes",
    "max_tokens": "--max-tokens", "max_batch_tokens": "--max-batch-tokens",
    "max_batch_size": "--max-batch-size", "revision": "--revision", "process": "--in-process",
    "cuda_graphs": "--cuda-graphs", "cuda_kernels": "--no-cuda-kernels",
}
