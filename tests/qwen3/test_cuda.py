"""The CUDA path's host-side logic, run on CPU: packing, graph buckets, and the whole forward
pass through :class:`VarlenPlan` with a per-sequence stand-in for the FlashAttention kernel
(tests/qwen3/test_gpu.py runs the real kernels)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from qwen_tiny import sdpa_varlen

from smysl.qwen3.cuda import Bucket, VarlenPlan, buckets, pack, slot_lengths, unpack


def test_pack_lays_out_ids_positions_and_offsets() -> None:
    data = pack([[5, 6, 7], [8]], [3, 1, 2])  # two sequences and one padding slot
    ids, pos, ends, cu, cu_last = (x.tolist() for x in unpack(torch.from_numpy(data), 6, 3))
    assert ids == [5, 6, 7, 8, 0, 0]
    assert pos == [0, 1, 2, 0, 0, 1]
    assert ends == [2, 3, 5]
    assert cu == [0, 3, 4, 6] and cu_last == [0, 1, 2, 3]
    assert data.dtype == np.int32


def test_buckets_and_slot_lengths() -> None:
    bs = buckets(2048)
    assert [b.tokens for b in bs] == [16, 32, 64, 128, 256, 320, 384, 448, 512, 640, 768, 896,
                                      1024, 1280, 1536, 1792, 2048]
    for small, large in itertools.pairwise(bs):  # past 256 tokens, less than a quarter padded
        assert large.tokens - small.tokens <= max(small.tokens // 4, small.tokens if
                                                  small.tokens < 256 else 0)
    assert [b.tokens for b in buckets(3000)][-2:] == [2048, 2560]
    assert bs[0] == Bucket(16, 4) and bs[-1] == Bucket(2048, 129)
    # 128 short sequences fit a bucket with a slot for the spare tokens (they ran eagerly
    # unless they filled one exactly)
    for n in (3, 4, 9):
        fits = [b for b in bs if slot_lengths([n] * 128, b) is not None]
        assert fits and fits[0].tokens < 2 * max(256, 128 * n), (n, fits[:1])
    assert buckets(0) == []
    b = Bucket(16, 4)
    assert slot_lengths([3, 4], b) == [3, 4, 1, 8]  # real first, spare tokens in free slots
    assert slot_lengths([4, 4, 4, 4], b) == [4, 4, 4, 4]  # exact fit
    assert slot_lengths([4, 4, 4, 3], b) is None  # a spare token but no free slot
    assert slot_lengths([15, 1], Bucket(16, 3)) is None  # a free slot but no spare token
    assert slot_lengths([17], b) is None and slot_lengths([1] * 5, b) is None
    rng = random.Random(0)
    for _ in range(500):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 10))]
        for b in bs:
            slots = slot_lengths(lengths, b)
            if slots is not None:
                assert slots[: len(lengths)] == lengths
                assert sum(slots) == b.tokens and len(slots) == b.slots and min(slots) >= 1


@pytest.fixture(scope="module")
def encoder(tiny):  # type: ignore[no-untyped-def]
    return tiny.engine.model


@pytest.mark.parametrize("lengths", [[7], [5, 5, 5], [1, 9, 3, 30, 2]])
def test_varlen_forward_matches_cpu_plan(encoder, lengths: list[int]) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(sum(lengths))
    batch = [[rng.randrange(1000) for _ in range(n)] for n in lengths]
    ids = torch.tensor([t for s in batch for t in s])
    want = encoder(ids, lengths)  # the CPU AttentionPlan path
    for slots in (lengths, slot_lengths(lengths, Bucket(64, 16))):  # eager, and a graph bucket
        assert slots is not None
        data = torch.from_numpy(pack(batch, slots))
        i, p, e, cu, cu_last = unpack(data, sum(slots), len(slots))
        max_len = max(lengths) if slots is lengths else sum(slots)
        got = encoder.run(i, p, e, VarlenPlan(cu, cu_last, max_len, sdpa_varlen))
        assert got.shape == (len(slots), encoder.cfg.hidden_size)
        # padding sequences never touch the real ones
        assert torch.allclose(got[: len(lengths)], want, atol=1e-5, rtol=1e-5)


def test_varlen_plan_for_lengths_builds_offsets() -> None:
    plan = VarlenPlan.for_lengths([3, 1, 4], torch.device("cpu"), torch.bfloat16, sdpa_varlen)
    assert plan.cu.tolist() == [0, 3, 4, 8] and plan.cu_last.tolist() == [0, 1, 2, 3]
    assert plan.max_len == 4 and plan.cu.dtype == torch.int32


def test_the_load_sweep_runs_each_layer_shape_at_every_row_count(
        encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """:meth:`Runner._sweep` (run at load on CUDA): each linear layer shape once per row
    count, eight counts an octave from 1 to the largest (a batch's tokens and its sequence
    count are any number; cuBLAS picks a kernel per shape, loaded at its first launch)."""
    from types import SimpleNamespace

    from smysl.qwen3 import cuda
    from smysl.qwen3.model import Linear, Qwen3Encoder

    model = Qwen3Encoder(encoder.cfg)  # plain Linear layers, as on CUDA (CPU's are packed)

    calls: list[tuple[tuple[int, ...], int]] = []
    real = Linear.forward

    def record(self: Linear, x: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(self.weight.shape), x.shape[0]))
        assert x.is_contiguous()  # the layout of a real pass's inputs
        return real(self, x)

    monkeypatch.setattr(Linear, "forward", record)
    runner = SimpleNamespace(model=model, device=torch.device("cpu"))
    rows = cuda.Runner._sweep(runner, 300)  # type: ignore[arg-type]
    assert rows[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 9] and rows[-2:] == [279, 300]
    assert all(b - a <= a * (2 ** (1 / 8) - 1) + 1 for a, b in itertools.pairwise(rows))
    shapes = {tuple(m.weight.shape) for m in model.layers[0].modules() if isinstance(m, Linear)}
    assert len(shapes) == 4  # qkv, o, gate|up, down
    assert sorted(calls) == sorted((s, m) for s in shapes for m in rows)
    calls.clear()
    monkeypatch.setattr(cuda, "SWEEP_STEPS", 0)
    assert cuda.Runner._sweep(runner, 300) == [] and not calls  # type: ignore[arg-type]
