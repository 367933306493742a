"""Token-aware chunking: limits hold on the model's own tokenizer, overlap, exact slices."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from smysl.base import BaseEmbedder
from smysl.toolkit.chunking import ChunkConfig, TokenChunker, chunker_for, word_offsets

TEXT = ("Embeddings map text to vectors. Similar texts land close together, so search becomes "
        "geometry.\n\nСмысл жизни — в поиске смысла. " * 12 + "Ending without a full stop")


def check(chunker: TokenChunker, text: str, count) -> None:
    chunks = chunker.split(text)
    assert len(chunks) > 3
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text == c.text.strip()
        assert count(c.text) == c.tokens <= chunker.limit
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # consecutive chunks overlap and together cover the text
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end and b.start > a.start
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())


def test_local_engine_tokenizer(tiny) -> None:
    ch = chunker_for(tiny, ChunkConfig(max_tokens=40, overlap=8))
    assert ch.exact and ch.special_tokens == 1
    check(ch, TEXT, lambda t: tiny.count_tokens([t])[0])


def _random_text(rng: random.Random) -> str:
    """Emoji (ZWJ families, flags, skin tones), rare-plane letters, CJK, combining marks and
    words: characters that byte-level BPE cuts into several tokens sharing their offsets."""
    pieces = ["𝔘𝔫", "👨‍👩‍👧", "🙂", "🇺🇦", "👍🏽", "東京", "é", "e\u0301", "Привет", " мир",
              "the", " quick", "embedder", "12345", "can't", ".", "!", " ", "  ", "\n", "\t",
              "<|endoftext|>", "\u200d", "\ufe0f"]
    out = []
    for _ in range(rng.randint(0, 200)):
        r = rng.random()
        if r < 0.3:  # any emoji, mathematical letter, CJK extension B ideograph, or other
            lo, hi = rng.choice([(0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF),
                                 (0x80, 0xD7FF), (0xE000, 0x10FFF)])
            out.append(chr(rng.randint(lo, hi)))
        else:
            out.append(rng.choice(pieces))
    return "".join(out)


def test_random_unicode_chunks_fit_as_embedded(tiny) -> None:
    """Property over random emoji and rare Unicode on the real Qwen3 tokenizer: every chunk,
    tokenised on its own as the engine does (EOS; the query template when embedded with an
    instruction), costs at most the limit and exactly its reported tokens; chunks cover the
    text with nothing but whitespace between them, in order. Before, a cut between two
    tokens of one character put the whole character in the chunk: chunks came out 1-3
    tokens over (363 over a 64-token limit in random emoji text)."""
    rng = random.Random(16)
    task = tiny.choose_instruction("qa", role="query")
    template = tiny.count_tokens(tiny.format_texts([""], task))[0]
    for trial in range(150):
        text = _random_text(rng)
        size = rng.randint(6, 64)
        overlap = rng.randint(0, size - 6)
        instruction = task if trial % 3 == 0 else None
        max_tokens = size + (template if instruction else 0)
        chunker = chunker_for(tiny, ChunkConfig(max_tokens=max_tokens, overlap=overlap,
                                                snap=trial % 2 == 0), instruction=instruction)
        chunks = chunker.split(text)
        for c in chunks:
            # stripped at its edges, but a text that is one chunk, which is the text whole
            assert text[c.start : c.end] == c.text
            assert c.text == c.text.strip() or (len(chunks) == 1 and c.text == text)
            embedded = tiny.format_texts([c.text], instruction)
            assert tiny.count_tokens(embedded)[0] == c.tokens <= max_tokens, (trial, c)
        if not chunks:
            assert not text.strip()
            continue
        assert not text[: chunks[0].start].strip() and not text[chunks[-1].end :].strip()
        for a, b in itertools.pairwise(chunks):
            assert a.start < b.start and not text[a.end : b.start].strip(), (trial, a, b)


def test_multi_token_characters_never_straddle_a_cut(tiny) -> None:
    """The audit's case: 𝔘 is two tokens at (0, 1); 32-token chunks without overlap gave a
    33-token chunk. Now each fits, with its exact count, and nothing is lost or repeated."""
    text = "𝔘𝔫 " * 10 + "𝔘𝔫" * 60
    chunks = chunker_for(tiny, ChunkConfig(max_tokens=32, overlap=0)).split(text)
    assert [tiny.count_tokens([c.text])[0] for c in chunks] == [c.tokens for c in chunks]
    assert max(c.tokens for c in chunks) <= 32
    assert "".join(text[a.start : b.start] for a, b in itertools.pairwise(chunks)) \
        + chunks[-1].text == text


def test_instruction_counts_against_the_model_limit(tiny) -> None:
    """Chunks to be embedded as queries hold the query template too: at the model's own
    limit, each chunk with its instruction still fits (the template made them overflow)."""
    task = tiny.choose_instruction("retrieval", role="query")
    text = " ".join(f"word{i} and more" for i in range(600))
    with pytest.warns(UserWarning, match="chunks of 100000 tokens were asked for, but the "
                                         "model takes at most 512"):  # cut without a word before
        chunker = chunker_for(tiny, ChunkConfig(max_tokens=100_000, overlap=16),
                              instruction=task)
    chunks = chunker.split(text)
    assert len(chunks) > 2 and chunker.limit == tiny.max_tokens
    for c in chunks:
        assert tiny.count_tokens(tiny.format_texts([c.text], task))[0] == c.tokens
        assert c.tokens <= tiny.max_tokens
    tiny.embed([c.text for c in chunks], instruction=task)  # raised "input 0 has N tokens"


def test_sentence_transformers_tokenizer(minilm) -> None:
    ch = chunker_for(minilm, ChunkConfig(max_tokens=48, overlap=10))
    assert ch.exact and ch.special_tokens == 2  # [CLS] and [SEP]
    check(ch, TEXT, lambda t: minilm.count_tokens([t])[0])
    # capped at the model's limit (MiniLM: 256 word pieces)
    with pytest.warns(UserWarning, match="at most 256"):
        assert chunker_for(minilm, ChunkConfig(max_tokens=10_000)).budget == 254


def test_word_approximation_without_tokenizer() -> None:
    """A backend without a tokenizer: chunks cut on words and punctuation marks, and their
    counts left out (None), not recorded as if the model had counted them."""

    class Remote(BaseEmbedder):
        name, dimensions = "remote", 8

        def _embed(self, texts, *, truncate, progress=None):
            return np.ones((len(texts), 8), np.float32)

    ch = chunker_for(Remote(), ChunkConfig(max_tokens=30, overlap=5))
    assert not ch.exact
    chunks = ch.split(TEXT)
    assert len(chunks) > 3 and all(c.tokens is None for c in chunks)
    assert all(TEXT[c.start : c.end] == c.text and len(word_offsets(c.text)) <= 30
               for c in chunks)
    # the query template counts against the limit there too
    queries = chunker_for(Remote(), ChunkConfig(max_tokens=30, overlap=5), instruction="t")
    assert len(queries.split(TEXT)) > len(chunks)


def test_snapping_prefers_line_and_sentence_ends() -> None:
    text = " ".join(f"w{i}" for i in range(14)) + ".\n" + " ".join(f"v{i}" for i in range(30))
    ch = TokenChunker(word_offsets, ChunkConfig(max_tokens=20, overlap=0))
    first = ch.split(text)[0]
    assert first.text.endswith("w13.")
    plain = TokenChunker(word_offsets, ChunkConfig(max_tokens=20, overlap=0, snap=False))
    assert len(word_offsets(plain.split(text)[0].text)) == 20


def test_short_and_empty_texts() -> None:
    ch = TokenChunker(word_offsets, ChunkConfig(max_tokens=20, overlap=4))
    assert ch.split("") == [] and ch.split("   \n ") == []
    # a text that is one chunk is that chunk whole, edges and all: its vector is embed()'s
    (only,) = ch.split("  one short text ")
    assert only.text == "  one short text " and (only.start, only.end) == (0, 17)


def test_a_document_that_is_one_chunk_is_indexed_as_embed_sees_it(tiny) -> None:  # type: ignore[no-untyped-def]
    """A document with edge whitespace (a trailing newline, CRLF, indentation) that fits in
    one chunk was stripped: its indexed vector differed from embed()'s of the same text
    (0.04-0.2 max-abs on the tiny model) and an exact self-search could rank it below others.
    Now it is the text as given; a longer text's chunks are still stripped at their edges."""
    chunker = chunker_for(tiny, ChunkConfig(max_tokens=64, overlap=0))
    for text in ("   spaced out   ", "\t\ttabbed\t", "line one\r\nline two\r\n", "ends\n"):
        (only,) = chunker.split(text)
        assert (only.text, only.start, only.end) == (text, 0, len(text))
        assert only.tokens == tiny.count_tokens([text])[0]
    long = "  " + " ".join(f"word{i}." for i in range(200)) + "\n"
    chunks = chunker.split(long)
    assert len(chunks) > 1 and all(c.text == c.text.strip() for c in chunks)
    assert chunker.split(" \n\t ") == []
    # a text past one window is not tokenised whole (memory follows the window; the
    # tokenizer's regex failed on ten million tabs): its one chunk stays stripped
    padded = "title\n" + "\t" * 300_000
    (only,) = chunker.split(padded)
    assert only.text == "title"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkConfig(max_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="exceed the overlap"):
        TokenChunker(word_offsets, ChunkConfig(max_tokens=10, overlap=8), special_tokens=2)


