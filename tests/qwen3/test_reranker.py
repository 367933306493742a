"""Qwen3-Reranker on the native engine against the model card's transformers recipe (issue 15),
on tiny random ``Qwen3ForCausalLM`` checkpoints with tied and untied output heads."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import TEXTS, QueuedEngine, Tiny, build_tiny, build_tiny_reranker, reference_rerank

from smysl import Reranker
from smysl.qwen3.reranker import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_pair
from smysl.rerank import PairError
from smysl.tokenize import InputTooLongError

QUERY = "Какая столица у России?"
DOCS = [t for t in TEXTS if t] + ["Paris is the capital of France.", "Столица России — Москва."]


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tiny]:
    base = tmp_path_factory.mktemp("rerankers")
    return {"tied": build_tiny_reranker(base / "tied", tied=True, seed=4),
            "untied": build_tiny_reranker(base / "untied", tied=False, seed=5, shard=True)}


@pytest.fixture(scope="module")
def loaded(rerankers: dict[str, Tiny]) -> dict[str, Reranker]:
    return {k: Reranker.load(str(t.path), device="cpu") for k, t in rerankers.items()}


# the recipe passes max_length with padding=True, as the model card does; transformers warns
@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_scores_match_the_model_card_recipe(rerankers: dict[str, Tiny],
                                            loaded: dict[str, Reranker], head: str) -> None:
    """issue 15: P(yes) within 1e-5 of the reference, same ranking, tied and untied heads."""
    r, path = loaded[head], rerankers[head].path
    pairs = [(QUERY, d) for d in DOCS] + [("what is a vector database", d) for d in DOCS[:3]]
    ours = np.array(r.score(pairs))
    ref = reference_rerank(path, pairs)
    assert np.abs(ours - ref).max() <= 1e-5, np.abs(ours - ref).max()
    assert ours.min() > 0.02 and ours.max() < 0.98  # not saturated: the ranking means something
    ranked = r.rerank(QUERY, DOCS)
    ref_order = sorted(range(len(DOCS)), key=lambda i: -ref[i])
    assert [i for i, _ in ranked] == ref_order
    assert [s for _, s in ranked] == sorted(ours[: len(DOCS)].tolist(), reverse=True)
    # a custom instruction reaches the prompt
    task = "Find the passage that names a city"
    custom = np.array(r.score(pairs[:4], instruction=task))
    assert np.abs(custom - reference_rerank(path, pairs[:4], instruction=task)).max() <= 1e-5
    assert not np.allclose(custom, ours[:4])


def test_info_says_the_engine_path(loaded: dict[str, Reranker]) -> None:
    """The reranker's info names its engine's kernel and slice size like the embedder's (no
    tuning file in tests: ``tuned_at`` None)."""
    from smysl.qwen3.engine import CHUNK_TOKENS

    info = loaded["tied"].info()
    assert (info.device, info.kernel) == ("cpu", loaded["tied"].engine.kernel)
    assert (info.slice_tokens, info.tuned_at) == (CHUNK_TOKENS["cpu"], None)


def test_truncate_is_a_flag_and_pairs_may_be_any_sequence(loaded: dict[str, Reranker]
                                                          ) -> None:
    """``truncate="false"`` cut the documents (``bool("false")`` is True); a numpy array of
    pairs was "the truth value of an array is ambiguous", then "pair 0 must be a pair"."""
    r = loaded["tied"]
    pairs = [("q", "a document"), ("q", "another one")]
    for call in (lambda t: r.rerank("q", ["d" * 9000], truncate=t),
                 lambda t: r.score([("q", "d" * 9000)], truncate=t)):
        with pytest.raises(ValueError, match="truncate must be True or False, got 'false'"):
            call("false")
    assert r.score(pairs[i] for i in range(2)) == r.score(pairs)
    # a numpy array of pairs, and of documents: as lists (its rows were "not a pair")
    assert r.score(np.array(pairs)) == r.score(pairs)  # type: ignore[arg-type]
    assert r.rerank("q", np.array([d for _, d in pairs])) == r.rerank("q", [d for _, d in pairs])
    with pytest.raises(ValueError, match="pair 0 must be a \\(query, document\\) pair"):
        r.score(np.array([("q", "a", "b")]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a 2-d array"):
        r.rerank("q", np.array(pairs))  # type: ignore[arg-type]


def test_prompt_is_the_model_card_prompt(loaded: dict[str, Reranker]) -> None:
    """issue 15: prefix + formatted pair + suffix, no special tokens added, no EOS."""
    r = loaded["tied"]
    ids = r.tokenize([("q", "d")])[0]
    text = PREFIX + f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: q\n<Document>: d" + SUFFIX
    assert r.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert format_pair("q", "d", "x") == "<Instruct>: x\n<Query>: q\n<Document>: d"
    assert ids[: len(r.prefix)] == r.prefix and ids[-len(r.suffix):] == r.suffix


def test_a_presets_name_is_its_instruction(loaded: dict[str, Reranker]) -> None:
    """``instruction="qa"`` was put in the prompt as the word "qa" (only the evaluation
    expanded it), where the embedders take a preset's name as its sentence; a misspelt
    name is refused before any work, as theirs is."""
    from smysl.prompts import TASK_PRESETS

    r = loaded["tied"]
    assert r.tokenize([("q", "d")], instruction="qa") == r.tokenize(
        [("q", "d")], instruction=TASK_PRESETS["qa"])
    assert r.rerank("q", ["d", "e"], instruction="qa") == r.rerank(
        "q", ["d", "e"], instruction=TASK_PRESETS["qa"])
    assert r.score([("q", "d")], instruction="sts") == r.score(
        [("q", "d")], instruction=TASK_PRESETS["sts"])
    with pytest.raises(ValueError, match="misspelt"):
        r.check_instruction("retreival")
    with pytest.raises(ValueError, match="misspelt"):
        r.rerank("q", ["d"], instruction="retreival")
    # an instruction of one's own, "" too, stays as given
    assert r.tokenize([("q", "d")], instruction="") != r.tokenize([("q", "d")])


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
def test_truncation_cuts_the_document_like_the_reference(rerankers: dict[str, Tiny]) -> None:
    """issue 15: over the limit -> error unless truncate; truncation matches the model card's
    right-side cut (the document first); a query that cannot fit is an error."""
    path = rerankers["untied"].path
    r = Reranker.load(str(path), device="cpu", max_tokens=120)
    long_doc = "Смысл жизни — в поиске смысла. " * 40
    pairs = [(QUERY, long_doc), (QUERY, "short")]
    with pytest.raises(InputTooLongError, match="the reranker takes at most 120"):
        r.score(pairs)
    ids = r.tokenize(pairs, truncate=True)
    assert len(ids[0]) == 120 and len(ids[1]) < 120
    ours = np.array(r.score(pairs, truncate=True))
    ref = reference_rerank(path, pairs, max_length=120)
    assert np.abs(ours - ref).max() <= 1e-5
    with pytest.raises(ValueError, match="shorten the query"):
        r.score([("long query " * 60, "doc")], truncate=True)
    # without truncation too: the document was blamed, and the truncation advised then
    # failed on the query
    with pytest.raises(ValueError, match="shorten the query"):
        r.score([("long query " * 60, "doc")])
    with pytest.raises(ValueError, match="the query must be a string, got int"):
        r.rerank(5, ["doc"])  # type: ignore[arg-type]


def test_batch_invariance_is_bit_exact_on_cpu(loaded: dict[str, Reranker]) -> None:
    """issue 15: a pair's score does not depend on its batch companions or their order."""
    r = loaded["untied"]
    rng = random.Random(2)
    docs = [*DOCS, *(f"passage {i} " * rng.randint(1, 25) for i in range(30))]
    pairs = [(QUERY, d) for d in docs]
    together = r.score(pairs)
    alone = [r.score([p])[0] for p in pairs]
    order = list(range(len(pairs)))
    rng.shuffle(order)
    shuffled = r.score([pairs[i] for i in order])
    assert together == alone
    assert shuffled == [together[i] for i in order]


