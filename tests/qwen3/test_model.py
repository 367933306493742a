"""Model building blocks against straightforward reference computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smysl.qwen3.model import AttentionPlan, Qwen3Config, apply_rope, pad_rows


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per-sequence causal attention with an explicit L x L mask. q: [T, Hq, D]."""
    out, s = [], 0
    rep = q.shape[1] // k.shape[1]
    for n in lengths:
        qs, ks, vs = q[s : s + n], k[s : s + n], v[s : s + n]
        ks, vs = ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out.append(torch.einsum("hqk,khd->qhd", p, vs))
        s += n
    return torch.cat(out)


@pytest.mark.parametrize("lengths", [[5], [3, 3, 3], [1, 7, 2, 7, 30], [64, 1, 1]])
def test_varlen_attention_matches_naive(lengths: list[int]) -> None:
    torch.manual_seed(0)
    t = sum(lengths)
    q, k, v = torch.randn(t, 4, 8), torch.randn(t, 2, 8), torch.randn(t, 2, 8)
    plan = AttentionPlan(lengths, torch.device("cpu"))
    assert torch.allclose(plan.attend(q, k, v), _naive(q, k, v, lengths), atol=1e-5)
    ends = torch.tensor(lengths).cumsum(0) - 1
    last = plan.attend_last(q[ends], k, v)
    assert torch.allclose(last, _naive(q, k, v, lengths)[ends], atol=1e-5)


def test_cpu_grouping_is_by_equal_length() -> None:
    exact = AttentionPlan([10, 9, 10, 2], torch.device("cpu"))
    assert sorted(sorted(g[0]) for g in exact.groups) == [[0, 2], [1], [3]]
    assert exact.groups[0][2] is not None  # lengths 10 at 0 and 2: gathered, not contiguous
    run = AttentionPlan([4, 4, 4], torch.device("cpu"))
    assert len(run.groups) == 1 and run.groups[0][2] is None  # one contiguous run: a view


def test_rope_matches_rotate_half_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 8)
    pos = torch.arange(6).float()
    inv = 1.0 / (1e6 ** (torch.arange(0, 8, 2).float() / 8))
    emb = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., :4], x[..., 4:]
    ref = x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]
    assert torch.allclose(apply_rope(x, cos, sin), ref)
    assert torch.allclose(apply_rope(x, cos, sin)[0], x[0])  # position 0 is the identity


def test_pad_rows_keeps_results() -> None:
    w, x = torch.randn(32, 16), torch.randn(3, 16)
    assert pad_rows(x).shape == (16, 16)
    assert torch.allclose(F.linear(pad_rows(x), w)[:3], F.linear(x, w), atol=1e-6)


def test_config_from_transformers_v4_and_v5_dicts() -> None:
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=4, model_type="qwen3")
    v4 = Qwen3Config.from_dict({**base, "rope_theta": 1e6, "rope_scaling": None})
    v5 = Qwen3Config.from_dict({**base, "rope_parameters": {"rope_theta": 1e6,
                                                            "rope_type": "default"}})
    assert v4 == v5 and v4.rope_theta == 1e6
    with pytest.raises(ValueError, match="Qwen3"):
        Qwen3Config.from_dict({**base, "model_type": "bert"})
    with pytest.raises(ValueError, match="rope"):
        Qwen3Config.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4}})
