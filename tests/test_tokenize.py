"""EOS exactly once with both tokenizer variants; truncation is explicit and keeps EOS last."""

import json
from pathlib import Path

import pytest
from qwen_tiny import EOS, TEXTS, embedding_tokenizer_json, require_tokenizer

from smysl.tokenize import InputTooLongError, Tokenizer


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Tokenizer]:
    base = Tokenizer(require_tokenizer() / "tokenizer.json", max_tokens=64)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(json.dumps(embedding_tokenizer_json()), encoding="utf-8")
    return base, Tokenizer(path, max_tokens=64)


def test_variants_detected(both: tuple[Tokenizer, Tokenizer]) -> None:
    base, emb = both
    assert not base.appends_eos
    assert emb.appends_eos
    assert base.eos_id == emb.eos_id == EOS


def test_eos_exactly_once_and_identical_ids(both: tuple[Tokenizer, Tokenizer]) -> None:
    base, emb = both
    a, b = base.encode([*TEXTS[:2], ""]), emb.encode([*TEXTS[:2], ""])
    assert a == b
    for ids in a:
        assert ids[-1] == EOS and EOS not in ids[:-1]
    assert a[2] == [EOS]  # an empty text is the EOS token alone
    lens = [len(x) for x in base.encode(TEXTS, max_tokens=10_000)]
    assert base.count(TEXTS) == emb.count(TEXTS) == lens


def test_one_text_alone_gets_the_ids_it_gets_in_a_batch(
        both: tuple[Tokenizer, Tokenizer]) -> None:
    """A single text is encoded without the batch call (its thread pool): same ids, counts."""
    for tok in both:
        texts = [*TEXTS, "", " ", "\u200b\ufeffé\U0001f600", "длинный текст " * 200]
        together = tok.encode(texts, max_tokens=10_000)
        assert [tok.encode([t], max_tokens=10_000)[0] for t in texts] == together
        assert [tok.count([t])[0] for t in texts] == tok.count(texts)


def test_over_long_input_is_an_error_by_default(both: tuple[Tokenizer, Tokenizer]) -> None:
    base, _ = both
    long = "слово " * 200
    with pytest.raises(InputTooLongError, match="pass truncate=True"):
        base.encode(["short", long])


@pytest.mark.parametrize("direction", ["right", "left"])
def test_truncation_keeps_eos_last(both: tuple[Tokenizer, Tokenizer], direction: str) -> None:
    for tok in both:
        long = "one two three four five six seven eight nine ten " * 20
        full = tok.count([long])[0]
        ids = tok.encode([long], truncate=True, direction=direction)[0]  # type: ignore[arg-type]
        assert len(ids) == 64 < full
        assert ids[-1] == EOS and EOS not in ids[:-1]
        untruncated = tok.encode([long], max_tokens=10_000)[0]
        expect = untruncated[:63] if direction == "right" else untruncated[-64:-1]
        assert ids[:-1] == expect


def test_bad_direction(both: tuple[Tokenizer, Tokenizer]) -> None:
    with pytest.raises(ValueError, match="direction"):
        both[0].encode(["x"], direction="middle")  # type: ignore[arg-type]


