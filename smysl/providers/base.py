"""The provider base: remote embedding APIs behind :class:`~smysl.base.BaseEmbedder`.

A concrete provider says only how one request looks (:meth:`Provider.request_body`) and how
its response is read (:meth:`Provider.parse_response`). Everything else is derived here once:
splitting inputs by the provider's batch-size and request-size limits, concurrent requests,
timeouts, bounded retries with exponential backoff and jitter that honour ``Retry-After``,
response validation, token usage and cost. Rows always come back in input order; a text that
cannot be embedded raises :class:`IncompleteEmbeddingError` naming it, never a silent gap.

Matryoshka: a provider returns rows of a fixed width (``dimensions``, chosen when it is built
and sent as the request's ``dimensions`` where the API takes it). Smaller sizes asked of
``embed`` are cut and re-normalised locally by :class:`~smysl.base.BaseEmbedder`, which for
Qwen3-Embedding is exactly what a server-side ``dimensions`` does, so one provider object can
serve every size without a request per size and results match the local engine.
"""

from __future__ import annotations

import abc
import dataclasses
import email.utils
import functools
import logging
import math
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, Progress
from smysl.prompts import DEFAULT_TASK
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.tokenize import Tokenizer, fit_length

log = logging.getLogger(__name__)

#: HTTP statuses worth another try: rate limits, timeouts, conflicts and server-side faults.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

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


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ProviderConfig:
    """How to talk to one provider. Every field can be overridden per model string option."""

    #: Scheme and price-table key (``openrouter``, ``dashscope``, ...).
    name: str
    #: API root, e.g. ``https://openrouter.ai/api/v1``; the request path is appended.
    base_url: str
    #: Request path under ``base_url``.
    path: str = "/embeddings"
    #: Environment variable(s) holding the API key, comma-separated, first set wins (sent as
    #: ``Authorization: Bearer``).
    api_key_env: str | None = None
    #: Environment variable that overrides ``base_url`` (e.g. ``OLLAMA_HOST``).
    base_url_env: str | None = None
    #: Refuse to build without a key (paid APIs); local servers run without one.
    api_key_required: bool = False
    #: Most inputs in one request (DashScope: 10, TEI's default ``max_client_batch_size``: 32).
    max_batch_texts: int = 256
    #: Most tokens in one request, estimated (exact with a tokenizer, else a UTF-8 byte bound).
    max_batch_tokens: int | None = None
    #: Most tokens one input may have, when the provider documents it.
    max_tokens: int | None = None
    #: Whether the output width may be read off a Qwen3-Embedding size in the model name
    #: (``...-8B`` -> 4096). Off for self-hosted servers, whose model names are arbitrary: their
    #: width is probed with one request unless ``dimensions=`` is given.
    width_from_name: bool = True
    #: Whether requests may carry ``dimensions`` (the width rows come back with).
    supports_dimensions: bool = False
    #: Whether the API truncates over-long inputs itself when asked (TEI, Ollama); otherwise
    #: ``truncate=True`` is done client-side with the Qwen3 tokenizer.
    server_truncates: bool = False
    #: Seconds to wait for a response (read/write/pool); connecting has its own limit below.
    timeout: float = 60.0
    #: Seconds to wait for a TCP/TLS connection.
    connect_timeout: float = 10.0
    #: Extra tries per request after the first on 429/5xx/timeouts/connection errors/malformed
    #: bodies. Other 4xx are never retried.
    max_retries: int = 6
    #: First backoff in seconds; doubles per try, with jitter (each wait is 50-100% of it).
    backoff_base: float = 0.5
    #: Longest backoff in seconds.
    backoff_max: float = 30.0
    #: Longest ``Retry-After`` honoured, in seconds (a server asking for more gets this).
    max_retry_after: float = 120.0
    #: Requests in flight at once for one ``embed`` call.
    max_concurrency: int = 4
    #: USD per 1M tokens; None = look it up in :data:`smysl.providers.pricing.PRICES`.
    price_per_mtok: float | None = None
    #: Extra HTTP headers sent with every request.
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "max_batch_texts": self.max_batch_texts >= 1,
            "max_batch_tokens": self.max_batch_tokens is None or self.max_batch_tokens >= 1,
            "max_tokens": self.max_tokens is None or self.max_tokens >= 1,
            "timeout": self.timeout > 0,
            "connect_timeout": self.connect_timeout > 0,
            "max_retries": self.max_retries >= 0,
            "backoff_base": self.backoff_base >= 0,
            "backoff_max": self.backoff_max >= 0,
            "max_retry_after": self.max_retry_after >= 0,
            "max_concurrency": self.max_concurrency >= 1,
            "price_per_mtok": self.price_per_mtok is None or self.price_per_mtok >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid provider setting(s) for {self.name}: {', '.join(bad)}")


