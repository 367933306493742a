"""Token-budget batching: group inputs of similar length so a forward pass has ~N tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """How inputs are grouped into forward passes."""

    #: Token budget of one forward pass (sum of sequence lengths). A single longer input still
    #: runs, alone. Larger budgets raise matmul efficiency until it saturates and cost memory.
    max_batch_tokens: int = 4096
    #: Most sequences in one forward pass.
    max_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be >= 1")


def plan_batches(lengths: Sequence[int], cfg: SchedulerConfig) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first (memory peaks surface early).

    Every index appears exactly once; callers scatter results back into input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]
        if cur and (tokens + n > cfg.max_batch_tokens or len(cur) >= cfg.max_batch_size):
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    if cur:
        batches.append(cur)
    return batches
