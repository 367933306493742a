"""The engine against the transformers reference recipe, on tiny random Qwen3 checkpoints."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS, QueuedEngine, Tiny, build_tiny, reference_embed

from smysl import Embedder
from smysl.prompts import DEFAULT_TASK, format_query
from smysl.qwen3.embedder import Embedder as LocalEmbedder
from smysl.tokenize import InputTooLongError

QUERIES = ["как работает поиск?", "what is a vector database", "x"]


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= atol, np.abs(a - b).max()
    assert (a * b).sum(axis=1).min() >= 0.99999


@pytest.mark.parametrize(
    "variant",
    ["gqa2-tied-eos", "gqa4-untied-base-lm-sharded", "gqa4-tied-base", "gqa2-untied-eos-bf16"],
)
def test_parity_with_transformers_reference(tiny_variants: dict[str, Tiny], variant: str) -> None:
    t = tiny_variants[variant]
    emb = Embedder.load(str(t.path), device="cpu", dtype="float32")  # the exact path
    docs = emb.embed_documents(TEXTS)
    _close(docs, reference_embed(t.path, TEXTS))
    queries = emb.embed_queries(QUERIES, task="Find relevant passages")
    ref_q = reference_embed(t.path, [format_query(q, "Find relevant passages") for q in QUERIES])
    _close(queries, ref_q)
    _close(emb.embed_documents(TEXTS, dimensions=32), reference_embed(t.path, TEXTS, dims=32))


def test_equal_length_batch_is_causal(tiny_dir: Path, tiny: LocalEmbedder) -> None:
    # Peers skip the causal mask when a batch needs no padding; every length here is equal.
    texts = ["alpha beta gamma", "delta beta gamma", "alpha beta delta", "gamma gamma gamma"]
    lens = tiny.count_tokens(texts)
    assert len(set(lens)) == 1
    _close(tiny.embed(texts), reference_embed(tiny_dir, texts))
    # and a causal model's last-token state must change when an earlier token changes
    assert not np.allclose(tiny.embed(texts)[0], tiny.embed(texts)[1])


def test_batch_invariance_is_bit_exact_on_cpu(tiny: LocalEmbedder) -> None:
    rng = random.Random(1)
    texts = [*TEXTS, *(f"text {i} " * rng.randint(1, 30) for i in range(40))]
    together = tiny.embed(texts)
    alone = np.concatenate([tiny.embed([t]) for t in texts])
    order = list(range(len(texts)))
    rng.shuffle(order)
    shuffled = tiny.embed([texts[i] for i in order])
    assert np.array_equal(together, alone)
    assert np.array_equal(shuffled, together[order])
    equal = ["same length a", "same length b", "same length c"]
    assert np.array_equal(tiny.embed(equal)[1], tiny.embed([equal[1]])[0])


def test_a_fresh_engines_low_accuracy_first_cos_changes_nothing(
        tiny_dir: Path, tiny: LocalEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """MKL's first cos in a thread sometimes computes at ~11 bits (about 1 in 10 fresh engine
    processes on a 2-vCPU Xeon): that engine's first texts moved by 1e-4. Here the first cos
    of a fresh engine comes out so."""
    texts = ["один", "two words", *TEXTS]
    want = tiny.embed(texts)
    real, calls = torch.Tensor.cos, []

    def first_call_off(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(x) * (1 + 5e-5) if len(calls) == 1 else real(x)

    fresh = Embedder.load(str(tiny_dir), device="cpu")
    monkeypatch.setattr(torch.Tensor, "cos", first_call_off)
    assert np.array_equal(fresh.embed(texts), want)
    assert calls


def test_small_token_budget_changes_nothing(tiny_dir: Path, tiny: LocalEmbedder) -> None:
    small = Embedder.load(str(tiny_dir), device="cpu", max_batch_tokens=16, max_batch_size=2)
    assert np.array_equal(small.embed(TEXTS), tiny.embed(TEXTS))


def test_tokenising_while_batches_run_changes_nothing(tiny_dir: Path,
                                                      tiny: LocalEmbedder) -> None:
    """A bulk call tokenised a block at a time while earlier blocks' batches compute (the
    CUDA default; forced here on CPU, whose vectors do not depend on the batches): the same
    vectors bit for bit, progress for every input, and an over-long input in a later block
    named by its index in the call."""
    from smysl.qwen3.embedder import text_blocks

    streamed = Embedder.load(str(tiny_dir), device="cpu", max_batch_tokens=64)
    streamed.overlap_tokenize = True
    rng = random.Random(7)
    texts = [*TEXTS, *(f"блок {i} " * rng.randint(1, 40) for i in range(120))]
    assert len(text_blocks(texts, 4 * 64)) > 5  # many blocks
    updates: list[int] = []

    class Count:
        def update(self, n: int) -> None:
            updates.append(n)

    got = streamed.embed(texts, progress=Count())  # type: ignore[arg-type]
    assert np.array_equal(got, tiny.embed(texts))
    assert sum(updates) == len(texts)
    with pytest.raises(InputTooLongError, match="input 100 has"):
        streamed.embed([*texts[:100], "token " * 2000, *texts[100:]])
    assert text_blocks(["ab", "c", "", "defg", "h"], 3) == [(0, 2), (2, 4), (4, 5)]
    assert text_blocks([], 3) == [] and text_blocks(["x"], 100) == [(0, 1)]
    # a ramp: blocks of 4, 8 and then 16 characters
    assert text_blocks(["a"] * 40, 16, ramp=2) == [(0, 4), (4, 12), (12, 28), (28, 40)]


def test_a_bulk_call_starts_the_device_on_its_first_small_block(tiny: LocalEmbedder) -> None:
    """On an engine that queues passes, the first pass of a bulk call holds the first block of
    the ramp alone (1/16 of a batch of tokens): the device starts after that much is
    tokenised, not after a whole batch's worth. The vectors are the engine's, bit for bit."""
    from smysl.qwen3.contract import run_ahead
    from smysl.qwen3.embedder import BLOCK_CHARS_PER_TOKEN, RAMP_BLOCKS, text_blocks

    batches: list[list[list[int]]] = []

    class Recording(QueuedEngine):
        def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> object:
            batches.append(batch)
            return super().submit(batch, heads)

        def forward_many(self, todo: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
            return run_ahead(self.submit, todo, True)  # type: ignore[arg-type]

    emb = LocalEmbedder(Recording(tiny.engine), tiny.tokenizer, name="q",
                        max_batch_tokens=256)  # type: ignore[arg-type]
    rng = random.Random(3)
    texts = [f"текст {i} " * rng.randint(1, 30) for i in range(200)]
    blocks = text_blocks(texts, BLOCK_CHARS_PER_TOKEN * 256, RAMP_BLOCKS)
    assert len(blocks) > RAMP_BLOCKS + 1
    got = emb.embed(texts)
    # each block of the ramp is a pass of its own (each fits the budget), the first one
    # 1/16 of it; the later blocks' passes are full but for the last
    for (start, stop), batch in zip(blocks[:RAMP_BLOCKS], batches, strict=False):
        block = tiny.tokenize(texts[start:stop])
        assert sorted(batch) == sorted(block) and sum(map(len, block)) <= 256
    assert sum(map(len, batches[0])) < 256 // 4
    longest = max(len(x) for x in tiny.tokenize(texts))  # what a full batch may lack
    assert all(sum(map(len, b)) > 256 - longest for b in batches[RAMP_BLOCKS:-1])
    assert np.array_equal(got, tiny.embed(texts))


def test_run_ahead_keeps_one_pass_queued_and_collects_what_a_stopped_caller_left() -> None:
    from smysl.qwen3.contract import run_ahead

    events: list[str] = []

    def submit(batch: list[list[int]]) -> object:
        events.append(f"submit {batch[0][0]}")
        return lambda: events.append(f"wait {batch[0][0]}") or np.zeros((1, 1))

    batches = [[[i]] for i in range(3)]
    assert len(list(run_ahead(submit, batches, queues=True))) == 3  # type: ignore[arg-type]
    assert events == ["submit 0", "submit 1", "wait 0", "submit 2", "wait 1", "wait 2"]
    events.clear()
    list(run_ahead(submit, batches, queues=False))  # type: ignore[arg-type]
    assert events == ["submit 0", "wait 0", "submit 1", "wait 1", "submit 2", "wait 2"]
    events.clear()
    it = run_ahead(submit, batches, queues=True)  # type: ignore[arg-type]
    next(it)
    it.close()  # the caller stopped: the pass still queued is waited for, not left unread
    assert events == ["submit 0", "submit 1", "wait 0", "wait 1"]


def test_start_prepared_queues_every_batch_before_any_wait(tiny_dir: Path,
                                                           tiny: LocalEmbedder) -> None:
    """On an engine that queues passes (CUDA; a stand-in here), ``start_prepared`` returns with
    all its batches queued and none waited for; the rows are the engine's, bit for bit."""
    queued = QueuedEngine(tiny.engine)
    emb = LocalEmbedder(queued, tiny.tokenizer, name="q", max_batch_tokens=32)  # type: ignore[arg-type]
    assert emb.queues and not tiny.queues
    ids = tiny.tokenize(TEXTS)
    rows = emb.start_prepared(ids)
    submitted = len(queued.events)
    assert submitted > 2 and all(e.startswith("submit") for e in queued.events)
    assert np.array_equal(rows(), tiny.embed_prepared(ids))
    assert [e for e in queued.events[submitted:] if e.startswith("wait")] == [
        f"wait {i}" for i in range(submitted)]
    # on CPU the rows are computed before it returns
    assert np.array_equal(tiny.start_prepared(ids)(), tiny.embed_prepared(ids))