def test_int8_scores_are_batch_invariant_where_rows_are_quantised_alone(
        rerankers: dict[str, Tiny], loaded: dict[str, Reranker]) -> None:
    """issue 13: on oneDNN's int8 kernel each token's activations get their own scale, so an
    int8 score, shared query prefix included, does not depend on its batch either; and it
    stays close to the float score."""
    r = Reranker.load(str(rerankers["untied"].path), device="cpu", quantize="int8")
    if r.info().kernel != "onednn-int8":
        r.close()
        pytest.skip("per-tensor int8 here (no VNNI/AMX): scores follow the batch slightly")
    pairs = [(q, d) for q in (QUERY, "what is a vector database") for d in DOCS]
    together = r.score(pairs)
    assert together == [r.score([p])[0] for p in pairs]
    # 9e-4 measured on the tiny checkpoint
    assert np.abs(np.array(together) - np.array(loaded["untied"].score(pairs))).max() < 0.01
    r.close()


def test_the_shared_query_prefix_is_computed_once_and_changes_nothing(
        rerankers: dict[str, Tiny], loaded: dict[str, Reranker]) -> None:
    """issue 15: prompts of one query share the tokens up to ``<Document>:`` (system line,
    instruction, query); scores equal those of whole prompts within float error, and the
    head is a rule of the prompt alone (queries mixed in one batch each keep theirs)."""
    r = loaded["tied"]
    whole = Reranker.load(str(rerankers["tied"].path), device="cpu", shared_prefix=False)
    pairs = [(q, d) for q in (QUERY, "what is a vector database", QUERY + "!") for d in DOCS]
    ids = r.tokenize(pairs)
    heads = [r.head_length(s) for s in ids]
    head = r.tokenizer.encode(PREFIX + format_pair(QUERY, "").rstrip(),
                              add_special_tokens=False).ids
    assert heads[0] == len(head) and ids[0][: heads[0]] == head
    assert len(set(heads[: len(DOCS)])) == 1 and whole.head_length(ids[0]) == 0
    ours, theirs = np.array(r.score(pairs)), np.array(whole.score(pairs))
    assert np.abs(ours - theirs).max() <= 1e-6
    assert r.score(pairs[len(DOCS):]) == r.score(pairs)[len(DOCS):]
    # the fingerprint (score caches) tells the two apart, and names play no part
    assert whole.fingerprint() != r.fingerprint() == loaded["tied"].fingerprint()
    assert r.fingerprint() != loaded["untied"].fingerprint()
    whole.close()


