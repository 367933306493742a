"""Token-budget batching: the one batch planner, for forward passes and for API requests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """How inputs are grouped into forward passes (or requests to a remote API)."""

    #: Token budget of one batch (sum of sequence lengths); None for no token budget. A single
    #: longer input still runs, alone. Larger budgets raise matmul efficiency until it saturates
    #: and cost memory.
    max_batch_tokens: int | None = 4096
    #: Most sequences in one batch.
    max_batch_size: int = 512
    #: Group inputs of similar length, longest first (memory peaks surface early); False keeps
    #: input order (requests to an API, where lengths do not pad).
    by_length: bool = True

    def __post_init__(self) -> None:
        if (self.max_batch_tokens is not None and self.max_batch_tokens < 1) \
                or self.max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be >= 1")


def plan_batches(lengths: Sequence[int], cfg: SchedulerConfig) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches within the token and size budgets.

    Every index appears exactly once; callers scatter results back into input order.
    """
    order = list(range(len(lengths)))
    if cfg.by_length:
        order.sort(key=lambda i: (-lengths[i], i))
    budget = cfg.max_batch_tokens
    batches: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]
        if cur and ((budget is not None and tokens + n > budget)
                    or len(cur) >= cfg.max_batch_size):
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    if cur:
        batches.append(cur)
    return batches


def plan_blocks(blocks: Iterable[Sequence[int]], cfg: SchedulerConfig, *, whole: int = 0
                ) -> Iterator[list[int]]:
    """:func:`plan_batches` for inputs whose lengths arrive a block at a time (tokenised while
    earlier batches compute): each block's batches as soon as it arrives, indices counted
    from the first block's first input.

    The last batch of a block, the one the budget did not fill, waits for the next block's
    inputs to join it; so every batch but the last is as full as :func:`plan_batches` makes
    them, and each index still appears exactly once. The first ``whole`` blocks are the
    exception: their unfilled batches go out at once, because nothing runs yet while the next
    block is tokenised (small first blocks start the device early).
    """
    start = 0
    carry: list[tuple[int, int]] = []  # (index, length) of the batch still open
    for b, lengths in enumerate(blocks):
        items = carry + [(start + i, n) for i, n in enumerate(lengths)]
        start += len(lengths)
        if not items:
            continue
        *ready, last = plan_batches([n for _, n in items], cfg)
        if b < whole:
            ready.append(last)
            last = []
        for batch in ready:
            yield [items[i][0] for i in batch]
        carry = [items[i] for i in last]
    if carry:
        yield [i for i, _ in carry]