def test_start_prepared_reads_every_pass_even_when_one_fails(tiny: LocalEmbedder) -> None:
    """An engine process answers passes in turn: every queued pass is waited for, also after
    one failed (at submit or at wait), and the failure reaches the caller."""
    ids = tiny.tokenize(TEXTS)
    for when in ("submit", "wait"):
        queued = QueuedEngine(tiny.engine, {1: (when, RuntimeError(f"boom at {when}"))})
        emb = LocalEmbedder(queued, tiny.tokenizer, name="q", max_batch_tokens=32)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=f"boom at {when}"):
            emb.start_prepared(ids)()
        submits = [e for e in queued.events if e.startswith("submit")]
        waits = [e for e in queued.events if e.startswith("wait")]
        assert len(waits) == (1 if when == "submit" else len(submits)), queued.events


def test_outputs_are_unit_float32_in_input_order(tiny: LocalEmbedder) -> None:
    v = tiny.embed(TEXTS)
    assert v.dtype == np.float32 and v.shape == (len(TEXTS), tiny.dimensions)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.array_equal(tiny.embed(TEXTS[3]), v[3:4])
    assert tiny.embed([]).shape == (0, tiny.dimensions)


def test_matryoshka_dimensions(tiny: LocalEmbedder) -> None:
    full = tiny.embed(TEXTS)
    d32 = tiny.embed(TEXTS, dimensions=32)
    assert d32.shape == (len(TEXTS), 32)
    expect = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    assert np.allclose(d32, expect, atol=1e-6)
    assert np.allclose(np.linalg.norm(d32, axis=1), 1, atol=1e-6)
    for bad in (31, 65, 0):
        with pytest.raises(ValueError, match="dimensions"):
            tiny.embed(["x"], dimensions=bad)