# --------------------------------------------------------------------------- errors
class ProviderError(RuntimeError):
    """A provider request failed."""


class ProviderHTTPError(ProviderError):
    """The provider answered with an error status."""

    def __init__(self, message: str, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class PayloadTooLargeError(ProviderHTTPError):
    """413: the request was too big; it is split and sent again."""


class MalformedResponseError(ProviderError):
    """A 2xx response whose body does not have the documented shape."""


class RetriesExhaustedError(ProviderError):
    """A request kept failing with retryable errors until the retry budget ran out."""


class IncompleteEmbeddingError(ProviderError):
    """Some inputs could not be embedded; nothing is returned rather than a partial result.

    ``failed`` lists their positions in the input (sorted), ``cause`` is the first error.
    """

    def __init__(self, message: str, failed: list[int], total: int,
                 cause: BaseException | None) -> None:
        super().__init__(message)
        self.failed = failed
        self.total = total
        self.cause = cause


class RejectedInputError(IncompleteEmbeddingError, ValueError):
    """The provider rejected the inputs themselves (400/422: empty, too long, malformed).

    A ``ValueError`` like the engine's input errors, so callers that isolate bad inputs (the
    server's batcher, the CLI) treat it the same way.
    """


# --------------------------------------------------------------------------- usage
@dataclass
class Usage:
    """Running totals for one provider object: tokens, requests, retries and cost.

    ``tokens`` sums what the provider reported where it did and the local Qwen3 count
    elsewhere (``counted_tokens``); ``estimated_tokens`` is the part that could only be bounded
    (no tokenizer available). Thread-safe; ``str()`` is a one-line report.
    """

    provider: str
    model: str
    price_per_mtok: float | None = None
    texts: int = 0
    tokens: int = 0
    reported_tokens: int = 0
    counted_tokens: int = 0
    estimated_tokens: int = 0
    requests: int = 0
    retries: int = 0
    failed_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def cost(self) -> float | None:
        """USD spent so far, or None when no price is known."""
        if self.price_per_mtok is None:
            return None
        return self.tokens * self.price_per_mtok / 1_000_000

    def record(self, *, texts: int, reported: int | None, counted: int | None,
               estimated: int | None) -> None:
        with self._lock:
            self.texts += texts
            self.requests += 1
            if reported is not None:
                self.reported_tokens += reported
                self.tokens += reported
            elif counted is not None:
                self.counted_tokens += counted
                self.tokens += counted
            elif estimated is not None:
                self.estimated_tokens += estimated
                self.tokens += estimated

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed_requests += 1

    def snapshot(self) -> dict[str, Any]:
        """Plain totals (for logs, JSON, metrics)."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if not f.name.startswith("_")}
        out["cost"] = self.cost
        return out

    def reset(self) -> None:
        with self._lock:
            self.texts = self.tokens = self.reported_tokens = self.counted_tokens = 0
            self.estimated_tokens = self.requests = self.retries = self.failed_requests = 0

    def __str__(self) -> str:
        s = self.snapshot()
        approx = "≤" if s["estimated_tokens"] else ""
        source = ("provider-reported" if s["tokens"] == s["reported_tokens"]
                  else "counted locally" if not s["reported_tokens"] else "reported+counted")
        cost = (f"${s['cost']:.6f} at ${self.price_per_mtok:g}/1M tokens"
                if s["cost"] is not None else "cost unknown (no price)")
        failed = f", {s['failed_requests']} failed" if s["failed_requests"] else ""
        return (f"{self.provider}:{self.model}: {approx}{_n(s['tokens'], 'token')} ({source}), "
                f"{_n(s['texts'], 'text')}, {_n(s['requests'], 'request')}, "
                f"{_n(s['retries'], 'retry', 'retries')}{failed}, {cost}")


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


# --------------------------------------------------------------------------- tokenizer lookup
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


# --------------------------------------------------------------------------- the provider
class Provider(BaseEmbedder):
    """A remote embedding API. Subclasses implement :meth:`request_body` and
    :meth:`parse_response`; requests, limits, retries and usage are handled here.

    Thread-safe: one object may serve many threads (``smysl serve`` fronting a provider); the
    HTTP client pools connections and usage totals are locked.
    """

    def __init__(
        self,
        model: str,
        config: ProviderConfig,
        *,
        api_key: str | None = None,
        dimensions: int | None = None,
        tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
        name: str | None = None,
        default_task: str = DEFAULT_TASK,
        transport: Any = None,
        seed: int | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("providers need httpx: pip install 'smysl[providers]'") from e

        self.model = model
        self.config = config
        self.name = name or f"{config.name}:{model}"
        self.backend = config.name
        self.default_task = default_task
        self.max_tokens = config.max_tokens
        base = os.environ.get(config.base_url_env, "") if config.base_url_env else ""
        self.base_url = (base or config.base_url).rstrip("/")
        envs = [e.strip() for e in (config.api_key_env or "").split(",") if e.strip()]
        for env in envs if api_key is None else ():
            api_key = os.environ.get(env) or None
            if api_key:
                break
        if api_key is None and config.api_key_required:
            raise ValueError(f"{config.name}: no API key; set ${' or $'.join(envs)} or pass "
                             "api_key=...")
        if dimensions is not None and (isinstance(dimensions, bool) or int(dimensions) < 1):
            raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
        #: Width requested from the server (sent as ``dimensions`` when supported).
        self.request_dimensions = int(dimensions) if dimensions is not None else None
        self._width: int | None = (
            self.request_dimensions
            or (width_from_name(model) if config.width_from_name else None)
            or self.default_width())
        self._tokenizer_arg = tokenizer
        self._tokenizer: Tokenizer | None = tokenizer if isinstance(tokenizer, Tokenizer) else None
        self._tokenizer_resolved = self._tokenizer is not None
        #: Batch size learned from 413 answers (servers whose limit is below the config's).
        self._batch_cap = config.max_batch_texts
        self._width_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._rng = random.Random(seed)
        #: Sleep function between retries (tests record instead of sleeping).
        self.sleep: Callable[[float], None] = time.sleep
        from smysl.providers.pricing import price_for

        price = config.price_per_mtok
        self.usage = Usage(config.name, model,
                           price if price is not None else price_for(config.name, model))
        headers = {"User-Agent": "smysl", **dict(config.headers)}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            limits=httpx.Limits(max_connections=max(config.max_concurrency, 4) * 2,
                                max_keepalive_connections=max(config.max_concurrency, 4)),
            transport=transport,
            follow_redirects=True,
            verify=_ssl_context(),
        )
        if tokenizer is not None or os.environ.get(TOKENIZER_ENV):
            # A tokenizer named explicitly is local and cheap: load it now so that length checks
            # and request-size estimates use exact counts from the first call.
            _ = self.tokenizer

    # ---------------------------------------------------------------- what a subclass writes
    @abc.abstractmethod
    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        """JSON body embedding ``texts`` (already formatted: instructions applied)."""

    @abc.abstractmethod
    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], int | None]:
        """Rows (in request order) and the token count the provider reports (None if none).

        Raise ``ValueError``/``KeyError``/``TypeError`` on an unexpected shape.
        """

    def default_width(self) -> int | None:
        """Output width when neither the model name nor an option gives it (None: probe)."""
        return None

    # ---------------------------------------------------------------- attributes
    @property
    def dimensions(self) -> int:
        """Width of the rows this provider returns (probed with one request if unknown)."""
        if self._width is None:
            with self._width_lock:
                if self._width is None:
                    # One real (billed) request for a one-token text; its usage is recorded.
                    probe = ["dimension probe"]
                    rows, reported = self._request(probe, truncate=True)
                    self._record(probe, reported)
                    self._width = int(rows.shape[1])
        return self._width

    @dimensions.setter
    def dimensions(self, value: int) -> None:
        self._width = int(value)

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The Qwen3 tokenizer used for local counts, looked up on first use."""
        if not self._tokenizer_resolved:
            with self._tokenizer_lock:
                if not self._tokenizer_resolved:
                    arg = self._tokenizer_arg
                    self._tokenizer = find_tokenizer(
                        None if arg is None or isinstance(arg, Tokenizer) else arg)
                    self._tokenizer_resolved = True
        return self._tokenizer

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each text costs as a document, EOS included (Qwen3 tokenizer)."""
        tok = self.tokenizer
        if tok is None:
            raise NotImplementedError(f"{self.name}: no Qwen3 tokenizer to count tokens with")
        return tok.count(self._check_texts(texts))

    # ---------------------------------------------------------------- BaseEmbedder
    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        texts = self._fit_lengths(texts, truncate)
        width = self.dimensions
        out = np.empty((len(texts), width), dtype=np.float32)
        batches = self._plan(texts)
        failed: list[int] = []
        first_error: BaseException | None = None
        workers = min(self.config.max_concurrency, len(batches))
        if workers <= 1:
            for batch in batches:
                try:
                    self._embed_batch(texts, batch, truncate, out)
                except Exception as e:
                    first_error = e
                    failed = [i for b in batches[batches.index(batch):] for i in b]
                    break
                if progress is not None:
                    progress.update(len(batch))
        else:
            ex = ThreadPoolExecutor(workers, thread_name_prefix=f"smysl-{self.config.name}")
            try:
                futures: dict[Future[None], list[int]] = {
                    ex.submit(self._embed_batch, texts, b, truncate, out): b for b in batches}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        err = fut.exception()
                        if err is None:
                            if progress is not None:
                                progress.update(len(futures[fut]))
                            continue
                        first_error = first_error or err
                        failed.extend(futures[fut])
                    if first_error is not None:
                        # Stop spending on a job that will raise anyway; running requests finish.
                        for fut in pending:
                            if fut.cancel():
                                failed.extend(futures[fut])
                        for fut in wait(pending).done:
                            if not fut.cancelled() and fut.exception() is not None:
                                failed.extend(futures[fut])
                        break
            finally:
                # Ctrl-C or any error: queued batches are dropped, not sent.
                ex.shutdown(wait=True, cancel_futures=True)
        if first_error is not None:
            failed = sorted(set(failed))
            if isinstance(first_error, ProviderHTTPError) and first_error.status in (401, 403,
                                                                                    404):
                # A bad key or an unknown model fails every input alike: say that plainly.
                raise first_error
            rejected = isinstance(first_error, ProviderHTTPError) and first_error.status in (
                400, 422)
            raise (RejectedInputError if rejected else IncompleteEmbeddingError)(
                f"{self.name}: {len(failed)} of {len(texts)} inputs were not embedded "
                f"(first failed input: #{failed[0]}): {first_error}",
                failed, len(texts), first_error) from first_error
        return out

    def usage_report(self) -> str:
        return str(self.usage)

    def close(self) -> None:
        self._client.close()

    # ---------------------------------------------------------------- internals
    def _fit_lengths(self, texts: list[str], truncate: bool) -> list[str]:
        """Enforce ``max_tokens`` where a tokenizer can: raise, or truncate client-side."""
        limit = self.max_tokens
        if limit is None:
            return texts
        if truncate and self.config.server_truncates:
            return texts
        # A tokenizer is fetched for client-side truncation; a mere check uses one only if
        # it is already at hand (the provider's own error covers the rest).
        tok = self.tokenizer if truncate else (self._tokenizer if self._tokenizer_resolved
                                               else None)
        if tok is None:
            return texts
        out = list(texts)
        for i, ids in enumerate(tok.encode(texts, truncate=True, max_tokens=1 << 30)):
            fitted = fit_length(ids, limit, eos_id=tok.eos_id, truncate=truncate, index=i,
                                who=self.name)
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

    def _estimate(self, texts: list[str]) -> list[int]:
        tok = self._tokenizer if self._tokenizer_resolved else None
        if tok is not None:
            return tok.count(texts)
        # Byte-level BPE never makes more tokens than bytes: a safe bound, plus EOS.
        return [len(t.encode("utf-8")) + 1 for t in texts]

    def _plan(self, texts: list[str]) -> list[list[int]]:
        """Consecutive batches within the per-request text and token limits."""
        cfg = self.config
        sizes = self._estimate(texts) if cfg.max_batch_tokens else [0] * len(texts)
        return plan_batches(sizes, SchedulerConfig(
            max_batch_tokens=cfg.max_batch_tokens, by_length=False,
            max_batch_size=min(cfg.max_batch_texts, self._batch_cap)))

    def _embed_batch(self, texts: list[str], batch: list[int], truncate: bool,
                     out: np.ndarray) -> None:
        chunk = [texts[i] for i in batch]
        try:
            rows, reported = self._request(chunk, truncate=truncate)
        except PayloadTooLargeError:
            if len(batch) == 1:
                raise
            # The server's limit is lower than configured: halve, go on, and plan later calls
            # within the size that is known to fit better.
            mid = len(batch) // 2
            self._batch_cap = min(self._batch_cap, len(batch) - mid)
            self._embed_batch(texts, batch[:mid], truncate, out)
            self._embed_batch(texts, batch[mid:], truncate, out)
            return
        if rows.shape[1] != out.shape[1]:
            raise MalformedResponseError(
                f"{self.name} returned {rows.shape[1]}-wide rows, expected {out.shape[1]}")
        out[batch] = rows
        self._record(chunk, reported)

    def _record(self, chunk: list[str], reported: int | None) -> None:
        counted = estimated = None
        if reported is None:
            tok = self.tokenizer
            if tok is not None:
                counted = sum(tok.count(chunk))
            else:
                estimated = sum(self._estimate(chunk))
        self.usage.record(texts=len(chunk), reported=reported, counted=counted,
                          estimated=estimated)

    def _request(self, texts: list[str], *, truncate: bool) -> tuple[np.ndarray, int | None]:
        """POST one batch; retry what is worth retrying; return validated rows and usage."""
        import httpx

        cfg = self.config
        body = self.request_body(texts, truncate=truncate)
        last: BaseException | None = None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self.usage.record_retry()
            retry_after: float | None = None
            try:
                resp = self._client.post(cfg.path, json=body)
            except httpx.TimeoutException as e:
                last = ProviderError(f"{self.name}: timed out ({type(e).__name__}) after "
                                     f"{cfg.timeout:g}s")
            except httpx.UnsupportedProtocol as e:  # a bad URL does not heal
                raise ProviderError(f"{self.name}: bad URL {self.base_url!r}: {e}") from e
            except httpx.RequestError as e:  # refused, reset, DNS, protocol, body decoding
                last = ProviderError(f"{self.name}: connection error: {e!r}")
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        return self._validate(resp, len(texts))
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        last = MalformedResponseError(
                            f"{self.name}: malformed response ({e}): {resp.text[:200]!r}")
                elif status == 413:
                    raise PayloadTooLargeError(
                        f"{self.name}: request too large (413) for {len(texts)} inputs: "
                        f"{_excerpt(resp)}", status, resp.text)
                elif status in RETRYABLE_STATUS:
                    retry_after = _retry_after(resp.headers)
                    last = ProviderHTTPError(f"{self.name}: HTTP {status}: {_excerpt(resp)}",
                                             status, resp.text)
                else:
                    self.usage.record_failure()
                    raise ProviderHTTPError(self._explain(status, resp), status, resp.text)
            if attempt == cfg.max_retries:
                break
            backoff = min(cfg.backoff_max, cfg.backoff_base * 2.0 ** attempt)
            delay = backoff * self._rng.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, cfg.max_retry_after))
            log.debug("%s: retry %d in %.3fs after %s", self.name, attempt + 1, delay, last)
            self.sleep(delay)
        self.usage.record_failure()
        raise RetriesExhaustedError(
            f"{self.name}: gave up after {cfg.max_retries + 1} attempts: {last}") from last

    def _validate(self, resp: Any, n: int) -> tuple[np.ndarray, int | None]:
        rows, tokens = self.parse_response(resp.json(), n)
        if len(rows) != n:
            raise ValueError(f"{len(rows)} embeddings for {n} inputs")
        arr = np.asarray(rows, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"embeddings of shape {arr.shape}")
        if self._width is not None and arr.shape[1] != self._width:
            # Not transient: the model is not the width this object was built for.
            raise ProviderError(
                f"{self.name} returned {arr.shape[1]}-wide rows but {self._width} were expected; "
                f"pass dimensions={arr.shape[1]} if that is the model's width")
        if not np.isfinite(arr).all():
            raise ValueError("non-finite values in embeddings")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or tokens < 0):
            raise ValueError(f"bad token count {tokens!r}")
        return arr, tokens

    def _explain(self, status: int, resp: Any) -> str:
        hint = ""
        if status in (401, 403):
            hint = (f" (check the API key: ${self.config.api_key_env})"
                    if self.config.api_key_env else " (the server wants an API key)")
        elif status == 404:
            hint = f" (unknown model {self.model!r} or wrong URL {self.base_url}{self.config.path})"
        return f"{self.name}: HTTP {status}{hint}: {_excerpt(resp)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, base_url={self.base_url!r})"


@functools.cache
def _ssl_context() -> Any:
    """One verified TLS context for every client: building one reads the CA bundle (~0.1 s)."""
    import httpx

    return httpx.create_ssl_context()


def _excerpt(resp: Any, limit: int = 300) -> str:
    text: str = resp.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI-style) or ``Retry-After`` (seconds or date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        v = float(value)
        return v if math.isfinite(v) and v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