def test_snapping_with_the_qwen3_tokenizer_ends_at_sentences_and_words(tiny) -> None:  # type: ignore[no-untyped-def]
    """Byte-level BPE puts the space or line break before a word into the word's token
    (" Смысл", ".\\n\\n"): snapping looked only at gaps between tokens, found none, and every
    chunk ended wherever its budget did, mid-word ("... по числен")."""
    para = ("Москва — столица России, крупнейший по численности населения город страны. "
            "Смысл жизни — в поиске смысла.\n\n") * 30
    chunks = chunker_for(tiny, ChunkConfig(max_tokens=64, overlap=8)).split(para)
    assert all(c.text.endswith("смысла.") for c in chunks[:-1])
    check(chunker_for(tiny, ChunkConfig(max_tokens=64, overlap=8)), para,
          lambda t: tiny.count_tokens([t])[0])
    words = " ".join(["численность", "населения", "embedding", "tokenizer"] * 80)
    chunks = chunker_for(tiny, ChunkConfig(max_tokens=40, overlap=6)).split(words)
    assert len(chunks) > 5 and not any(words[c.end].isalnum() for c in chunks[:-1])


@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 8), (32, 16)])
def test_a_chunk_shortened_to_fit_still_ends_at_a_word(tiny, max_tokens: int,  # type: ignore[no-untyped-def]
                                                       overlap: int) -> None:
    """A review's, on real Russian paragraphs (XQuAD): a chunk that cost more counted on its
    own than its tokens' sum was shortened where the excess fell, mid-word ("передал мяч
    Уар|ду", "между 2005 и 201|0 годами"): 11 of 516 chunks at 64/8, 66 of 2,022 at 32/16."""
    import json

    from qwen_tiny import DATASETS

    path = DATASETS / "xquad" / "xquad.ru.json"
    if not path.is_file():
        pytest.skip("no shared datasets")
    data = json.loads(path.read_text("utf-8"))["data"]
    paragraphs = [p["context"] for article in data for p in article["paragraphs"]][:40]
    chunker = chunker_for(tiny, ChunkConfig(max_tokens=max_tokens, overlap=overlap))
    inside = []
    for text in paragraphs:
        for c in chunker.split(text):
            assert c.tokens is not None and c.tokens <= max_tokens
            if c.end < len(text) and text[c.end - 1].isalnum() and text[c.end].isalnum():
                inside.append(text[max(0, c.end - 20) : c.end] + "|" + text[c.end : c.end + 5])
    assert inside == []