def test_query_defaults_and_instruction(tiny: LocalEmbedder) -> None:
    assert tiny.default_task == DEFAULT_TASK  # read from config_sentence_transformers.json
    q = tiny.embed_queries(["find me"])
    assert np.array_equal(q, tiny.embed([format_query("find me", DEFAULT_TASK)]))
    assert np.array_equal(q, tiny.embed(["find me"], instruction=DEFAULT_TASK))
    assert np.array_equal(tiny.embed_queries(["x"], task="sts"),
                          tiny.embed(["Instruct: Retrieve semantically similar text\nQuery:x"]))
    assert not np.allclose(q, tiny.embed_documents(["find me"]))


def test_bad_inputs_are_clear_errors(tiny: LocalEmbedder) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tiny.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="string or a sequence"):
        tiny.embed(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        tiny.embed_token_ids([[1, 2, 10**7]])
    with pytest.raises(ValueError, match="empty token list"):
        tiny.embed_token_ids([[]])
    # 1.7 and True were embedded as id 1; a flat list was a TypeError ('int' object is not
    # iterable), a string a ValueError without the input's index
    for bad, words in (([[1.7, 2]], r"input 0 has items that are not token ids.*1\.7"),
                       ([[5], [True]], "input 1 has items that are not token ids"),
                       ([1, 2, 3], "flat list of ids is one input"),
                       (["abc"], "input 0 is a string")):
        with pytest.raises(ValueError, match=words):
            tiny.embed_token_ids(bad)  # type: ignore[arg-type]
    assert np.array_equal(tiny.embed_token_ids([np.array([5, 6])]),
                          tiny.embed_token_ids([[5, 6]]))  # numpy ids are integers too


def test_long_inputs_error_or_truncate(tiny: LocalEmbedder) -> None:
    long = "token " * 2000  # the tiny config allows 512 positions
    with pytest.raises(InputTooLongError, match="at most 512"):
        tiny.embed(["short", long])
    v = tiny.embed([long], truncate=True)
    ids = tiny.tokenize([long], truncate=True)[0]
    assert len(ids) == 512 and ids[-1] == tiny.tokenizer.eos_id
    assert np.array_equal(v, tiny.embed_token_ids([ids]))


def test_long_input_parity(tiny_dir: Path, tiny: LocalEmbedder) -> None:
    text = " ".join(f"слово{i}" for i in range(90))
    assert 300 < tiny.count_tokens([text])[0] <= 512
    _close(tiny.embed([text, "short"]), reference_embed(tiny_dir, [text, "short"]))


def test_token_ids_append_eos_once(tiny: LocalEmbedder) -> None:
    ids = tiny.tokenize(["hello world"])[0]
    assert np.array_equal(tiny.embed_token_ids([ids[:-1]]), tiny.embed_token_ids([ids]))
    assert np.array_equal(tiny.embed_token_ids([ids]), tiny.embed(["hello world"]))


def test_token_ids_from_a_generator_are_embedded(tiny: LocalEmbedder) -> None:
    """A generator of id lists gave a (0, H) array: the flat-list check used it up."""
    ids = tiny.tokenize(["hello world", "second"])
    got = tiny.embed_token_ids(x for x in ids)
    assert np.array_equal(got, tiny.embed_token_ids(ids)) and got.shape[0] == 2
    with pytest.raises(ValueError, match="truncate must be True or False, got 'no'"):
        tiny.embed_token_ids(ids, truncate="no")  # type: ignore[arg-type]


def test_int8_close_to_fp32(tiny_dir: Path, tiny: LocalEmbedder) -> None:
    q = Embedder.load(str(tiny_dir), device="cpu", quantize="int8")
    a, b = q.embed(TEXTS), tiny.embed(TEXTS)
    assert (a * b).sum(axis=1).min() >= 0.99
    if q.info().kernel == "onednn-int8":  # per-row activation scales: batch invariant
        alone = np.stack([q.embed([t])[0] for t in TEXTS])
        assert np.array_equal(alone, a)
        # in a batch with a long, loud companion (a per-tensor scale would follow its range)
        loud = "ВНИМАНИЕ!!! " * 40 + "x" * 200
        assert np.array_equal(q.embed([loud, *TEXTS])[1:], a)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_slice_size_does_not_change_vectors(tiny_dir: Path, quantize: str | None) -> None:
    """Projections and the MLP run in ``engine.chunk``-token slices (a tuned size); a row's
    result must not depend on it."""
    e = Embedder.load(str(tiny_dir), device="cpu", quantize=quantize)
    ids = e.tokenize(TEXTS)
    base = e.engine.forward(ids)  # type: ignore[attr-defined]
    for chunk in (1, 7, 4096):
        e.engine.chunk = chunk  # type: ignore[attr-defined]
        assert np.array_equal(e.engine.forward(ids), base), chunk  # type: ignore[attr-defined]


def test_int4_slices_and_batches_agree_to_bf16_tolerance(tiny_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """int4 layers switch from torch's int4 kernel to a bf16 GEMM on dequantised weights for
    slices of ``DEQUANT_ROWS`` rows or more (slices of ``INT4_CHUNK_TOKENS``): the two round
    differently, so slice size and batch move a vector in the last bits, never further."""
    from smysl.qwen3 import engine, quantize

    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 17)  # slices of 1 and 7: kernel (16 rows)
    e = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    assert e.engine.chunk == (engine.INT4_CHUNK_TOKENS if quantize.dequantising()  # type: ignore[attr-defined]
                              else engine.CHUNK_TOKENS["cpu"])
    ids = e.tokenize(TEXTS)
    base = e.engine.forward(ids)  # type: ignore[attr-defined]
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    for chunk in (1, 7, 20, 4096):
        e.engine.chunk = chunk  # type: ignore[attr-defined]
        v = e.engine.forward(ids)  # type: ignore[attr-defined]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        assert (v * base).sum(axis=1).min() > 0.9999, chunk
    alone = np.concatenate([e.engine.forward([s]) for s in ids])  # type: ignore[attr-defined]
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    assert (alone * base).sum(axis=1).min() > 0.9999


def test_cuda_int4_layers_through_the_engine(tiny_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers ``quantize="int4"`` builds on CUDA (Int4GemmLinear; device-agnostic), run
    through the whole engine here on CPU, give the CPU's int4 vectors when both rebuild the
    same bf16 weights (the CPU's dequantised regime forced): what the GPU runs is checked
    end to end without a GPU (tests/qwen3/test_gpu.py checks it on one)."""
    from smysl.qwen3 import quantize

    if not quantize.dequantising():
        pytest.skip("the CPU's int4 layers do not dequantise here: nothing equal to compare")
    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 1)
    cpu = Embedder.load(str(tiny_dir), device="cpu", quantize="int4").embed(TEXTS)
    def as_on_cuda(gguf: bool, device: torch.device | None = None):  # type: ignore[no-untyped-def]
        return lambda t: quantize.make_cuda(t, torch.device("cpu"), gguf)

    monkeypatch.setattr(quantize, "int4_linear", as_on_cuda)
    e = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    model = e.engine.model  # type: ignore[attr-defined]
    assert isinstance(model.layers[0].mlp.gate_up_proj, quantize.Int4GemmLinear)
    got = e.embed(TEXTS)
    assert np.isfinite(got).all() and (got * cpu).sum(axis=1).min() > 0.99999


def test_int4_close_to_fp32(tiny_dir: Path, tiny: LocalEmbedder) -> None:
    q = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    assert q.info().quantization == "int4" and q.info().dtype == "bfloat16"
    a, b = q.embed(TEXTS), tiny.embed(TEXTS)
    assert np.isfinite(a).all() and (a * b).sum(axis=1).min() >= 0.98
    with pytest.raises(ValueError, match="int4 quantisation runs with dtype bfloat16"):
        Embedder.load(str(tiny_dir), device="cpu", dtype="float32", quantize="int4")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_finite_and_close(tiny_dir: Path, tiny: LocalEmbedder, dtype: str) -> None:
    h = Embedder.load(str(tiny_dir), device="cpu", dtype=dtype)
    v = h.embed(TEXTS)
    assert np.isfinite(v).all()
    assert (v * tiny.embed(TEXTS)).sum(axis=1).min() >= 0.99


def test_engine_config_errors(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="quantize"):
        Embedder.load(str(tiny_dir), device="cpu", quantize="int2")
    with pytest.raises(ValueError, match="dtype"):
        Embedder.load(str(tiny_dir), device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="int8"):
        Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16", quantize="int8")


def test_truncation_that_would_keep_only_the_instruction_is_refused(tiny_dir: Path) -> None:
    """A review's: with a limit the instruction alone fills, ``truncate=True`` embedded every
    query as its instruction's vector without a word (the server refused it already).
    Documents, and queries with room for their text, are cut as before."""
    e = Embedder.load(str(tiny_dir), device="cpu", max_tokens=8)
    with pytest.raises(InputTooLongError, match="instruction alone has"):
        e.embed_queries(["x"], truncate=True)
    assert e.embed_documents(["one two three four five six seven eight"],
                             truncate=True).shape == (1, e.dimensions)
    roomy = Embedder.load(str(tiny_dir), device="cpu", max_tokens=40)
    assert roomy.embed_queries(["word " * 100], truncate=True).shape == (1, e.dimensions)


def test_max_tokens_option_lowers_the_limit(tiny_dir: Path) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", max_tokens=8)
    assert e.max_tokens == 8
    with pytest.raises(InputTooLongError):
        e.embed(["one two three four five six seven eight nine ten"])
    # past the position table (512 here) it is refused before an engine starts, as st: does
    # (it was lowered to 512 without a word), for the reranker too
    import smysl

    for load in (Embedder.load, smysl.load):
        with pytest.raises(ValueError, match=r"max_tokens 1000: .* at most 512 tokens"):
            load(str(tiny_dir), device="cpu", max_tokens=1000)
    assert Embedder.load(str(tiny_dir), device="cpu", max_tokens=512).max_tokens == 512


def test_count_tokens(tiny: LocalEmbedder) -> None:
    assert tiny.count_tokens(["", "a"]) == [1, 2]
    assert tiny.count_tokens("a") == [2]


def test_fresh_checkpoint_other_seed_differs(tmp_path: Path, tiny: LocalEmbedder) -> None:
    other = Embedder.load(str(build_tiny(tmp_path / "o", seed=7).path), device="cpu")
    assert not np.allclose(other.embed(["x"]), tiny.embed(["x"]))


def test_fingerprint_names_the_weights_not_the_name(tmp_path: Path, monkeypatch) -> None:
    """issue 11 item 3: the same ``--model tiny-eos`` in two folders (other weights) has two
    fingerprints; one checkpoint reached by two spellings has one. ModelInfo shows it."""
    build_tiny(tmp_path / "a" / "tiny-eos", seed=0)
    build_tiny(tmp_path / "b" / "tiny-eos", seed=1)
    prints = []
    for folder in ("a", "b"):
        monkeypatch.chdir(tmp_path / folder)
        emb = Embedder.load("tiny-eos", device="cpu")
        assert emb.name == "tiny-eos" and emb.info().fingerprint == emb.fingerprint()
        prints.append(emb.fingerprint())
    assert prints[0] != prints[1]
    same = Embedder.load(str(tmp_path / "a" / "tiny-eos"), device="cpu")
    assert same.fingerprint() == prints[0]
    assert Embedder.load(str(tmp_path / "a" / "tiny-eos"), device="cpu",
                         dtype="bfloat16").fingerprint() != prints[0]


def test_int8_fingerprint_names_its_numerics(tmp_path: Path, monkeypatch) -> None:
    """Two int8 kernels (per-row oneDNN codes vs per-tensor fbgemm; 8- vs 7-bit codes; the
    attention dtype: each the CPU's choice) give vectors ~1e-2 apart on the same weights, so
    an index or a corpus job resumed on another machine must not take them as one model's.
    Other paths' fingerprints stay as they were (no field added)."""
    import smysl.qwen3.engine as engine_mod
    from smysl.base import fingerprint_files

    path = build_tiny(tmp_path / "t", seed=0).path
    fp32 = Embedder.load(str(path), device="cpu")
    assert fp32.checkpoint is not None
    files = list(fp32.checkpoint.files)
    assert fp32.fingerprint() == fingerprint_files(files, {
        "backend": "qwen3", "dtype": "float32", "quantization": None, "revision": None})
    assert fp32.engine.numerics == ""
    prints = {}
    from smysl.qwen3.cpu import onednn_int8

    if not onednn_int8():
        pytest.skip("torch has no oneDNN int8 linear here: one int8 kernel only")
    for kernel in ("onednn-int8", "fbgemm-int8"):
        monkeypatch.setattr(engine_mod, "int8_kernel", lambda features, k=kernel: k)
        emb = Embedder.load(str(path), device="cpu", quantize="int8")
        assert emb.engine.numerics.startswith(kernel)
        prints[kernel] = emb.fingerprint()
    assert len({*prints.values(), fp32.fingerprint()}) == 3


def _slow_layers(engine: object, monkeypatch: pytest.MonkeyPatch, seconds: float,
                 entering: Callable[[int], None]) -> None:
    """Each layer of ``engine``'s model calls ``entering(its index)`` and sleeps ``seconds``
    before it computes: a pass long enough to be stopped."""
    for i, layer in enumerate(engine.model.layers):  # type: ignore[attr-defined]
        def slow(*args: object, _i: int = i, _forward: object = layer.forward,
                 **kwargs: object) -> torch.Tensor:
            entering(_i)
            time.sleep(seconds)
            return _forward(*args, **kwargs)  # type: ignore[operator]
        monkeypatch.setattr(layer, "forward", slow)


def _embed_in_thread(emb: LocalEmbedder, texts: list[str]
                     ) -> tuple[threading.Thread, list[object]]:
    """``emb.embed(texts)`` in a thread, started -> the thread, and what it got: the rows or
    the :class:`PassStopped` raised."""
    from smysl.qwen3.engine import PassStopped

    got: list[object] = []

    def embed() -> None:
        try:
            got.append(emb.embed(texts))
        except PassStopped as e:
            got.append(e)

    t = threading.Thread(target=embed)
    t.start()
    return t, got


def test_close_stops_a_cpu_pass_in_flight_at_its_next_layer(tiny_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A close from another thread (a server's forced stop, a Ctrl-C) ends a CPU pass after
    the layer it is in, with :class:`PassStopped`: a pass ran to its end, minutes on a big
    model, and a thread left inside torch at the interpreter's exit aborted the process
    (exit -6). The engine computes again afterwards."""
    from smysl.qwen3.engine import PassStopped

    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=1)
    engine = emb.engine
    want = emb.embed(TEXTS[:3])
    entered: list[int] = []
    inside = threading.Event()

    def entering(i: int) -> None:
        entered.append(i)
        inside.set()

    _slow_layers(engine, monkeypatch, 1.0, entering)
    t, got = _embed_in_thread(emb, TEXTS[:3])
    assert inside.wait(10)
    start = time.monotonic()
    engine.close()
    took = time.monotonic() - start
    t.join(10)
    assert isinstance(got[0], PassStopped), got
    assert entered == [0] and took < 1.9, (entered, took)  # not the second layer
    monkeypatch.undo()
    assert np.array_equal(emb.embed(TEXTS[:3]), want)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork")
def test_close_in_a_child_forked_during_a_pass_returns(tiny_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while another thread of the parent computes inherits that pass's slots,
    which no thread of the child gives back: its close waited for them for ever."""
    import os

    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=1)
    engine = emb.engine
    inside = threading.Event()
    _slow_layers(engine, monkeypatch, 1.0, lambda i: inside.set())
    t, _ = _embed_in_thread(emb, TEXTS[:2])
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: close, then report by exit status
        import signal

        signal.alarm(10)  # a close that hangs dies of SIGALRM
        emb.close()
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    t.join(30)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, status


def test_a_close_that_stops_waiting_still_stops_the_pass(tiny_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A close that returns before the pass it stopped (its wait ran out, or it ran inside
    that very pass: a signal handler's) still stops the pass at its next layer; it ran to
    its end."""
    from smysl.qwen3 import engine as engine_module
    from smysl.qwen3.engine import PassStopped

    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=1)
    engine = emb.engine
    entered: list[int] = []

    def entering(i: int) -> None:
        entered.append(i)
        if i == 0 and threading.current_thread() is threading.main_thread():
            engine.close()  # inside the pass, as a signal handler would

    _slow_layers(engine, monkeypatch, 0.6, entering)
    with pytest.raises(PassStopped):
        emb.embed(TEXTS[:2])
    assert entered == [0]
    # a close whose wait runs out: the pass stops after its layer all the same
    entered.clear()
    monkeypatch.setattr(engine_module, "CLOSE_WAIT_S", 0.1)
    t, got = _embed_in_thread(emb, TEXTS[:2])
    while not entered:
        time.sleep(0.01)
    start = time.monotonic()
    engine.close()
    assert time.monotonic() - start < 0.5
    t.join(10)
    assert isinstance(got[0], PassStopped) and entered == [0]


def test_settings_of_the_other_device_are_named(tiny_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """``--cuda-graphs`` / ``--no-cuda-kernels`` on CPU change nothing: a warning says so
    (a shared config for CPU and GPU hosts stays valid); unset, nothing is said."""
    with caplog.at_level(logging.WARNING, logger="smysl.qwen3.engine"):
        LocalEmbedder.load(str(tiny_dir), device="cpu", dtype="float32").close()
        assert "not used on CPU" not in caplog.text
        LocalEmbedder.load(str(tiny_dir), device="cpu", dtype="float32", cuda_graphs=512,
                           cuda_kernels=False).close()
    assert ("cuda_graphs (--cuda-graphs), cuda_kernels (--no-cuda-kernels): set, but not used "
            "on CPU") in caplog.text
