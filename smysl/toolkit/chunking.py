"""Token-aware chunking with overlap, on the tokenizer of the model that will embed the chunks.

A :class:`Chunker` turns one text into :class:`Chunk` spans of at most ``max_tokens`` model tokens
as embedded (special tokens included, and the instruction of chunks embedded as queries),
consecutive chunks sharing up to ``overlap`` tokens. Spans come from the tokenizer's character
offsets, so a chunk is an exact slice of the source text. Every chunk is counted again on its own
before it is yielded, and made shorter if it must: a slice does not always cost the tokens it had
in context (a character's bytes split over several tokens, a word piece merging differently at
the cut), and the limit must hold for what is embedded. A chunk's ``tokens`` is that count.

A text with nothing but whitespace yields no chunk. A chunk's edges are stripped of whitespace,
but where the whole text is one chunk: that chunk is the text as given, edges and all, so that
its vector is the one ``embed`` gives the same text (an indexed document finds itself first).

The tokenizer is the model's own (:meth:`~smysl.base.BaseEmbedder.text_tokens`: the local Qwen3
engine's, a provider's Qwen3 tokenizer, a sentence-transformers model's fast tokenizer, a Ray
pool's model's), else an approximation — words and punctuation marks counted as one token each —
for backends that expose no tokenizer (a remote API of another model family). BPE splits rare
words into several tokens, so the approximation undercounts; ingestion embeds with truncation on,
so an over-long chunk loses its tail instead of failing. Leave headroom (a smaller
``max_tokens``) with such backends. Approximated chunks carry ``tokens=None``: a guess is not
recorded as a count.
"""

from __future__ import annotations

import itertools
import re
import sys
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder

#: Where chunks are cut, as a number: raised with every change that cuts a text differently
#: (1: cuts at line breaks, sentences and words on byte-level BPE too, 2026-12-04; 2: a text
#: that is one chunk keeps its edge whitespace, 2026-12-06). Output that
#: holds chunks by their number alone (a corpus job's shards) records it, so a job resumed by a
#: smysl that cuts elsewhere is refused rather than mixing two cuttings under one chunk id.
CHUNKER_VERSION = 2

Offsets = Callable[[str], list[tuple[int, int]]]
#: Tokens one chunk's text costs as embedded (special tokens and any instruction included).
Count = Callable[[str], int]

_WORDS = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = ".!?;:。！？"
#: Characters tokenised at once by :meth:`TokenChunker.iter_split` (widened when one chunk's
#: tokens do not fit), and the context read beyond a window's cuts: a token ending that close
#: to its end is not final, and a window starts that far before the next chunk.
WINDOW_CHARS = 1 << 18
WINDOW_MARGIN = 1024


