"""Tokenisation with the Qwen3-Embedding rule: every sequence ends with ``<|endoftext|>`` once.

The official embedding tokenizer's post-processor appends it; the base Qwen3 tokenizer and GGUF
conversions do not. We detect which kind we hold and append only when the tokenizer did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 151643

Direction = Literal["right", "left"]


class InputTooLongError(ValueError):
    """An input has more tokens than the model accepts and truncation was not requested.

    ``index``, ``tokens`` and ``limit`` say which input, how long it is (EOS included) and the
    most allowed, so callers (the server) can word their own message.
    """

    def __init__(self, message: str, *, index: int = -1, tokens: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.index, self.tokens, self.limit = index, tokens, limit


class Tokenizer:
    """A ``tokenizers`` tokenizer that yields Qwen3-Embedding token ids."""

    def __init__(self, path: str | Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.raw = HFTokenizer.from_file(str(path))
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
    ) -> list[list[int]]:
        """Token ids per text, EOS last. Over-long input raises unless ``truncate``.

        ``direction="right"`` keeps the beginning of a text, ``"left"`` its end; EOS stays last.
        """
        limit = max_tokens or self.max_tokens
        if direction not in ("right", "left"):
            raise ValueError(f"truncation direction must be 'right' or 'left', got {direction!r}")
        if limit < 1:
            raise ValueError(f"max_tokens must be >= 1, got {limit}")
        out = []
        for i, enc in enumerate(self.raw.encode_batch(list(texts), add_special_tokens=True)):
            ids = list(enc.ids)
            if not self.appends_eos:
                ids.append(self.eos_id)
            if len(ids) > limit:
                if not truncate:
                    raise InputTooLongError(
                        f"input {i} has {len(ids)} tokens (EOS included) but at most {limit} "
                        "are allowed; shorten it or ask for truncation (truncate=True)",
                        index=i, tokens=len(ids), limit=limit,
                    )
                body = ids[:-1]
                keep = limit - 1
                ids = ([*body[:keep]] if direction == "right" else body[len(body) - keep :])
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, EOS included, without any length limit."""
        encs = self.raw.encode_batch(list(texts), add_special_tokens=True)
        return [len(e.ids) + (0 if self.appends_eos else 1) for e in encs]
