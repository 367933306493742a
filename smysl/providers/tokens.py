"""Local Qwen3 token work for providers: finding the tokenizer, reading a model's width off its
name, and fitting texts to a per-input token limit client-side."""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

from smysl.tokenize import Tokenizer, fit_length

#: Where the Qwen3 tokenizer is fetched from when usage must be counted locally (every
#: Qwen3-Embedding size shares one vocabulary, so the smallest repository is enough).
TOKENIZER_REPO = "Qwen/Qwen3-Embedding-0.6B"
#: Environment variable naming a local ``tokenizer.json`` (wins over the Hub).
TOKENIZER_ENV = "SMYSL_TOKENIZER"

#: Native output width of the Qwen3-Embedding sizes, matched against model names.
_KNOWN_WIDTHS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"0[.p_-]?6b"), 1024),
    (re.compile(r"(?<![\d.])4b"), 2560),
    (re.compile(r"(?<![\d.])8b"), 4096),
)

_TOKENIZERS: dict[str, Tokenizer] = {}
_TOKENIZERS_LOCK = threading.Lock()


def find_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer | None:
    """The Qwen3 tokenizer for local counting: ``path``, ``$SMYSL_TOKENIZER``, the Hugging Face
    cache, then a download of ``tokenizer.json`` alone. None (with a warning) when none works.
    """
    candidates: list[str] = []
    if path is not None:
        candidates.append(os.fspath(path))
    elif os.environ.get(TOKENIZER_ENV):
        candidates.append(os.environ[TOKENIZER_ENV])
    else:
        try:
            from huggingface_hub import hf_hub_download

            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
            for local_only in (True,) if offline else (True, False):
                try:
                    candidates.append(hf_hub_download(TOKENIZER_REPO, "tokenizer.json",
                                                      local_files_only=local_only))
                    break
                except Exception:  # not cached / no network: try the next way
                    continue
        except ImportError:  # pragma: no cover - a core dependency
            pass
    for c in candidates:
        p = Path(c).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json"
        if p.is_file():
            key = str(p.resolve())
            with _TOKENIZERS_LOCK:
                if key not in _TOKENIZERS:  # one parsed tokenizer per file, shared (thread-safe)
                    _TOKENIZERS[key] = Tokenizer(p, max_tokens=1 << 30)
                return _TOKENIZERS[key]
        if path is not None:
            raise FileNotFoundError(f"tokenizer {c!r} not found")
    warnings.warn(
        "no Qwen3 tokenizer found (pass tokenizer=PATH, set $SMYSL_TOKENIZER, or let "
        f"huggingface_hub fetch {TOKENIZER_REPO}); token counts a provider does not report are "
        "upper bounds (UTF-8 bytes + 1) and truncation is left to the provider",
        RuntimeWarning, stacklevel=3)
    return None


def width_from_name(model: str) -> int | None:
    """Native width of a Qwen3-Embedding size named in ``model`` (``...-8B`` -> 4096)."""
    low = model.lower()
    if "qwen3" not in low or "embed" not in low:
        return None
    for pattern, width in _KNOWN_WIDTHS:
        if pattern.search(low):
            return width
    return None


def fit_texts(texts: list[str], tok: Tokenizer, limit: int, *, truncate: bool,
              who: str) -> list[str]:
    """``texts`` within ``limit`` tokens each, EOS included: over-long ones raise
    :class:`~smysl.tokenize.InputTooLongError`, or are cut when ``truncate``."""
    out = list(texts)
    for i, ids in enumerate(tok.encode(texts, truncate=True, max_tokens=1 << 30)):
        fitted = fit_length(ids, limit, eos_id=tok.eos_id, truncate=truncate, index=i, who=who)
        if fitted is ids:
            continue
        # Decoding a token prefix can split a character (U+FFFD) and re-encode longer:
        # keep dropping tokens until the text itself fits.
        body, keep = fitted[:-1], len(fitted) - 1
        while True:
            cut = tok.decode(body[:keep]).rstrip("\ufffd")
            if keep <= 0 or tok.count([cut])[0] <= limit:
                break
            keep -= 1
        out[i] = cut
    return out