def test_scores_on_an_engine_that_queues_are_the_same(loaded: dict[str, Reranker]) -> None:
    """On an engine with CUDA's timing (a stand-in on CPU): a bulk call keeps one batch queued
    ahead, ``start_scores`` (the server's) queues all its batches before any is read, and the
    scores are the engine's, bit for bit, shared query prefixes included."""
    r = loaded["tied"]
    queued = QueuedEngine(r.engine)
    q = Reranker(queued, r.tokenizer, r.head, name="q", max_batch_tokens=96)  # type: ignore[arg-type]
    ids = r.tokenize([(qq, d) for qq in (QUERY, "what is a vector database") for d in DOCS])
    want = r.prepared_scores(ids)
    assert q.queues and not r.queues
    assert np.array_equal(q.prepared_scores(ids), want)
    passes = len([e for e in queued.events if e.startswith("submit")])
    assert passes > 2
    assert queued.events[:5] == ["submit 0", "submit 1", "wait 0", "done 0", "submit 2"]
    queued.events.clear()
    scores = q.start_scores(ids)
    assert queued.events == [f"submit {i}" for i in range(passes)]
    assert np.array_equal(scores(), want)
    assert np.array_equal(r.start_scores(ids)(), want)


def test_scores_read_every_queued_pass_even_when_one_fails(loaded: dict[str, Reranker]) -> None:
    """An engine process answers passes in turn: every queued pass is waited for, also after
    one failed (at submit or at wait), and the failure reaches the caller."""
    r = loaded["tied"]
    ids = r.tokenize([(QUERY, d) for d in DOCS * 3])
    for when in ("submit", "wait"):
        for call in ("prepared_scores", "start_scores"):
            queued = QueuedEngine(r.engine, {1: (when, RuntimeError(f"boom at {when}"))})
            q = Reranker(queued, r.tokenizer, r.head, name="q",  # type: ignore[arg-type]
                         max_batch_tokens=96)
            with pytest.raises(RuntimeError, match=f"boom at {when}"):
                got = getattr(q, call)(ids)
                if call == "start_scores":
                    got()
            submits = [e for e in queued.events if e.startswith("submit")]
            waits = [e for e in queued.events if e.startswith("wait")]
            # every pass submitted was waited for (the one that failed at submit was not one)
            assert len(waits) == len(submits) - (when == "submit"), (call, queued.events)


