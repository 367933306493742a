"""Shared prefixes on CPU: sequences that begin with the same tokens compute them once.

A reranker scores one query against many documents; every prompt begins with the same system
line, instruction and query (a quarter of the tokens of an XQuAD paragraph's prompt). Causal
attention makes the hidden states of those tokens independent of what follows, so a batch can
hold each distinct prefix once (a *root*) followed by what each sequence adds (a
*continuation*, its positions counting on from the prefix), and each continuation attends to
its root's keys and values plus its own. Per-token work (projections, MLP) shrinks by the
shared tokens; attention is the same arithmetic as over the whole sequence.

Which prefix a sequence shares is the caller's rule (``heads[i]`` leading tokens of sequence
``i``), so that a sequence's result never depends on the batch it came in: the reranker marks
the tokens up to ``<Document>:``. Sequences with equal heads share one root; ``0`` means none.
"""

from __future__ import annotations

import torch

from smysl.qwen3.model import attend_one, causal_attention


class PrefixPlan:
    """The :class:`~smysl.qwen3.model.Plan` of a stream laid out by :func:`layout`: roots
    (shared prefixes and sequences without one) attend causally within themselves;
    continuations attend to their root and causally within themselves."""

    def __init__(self, roots: list[tuple[int, int]],
                 continuations: list[tuple[int, int, int]], outputs: list[int]) -> None:
        """roots: (start, length) in the stream; continuations: (start, length, root index),
        equal (root, length) runs contiguous; outputs: per batch sequence, its root (``-1 -
        r``, a sequence without a shared prefix) or its continuation index."""
        self.roots, self.continuations, self.outputs = roots, continuations, outputs
        # runs of continuations with the same root and length: one batched call each
        self.runs: list[tuple[int, int, int, int]] = []  # (start, count, length, root)
        for s, n, r in continuations:
            last = self.runs[-1] if self.runs else None
            if last and last[3] == r and last[2] == n and last[0] + last[1] * n == s:
                self.runs[-1] = (last[0], last[1] + 1, n, r)
            else:
                self.runs.append((s, 1, n, r))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D]."""
        out = q.new_empty(q.shape)
        for s, n in self.roots:
            out[s : s + n] = causal_attention(q[None, s : s + n], k[None, s : s + n],
                                              v[None, s : s + n])[0]
        for s, count, n, r in self.runs:
            rs, rn = self.roots[r]
            e = s + count * n
            qb = q[s:e].unflatten(0, (count, n))  # [B, L, Hq, D]
            kb = torch.cat([k[rs : rs + rn].expand(count, -1, -1, -1),
                            k[s:e].unflatten(0, (count, n))], dim=1)  # [B, P + L, Hkv, D]
            vb = torch.cat([v[rs : rs + rn].expand(count, -1, -1, -1),
                            v[s:e].unflatten(0, (count, n))], dim=1)
            # query j sees the whole prefix and its own positions 0..j
            out[s:e] = causal_attention(qb, kb, vb, offset=rn).flatten(0, 1)
        return out

    def attend_last(self, q_last: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        """Each output sequence's last query over its prefix and itself: [B, Hq, D]."""
        out = q_last.new_empty(q_last.shape)
        for i, which in enumerate(self.outputs):
            if which < 0:  # a sequence without a shared prefix: its own root
                s, n = self.roots[-1 - which]
                kk, vv = k[s : s + n], v[s : s + n]
            else:
                s, n, r = self.continuations[which]
                rs, rn = self.roots[r]
                kk = torch.cat([k[rs : rs + rn], k[s : s + n]])
                vv = torch.cat([v[rs : rs + rn], v[s : s + n]])
            out[i] = attend_one(q_last[i], kk, vv)
        return out


def layout(batch: list[list[int]], heads: list[int], device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PrefixPlan]:
    """The packed stream of ``batch`` with shared heads computed once.

    Returns (input_ids [T], positions [T], ends [B] stream index of each sequence's last
    token, plan) for :meth:`~smysl.qwen3.model.Qwen3Encoder.run`. A head as long as its
    sequence is not shared (the sequence needs its own last token).
    """
    if len(heads) != len(batch):
        raise ValueError("one head length per sequence")
    families: dict[tuple[int, ...], list[int]] = {}
    alone: list[int] = []
    for i, (seq, h) in enumerate(zip(batch, heads, strict=True)):
        if 0 < h < len(seq):
            families.setdefault(tuple(seq[:h]), []).append(i)
        else:
            alone.append(i)
    ids: list[int] = []
    pos: list[int] = []
    roots: list[tuple[int, int]] = []
    continuations: list[tuple[int, int, int]] = []
    outputs = [0] * len(batch)
    ends = [0] * len(batch)
    for head, members in families.items():
        r = len(roots)
        roots.append((len(ids), len(head)))
        ids += head
        pos += range(len(head))
        # longest first: equal lengths end up contiguous, one attention call per run
        for i in sorted(members, key=lambda i: -len(batch[i])):
            tail = batch[i][len(head):]
            outputs[i] = len(continuations)
            continuations.append((len(ids), len(tail), r))
            ids += tail
            pos += range(len(head), len(batch[i]))
            ends[i] = len(ids) - 1
    for i in alone:
        outputs[i] = -1 - len(roots)
        roots.append((len(ids), len(batch[i])))
        ids += batch[i]
        pos += range(len(batch[i]))
        ends[i] = len(ids) - 1
    plan = PrefixPlan(roots, continuations, outputs)
    return (torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(pos, dtype=torch.long, device=device),
            torch.tensor(ends, dtype=torch.long, device=device), plan)