def test_tokenizer_without_eos_token_is_rejected(tmp_path: Path) -> None:
    tok = json.loads((require_tokenizer() / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|endoftext|>"]
    tok["model"]["vocab"].pop("<|endoftext|>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(ValueError, match="endoftext"):
        Tokenizer(tmp_path / "tokenizer.json", max_tokens=8)


def test_too_long_error_survives_pickling() -> None:
    """It crosses processes (an engine process, a Ray actor) whole: a subclass of ValueError
    with its fields, not an error pickle cannot rebuild."""
    import pickle

    e = pickle.loads(pickle.dumps(InputTooLongError(index=3, tokens=40, limit=32, who="m")))
    assert isinstance(e, InputTooLongError) and isinstance(e, ValueError)
    assert (e.index, e.tokens, e.limit, e.who) == (3, 40, 32, "m")
    assert str(e) == str(InputTooLongError(index=3, tokens=40, limit=32, who="m"))
    # a lower bound stays one, pickled or named for another place (dedup's, LlamaIndex's,
    # the server's limit: they dropped the instruction's head before)
    bound = InputTooLongError(index=1, tokens=900, limit=64, head=70, at_least=True)
    again = pickle.loads(pickle.dumps(bound))
    assert (again.tokens, again.at_least, again.head) == (900, True, 70)
    moved = bound.but(index=5, who="options.num_ctx")
    assert (moved.index, moved.who, moved.tokens, moved.head, moved.at_least) == (
        5, "options.num_ctx", 900, 70, True)
    assert "has at least 901 tokens" in str(InputTooLongError(index=0, tokens=901, limit=64,
                                                             at_least=True))


def test_truncating_a_query_keeps_its_instruction(both: tuple[Tokenizer, Tokenizer]) -> None:
    """A review's: truncation from the left cut a query's instruction away, and the query was
    embedded as the tail of a document; a limit the instruction alone fills embedded the
    instruction with none of the query. Now the instruction stays whichever end is cut, and
    such a limit is an error."""
    import pickle

    from smysl.prompts import DEFAULT_TASK, format_query

    for tok in both:
        query = format_query("слово " * 100 + "конец", DEFAULT_TASK)
        head = format_query("", DEFAULT_TASK)
        whole = tok.encode([query], max_tokens=10_000)[0]
        left = tok.encode([query], truncate=True, direction="left", head_chars=len(head))[0]
        assert len(left) == 64 and left[-1] == EOS
        n = len(tok.encode([head], max_tokens=10_000)[0]) - 1  # its tokens, EOS left out
        assert left[:n - 1] == whole[:n - 1]  # the last may join the query's first letters
        assert left[n:-1] == whole[len(whole) - 64 + n:-1]  # then the query's end
        assert tok.decode(left).startswith(head) and tok.decode(left[:-1]).endswith("конец")
        right = tok.encode([query], truncate=True)[0]
        assert right == [*whole[:63], EOS]  # the beginning holds the instruction anyway
        for direction in ("right", "left"):
            with pytest.raises(InputTooLongError, match="instruction alone has") as e:
                tok.encode([query], truncate=True, direction=direction,  # type: ignore[arg-type]
                           max_tokens=n, head_chars=len(head))
            again = pickle.loads(pickle.dumps(e.value))
            assert str(again) == str(e.value) and again.head == e.value.head
        # a document is cut as before, even one written as a query (a review's: the template
        # was recognised in the text, and such a document refused or cut around it)
        assert tok.encode([query], truncate=True, direction="left")[0] == whole[-64:]
        assert tok.encode([query], truncate=True, max_tokens=n)[0] == [*whole[:n - 1], EOS]


def test_truncation_reads_a_cut_of_a_huge_text_and_keeps_its_tokens(
        both: tuple[Tokenizer, Tokenizer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: ``dedup --truncate`` of one 20 MB line peaked at 3.5 GB, the whole line
    tokenised to keep 32K tokens. A text far over ``limit * CUT_CHARS_PER_TOKEN`` characters is
    now cut before it is tokenised, and the kept tokens are exactly the whole text's, also where
    no word end is near the cut (it widens): letter runs, whitespace runs, added-token text,
    combining marks, a query's instruction."""
    from smysl.tokenize import CUT_CHARS_PER_TOKEN

    tricky = ["Москва — столица России. " * 400, "я" * 3000, ("x" + " " * 300) * 30 + "tail",
              "ab<|im_end|>" * 300, "e\u0301" * 2000 + " end", "Столица, " * 300,
              "a" * 1000 + "\U00011f04" * 3 + " end", "ACGT" * 2000, "1234567890" * 300,
              "Instruct: Given a query\nQuery:" + "слово " * 500]
    for tok in both:
        for text in tricky:
            assert len(text) > 64 * CUT_CHARS_PER_TOKEN
            whole = tok.encode([text], max_tokens=100_000)[0]
            for head in (0, 30):  # a query's instruction kept, as the embedder asks
                got = tok.encode([text, "short"], truncate=True, head_chars=head)
                assert got[0] == [*whole[:63], EOS], (text[:20], head)
                assert got[1] == tok.encode(["short"])[0]
            left = tok.encode([text], truncate=True, direction="left")[0]
            assert left == whole[-64:]
    # cut first: a huge line costs the cut's tokens, not the whole line's
    base = both[0]
    huge = "word " * 2_000_000  # 10 MB
    seen: list[int] = []
    real = base._encodings

    def encodings(texts: list[str]) -> list[object]:
        seen.extend(map(len, texts))
        return real(texts)

    monkeypatch.setattr(base, "_encodings", encodings)
    assert base.encode([huge], truncate=True)[0] == base.encode([huge[:1000]], truncate=True)[0]
    assert max(seen) <= 64 * CUT_CHARS_PER_TOKEN, seen
    # no word end after the cut: the whole text once more, not doubling cuts (a diff
    # review's: a 5 MB line of digits took 24.5 s instead of 7); a word end far past the cut:
    # cut just past it
    for text, second in (("1234567890" * 300, 3000), ("7" * 2000 + "ok. " + "8" * 900, 2003)):
        whole = base.encode([text], max_tokens=100_000)[0]
        seen.clear()
        assert base.encode([text], truncate=True)[0] == [*whole[:63], EOS]
        assert seen == [64 * CUT_CHARS_PER_TOKEN, second], seen


def test_refusing_a_huge_text_counts_only_as_far_as_proves_it(
        both: tuple[Tokenizer, Tokenizer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: refusing one 26 MB line (no truncation) tokenised all of it to say how long
    it was: 17 s and 3.07 GB. A text over ``COUNT_CHARS`` characters is counted as far as
    proves it too long, the error saying "at least" a count the whole text has; shorter ones
    and texts with no word end to prove it by are counted exactly; what fits is unchanged."""
    import smysl.tokenize as tokenize

    monkeypatch.setattr(tokenize, "COUNT_CHARS", 2000)
    for tok in both:
        seen: list[int] = []
        real = tok._encodings

        def encodings(texts: list[str], real=real, seen=seen) -> list[object]:
            seen.extend(map(len, texts))
            return real(texts)

        monkeypatch.setattr(tok, "_encodings", encodings)
        for text in ("Москва — столица России. " * 2000, "word, " * 5000,
                     "e\u0301" * 2000 + " end " * 2000):
            whole = len(tok.encode([text], max_tokens=10**6)[0])
            seen.clear()
            with pytest.raises(InputTooLongError, match="has at least") as e:
                tok.encode(["short", text], first_index=4)
            assert e.value.at_least and e.value.index == 5
            assert 64 < e.value.tokens <= whole, (text[:10], e.value.tokens, whole)
            assert max(seen) < len(text), seen  # the whole text was never tokenised
        # counted exactly: under COUNT_CHARS, or no word end proves the cut's tokens
        for text in ("слово " * 300, "1234567890" * 400):
            whole = len(tok.encode([text], max_tokens=10**6)[0])
            with pytest.raises(InputTooLongError) as e:
                tok.encode([text])
            assert (e.value.tokens, e.value.at_least) == (whole, False)
            assert "has at least" not in str(e.value)
        fits = "ок " * 20
        assert tok.encode([fits]) == [tok.encode([fits], max_tokens=10**6)[0]]


def test_cut_to_tokens_keeps_the_longest_beginning_that_fits(
        both: tuple[Tokenizer, Tokenizer]) -> None:
    """A text cut at a token's end to a request's own limit (a backend taking texts only):
    a beginning of it, within the limit counted as embedded (EOS included), one token more
    would not fit; None where no token fits beside the special ones."""
    from smysl.tokenize import cut_to_tokens

    tokens = both[0].text_tokens()
    text = "Москва — столица России, крупнейший город страны. " * 5
    for limit in (2, 5, 17, 40):
        fit = cut_to_tokens(text, limit, tokens)
        assert fit is not None
        cut, cost = fit
        assert text.startswith(cut) and cost == tokens.count(cut) <= limit
        longer = text[: tokens.offsets(text)[len(tokens.offsets(cut))][1]]
        assert tokens.count(longer) > limit
    assert cut_to_tokens(text, 1, tokens) is None