def test_max_tokens_past_the_positions_is_refused(rerankers: dict[str, Tiny]) -> None:
    """It was lowered to the model's positions without a word."""
    path = str(rerankers["tied"].path)
    positions = Reranker.load(path, device="cpu").engine.max_positions
    with pytest.raises(ValueError, match=f"at most {positions} tokens"):
        Reranker.load(path, device="cpu", max_tokens=positions + 1)


def test_rerank_top_n_and_bad_input(loaded: dict[str, Reranker]) -> None:
    """issue 15: top_n keeps the best; empty query, one string as documents, bad top_n and
    malformed pairs are clear errors; no documents is no results."""
    r = loaded["tied"]
    full = r.rerank(QUERY, DOCS)
    assert r.rerank(QUERY, DOCS, top_n=3) == full[:3]
    assert r.rerank(QUERY, DOCS, top_n=100) == full
    assert r.rerank(QUERY, []) == []
    raw = r.score_prepared(r.tokenize([(QUERY, DOCS[0])]), raw=True)
    assert abs(1 / (1 + np.exp(-float(raw[0]))) - r.score([(QUERY, DOCS[0])])[0]) < 1e-6
    with pytest.raises(ValueError, match="query is empty"):
        r.rerank("  ", DOCS)
    with pytest.raises(TypeError, match="list of strings"):
        r.rerank(QUERY, "one document")
    with pytest.raises(ValueError, match="top_n"):
        r.rerank(QUERY, DOCS, top_n=0)
    with pytest.raises(ValueError, match="pair 0 must be"):
        r.score([(QUERY,)])  # type: ignore[list-item]
    # score() skipped the instruction check: an AttributeError ('int' ... 'isascii')
    for call in (lambda: r.score([(QUERY, DOCS[0])], instruction=5),  # type: ignore[arg-type]
                 lambda: r.rerank(QUERY, DOCS, instruction=5)):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="instruction must be a string"):
            call()


def test_untied_checkpoint_without_lm_head_is_refused(tmp_path: Path) -> None:
    """issue 15: an untied config whose files lack lm_head (an embedding model) is an error."""
    t = build_tiny(tmp_path / "emb", tied=False, eos_tokenizer=False, st_files=False)
    with pytest.raises(ValueError, match=r"without an output head \(an embedding model\?\)"):
        Reranker.load(str(t.path), device="cpu")


