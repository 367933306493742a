import random

import pytest

from smysl.scheduler import SchedulerConfig, plan_batches


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
