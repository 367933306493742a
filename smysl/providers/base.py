"""The provider base: remote embedding APIs behind :class:`~smysl.base.BaseEmbedder`.

A concrete provider says only how one request looks (:meth:`Provider.request_body`) and how
its response is read (:meth:`Provider.parse_response`). Everything else is derived once for
all of them: splitting inputs by the provider's batch-size and request-size limits (a 413
halves the size for the rest of the call, and for later calls once a request of that size went
through: :class:`~smysl.providers.dispatch.BatchLimit`; a 413 for one input alone rejects that
input), concurrent requests (:mod:`~smysl.providers.dispatch`), wall-clock deadlines per request
and per call, bounded retries with exponential backoff and jitter that honour ``Retry-After``,
the upstream's health (:mod:`~smysl.providers.retry`), row validation
(:mod:`~smysl.providers.rows`), token usage and cost (:mod:`~smysl.providers.usage`: every
billed answer, recorded before its rows are checked). Rows always come back in input order; a
text that cannot be embedded raises :class:`IncompleteEmbeddingError` naming it, never a silent
gap, and rows finished before the failure ride along and are kept for a resume
(:mod:`~smysl.providers.resume`).

Matryoshka: a provider returns rows of a fixed width (``dimensions``, chosen when it is built
and sent as the request's ``dimensions`` where the API takes it). Smaller sizes asked of
``embed`` are cut and re-normalised locally by :class:`~smysl.base.BaseEmbedder`, which for
Qwen3-Embedding is exactly what a server-side ``dimensions`` does, so one provider object can
serve every size without a request per size and results match the local engine. A server
that ignores the request's ``dimensions`` and answers wider rows has them cut the same way
(:func:`~smysl.providers.rows.check_rows`).
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, Progress, positive_int
from smysl.pooling import check_dimensions
from smysl.prompts import DEFAULT_TASK
from smysl.providers.config import ProviderConfig, embedding_base_url
from smysl.providers.dispatch import BatchLimit, CallLimit, run_batches
from smysl.providers.errors import (
    BilledAnswerError,
    IncompleteEmbeddingError,
    InputRefusedError,
    InvalidRowError,
    PartialEmbeddingError,
    PayloadTooLargeError,
    ProviderError,
    ProviderHTTPError,
    RejectedInputError,
)
from smysl.providers.pricing import price_for, request_price_for
from smysl.providers.resume import ResumeStore
from smysl.providers.retry import Deadline, RetryingClient
from smysl.providers.rows import check_rows
from smysl.providers.tokens import (
    TOKENIZER_ENV,
    env_tokenizer_file,
    find_tokenizer,
    fit_texts,
    is_qwen3_embedding,
    width_from_name,
)
from smysl.providers.usage import Usage, reported_count
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.shown import shown_url
from smysl.tokenize import TextTokens, Tokenizer

log = logging.getLogger("smysl.providers")

#: vLLM's 400 to ``dimensions`` for a model its config does not mark Matryoshka (Qwen3-Embedding
#: unless started with ``--hf-overrides '{"is_matryoshka": true}'``; QwenLM/Qwen3-Embedding#140).
_REFUSES_DIMENSIONS = re.compile(r"does not support matryoshka", re.IGNORECASE)


class Provider(BaseEmbedder):
    """A remote embedding API. Subclasses implement :meth:`request_body` and
    :meth:`parse_response`; requests, limits, retries and usage are handled here.

    Thread-safe: one object may serve many threads (``smysl serve`` fronting a provider); the
    HTTP client pools connections and usage totals are locked.
    """

    #: Keyword options the subclass's constructor takes besides :class:`Provider`'s.
    OPTIONS: frozenset[str] = frozenset()
    remote = True
    #: Whether :meth:`request_body` carries ``truncate`` (TEI, Ollama, smysl); elsewhere
    #: ``truncate=True`` cuts only where a tokenizer is at hand (:meth:`_fit_lengths`).
    SENDS_TRUNCATE = False

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
        # the environment read as connect() reads it (OLLAMA_HOST=0.0.0.0 was a base URL)
        base = config.env_base_url()
        self.base_url = (embedding_base_url(config.name, base,
                                            secure=config.base_url.startswith("https://"),
                                            what=f"${config.base_url_env}") if base
                         else config.base_url.rstrip("/"))
        api_key = config.api_key(api_key)
        #: Width requested from the server (sent as ``dimensions`` when supported).
        self.request_dimensions = positive_int(dimensions)
        if dimensions is not None and self.request_dimensions is None:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
        named = width_from_name(model) if config.width_from_name else None
        #: The model's own width where known without a request (its name, the preset's table).
        self._model_width = named or config.width_of(model) or self.default_width()
        if self.request_dimensions is not None and self._model_width is not None:
            # refused here, not billed first (5000 was sent and paid for)
            check_dimensions(self.request_dimensions, self._model_width)
        #: Whether requests ask the server for that width: then rows all wider than it come
        #: from a server that ignored it, and their Matryoshka prefix is what was asked for.
        #: Where nothing is sent (TEI), wider rows are no such prefix: an error.
        self.sends_dimensions = (self.request_dimensions is not None
                                 and config.supports_dimensions)
        #: False once the server refused ``dimensions`` (vLLM without Matryoshka): full rows
        #: are asked for and cut here.
        self._server_cuts = True
        self._cuts_lock = threading.Lock()
        self._width: int | None = self.request_dimensions or named or self.default_width()
        if tokenizer is None:
            env_tokenizer_file()  # a $SMYSL_TOKENIZER naming nothing: refused here, not per call
        self._tokenizer_arg = tokenizer
        self._tokenizer: Tokenizer | None = tokenizer if isinstance(tokenizer, Tokenizer) else None
        self._tokenizer_resolved = self._tokenizer is not None
        #: Batch size learned from 413 answers (servers whose limit is below the config's).
        self._batch_limit = BatchLimit(config.max_batch_texts)
        #: Rows of calls that failed part-way, for the next call to resume from.
        self._resume = ResumeStore(int(config.resume_cache_mb * (1 << 20)))
        self._width_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        #: Sleep function between retries (tests record instead of sleeping).
        self.sleep: Callable[[float], None] = time.sleep
        price, per_request = config.price_per_mtok, config.price_per_request
        self.usage = Usage(
            config.name, model,
            price if price is not None else price_for(config.name, model, self.base_url),
            per_request if per_request is not None else request_price_for(config.name, model))
        self._http = RetryingClient(config, name=self.name, model=model, base_url=self.base_url,
                                    api_key=api_key, usage=self.usage, transport=transport,
                                    seed=seed, probe=self._probe)
        if tokenizer is not None or os.environ.get(TOKENIZER_ENV):
            # A tokenizer named explicitly is local and cheap: load it now so that length checks
            # and request-size estimates use exact counts from the first call.
            _ = self.tokenizer

    # ---------------------------------------------------------------- what a subclass writes
    @abc.abstractmethod
    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        """JSON body embedding ``texts`` (already formatted: instructions applied)."""

    @abc.abstractmethod
    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], Any]:
        """Rows (in request order) and the token count the provider reports (None if none; a
        value that is no count is taken as none: :func:`~smysl.providers.usage.reported_count`).

        Raise ``ValueError``/``KeyError``/``TypeError`` on an unexpected shape.
        """

    def default_width(self) -> int | None:
        """Output width when neither the model name nor an option gives it (None: probe)."""
        return None

    # ---------------------------------------------------------------- attributes
    @property
    def healthy(self) -> bool:
        """False while the upstream does not answer: after two attempts in a row timed out or
        failed to connect, until any HTTP answer (a request, or a background probe: one short
        text, billed like any request, after 5 s, then up to every 60 s). Cheap and
        non-blocking; ``smysl serve``'s ``/health`` reports it."""
        return self._http.healthy

    @property
    def dimensions(self) -> int:
        """Width of the rows this provider returns (probed with one request if unknown)."""
        if self._width is not None:
            return self._width
        return self._probe_width(Deadline(self.config.job_timeout, self.name))

    @dimensions.setter
    def dimensions(self, value: int) -> None:
        self._width = int(value)

    def _probe_width(self, deadline: Deadline) -> int:
        """:attr:`dimensions`, a probe bounded by ``deadline`` (an ``embed`` call's own)."""
        if self._width is None:
            with self._width_lock:
                if self._width is None:
                    # One real (billed) request for a one-token text; its usage is recorded.
                    self._width = int(self._request(["dimension probe"], truncate=True,
                                                    deadline=deadline).shape[1])
        return self._width

    def known_dimensions(self) -> int | None:
        """The width if known without a request: given, read off the model name, or probed."""
        return self._width

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

    def text_tokens(self) -> TextTokens | None:
        """The Qwen3 tokenizer's offsets and counts where one is found, else None."""
        tok = self.tokenizer
        return None if tok is None else tok.text_tokens()

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
        deadline = Deadline(self.config.job_timeout, self.name)  # the width probe's too
        done = np.zeros(len(texts), dtype=bool)
        try:
            width = self._probe_width(deadline)
        except ProviderError as e:  # nothing embedded: the call fails as any request would
            failure = self._incomplete(e, np.zeros((len(texts), 0), np.float32), done)
            if failure is e:
                raise
            raise failure from e
        out = np.empty((len(texts), width), dtype=np.float32)
        used = self._resume.take(texts, truncate, out, done)  # paid for by a failed call
        if used and progress is not None:
            progress.update(int(done.sum()))
        todo = np.flatnonzero(~done).tolist()
        limit = self._batch_limit.call()
        batches = [[todo[k] for k in b] for b in self._plan([texts[i] for i in todo], limit)]
        error = run_batches(
            batches,
            lambda batch: self._embed_batch(texts, batch, truncate, out, done, deadline, limit),
            workers=min(self.config.max_concurrency, len(batches)),
            thread_name=f"smysl-{self.config.name}", progress=progress)
        limit.finish()
        if error is None:
            self._resume.drop(used)
            return out
        self._resume.keep(texts, truncate, out, done)
        failure = self._incomplete(error, out, done)
        if failure is error:
            raise error
        raise failure from error

    def _incomplete(self, error: BaseException, out: np.ndarray,
                    done: np.ndarray) -> BaseException:
        """The error an ``embed`` call raises when ``error`` stopped it; finished rows ride
        along (and are kept for a resume)."""
        if isinstance(error, ProviderHTTPError) and error.status in (401, 403, 404):
            return error  # a bad key or an unknown model fails every input alike
        failed, got = np.flatnonzero(~done).tolist(), np.flatnonzero(done).tolist()
        # A 413 ends a call only for one input refused on its own (larger batches are split).
        rejected = isinstance(error, ProviderHTTPError) and error.status in (400, 413, 422)
        cls = (RejectedInputError if rejected else PartialEmbeddingError if got
               else IncompleteEmbeddingError)
        kept = (f" (the {len(got)} finished rows are kept: embed the same texts again to send "
                f"only the missing ones)" if got and self._resume.max_bytes else "")
        first = f" (first failed input: #{failed[0]})" if failed else ""
        return cls(f"{self.name}: {len(failed)} of {len(done)} inputs were not embedded"
                   f"{first}: {error}", failed, len(done), error, done=got, rows=out[got],
                   resume=kept)

    def usage_report(self) -> str:
        return str(self.usage)

    def usage_counts(self) -> dict[str, Any]:
        return self.usage.snapshot()

    def close(self) -> None:
        self._http.close()

    def __reduce__(self) -> Any:
        # pickle met the HTTP client's lock: "cannot pickle '_thread.lock' object"
        raise TypeError(f"a client of a remote API ({self.name!r}) cannot be pickled (a worker "
                        "pool, a framework adapter copied to workers): make it in each worker "
                        "with smysl.load(model string)")

    # ---------------------------------------------------------------- internals
    def _fit_lengths(self, texts: list[str], truncate: bool) -> list[str]:
        """Enforce ``max_tokens`` where a tokenizer can: raise, or truncate client-side.

        The tokenizer is looked up on the first call either way: a check that held only once
        some earlier call had fetched it let the same over-long text through before (a server
        that cuts silently, DashScope past 8,192 tokens, then embedded part of it). A limit
        given to a server that truncates by itself (TEI, Ollama, smysl: no limit of their
        own here) is applied here too: the server would cut at its own limit instead."""
        limit = self.max_tokens
        if limit is None:
            return texts
        tok = self.tokenizer
        if tok is None:  # warned once at the lookup; the provider's own limit applies
            return texts
        return fit_texts(texts, tok, limit, truncate=truncate, who=self.name)

    def _estimate(self, texts: list[str]) -> list[int]:
        tok = self._tokenizer if self._tokenizer_resolved else None
        if tok is not None:
            return tok.count(texts)
        # Byte-level BPE never makes more tokens than bytes: a safe bound, plus EOS.
        return [len(t.encode("utf-8")) + 1 for t in texts]

    def _plan(self, texts: list[str], limit: CallLimit) -> list[list[int]]:
        """Consecutive batches within the per-request text and token limits."""
        cfg = self.config
        sizes = self._estimate(texts) if cfg.max_batch_tokens else [0] * len(texts)
        return plan_batches(sizes, SchedulerConfig(
            max_batch_tokens=cfg.max_batch_tokens, by_length=False,
            max_batch_size=min(cfg.max_batch_texts, limit.size)))

    def _embed_batch(self, texts: list[str], batch: list[int], truncate: bool,
                     out: np.ndarray, done: np.ndarray, deadline: Deadline,
                     limit: CallLimit) -> None:
        deadline.check()
        cap = limit.size
        if len(batch) > cap:  # a 413 taught a smaller size since this batch was planned
            for k in range(0, len(batch), cap):
                self._embed_batch(texts, batch[k:k + cap], truncate, out, done, deadline, limit)
            return
        try:
            rows = self._request([texts[i] for i in batch], truncate=truncate, positions=batch,
                                 deadline=deadline)
        except PayloadTooLargeError as e:
            limit.refused(len(batch))
            if len(batch) == 1:
                raise self._input_too_large(batch[0], e) from e
            # The server's limit may be below this batch, or one input in it too large: halve
            # the size for this batch, its retries and the call's later batches (issue 11 9a).
            self._embed_batch(texts, batch, truncate, out, done, deadline, limit)
            return
        except ProviderHTTPError as e:
            if e.status not in (400, 422):
                raise
            if len(batch) == 1:
                raise self._input_refused(batch[0], e, truncate) from e
            # Which input was refused? The answer seldom says (one message for the batch), and
            # the error named the batch's first. Halves find it: a refusal is not billed, and
            # the inputs a half embeds are ones the call needs (a request's token cap is
            # passed so too). An error of the request's, not of an input, stops at the first
            # input after log2(batch) + 1 refusals.
            half = len(batch) // 2
            self._embed_batch(texts, batch[:half], truncate, out, done, deadline, limit)
            self._embed_batch(texts, batch[half:], truncate, out, done, deadline, limit)
            return
        limit.passed(len(batch))
        out[batch] = rows
        done[batch] = True

    def _input_too_large(self, position: int, error: PayloadTooLargeError) -> InputRefusedError:
        """The error for input ``position`` answered 413 in a request of its own: the input is
        what the server refuses (TEI: longer than its limit, without truncation), not a batch
        size, so it is a rejected input (:meth:`_incomplete`), not retried or split further."""
        return InputRefusedError(
            f"{self.name}: input #{position} was refused on its own as too large (413): the "
            f"input itself exceeds what the server takes: "
            f"{error.body.strip()[:300]}",  # redacted by the client already
            error.status, error.body, position)

    def _input_refused(self, position: int, error: ProviderHTTPError,
                       truncate: bool = False) -> InputRefusedError:
        """The error for input ``position`` refused (400/422) in a request of its own; where
        ``truncate`` was asked and could reach neither the API nor a tokenizer, it says so (a
        review's: "send truncate: true", to a caller who had)."""
        said = str(error).removeprefix(f"{self.name}: ")  # "HTTP 400: its answer"
        lacking = []
        if truncate and not self.SENDS_TRUNCATE:  # _fit_lengths cuts with both, or neither
            if self.max_tokens is None:
                lacking.append("the model's token limit is not known here (pass max_tokens=N)")
            # looked up by _fit_lengths only where there is a limit: not looked up here
            if (self._tokenizer_resolved and self._tokenizer is None) or \
                    (not self._tokenizer_resolved and self._tokenizer_arg is None):
                lacking.append("no Qwen3 tokenizer is at hand to cut inputs (pass "
                               "tokenizer=PATH or set $SMYSL_TOKENIZER)")
        unmet = (f" (truncate=True could not be applied: this API takes no truncate flag, "
                 f"{' and '.join(lacking)}; a smysl server: the smysl: scheme sends the flag)"
                 if lacking else "")
        return InputRefusedError(f"{self.name}: input #{position}, sent alone, was refused: "
                                 f"{said}{unmet}", error.status, error.body, position)

    def _probe(self) -> None:
        """Whether a down upstream is back: one short text, one timeout (usage records it)."""
        self._request(["health probe"], truncate=True,
                      deadline=Deadline(self.config.timeout, self.name))

    def _record(self, chunk: list[str], reported: int | None) -> None:
        """Usage of one billed answer for ``chunk``: the provider's count, else a local one."""
        counted = estimated = None
        if reported is None:
            tok = self.tokenizer
            if tok is not None:
                counted = sum(tok.count(chunk))
            else:
                estimated = sum(self._estimate(chunk))
        self.usage.record(texts=len(chunk), reported=reported, counted=counted,
                          estimated=estimated)

    def sent_dimensions(self) -> int | None:
        """The ``dimensions`` a request carries (None: none): the caller's width, or the API's
        next accepted step above it (:attr:`ProviderConfig.dimension_steps`); the rows then
        come wider and are cut here, the same Matryoshka prefix re-normalised. None where the
        API takes none, or the server refused it."""
        if not self.sends_dimensions or not self._server_cuts or self.request_dimensions is None:
            return None
        # the API's steps up to the model's width; none that fits: the width as asked (a 400
        # of the server's own, unbilled, rather than full rows paid for)
        top = self._model_width or max(self.config.dimension_steps, default=0)
        low = max(self.request_dimensions, self.config.min_step_of(self.model))
        return min((s for s in self.config.dimension_steps if low <= s <= top),
                   default=self.request_dimensions)

    def _request(self, texts: list[str], *, truncate: bool, positions: list[int] | None = None,
                 deadline: Deadline | None = None) -> np.ndarray:
        """POST one batch; retry what is worth retrying; return validated rows (every billed
        answer's usage recorded). ``positions`` (the texts' places in the call) only word row
        errors."""
        def post() -> np.ndarray:
            return self._http.post(self.request_body(texts, truncate=truncate), len(texts),
                                   read=lambda b, n: self._read(b, texts, positions),
                                   sleep=self.sleep, deadline=deadline)

        asked = self.sent_dimensions()
        try:
            return post()
        except ProviderHTTPError as e:
            # only for a Qwen3-Embedding, which is Matryoshka whatever the server's config
            # says: for another model the refusal stands (cut rows would be poor vectors)
            if not (asked is not None and e.status == 400 and is_qwen3_embedding(self.model)
                    and _REFUSES_DIMENSIONS.search(e.body)):
                raise
            # no fault of the inputs (it was "3 of 3 inputs were not embedded"): full rows,
            # cut here, are the prefix the server would have given
            with self._cuts_lock:
                first, self._server_cuts = self._server_cuts, False
            if first:
                log.warning("%s: the server takes no dimensions for this model (vLLM: start "
                            "it with --hf-overrides '{\"is_matryoshka\": true}'); asking for "
                            "full rows and cutting them to %d here", self.name, asked)
            return post()

    def _read(self, body: Any, texts: list[str],
              positions: list[int] | None = None) -> np.ndarray:
        """Rows of an answer for ``texts``. Its usage is recorded before the rows are checked:
        an answer whose rows are refused (and the request retried) was billed all the same."""
        try:
            rows, tokens = self.parse_response(body, len(texts))
        except BilledAnswerError as e:
            self._record(texts, reported_count(e.tokens))
            raise
        self._record(texts, reported_count(tokens))
        return self._check(rows, len(texts), positions)

    def _check(self, rows: Sequence[Any], n: int, positions: list[int] | None) -> np.ndarray:
        """``n`` rows as float32 at this provider's width (:func:`check_rows`); a row's words
        quote its values, without this client's secrets."""
        try:
            return check_rows(rows, n, width=self._width, name=self.name,
                              min_width=self.min_dimensions,
                              asked=self.sends_dimensions, positions=positions)
        except InvalidRowError as e:
            e.args = (self._http.shown(str(e)),)
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, base_url={shown_url(self.base_url)!r})"