def test_rerank_command_reads_jsonl_and_writes_ranked_jsonl(
        rerankers: dict[str, Tiny], loaded: dict[str, Reranker], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """issue 15: ``smysl rerank --model R --query Q -i docs.jsonl`` ranks as the Python API
    does, keeps each JSONL item whole, honours --top-n; a bad line is a clear error."""
    import json

    from smysl.cli import main

    docs = tmp_path / "docs.jsonl"
    items = [{"text": d, "id": n} if n % 2 else d for n, d in enumerate(DOCS)]
    docs.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n\n",
                    encoding="utf-8")
    path = str(rerankers["tied"].path)
    assert main(["rerank", "--model", path, "--device", "cpu", "-q", QUERY, "-i", str(docs),
                 "--top-n", "4"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    want = loaded["tied"].rerank(QUERY, DOCS, top_n=4)
    assert [(r["index"], r["score"]) for r in rows] == want
    assert [r["document"] for r in rows] == [items[i] for i, _ in want]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    plain = tmp_path / "docs.txt"
    lines = [d for d in DOCS if "\n" not in d]  # plain text: one document per line
    plain.write_text("\n".join(lines), encoding="utf-8")
    assert main(["rerank", "--model", path, "--device", "cpu", "-q", QUERY, "-i",
                 str(plain)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["index"], r["score"]) for r in rows] == loaded["tied"].rerank(QUERY, lines)
    docs.write_text('{"title": "no text"}\n', encoding="utf-8")
    assert main(["rerank", "--model", path, "-q", QUERY, "-i", str(docs)]) == 2
    assert "string \"text\" field" in capsys.readouterr().err
    # named by its flag, before a model loads (a missing one is not looked for)
    assert main(["rerank", "--model", str(tmp_path / "none"), "-q", QUERY, "-i", str(plain),
                 "--top-n", "0"]) == 2
    assert "--top-n must be >= 1, got 0" in capsys.readouterr().err
    # a query too long to leave room for any document, with --truncate: named by its flag, not
    # as "pair 0" (a review's: the command line has one query, no pairs)
    assert main(["rerank", "--model", path, "--device", "cpu", "--max-tokens", "120",
                 "--truncate", "-q", "слово " * 200, "-i", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "--query: the instruction and query take" in err and "pair 0" not in err, err


def whole_prompt(r: Reranker, query: str, document: str, *, keep: int | None = None,
                 direction: str = "right") -> list[int]:
    """The prompt as the model card builds it: the whole pair tokenised at once, then the
    document's tokens cut (``keep`` of them from its start, or its end with ``left``)."""
    text = format_pair(query, document)
    enc = r.tokenizer.encode(text, add_special_tokens=False)
    start = len(text) - len(document)
    head = sum(1 for _, end in enc.offsets if end <= start)
    doc = enc.ids[head:]
    budget = r.max_tokens - len(r.prefix) - len(r.suffix) - head
    keep = min(len(doc), budget if keep is None else min(keep, budget))
    kept = doc[:keep] if direction == "right" else doc[len(doc) - keep:]
    return r.prefix + enc.ids[:head] + kept + r.suffix


def test_truncation_reads_a_cut_of_a_huge_document_and_keeps_its_tokens(
        loaded: dict[str, Reranker]) -> None:
    """audit 3: with truncate, a document far over the limit is cut to cut_chars characters
    before it is tokenised, and the kept tokens are exactly those of the whole document (from
    its beginning, or with direction="left" its end), also where no word boundary is near the
    cut (the cut widens: one letter run, long whitespace runs, added-token text)."""
    r = loaded["tied"]
    huge = "Москва — столица России. " * 24000  # 600,000 characters
    assert r.cut_chars == r.max_tokens * 32 < len(huge)
    tricky = ["я" * 15_000, ("x" + " " * 300) * 300 + "tail", "ab<|im_end|>" * 1000,
              "e\u0301" * 7000 + " end", "Столица, " * 3000,
              "a" * 5000 + "\U00011f04" * 3 + " end"]  # a Unicode-15 letter Python 3.11 lacks
    for doc in [huge, *tricky]:
        for direction in ("right", "left"):
            got = r.tokenize([(QUERY, doc)], truncate=True, direction=direction)[0]
            assert got == whole_prompt(r, QUERY, doc, direction=direction), (doc[:20], direction)
            assert len(got) == r.max_tokens
    # the score is that of the whole prompt (the Python API's truncate=True)
    whole = whole_prompt(r, QUERY, huge)
    assert r.score([(QUERY, huge)], truncate=True) == [float(r.score_prepared([whole])[0])]
    with pytest.raises(InputTooLongError):
        r.tokenize([(QUERY, huge)])
    # the server lets it read cut_chars of a document (what it charged): one whose kept
    # tokens cannot be told that far is refused, not read whole; in Python it is read
    for odd in ("ACGT" * 10_000, ("x" + " " * 300) * 300):  # no word end; few tokens
        with pytest.raises(ValueError, match=r"pair 0: the tokens to keep of the document "
                                             rf"cannot be told from its first {r.cut_chars} "):
            r.tokenize([(QUERY, odd)], truncate=True, read_chars=r.cut_chars)
        assert r.tokenize([(QUERY, odd)], truncate=True)[0] == whole_prompt(r, QUERY, odd)


def test_refusing_a_huge_document_counts_only_as_far_as_proves_it(
        loaded: dict[str, Reranker], monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: refusing one 2.4 MB document (no truncation) tokenised all of it to say how
    long it was (a server grew by 300 MB a request of them). One over ``COUNT_CHARS``
    characters is counted as far as proves it too long ("at least"); where no word end proves
    it, and under ``COUNT_CHARS``, exactly; a query too long is still the query's fault."""
    import smysl.tokenize as module

    monkeypatch.setattr(module, "COUNT_CHARS", 3000)
    r = loaded["tied"]
    seen: list[int] = []
    real = r.tokenizer

    class Seen:  # the texts tokenised, by length
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def encode_batch(self, texts: list[str], **kw: object) -> object:
            seen.extend(map(len, texts))
            return real.encode_batch(texts, **kw)

        def encode(self, text: str, **kw: object) -> object:
            seen.append(len(text))
            return real.encode(text, **kw)

    def count(doc: str) -> int:
        ids = real.encode(format_pair(QUERY, doc), add_special_tokens=False).ids
        return len(r.prefix) + len(ids) + len(r.suffix)

    monkeypatch.setattr(r, "tokenizer", Seen())
    for doc in ("Москва — столица России. " * 2000, "e\u0301" * 3000 + " end" * 3000):
        whole = count(doc)
        seen.clear()
        with pytest.raises(InputTooLongError, match="has at least") as e:
            r.tokenize([(QUERY, "short"), (QUERY, doc)])
        assert e.value.index == 1 and e.value.at_least
        assert r.max_tokens < e.value.tokens <= whole
        assert max(seen) < len(doc)
    for doc in ("ACGT" * 2000, "слово " * 400):  # no word end; under COUNT_CHARS
        with pytest.raises(InputTooLongError) as e:
            r.tokenize([(QUERY, doc)])
        assert not e.value.at_least
        assert e.value.tokens == count(doc)
    with pytest.raises(PairError, match="shorten the query"):
        r.tokenize([(QUERY * 500, "Столица, " * 3000)])


def test_max_document_tokens_cuts_the_document_part_only(loaded: dict[str, Reranker]) -> None:
    """audit 2: max_document_tokens keeps that many tokens of the document (the template,
    instruction and query stay whole) and implies truncation; bad values are refused."""
    r = loaded["tied"]
    doc = "Смысл жизни — в поиске смысла. " * 200  # over the 512-token limit
    for n in (1, 7, 100, 10_000):
        got = r.tokenize([(QUERY, doc), (QUERY, "short")], max_document_tokens=n)
        assert got[0] == whole_prompt(r, QUERY, doc, keep=n)
        assert got[1] == whole_prompt(r, QUERY, "short", keep=n)
    text = r.tokenizer.decode(r.tokenize([(QUERY, doc)], max_document_tokens=7)[0],
                              skip_special_tokens=False)
    head = PREFIX + format_pair(QUERY, "")
    assert text.startswith(head) and text.endswith(SUFFIX)
    kept = text[len(head):-len(SUFFIX)]  # the document's first 7 tokens
    assert doc.startswith(kept) and 7 <= len(kept) < 60
    assert r.tokenize([(QUERY, doc)], max_document_tokens=np.int64(7)) == \
        r.tokenize([(QUERY, doc)], max_document_tokens=7)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="max_document_tokens"):
            r.tokenize([(QUERY, doc)], max_document_tokens=bad)
    with pytest.raises(ValueError, match="direction"):
        r.tokenize([(QUERY, doc)], truncate=True, direction="up")  # type: ignore[arg-type]


def test_saturated_scores_are_ranked_by_the_logit_difference(
        loaded: dict[str, Reranker]) -> None:
    """audit 7: P("yes") is 1.0 in float32 once yes - no passes ~17; rerank then orders by
    the logit difference, not by input order, and still reports P("yes")."""
    r = loaded["tied"]
    sharp = Reranker(r.engine, r.tokenizer, r.head * 3000, name="sharp")
    raw = sharp.score_prepared(sharp.tokenize([(QUERY, d) for d in DOCS]), raw=True)
    scores = sharp.score([(QUERY, d) for d in DOCS])
    assert sum(s == 1.0 for s in scores) >= 2  # saturated: ties in P("yes")
    ranked = sharp.rerank(QUERY, DOCS)
    assert [i for i, _ in ranked] == [int(i) for i in np.argsort(-raw, kind="stable")]
    assert [i for i, _ in ranked] != sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [s for _, s in ranked] == [scores[i] for i, _ in ranked]


def test_a_lone_surrogate_is_a_value_error_naming_the_pair(loaded: dict[str, Reranker]) -> None:
    """audit 8: invalid Unicode is refused before the tokenizer (which raises TypeError)."""
    r = loaded["tied"]
    with pytest.raises(ValueError, match=r"documents\[1\] is not valid Unicode"):
        r.rerank(QUERY, ["ok", "bad \ud800"])
    with pytest.raises(ValueError, match="the document of pair 1 is not valid Unicode"):
        r.score([(QUERY, "ok"), (QUERY, "bad \ud800")])
    with pytest.raises(ValueError, match="the query of pair 0"):
        r.score([("\udfff?", "ok")])
    with pytest.raises(ValueError, match="instruction is not valid Unicode"):
        r.rerank(QUERY, ["ok"], instruction="\ud800")


def test_an_embedding_checkpoint_is_refused_as_a_reranker(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """A Qwen3Model (embedding) checkpoint passed as a reranker scored every document 1.0:
    its token embeddings were taken for the tied output head."""
    from smysl.qwen3.reranker import Reranker

    with pytest.raises(ValueError, match=r"without an output head .* not a Qwen3-Reranker"):
        Reranker.load(str(tiny_dir), device="cpu")


def test_an_answer_row_holding_nan_is_refused_at_load(rerankers: dict[str, Tiny],
                                                      tmp_path: Path) -> None:
    """A damaged output head (NaN in the rows of "yes" and "no") is refused at load, as the
    loader refuses such weights, not reported as a non-finite score at every request."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst = shutil.copytree(rerankers["untied"].path, tmp_path / "r")
    for f in dst.glob("*.safetensors"):
        state = load_file(f)
        if "lm_head.weight" in state:
            state["lm_head.weight"][:] = float("nan")
            save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lm_head\.weight holds NaN or inf in the rows of the "
                                         "answer tokens: the checkpoint is damaged"):
        Reranker.load(str(dst), device="cpu")
