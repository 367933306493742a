"""Token-aware chunking with overlap, on the tokenizer of the model that will embed the chunks.

A :class:`Chunker` turns one text into :class:`Chunk` spans of at most ``max_tokens`` model tokens
(special tokens included), consecutive chunks sharing ``overlap`` tokens. Spans come from the
tokenizer's character offsets, so a chunk is an exact slice of the source text.

Tokenizers, in order of preference: the local Qwen3 engine's (``embedder.tokenizer.raw``), a
Hugging Face fast tokenizer at ``embedder.model.tokenizer`` or ``embedder.tokenizer``
(sentence-transformers),
else an approximation — words and punctuation marks counted as one token each — for backends that
expose no tokenizer (remote providers). BPE splits rare words into several tokens, so the
approximation undercounts; ingestion embeds with truncation on, so an over-long chunk loses its tail
instead of failing. Leave headroom (a smaller ``max_tokens``) with such backends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

Offsets = Callable[[str], list[tuple[int, int]]]

_WORDS = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = ".!?;:。！？"
#: Characters tokenised at once by :meth:`TokenChunker.iter_split` (widened when one chunk's
#: tokens do not fit), and how close to a window's cut a token must not end to count as final.
WINDOW_CHARS = 1 << 18
WINDOW_MARGIN = 1024


@dataclass(frozen=True)
class ChunkConfig:
    """How texts are split.

    Attributes:
        max_tokens: Most tokens per chunk, special tokens included; capped at the model's limit.
        overlap: Tokens shared by consecutive chunks (context that would be cut at a boundary).
        snap: End a chunk at a sentence or line break when one lies in the window's second half.
    """

    max_tokens: int = 256
    overlap: int = 32
    snap: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens:
            raise ValueError(f"overlap must be in 0..max_tokens-1, got {self.overlap}")


@dataclass(frozen=True)
class Chunk:
    """A slice ``text[start:end]`` of the source, with its position and token count."""

    index: int
    text: str
    start: int
    end: int
    tokens: int


class Chunker(Protocol):
    """Anything that splits a text into chunks."""

    def split(self, text: str) -> list[Chunk]: ...

    def iter_split(self, text: str) -> Iterator[Chunk]:
        """The chunks one by one (ingestion streams them)."""
        ...


def word_offsets(text: str) -> list[tuple[int, int]]:
    """The approximation: one token per word or punctuation mark."""
    return [m.span() for m in _WORDS.finditer(text)]


class TokenChunker:
    """Sliding token windows over character offsets from ``offsets``."""

    def __init__(self, offsets: Offsets, config: ChunkConfig = ChunkConfig(), *,
                 special_tokens: int = 0, model_max_tokens: int | None = None,
                 exact: bool = True) -> None:
        self.offsets = offsets
        self.config = config
        limit = min(config.max_tokens, model_max_tokens or config.max_tokens)
        #: Content tokens per chunk (special tokens excluded).
        self.budget = limit - special_tokens
        if self.budget < 1 or config.overlap >= self.budget:
            raise ValueError(f"chunks of {limit} tokens leave {self.budget} for text, which must "
                             f"exceed the overlap ({config.overlap})")
        self.special_tokens = special_tokens
        #: False when token counts are approximated (no model tokenizer available).
        self.exact = exact

    def split(self, text: str) -> list[Chunk]:
        return list(self.iter_split(text))

    def iter_split(self, text: str) -> Iterator[Chunk]:
        """Chunks in order, tokenising :data:`WINDOW_CHARS` characters at a time: memory follows
        the window, not the text (a 20 MB one-line file). Each window starts where the next
        chunk starts; tokens within :data:`WINDOW_MARGIN` characters of a window's cut are
        re-read in the next window, so chunk boundaries match tokenising the whole text."""
        index, pos, width = 0, 0, WINDOW_CHARS
        while True:
            end = min(pos + width, len(text))
            final = end >= len(text)
            spans = [(a + pos, b + pos) for a, b in self.offsets(text[pos:end]) if b > a]
            n = len(spans)
            # Spans that the cut cannot have changed; the last one never counts as safe.
            safe = n if final else min(
                n - 1, sum(1 for _, b in spans if b <= end - WINDOW_MARGIN))
            s, restart = 0, None
            while s < n:
                if not final and s + self.budget > safe:
                    restart = s  # this chunk could reach the cut: take it from the next window
                    break
                e = min(s + self.budget, n)
                if e < n and self.config.snap:
                    e = self._snap(text, spans, s, e)
                a, b = spans[s][0], spans[e - 1][1]
                piece = text[a:b]
                lead = len(piece) - len(piece.lstrip())
                piece = piece.strip()
                if piece:
                    yield Chunk(index, piece, a + lead, a + lead + len(piece),
                                e - s + self.special_tokens)
                    index += 1
                if e >= n:
                    break
                s = self._word_start(text, spans, max(e - self.config.overlap, s + 1), s + 1, e)
            if final:
                return
            if restart is None:  # no tokens in this window at all
                pos, width = end, WINDOW_CHARS
            elif restart == 0:  # not even one chunk fits: a wider window
                width *= 2
            else:
                pos, width = spans[restart][0], WINDOW_CHARS

    @staticmethod
    def _word_start(text: str, spans: list[tuple[int, int]], j: int, lo: int, hi: int) -> int:
        """Move a chunk start off a word piece (``bedder`` of ``embedder``): back, else forward."""

        def glued(i: int) -> bool:
            return (spans[i][0] == spans[i - 1][1] and text[spans[i][0]].isalnum()
                    and text[spans[i - 1][1] - 1].isalnum())

        for i in range(j, lo - 1, -1):
            if not glued(i):
                return i
        for i in range(j + 1, hi):
            if not glued(i):
                return i
        return j

    def _snap(self, text: str, spans: list[tuple[int, int]], s: int, e: int) -> int:
        """Latest boundary in the window's second half (line breaks first), else ``e``."""
        lo = s + max(1, (e - s) // 2)
        best_sentence = None
        for j in range(e - 1, lo - 1, -1):
            gap = text[spans[j][1] : spans[j + 1][0]]
            if "\n" in gap:
                return j + 1
            if best_sentence is None and text[spans[j][1] - 1] in _SENTENCE_END and gap:
                best_sentence = j + 1
        return best_sentence or e


def _hf_offsets(tok: Any) -> Offsets:
    def offsets(text: str) -> list[tuple[int, int]]:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(x) for x in enc["offset_mapping"]]

    return offsets


def chunker_for(embedder: Any, config: ChunkConfig = ChunkConfig()) -> TokenChunker:
    """A chunker on ``embedder``'s own tokenizer (see the module docstring for the fallbacks)."""
    limit = getattr(embedder, "max_tokens", None)
    smysl_tok = getattr(embedder, "tokenizer", None)
    raw = getattr(smysl_tok, "raw", None)
    if raw is not None and hasattr(raw, "encode"):
        # The local engine: offsets from the tokenizers object; EOS is the one special token.
        return TokenChunker(lambda t: list(raw.encode(t, add_special_tokens=False).offsets),
                            config, special_tokens=1, model_max_tokens=limit)
    for tok in (getattr(getattr(embedder, "model", None), "tokenizer", None), smysl_tok):
        if tok is not None and getattr(tok, "is_fast", False):
            special = len(tok("", add_special_tokens=True)["input_ids"])
            return TokenChunker(_hf_offsets(tok), config, special_tokens=special,
                                model_max_tokens=limit)
    return TokenChunker(word_offsets, config, model_max_tokens=limit, exact=False)
