"""The provider base: remote embedding APIs behind :class:`~smysl.base.BaseEmbedder`.

A concrete provider says only how one request looks (:meth:`Provider.request_body`) and how
its response is read (:meth:`Provider.parse_response`). Everything else is derived once for
all of them: splitting inputs by the provider's batch-size and request-size limits, concurrent
requests (:mod:`~smysl.providers.dispatch`), timeouts, bounded retries with exponential backoff
and jitter that honour ``Retry-After``, response validation (:mod:`~smysl.providers.retry`),
token usage and cost (:mod:`~smysl.providers.usage`). Rows always come back in input order; a
text that cannot be embedded raises :class:`IncompleteEmbeddingError` naming it, never a
silent gap.

Matryoshka: a provider returns rows of a fixed width (``dimensions``, chosen when it is built
and sent as the request's ``dimensions`` where the API takes it). Smaller sizes asked of
``embed`` are cut and re-normalised locally by :class:`~smysl.base.BaseEmbedder`, which for
Qwen3-Embedding is exactly what a server-side ``dimensions`` does, so one provider object can
serve every size without a request per size and results match the local engine.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, Progress
from smysl.prompts import DEFAULT_TASK
from smysl.providers.config import ProviderConfig
from smysl.providers.dispatch import run_batches
from smysl.providers.errors import (
    IncompleteEmbeddingError,
    MalformedResponseError,
    PayloadTooLargeError,
    ProviderHTTPError,
    RejectedInputError,
)
from smysl.providers.pricing import price_for
from smysl.providers.retry import RetryingClient, check_rows
from smysl.providers.tokens import TOKENIZER_ENV, find_tokenizer, fit_texts, width_from_name
from smysl.providers.usage import Usage
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.tokenize import Tokenizer


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
        try:  # checked first so that a missing extra is the error a user sees
            import httpx  # noqa: F401
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
        #: Sleep function between retries (tests record instead of sleeping).
        self.sleep: Callable[[float], None] = time.sleep
        price = config.price_per_mtok
        self.usage = Usage(config.name, model,
                           price if price is not None else price_for(config.name, model))
        self._http = RetryingClient(config, name=self.name, model=model, base_url=self.base_url,
                                    api_key=api_key, usage=self.usage, transport=transport,
                                    seed=seed)
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
        failed, first_error = run_batches(
            batches, lambda batch: self._embed_batch(texts, batch, truncate, out),
            workers=min(self.config.max_concurrency, len(batches)),
            thread_name=f"smysl-{self.config.name}", progress=progress)
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
        self._http.close()

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
        return fit_texts(texts, tok, limit, truncate=truncate, who=self.name)

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
        body = self.request_body(texts, truncate=truncate)
        return self._http.post(body, len(texts), read=self._read, sleep=self.sleep)

    def _read(self, body: Any, n: int) -> tuple[np.ndarray, int | None]:
        rows, tokens = self.parse_response(body, n)
        return check_rows(rows, tokens, n, width=self._width, name=self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, base_url={self.base_url!r})"