@dataclass(frozen=True)
class ChunkConfig:
    """How texts are split.

    Attributes:
        max_tokens: Most tokens per chunk as embedded: special tokens included, and the
            instruction when chunks are embedded as queries; capped at the model's limit
            (with a warning).
        overlap: Most tokens shared by consecutive chunks (context that would be cut at a
            boundary); a chunk start moved back off a word piece shares that piece as well.
        snap: End a chunk at a line break, else a sentence's end, else a word's end, when one
            lies in the window's second half.
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
    """A slice ``text[start:end]`` of the source, with its position and its tokens as embedded
    (counted on the slice itself)."""

    index: int
    text: str
    start: int
    end: int
    #: None where the backend has no tokenizer and the count was approximated.
    tokens: int | None


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
    """Sliding token windows over character offsets from ``offsets``, each chunk recounted with
    ``count`` (default: its offsets plus ``special_tokens``)."""

    def __init__(self, offsets: Offsets, config: ChunkConfig = ChunkConfig(), *,
                 count: Count | None = None, special_tokens: int = 0,
                 model_max_tokens: int | None = None, exact: bool = True) -> None:
        self.offsets = offsets
        self.config = config
        #: Tokens the model adds to every text (EOS; [CLS] and [SEP]).
        self.special_tokens = special_tokens
        self.count: Count = count or (lambda text: len(offsets(text)) + special_tokens)
        #: Most tokens per chunk as embedded.
        self.limit = min(config.max_tokens, model_max_tokens or config.max_tokens)
        if self.limit < config.max_tokens:  # said once here, not cut without a word
            warnings.warn(f"chunks of {config.max_tokens} tokens were asked for, but the model "
                          f"takes at most {self.limit}: chunks of {self.limit} tokens",
                          UserWarning, stacklevel=3)
        overhead = self.count("")
        #: Text tokens per chunk: the limit less what every chunk costs besides its text
        #: (special tokens, an instruction).
        self.budget = self.limit - overhead
        if self.budget < 1 or config.overlap >= self.budget:
            raise ValueError(f"chunks of {self.limit} tokens leave {self.budget} for text "
                             f"besides the {overhead} every chunk costs (special tokens, "
                             f"instruction), which must exceed the overlap ({config.overlap})")
        #: False when token counts are approximated (no model tokenizer available).
        self.exact = exact

    def split(self, text: str) -> list[Chunk]:
        return list(self.iter_split(text))

    def iter_split(self, text: str) -> Iterator[Chunk]:
        """Chunks in order (:meth:`_cut`); a text that makes one chunk is that chunk whole,
        its edge whitespace kept, when it fits so (``embed`` of the text gives its vector)."""
        chunks = self._cut(text)
        first = next(chunks, None)
        if first is None:
            return
        second = next(chunks, None)
        # (a text past one window is tokenised whole no more: memory follows the window, and
        # the tokenizer's regex failed on ten million tabs)
        if second is None and first.text != text and len(text) <= WINDOW_CHARS:
            tokens = self.count(text)
            if tokens <= self.limit:
                yield Chunk(0, text, 0, len(text), tokens if self.exact else None)
                return
        yield first
        if second is not None:
            yield second
            yield from chunks

    def _cut(self, text: str) -> Iterator[Chunk]:
        """Chunks in order, tokenising :data:`WINDOW_CHARS` characters at a time: memory follows
        the window, not the text (a 20 MB one-line file). Each window holds the next chunk's
        start and the :data:`WINDOW_MARGIN` characters before it; units within that margin of
        the window's end are re-read in the next window. So no cut changes a token that a chunk
        is made of, and chunk boundaries match tokenising the whole text."""
        index, pos, width = 0, 0, WINDOW_CHARS
        while True:
            end = min(pos + width, len(text))
            final = end >= len(text)
            lead = max(0, pos - WINDOW_MARGIN)  # context only: those units are chunked already
            units, cum = self._units(text[lead:end], lead)
            n = len(units)
            starts = [a for a, _ in units]
            first = max(0, bisect_right(starts, pos) - 1)  # the unit holding the next start
            if first < n and units[first][1] <= pos:
                first += 1
            # Units that the cut cannot have changed; the last one never counts as safe.
            safe = n if final else min(
                n - 1, sum(1 for _, b in units if b <= end - WINDOW_MARGIN))
            s, restart = first, None
            while s < n:
                e = max(s + 1, bisect_right(cum, cum[s] + self.budget) - 1)
                if not final and e >= safe:
                    # the chunk, or the unit after it that decides its end, could reach the
                    # cut: take it from the next window
                    restart = s
                    break
                if e < n and self.config.snap:
                    e = self._snap(text, units, s, e)
                e, chunk = self._fit(text, units, cum, s, e, index)
                if chunk is not None:
                    yield chunk
                    index += 1
                if e >= n:
                    break
                # The next chunk starts past this one's first characters (its stripped start),
                # so that a start moved back off a word piece cannot repeat this chunk.
                lo = s + 1 if chunk is None else max(s + 1, bisect_right(starts, chunk.start))
                s = self._word_start(text, units, self._back(cum, lo, e), lo, e)
            if final:
                return
            if restart is None:  # no tokens in this window but whitespace
                pos, width = end, WINDOW_CHARS
            elif restart == first:  # not even one chunk fits: a wider window
                width *= 2
            else:
                pos, width = units[restart][0], WINDOW_CHARS

    def _units(self, window: str, pos: int) -> tuple[list[tuple[int, int]], list[int]]:
        """The places a chunk may start and end at in ``window`` (``text[pos:]``), and the
        running sum of their tokens.

        Tokens whose characters overlap are one unit, weighed by their count: byte-level BPE
        splits a rare character's bytes over several tokens that all point at the character
        (``𝔘`` is two tokens at (0, 1)), and a cut between them would put the whole character
        in the chunk. A unit heavier than a chunk's budget is split at its characters instead,
        each weighed by the tokens touching it (over-estimates; the recount decides).

        Characters that no token covers, but whitespace, end the unit before them (the text's
        first unit starts at 0), so that every character is in a chunk: Unicode normalisation
        folds ``e`` + U+0301 into one token whose offsets cover the ``e`` only, and a
        WordPiece tokenizer drops a zero-width joiner."""
        spans = self.offsets(window)
        units: list[tuple[int, int]] = []
        cum = [0]
        ua = ub = w = i0 = 0  # the open unit: characters, tokens, its first token
        # a sentinel token past the end closes the last unit
        for i, (a, b) in enumerate(itertools.chain(spans, [(sys.maxsize - 1, sys.maxsize)])):
            if b <= a:  # a token without characters (rare) joins the open unit
                if w:
                    w += 1
                continue
            if w and a < ub:
                w += 1
                ub = max(ub, b)
                continue
            if w:
                end = ub + len(window[ub:a].rstrip())
                if w > self.budget and ub - ua > 1:
                    for c in range(ua, ub):
                        units.append((c + pos, (c + 1 if c + 1 < ub else end) + pos))
                        cum.append(cum[-1] + sum(1 for x, y in spans[i0:i] if x <= c < y))
                else:
                    units.append((ua + pos, end + pos))
                    cum.append(cum[-1] + w)
            ua, ub, w, i0 = a, b, 1, i
        if pos == 0 and units:
            units[0] = (0, units[0][1])
        return units, cum

    def _fit(self, text: str, units: list[tuple[int, int]], cum: list[int], s: int, e: int,
             index: int) -> tuple[int, Chunk | None]:
        """The chunk of units ``s..e-1``, stripped and counted on its own; while it costs more
        than :attr:`limit`, units come off its end (at least the excess, by their weights),
        back to a word's end (:meth:`_snap` ``words``): cut where the excess fell, a chunk
        ended inside a word (``Уар|ду``)."""
        while True:
            a, b = units[s][0], units[e - 1][1]
            piece = text[a:b]
            lead = len(piece) - len(piece.lstrip())
            piece = piece.strip()
            if not piece:
                return e, None
            tokens = self.count(piece)
            if tokens <= self.limit:
                return e, Chunk(index, piece, a + lead, a + lead + len(piece),
                                tokens if self.exact else None)
            if e - s == 1:
                raise ValueError(f"characters {a}..{b} take {tokens} tokens: more than a chunk "
                                 f"of {self.limit} tokens holds; use larger chunks")
            e = min(e - 1, max(s + 1, bisect_right(cum, cum[e] - (tokens - self.limit)) - 1))
            if self.config.snap:
                e = self._snap(text, units, s, e, words=True)

    def _back(self, cum: list[int], lo: int, e: int) -> int:
        """Where the chunk after one ending before unit ``e`` starts: back from ``e`` over at
        most ``overlap`` tokens, not before ``lo``."""
        return min(e, max(lo, bisect_left(cum, cum[e] - self.config.overlap)))

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

    def _snap(self, text: str, spans: list[tuple[int, int]], s: int, e: int,
              words: bool = False) -> int:
        """Latest boundary in the window's second half: a line break, else a sentence's end,
        else a word's end; else ``e``. ``words``: the latest boundary of any of the three (a
        chunk shortened by a few tokens keeps the rest). The whitespace at a cut is read on
        both sides of it: byte-level BPE puts the space or line break before a word into the
        word's token (`` Смысл``, ``.\n\n``), so the gap between two units is mostly empty."""
        lo = s + max(1, (e - s) // 2)
        sentence = word = None
        for j in range(e - 1, lo - 1, -1):
            left = text[spans[j][0] : spans[j][1]]
            right = text[spans[j + 1][0] : spans[j + 1][1]]
            space = (left[len(left.rstrip()):] + text[spans[j][1] : spans[j + 1][0]]
                     + right[: len(right) - len(right.lstrip())])
            if "\n" in space:
                return j + 1
            body = left.rstrip()
            at_word = bool(space) or not (body and body[-1].isalnum() and right[:1].isalnum())
            if words and at_word:
                return j + 1
            if sentence is None and space and body and body[-1] in _SENTENCE_END:
                sentence = j + 1
            if word is None and at_word:
                word = j + 1
        return sentence or word or e


def chunker_for(embedder: BaseEmbedder, config: ChunkConfig = ChunkConfig(), *,
                instruction: str | None = None) -> TokenChunker:
    """A chunker on ``embedder``'s own tokenizer (:meth:`BaseEmbedder.text_tokens`), else the
    approximation (see the module docstring).

    ``instruction``: the chunks are embedded as queries with it (``embedder.embed(chunks,
    instruction=...)``), and counted so: the query template's tokens count against the limit.
    """

    def embedded(text: str) -> str:
        return text if instruction is None else embedder.format_texts([text], instruction)[0]

    tokens = embedder.text_tokens()
    if tokens is None:
        return TokenChunker(word_offsets, config, count=lambda t: len(word_offsets(embedded(t))),
                            model_max_tokens=embedder.max_tokens, exact=False)
    count = tokens.count
    return TokenChunker(tokens.offsets, config, count=lambda t: count(embedded(t)),
                        special_tokens=tokens.special_tokens,
                        model_max_tokens=embedder.max_tokens)
