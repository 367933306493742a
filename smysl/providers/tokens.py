"""Local Qwen3 token work for providers: finding the tokenizer, reading a model's width off its
name, and fitting texts to a per-input token limit client-side."""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from pathlib import Path

from smysl.hfcache import hub_cache, offline_variable
from smysl.tokenize import Tokenizer, fit_length

#: Where the Qwen3 tokenizer is fetched from when usage must be counted locally (every
#: Qwen3-Embedding size shares one vocabulary, so the smallest repository is enough).
TOKENIZER_REPO = "Qwen/Qwen3-Embedding-0.6B"
#: Repositories whose cached ``tokenizer.json`` serves as well (same vocabulary).
_SAME_VOCABULARY = ("Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-4B",
                    "Qwen/Qwen3-Embedding-8B")
#: Environment variable naming a local ``tokenizer.json`` (wins over the Hub).
TOKENIZER_ENV = "SMYSL_TOKENIZER"
#: Seconds the Hub gets to answer before a download is tried; no answer: no download.
HUB_PROBE_TIMEOUT = 1.0
#: Seconds a Hub that did not answer is left alone before it is asked again.
_HUB_RETRY_AFTER = 300.0

#: Native output width of the Qwen3-Embedding sizes, matched against model names.
_KNOWN_WIDTHS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"0[.p_-]?6b"), 1024),
    (re.compile(r"(?<![\d.])4b"), 2560),
    (re.compile(r"(?<![\d.])8b"), 4096),
)

_TOKENIZERS: dict[str, Tokenizer] = {}
_TOKENIZERS_LOCK = threading.Lock()
_hub_down_until = 0.0


def find_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer | None:
    """The Qwen3 tokenizer for local counting: ``path``, ``$SMYSL_TOKENIZER``, the Hugging Face
    cache (any Qwen3-Embedding size), then a download of ``tokenizer.json`` alone, tried only
    when not offline (``HF_HUB_OFFLINE``) and the Hub answers within
    :data:`HUB_PROBE_TIMEOUT` seconds: without a network this fails fast instead of waiting
    out download retries (issue 11 item 9). None (with a warning) when none works;
    FileNotFoundError (naming the variable) when ``$SMYSL_TOKENIZER`` names no tokenizer.
    """
    if path is not None:
        found = _load(os.fspath(path))
        if found is None:
            raise FileNotFoundError(f"tokenizer {os.fspath(path)!r} not found")
        return found
    named = env_tokenizer()
    if named is not None:
        return named
    file = _cached_file() or _downloaded_file()
    found = _load(file) if file else None
    if found is not None:
        return found
    warnings.warn(
        "no Qwen3 tokenizer found (pass tokenizer=PATH, set $SMYSL_TOKENIZER, or let "
        f"huggingface_hub fetch {TOKENIZER_REPO}); token counts a provider does not report are "
        "upper bounds (UTF-8 bytes + 1) and truncation is left to the provider",
        RuntimeWarning, stacklevel=3)
    return None


def env_tokenizer_file() -> Path | None:
    """The ``tokenizer.json`` that ``$SMYSL_TOKENIZER`` names, None where it is unset or blank.
    An operator who set it meant that file: one that is not there is an error naming the
    variable, not a quiet fall back to another tokenizer (or to byte-count bounds). Cheap (no
    parsing): providers check it when they are built."""
    value = os.environ.get(TOKENIZER_ENV)
    if not value:
        return None
    file = _file(value)
    if file is None:
        raise FileNotFoundError(
            f"${TOKENIZER_ENV}={value!r}: no tokenizer.json there (a tokenizer.json file or "
            "a folder holding one); fix or unset the variable")
    return file


def env_tokenizer() -> Tokenizer | None:
    """The tokenizer ``$SMYSL_TOKENIZER`` names (see :func:`env_tokenizer_file`)."""
    file = env_tokenizer_file()
    return None if file is None else _load(str(file))


def _file(candidate: str) -> Path | None:
    p = Path(candidate).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    return p if p.is_file() else None


def _load(candidate: str) -> Tokenizer | None:
    p = _file(candidate)
    if p is None:
        return None
    key = str(p.resolve())
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:  # one parsed tokenizer per file, shared (thread-safe)
            _TOKENIZERS[key] = Tokenizer(p, max_tokens=1 << 30)
        return _TOKENIZERS[key]


def _cache_dir() -> str | None:
    # Read at call time (huggingface_hub freezes its environment at import), by the same
    # rule as the engine's (HF_HOME='~/hf' from an env file expanded; XDG_CACHE_HOME)
    return str(hub_cache())


def _cached_file() -> str | None:
    """A cached ``tokenizer.json`` of any Qwen3-Embedding size; no network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a core dependency
        return None
    for repo in _SAME_VOCABULARY:
        found = try_to_load_from_cache(repo, "tokenizer.json", cache_dir=_cache_dir())
        if isinstance(found, str):
            return found
    return None


def _downloaded_file() -> str | None:
    """``tokenizer.json`` fetched from the Hub, or None at once when offline or unreachable."""
    global _hub_down_until
    if offline_variable() is not None:  # HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE
        return None
    if time.monotonic() < _hub_down_until:
        return None
    try:
        import httpx
        from huggingface_hub import constants, hf_hub_download
    except ImportError:  # pragma: no cover - core dependencies
        return None
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    try:  # a cheap question first: hf_hub_download retries for tens of seconds without a net
        httpx.head(f"{endpoint}/api/models/{TOKENIZER_REPO}", timeout=HUB_PROBE_TIMEOUT)
        return hf_hub_download(TOKENIZER_REPO, "tokenizer.json", cache_dir=_cache_dir(),
                               endpoint=endpoint)
    except Exception:  # no network, DNS, refused, timeout, or the download failed
        _hub_down_until = time.monotonic() + _HUB_RETRY_AFTER
        return None


def is_qwen3_embedding(model: str) -> bool:
    """Whether a provider's model name names a Qwen3-Embedding (any size, any spelling)."""
    low = model.lower()
    return "qwen3" in low and "embed" in low


def width_from_name(model: str) -> int | None:
    """Native width of a Qwen3-Embedding size named in ``model`` (``...-8B`` -> 4096)."""
    low = model.lower()
    if not is_qwen3_embedding(model):
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
