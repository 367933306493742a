"""Token-aware chunking: limits hold on the model's own tokenizer, overlap, exact slices."""

from __future__ import annotations

import itertools

import pytest

from smysl.toolkit.chunking import ChunkConfig, TokenChunker, chunker_for, word_offsets

TEXT = ("Embeddings map text to vectors. Similar texts land close together, so search becomes "
        "geometry.\n\nСмысл жизни — в поиске смысла. " * 12 + "Ending without a full stop")


def check(chunker: TokenChunker, text: str, count) -> None:
    chunks = chunker.split(text)
    assert len(chunks) > 3
    limit = chunker.budget + chunker.special_tokens
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text == c.text.strip()
        assert c.tokens <= limit
        assert count(c.text) <= limit + 1  # re-tokenising a slice may merge one boundary
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # consecutive chunks overlap and together cover the text
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end and b.start > a.start
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())


def test_local_engine_tokenizer(tiny) -> None:
    ch = chunker_for(tiny, ChunkConfig(max_tokens=40, overlap=8))
    assert ch.exact and ch.special_tokens == 1
    check(ch, TEXT, lambda t: tiny.count_tokens([t])[0])


def test_sentence_transformers_tokenizer(minilm) -> None:
    ch = chunker_for(minilm, ChunkConfig(max_tokens=48, overlap=10))
    assert ch.exact and ch.special_tokens == 2  # [CLS] and [SEP]
    check(ch, TEXT, lambda t: minilm.count_tokens([t])[0])
    # capped at the model's limit (MiniLM: 256 word pieces)
    assert chunker_for(minilm, ChunkConfig(max_tokens=10_000)).budget == 254


def test_word_approximation_without_tokenizer() -> None:
    class Remote:
        max_tokens = None

    ch = chunker_for(Remote(), ChunkConfig(max_tokens=30, overlap=5))
    assert not ch.exact
    check(ch, TEXT, lambda t: len(word_offsets(t)))


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
    (only,) = ch.split("  one short text ")
    assert only.text == "one short text" and (only.start, only.end) == (2, 16)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkConfig(max_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="exceed the overlap"):
        TokenChunker(word_offsets, ChunkConfig(max_tokens=10, overlap=8), special_tokens=2)
