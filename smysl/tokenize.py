"""Tokenisation with the Qwen3-Embedding rule: every sequence ends with ``<|endoftext|>`` once.

The official embedding tokenizer's post-processor appends it; the base Qwen3 tokenizer and GGUF
conversions do not. We detect which kind we hold and append only when the tokenizer did not.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 151643

Direction = Literal["right", "left"]


#: Who reads an error: Python callers, command-line users, or HTTP clients.
Audience = Literal["python", "cli", "http"]

#: How each audience asks for truncation: the one wording of the hint.
TRUNCATE_HINT: dict[str, str] = {
    "python": "pass truncate=True",
    "cli": "pass --truncate",
    # every route's field (OpenAI's as smysl's extension; Ollama's defaults to true)
    "http": 'send "truncate": true',
}


class InputTooLongError(ValueError):
    """An input has more tokens than the model accepts and truncation was not requested.

    ``index``, ``tokens`` and ``limit`` say which input, how long it is (EOS included) and the
    most allowed; :meth:`describe` words it for a caller's own name of the input (the server's
    ``input[3]``) and audience. ``str(error)`` is the Python caller's wording.
    """

    def __init__(self, *, index: int, tokens: int, limit: int, who: str = "the model",
                 head: int = 0, at_least: bool = False) -> None:
        """``head``: tokens of a query's instruction, set when truncating it would leave none
        of the query's own text (the instruction alone fills the limit). ``at_least``:
        ``tokens`` is a lower bound, a text far over the limit counted only as far as proves
        it (a 26 MB line was tokenised whole, 3 GB, to say by how much)."""
        self.index, self.tokens, self.limit, self.who = index, tokens, limit, who
        self.head, self.at_least = head, at_least
        super().__init__(self.describe(f"input {index}", audience="python"))

    def __reduce__(self) -> tuple[Any, tuple[int, int, int, str, int, bool]]:
        # pickled whole (an engine or Ray process to its caller): the keyword-only __init__
        # cannot take the message that pickle would pass by default
        return _too_long, (self.index, self.tokens, self.limit, self.who, self.head,
                           self.at_least)

    def but(self, *, index: int | None = None, who: str | None = None) -> InputTooLongError:
        """This error for another place of the input (``index``) or another limit's name
        (``who``), everything else kept."""
        return InputTooLongError(index=self.index if index is None else index,
                                 tokens=self.tokens, limit=self.limit,
                                 who=self.who if who is None else who, head=self.head,
                                 at_least=self.at_least)

    def describe(self, what: str, *, audience: Audience = "http") -> str:
        if self.head:
            return (f"{what} is a query whose instruction alone has {self.head} tokens, and "
                    f"{self.who} takes at most {self.limit} (EOS included): truncated, it would "
                    "keep none of the query's text; use a shorter instruction or a larger limit")
        if audience == "http" and not self.who.startswith("options."):
            # a model's limit (not a request's own: Ollama's options.num_ctx), in words
            # clients match: LiteLLM raises ContextWindowExceededError (and a router falls
            # back) on "is longer than the model's context length", not on the code
            whose = "" if self.who == "the model" else f" ({self.who})"
            return (f"{what} is longer than the model's context length: {self._count} tokens "
                    f"(special tokens included), at most {self.limit}{whose}; shorten it or "
                    f"{TRUNCATE_HINT[audience]}")
        return (f"{what} has {self._count} tokens (special tokens included) but {self.who} "
                f"takes at most {self.limit}; shorten it or {TRUNCATE_HINT[audience]}")

    @property
    def _count(self) -> str:
        return f"at least {self.tokens}" if self.at_least else str(self.tokens)


def check_unicode(text: str | None, what: str) -> None:
    """``ValueError`` naming ``what`` when ``text`` holds a lone surrogate: a Python string may
    (``surrogateescape`` decoding, JSON's ``\\ud800``), text may not, and no tokenizer or API
    takes it (the local one raises a TypeError about its own input types)."""
    if text is None or text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise ValueError(f"{what} is not valid Unicode: a lone surrogate ({bad.group()!r}) at "
                         f"character {bad.start()}; pass UTF-8 text")


#: A UTF-16 surrogate code point.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_long(index: int, tokens: int, limit: int, who: str, head: int = 0,
              at_least: bool = False) -> InputTooLongError:
    return InputTooLongError(index=index, tokens=tokens, limit=limit, who=who, head=head,
                             at_least=at_least)


def check_counts(counts: Sequence[int], limit: int, *, who: str = "the model") -> None:
    """The length rule (:func:`fit_length`) for a backend that counts tokens but cuts them
    itself (a provider, sentence-transformers): :class:`InputTooLongError` for the first
    count over ``limit``."""
    for i, n in enumerate(counts):
        if n > limit:
            raise InputTooLongError(index=i, tokens=n, limit=limit, who=who)


def fit_length(ids: list[int], limit: int, *, eos_id: int, truncate: bool, index: int = 0,
               direction: Direction = "right", who: str = "the model", head: int = 0
               ) -> list[int]:
    """The one length rule: ``ids`` (EOS last) within ``limit`` tokens, EOS included.

    Over-long input raises :class:`InputTooLongError` unless ``truncate``; truncation keeps the
    beginning (``direction="right"``) or the end (``"left"``) of the text, and EOS stays last.
    ``head``: leading tokens that truncation keeps whichever end it cuts (a query's
    instruction); a limit that leaves no token after them raises, since the vector would be
    the instruction's alone.
    """
    if len(ids) <= limit:
        return ids
    if not truncate:
        raise InputTooLongError(index=index, tokens=len(ids), limit=limit, who=who)
    body, keep = ids[:-1], limit - 1
    head = min(head, len(body))
    if head and fills(head, limit):
        raise InputTooLongError(index=index, tokens=len(ids), limit=limit, who=who, head=head)
    kept = body[:keep] if direction == "right" else [*body[:head], *body[len(body) - keep + head:]]
    return [*kept, eos_id]


def fills(head: int, limit: int) -> bool:
    """Whether a query instruction of ``head`` tokens leaves no token of the query's own text
    within ``limit`` (EOS included): truncated, its vector would be the instruction's."""
    return head >= limit - 1


def _head_tokens(offsets: Sequence[tuple[int, int]], chars: int) -> int:
    """Leading tokens that start within the first ``chars`` characters. The one that carries
    the template's last ``:`` may carry the query's first letters too (Qwen's pre-tokenizer
    joins ``:Word``): it counts as the instruction's."""
    n = 0
    for start, _ in offsets:
        if start >= chars:
            break
        n += 1
    return n


#: Truncating a text's end, a text over ``limit * CUT_CHARS_PER_TOKEN`` characters is cut to
#: that many before it is tokenised (text runs 2-5 characters per Qwen3 token), and read
#: wider only where the tokens kept could differ from the whole text's (:class:`CutProof`): a
#: 20 MB line cut to 32K tokens was tokenised whole, 3 GB of offsets for a few hundred KB kept.
#: Refusing one (no truncation), so is a text over :data:`COUNT_CHARS` as well, the limit's
#: worth of its tokens proving it too long.
CUT_CHARS_PER_TOKEN = 8
#: Refusing a text over the limit (no truncation), one of up to this many characters is
#: counted whole (the error says by how much it is over; ~0.2 s and 100 MB at most); a longer
#: one only as far as proves it too long ("at least N tokens").
COUNT_CHARS = 1 << 20


def counted_whole(limit: int) -> int:
    """Characters up to which a text refused at ``limit`` tokens is counted whole; a longer
    one is cut to ``limit * CUT_CHARS_PER_TOKEN`` characters first (the tokenizer's texts,
    the reranker's documents)."""
    return max(limit * CUT_CHARS_PER_TOKEN, COUNT_CHARS)


#: A letter-like character then one that is no letter or digit: where :meth:`CutProof.word_end`
#: may hold (it decides), found by the regex engine rather than a Python loop per character.
_LETTER_THEN_OTHER = re.compile(r"[^\W\d_](?=[\W_])")


class CutProof:
    """Whether the tokens of a text cut to its beginning, up to a point, are the whole
    text's there, for a Qwen3 tokenizer (``raw``: a ``tokenizers.Tokenizer``).

    Why a word end proves it: the tokenizer splits added tokens out of the text, normalises
    it (NFC), splits it with Qwen's pre-tokenizer regex and runs BPE within each piece. Every
    regex piece holding a letter ends with the letters' run, so a letter followed by a
    character that is no letter or digit ends a piece wherever the text is cut; if that
    character also takes part in no added token and composes with nothing (NFC), the pieces
    on each side of it, and so their tokens, are the same in the cut text and the whole one
    (the regex has no look-behind, and only one character of look-ahead). So the tokens that
    end by a point are the whole text's when such a word end lies between that point and the
    cut.
    """

    def __init__(self, raw: Any) -> None:
        #: Characters of added tokens ("<|im_end|>"...) that are no letters: a word ends at
        #: none of them.
        self.reserved = {c for t in raw.get_added_tokens_decoder().values()
                         for c in t.content if not c.isalpha()}

    def widened(self, text: str, cut: int, end: int | None) -> int | None:
        """What to read of ``text`` after its first ``cut`` characters were tokenised: None
        where they prove the kept tokens (those ending by character ``end`` are the whole
        text's); else a cut just past the whole text's next word end (:meth:`next_cut`), or
        the whole text where it has none. ``end`` None: the cut held fewer tokens than are
        kept, and twice as much is read."""
        if end is None:
            return 2 * cut
        found = self.next_cut(text, end)
        if found is not None and found <= cut:
            return None
        return len(text) if found is None else found

    def next_cut(self, text: str, end: int) -> int | None:
        """The shortest cut of ``text`` (its first that many characters) whose tokens ending
        by character ``end`` are the whole text's (a word end between ``end - 1`` and the
        cut); None where ``text`` has no such word end. Where a cut failed
        (:meth:`widened`), the whole text's next word end is found here at once: doubling
        the cut until one came tokenised a 5 MB line of digits 3.5 times over."""
        for m in _LETTER_THEN_OTHER.finditer(text, max(end - 1, 0)):
            j = m.start()
            if self.word_end(text[j], text[j + 1]):
                return j + 2
        return None

    def word_end(self, a: str, b: str) -> bool:
        """Whether a regex piece of the tokenizer ends between ``a`` and ``b`` in any text.
        ``b`` must be a character Python's Unicode tables know (assigned): the tokenizer's
        may be newer, and a letter there unassigned here would not end the piece."""
        return (a.isalpha() and not b.isalnum() and unicodedata.category(b) != "Cn"
                and b not in self.reserved
                and unicodedata.combining(a) == 0 == unicodedata.combining(b)
                and unicodedata.normalize("NFC", a + b) == a + b)


#: Characters up to which one text is encoded holding the GIL (:meth:`Tokenizer._encodings`):
#: ~0.6 ms of tokenising at most on a 2-core EPYC (Cyrillic, ~0.6 us a character).
_SHORT_CHARS = 1024


@dataclass(frozen=True)
class TokenSpan:
    """One token of a text: id, its text, and UTF-8 byte offsets (None for special tokens)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


@dataclass(frozen=True)
class TextTokens:
    """A model's tokenizer as chunking needs it (:func:`smysl.toolkit.chunking.chunker_for`):
    where each token of a text lies, and what the text costs as embedded."""

    #: ``(start, end)`` character span of each token of a text, special tokens left out.
    offsets: Callable[[str], list[tuple[int, int]]]
    #: Tokens a text costs embedded as a document, special tokens included.
    count: Callable[[str], int]
    #: Special tokens the model adds to every text (Qwen3: EOS; BERT: [CLS] and [SEP]).
    special_tokens: int


def cut_to_tokens(text: str, limit: int, tokens: TextTokens) -> tuple[str, int] | None:
    """The longest beginning of ``text`` ending at one of its tokens' ends that costs at most
    ``limit`` tokens embedded (special tokens included), and what it costs: a request's own
    limit below the model's, for a backend that cuts only to its own (sentence-transformers).
    None where no token fits."""
    offsets = tokens.offsets(text)
    keep = min(len(offsets), limit - tokens.special_tokens)
    while keep > 0:  # cut text may tokenise longer at its end: drop a token more
        cut = text[: offsets[keep - 1][1]]
        if (cost := tokens.count(cut)) <= limit:
            return cut, cost
        keep -= 1
    return None


class Tokenizer:
    """A ``tokenizers`` tokenizer that yields Qwen3-Embedding token ids."""

    def __init__(self, path: str | Path, max_tokens: int, *, json_text: str | None = None,
                 rows: int | None = None) -> None:
        """``path``: a ``tokenizer.json``; or, with ``json_text`` (its content, e.g. built from
        a GGUF file's metadata), the file it came from, for messages.

        ``rows``: the model's embedding rows. Added tokens past them are left out, and their
        text is split like any other: Qwen3-Embedding-4B/8B have 151,665 rows and the
        tokenizer they ship 151,669 tokens, so ``<think>`` in a text was an id with no row (an
        IndexError; on CUDA a device assert that ends the process's CUDA context), while their
        GGUF files, whose tokenizer has 151,665 tokens, embed it as ``<``, ``think``, ``>``.
        Now both files give the same ids."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.raw = (HFTokenizer.from_str(json_text) if json_text is not None
                        else HFTokenizer.from_file(str(path)))
        except Exception as e:  # the library raises a bare Exception ("EOF while parsing")
            raise ValueError(f"{path}: not a tokenizer the tokenizers library reads ({e}); "
                             "copy or download it again") from None
        if rows is not None and self.raw.get_vocab_size(with_added_tokens=True) > rows:
            spec = json.loads(json_text if json_text is not None
                              else Path(path).read_text(encoding="utf-8"))
            spec["added_tokens"] = [t for t in spec.get("added_tokens") or [] if t["id"] < rows]
            self.raw = HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False))
            if self.raw.get_vocab_size(with_added_tokens=True) > rows:
                raise ValueError(f"{path}: the tokenizer's vocabulary "
                                 f"({self.raw.get_vocab_size(with_added_tokens=True):,} tokens) "
                                 f"does not fit the model's {rows:,} embedding rows")
        self.raw.no_truncation()
        self.raw.no_padding()
        eos = self.raw.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"{path}: tokenizer has no {EOS_TOKEN} token")
        self.eos_id: int = eos
        self.max_tokens = max_tokens
        probe = self.raw.encode("a", add_special_tokens=True).ids
        #: Whether the post-processor already appends EOS (the official embedding tokenizer).
        self.appends_eos = bool(probe) and probe[-1] == eos
        plain = self.raw.encode("a", add_special_tokens=False).ids
        extra = len(probe) - len(plain) - int(self.appends_eos)
        if extra:
            raise ValueError(f"{path}: post-processor adds {extra} token(s) besides EOS")
        self.cut_proof = CutProof(self.raw)

    @property
    def vocab_size(self) -> int:
        return int(self.raw.get_vocab_size(with_added_tokens=True))

    def encode(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = False,
        direction: Direction = "right",
        max_tokens: int | None = None,
        first_index: int = 0,
        head_chars: int = 0,
    ) -> list[list[int]]:
        """Token ids per text, EOS last. Over-long input raises unless ``truncate``.

        ``direction="right"`` keeps the beginning of a text, ``"left"`` its end; EOS stays
        last. ``head_chars``: leading characters of every text that truncation keeps, a
        query's instruction (the template up to ``Query:``; :func:`fit_length`'s ``head``).
        ``first_index``: the index of ``texts[0]`` in the caller's input, for errors (a slice
        of a larger call).
        """
        limit = self.max_tokens if max_tokens is None else max_tokens
        if direction not in ("right", "left"):
            raise ValueError(f"truncation direction must be 'right' or 'left', got {direction!r}")
        if limit < 1:
            raise ValueError(f"max_tokens must be >= 1, got {limit}")
        # keeping a text's beginning, or refusing it, a long one is read from its beginning
        # (CUT_CHARS_PER_TOKEN)
        cut = limit * CUT_CHARS_PER_TOKEN
        # texts longer than this are cut first (None: none is, truncation keeping their end)
        longer = (cut if direction == "right" else None) if truncate else counted_whole(limit)
        # text tokens that must be the whole text's: those kept, or the limit's worth that
        # make the text too long
        proven = limit - 1 if truncate else limit
        pieces = [t if longer is None or len(t) <= longer else t[:cut] for t in texts]
        out = []
        for i, enc in enumerate(self._encodings(pieces)):
            while True:
                ids = list(enc.ids)
                if not self.appends_eos:
                    ids.append(self.eos_id)
                head = _head_tokens(enc.offsets, head_chars) if len(ids) > limit else 0
                piece, text = pieces[i], texts[i]
                if len(piece) == len(text):
                    break
                if truncate and len(ids) > limit and fills(head, limit):
                    wider: int | None = len(text)  # refused with the whole count
                else:  # the last token proven (EOS excepted) must end by a proven word end
                    wider = self.cut_proof.widened(
                        text, len(piece),
                        enc.offsets[proven - 1][1] if len(ids) > limit else None)
                    if wider is None and not truncate:
                        raise InputTooLongError(
                            index=first_index + i, limit=limit, at_least=True,
                            tokens=self._counted(text, len(piece), enc.offsets, len(ids),
                                                 limit))
                    if wider is None:
                        break
                pieces[i] = text[:wider]
                enc = self._encodings([pieces[i]])[0]
            out.append(fit_length(ids, limit, eos_id=self.eos_id, truncate=truncate,
                                  index=first_index + i, direction=direction, head=head))
        return out

    def _counted(self, text: str, cut: int, offsets: list[tuple[int, int]], tokens: int,
                 limit: int) -> int:
        """Tokens ``text`` has at least (EOS included), its first ``cut`` characters tokenised
        into ``tokens`` (EOS included) with ``offsets``, of which more than ``limit`` are
        proven the whole text's: all but those near the cut, where a word end proves them
        (else the limit's worth)."""
        near = tokens - 1 - 16  # text tokens of the cut, less a few near it
        if near > limit and (end := self.cut_proof.next_cut(text, offsets[near - 1][1])) \
                is not None and end <= cut:
            return near + 1
        return limit + 1

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, EOS included, without any length limit."""
        encs = self._encodings(texts)
        return [len(e.ids) + (0 if self.appends_eos else 1) for e in encs]

    def text_tokens(self) -> TextTokens:
        """Offsets and counts for chunking; EOS is the one special token."""
        raw = self.raw
        return TextTokens(
            offsets=lambda text: list(raw.encode(text, add_special_tokens=False).offsets),
            count=lambda text: self.count([text])[0], special_tokens=1)

    def _encodings(self, texts: Sequence[str]) -> list[Any]:
        """``tokenizers`` encodings of ``texts``, special tokens added. One short text (a
        short server request's usual case) skips ``encode_batch``'s thread pool, and its
        hand-over to a pool thread and back: the same ids, 30 instead of 37 us here, and a
        server with the pool turned off (``TOKENIZERS_PARALLELISM=false``) spent 4-5% less
        CPU a request. ``encode_batch_fast`` (no offsets: 22 us against 26.5 for ``encode``
        on STS-B sentences) releases the GIL for those microseconds instead, and the event loop
        then waits to take it back from the server's batch threads: 64 single-text clients got
        2,100-2,450 requests/s instead of 3,500 (``benchmarks/sim_gpu.py --shape wide``, one
        process on 2 cores). So did tiktoken built from this vocabulary (5.5 us, the same ids
        on 1,000 STS-B texts, and it too lets the GIL go): 2,980-3,150 against 3,820-3,990.
        The HTTP process's batch threads would have to go before a faster tokeniser pays.
        Not a long one: ``encode`` holds the GIL while it runs
        (``encode_batch`` does not), and a server tokenises long texts in a thread so that
        its event loop goes on meanwhile (a 1.1M-character text held it 1.4 s)."""
        if len(texts) == 1 and len(texts[0]) <= _SHORT_CHARS:
            return [self.raw.encode(texts[0], add_special_tokens=True)]
        return list(self.raw.encode_batch(list(texts), add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept."""
        return str(self.raw.decode(list(ids), skip_special_tokens=False))

    def decode_batch(self, ids: Sequence[Sequence[int]], *,
                     skip_special_tokens: bool = True) -> list[str]:
        """Text of each id list."""
        return [str(t) for t in self.raw.decode_batch([list(x) for x in ids],
                                                      skip_special_tokens=skip_special_tokens)]

    def spans(self, texts: Sequence[str], *, add_special_tokens: bool = True
              ) -> list[list[TokenSpan]]:
        """Tokens of each text with UTF-8 byte offsets, EOS last when ``add_special_tokens``."""
        raw = self.raw
        eos = TokenSpan(self.eos_id, raw.id_to_token(self.eos_id) or "", True, None, None)
        out: list[list[TokenSpan]] = []
        for text, enc in zip(texts, raw.encode_batch(list(texts),
                                                      add_special_tokens=add_special_tokens),
                             strict=True):
            # tokenizers' Python offsets count characters; TEI reports UTF-8 byte offsets
            byte_at = [0]
            for ch in text:
                byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
            toks = [TokenSpan(tid, raw.id_to_token(tid) or "", True, None, None) if special
                    else TokenSpan(tid, text[a:b], False, byte_at[a], byte_at[b])
                    for tid, (a, b), special in zip(enc.ids, enc.offsets,
                                                    enc.special_tokens_mask, strict=True)]
            if add_special_tokens and not self.appends_eos:
                toks.append(eos)
            out.append(toks)
        return out
