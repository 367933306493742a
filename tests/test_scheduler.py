import random

import pytest

from smysl.scheduler import SchedulerConfig, plan_batches, plan_blocks


def test_every_index_once_budget_respected_and_longest_first() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 700) for _ in range(500)]
    cfg = SchedulerConfig(max_batch_tokens=2048, max_batch_size=64)
    batches = plan_batches(lengths, cfg)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 64
        assert sum(lengths[i] for i in b) <= 2048 or len(b) == 1
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_single_input_over_budget_runs_alone() -> None:
    batches = plan_batches([10, 5000, 10], SchedulerConfig(max_batch_tokens=100))
    assert batches[0] == [1]
    assert sorted(i for b in batches for i in b) == [0, 1, 2]


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(max_batch_tokens=0)


def test_blocks_of_lengths_are_planned_as_they_arrive() -> None:
    """Lengths known a block at a time (tokenised while earlier batches run): each index once,
    the budgets kept, a block's batches out before the next block is read, and at most one
    batch more than planning all lengths at once."""
    rng = random.Random(1)
    cfg = SchedulerConfig(max_batch_tokens=2048, max_batch_size=64)
    blocks = [[rng.randint(1, 700) for _ in range(n)] for n in (3, 0, 200, 1, 57, 120)]
    lengths = [n for b in blocks for n in b]
    read: list[int] = []

    def arriving():  # type: ignore[no-untyped-def]
        for i, b in enumerate(blocks):
            read.append(i)
            yield b

    batches = []
    for batch in plan_blocks(arriving(), cfg):
        # every input of this batch had arrived when it was planned
        assert max(batch) < sum(len(b) for b in blocks[: read[-1] + 1])
        batches.append(batch)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 64 and (sum(lengths[i] for i in b) <= 2048 or len(b) == 1)
    # fewer than one batch more than planning all at once
    assert len(batches) <= len(plan_batches(lengths, cfg)) + 1
    # one block: exactly plan_batches
    assert list(plan_blocks([lengths], cfg)) == plan_batches(lengths, cfg)
    assert list(plan_blocks([], cfg)) == [] and list(plan_blocks([[]], cfg)) == []


def test_the_first_blocks_go_out_whole() -> None:
    """``whole=k``: every input of the first k blocks is in a batch before block k is read
    (the device starts on them), later blocks keep their unfilled batch open as before."""
    cfg = SchedulerConfig(max_batch_tokens=100, max_batch_size=64)
    blocks = [[10, 20], [30], [25, 25], [40, 40, 40], [5]]
    read: list[int] = []

    def arriving():  # type: ignore[no-untyped-def]
        for i, b in enumerate(blocks):
            read.append(i)
            yield b

    seen: list[tuple[int, list[int]]] = []
    for batch in plan_blocks(arriving(), cfg, whole=2):
        seen.append((read[-1], batch))
    # blocks 0 and 1 each went out alone, as soon as they arrived
    assert seen[:2] == [(0, [1, 0]), (1, [2])]
    # block 2 (50 tokens) waited for block 3 to fill a batch
    assert all(r >= 3 for r, _ in seen[2:])
    assert sorted(i for _, b in seen for i in b) == list(range(9))
    assert list(plan_blocks(iter(blocks), cfg, whole=9)) == [
        b for blk_start, blk in zip([0, 2, 3, 5, 8], blocks, strict=True)
        for b in ([[blk_start + i for i in x] for x in plan_batches(blk, cfg)])]
