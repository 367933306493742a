"""Remote rerankers behind :class:`~smysl.rerank.BaseReranker`: SiliconFlow, DeepInfra, DashScope,
Cohere (and any Cohere/Jina-compatible ``/rerank`` URL), Jina AI, TEI and another smysl.

Model strings (``smysl.load_reranker``; the registry's :data:`~smysl.registry.RERANK_SCHEMES`
point at the ``load_<scheme>`` factories below)::

    siliconflow:BAAI/bge-reranker-v2-m3          siliconflow:Qwen/Qwen3-Reranker-8B
    deepinfra:Qwen/Qwen3-Reranker-8B
    dashscope:qwen3-rerank                       dashscope:gte-rerank-v2
    cohere:rerank-v3.5                           cohere:http://gpu-box:8000/v1#BAAI/bge-reranker-v2-m3
    jina:jina-reranker-v2-base-multilingual
    tei:http://gpu-box:8080
    smysl:http://gpu-box:8000                    smysl:http://gpu-box:8000#Qwen/Qwen3-Reranker-0.6B

``scheme:URL#MODEL`` overrides the base URL as for the embedding providers
(:func:`smysl.providers.connect`); keyword options are any
:class:`~smysl.providers.config.ProviderConfig` field plus ``api_key``, ``base_url``, ``name``,
``tokenizer``, ``price_per_search_unit``, ``transport`` and ``seed``.

A backend says only how one request looks and how its answer is read; the rest is the embedding
providers' machinery, reused: :class:`~smysl.providers.retry.RetryingClient` (retries with
backoff and ``Retry-After``, wall-clock request timeouts, a per-call deadline, upstream health),
:func:`~smysl.providers.dispatch.run_batches` (requests in parallel), the token-budget planner
(:func:`~smysl.scheduler.plan_batches`) and :class:`~smysl.providers.usage.Usage`. Every request
asks for the scores of all its documents (``top_n`` = its document count where the API has
``top_n``), lists longer than an API's documented maximum are split into consecutive requests
sent concurrently, and the answer is checked strictly: every document's index exactly once and a
finite score, else :class:`~smysl.providers.errors.MalformedResponseError` naming the provider.
Scores come back in input order; ordering, ``top_n`` and input checks are
:class:`~smysl.rerank.BaseReranker`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from smysl.options import ModelOptions
from smysl.prompts import expand_preset
from smysl.providers.config import ProviderConfig, on_path, url_and_model, with_scheme
from smysl.providers.dispatch import BatchLimit, CallLimit, run_batches
from smysl.providers.errors import (
    MalformedResponseError,
    PayloadTooLargeError,
    ProviderHTTPError,
    RetriesExhaustedError,
)
from smysl.providers.presets import config_options
from smysl.providers.pricing import rerank_price_for, rerank_search_unit_price_for
from smysl.providers.retry import Deadline, RetryingClient
from smysl.providers.tokens import env_tokenizer, find_tokenizer
from smysl.providers.usage import Usage, count_of, reported_count
from smysl.rerank import BaseReranker
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.shown import shown_url
from smysl.tokenize import Tokenizer

# ----------------------------------------------------------------------------- errors, usage


class RejectedRerankError(ProviderHTTPError, ValueError):
    """The API rejected a rerank request's inputs (400 or 422, or 413 for a single document): a
    document too long (without ``truncate``), too many of them, an empty one, an unknown
    parameter. Not retried; a ``ValueError`` like the local engine's input errors."""


@dataclass
class RerankUsage(Usage):
    """:class:`~smysl.providers.usage.Usage` for a reranker: ``texts`` counts documents,
    ``tokens`` what the API reported, and Cohere-style APIs add ``search_units`` (priced per
    unit). ``str()`` is the one-line report of :meth:`RemoteReranker.usage_report`."""

    price_per_search_unit: float | None = None
    search_units: int = 0
    #: Answered requests whose body reported a token count.
    token_reports: int = 0

    @property
    def cost(self) -> float | None:
        """USD spent so far, or None when no price is known."""
        if self.price_per_mtok is None and self.price_per_request is None \
                and self.price_per_search_unit is None:
            return None
        return (self.tokens * (self.price_per_mtok or 0.0) / 1_000_000
                + self.requests * (self.price_per_request or 0.0)
                + self.search_units * (self.price_per_search_unit or 0.0))

    def record_rerank(self, *, documents: int, tokens: int | None,
                      search_units: int | None) -> None:
        """One answered request: its documents and what its body reported."""
        with self._lock:
            self.texts += documents
            self.requests += 1
            if tokens is not None:
                self.reported_tokens += tokens
                self.tokens += tokens
                self.token_reports += 1
            if search_units is not None:
                self.search_units += search_units

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.search_units = self.token_reports = 0

    def __str__(self) -> str:
        s = self.snapshot()
        parts = [f"{count_of(s['tokens'], 'token')} (provider-reported)" if s["token_reports"]
                 else "tokens not reported"]
        if s["search_units"] or self.price_per_search_unit is not None:
            parts.append(count_of(s["search_units"], "search unit"))
        parts += [count_of(s["texts"], "document"), count_of(s["requests"], "request"),
                  count_of(s["retries"], "retry", "retries")]
        if s["failed_requests"]:
            parts.append(f"{s['failed_requests']} failed")
        rates = [f"${p:g}/{unit}" for p, unit in ((self.price_per_mtok, "1M tokens"),
                                                  (self.price_per_request, "request"),
                                                  (self.price_per_search_unit, "search unit"))
                 if p is not None]
        parts.append(f"${s['cost']:.6f} at {' + '.join(rates)}" if s["cost"] is not None
                     else "cost unknown (no price)")
        return f"{self.provider}:{self.model}: " + ", ".join(parts)


@dataclass
class _CallDeadline(Deadline):
    """``job_timeout`` for one rerank call (the embedding one's message speaks of rows)."""

    call: ClassVar[str] = "rerank"
    kept: ClassVar[str] = ""


# ----------------------------------------------------------------------------- checks


def _finite(value: Any, who: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise MalformedResponseError(f"{who}: malformed response: {what} is {value!r}, not a "
                                     "finite number")
    return float(value)


def scores_from_results(results: Any, n: int, who: str, *,
                        score_key: str = "relevance_score") -> np.ndarray:
    """Scores in input order from ``[{"index", score_key}, ...]`` (any order): every index of
    ``0..n-1`` exactly once with a finite number, else :class:`MalformedResponseError`."""
    if not isinstance(results, list):
        raise MalformedResponseError(f"{who}: malformed response: the results are "
                                     f"{type(results).__name__}, not a list")
    out = np.full(n, np.nan)
    seen = np.zeros(n, dtype=bool)
    for k, item in enumerate(results):
        if not isinstance(item, dict):
            raise MalformedResponseError(f"{who}: malformed response: result {k} is "
                                         f"{type(item).__name__}, not an object")
        idx = item.get("index")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n:
            raise MalformedResponseError(f"{who}: malformed response: result {k} has index "
                                         f"{idx!r}, not one of 0..{n - 1}")
        if seen[idx]:
            raise MalformedResponseError(f"{who}: malformed response: index {idx} appears "
                                         "twice")
        out[idx] = _finite(item.get(score_key), who, f"the {score_key} of document {idx}")
        seen[idx] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise MalformedResponseError(
            f"{who}: malformed response: {len(missing)} of the {n} documents asked for have no "
            f"score (first: document {int(missing[0])} of the request)")
    return out


class Ranking(NamedTuple):
    """What orders documents whose scores tie (a Qwen3-Reranker's P("yes") is 1.0 for every
    confident document), in input order; a ``parse_response`` may return it fourth."""

    #: Finer scores that rank as the server ranked (smysl's ``raw_score``: the logit
    #: difference), None when the answer has none.
    keys: np.ndarray | None
    #: Each document's place in its answer, best first (None: the answer is in input order).
    places: np.ndarray | None


def ranking_from_results(results: list[Any], n: int, who: str, *,
                         key: str | None = None) -> Ranking:
    """The :class:`Ranking` of results already checked by :func:`scores_from_results`: their
    places, and ``key``'s finite values when every result has one."""
    places = np.zeros(n, dtype=np.int64)
    keys = np.zeros(n) if key is not None else None
    for k, item in enumerate(results):
        places[item["index"]] = k
        if keys is not None:
            if item.get(key) is None:
                keys = None
            else:
                keys[item["index"]] = _finite(item[key], who, f"the {key} of document "
                                                               f"{item['index']}")
    return Ranking(keys, places)


def scores_from_list(scores: Any, n: int, who: str) -> np.ndarray:
    """Scores given as a bare list in input order (DeepInfra): ``n`` finite numbers."""
    if not isinstance(scores, list):
        raise MalformedResponseError(f"{who}: malformed response: the scores are "
                                     f"{type(scores).__name__}, not a list")
    if len(scores) != n:
        raise MalformedResponseError(f"{who}: malformed response: {len(scores)} scores for "
                                     f"{n} documents")
    return np.array([_finite(s, who, f"the score of document {i}")
                     for i, s in enumerate(scores)], dtype=np.float64)


def _dig(body: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _first_count(body: Any, *paths: tuple[str, ...]) -> int | None:
    for path in paths:
        found = reported_count(_dig(body, *path))
        if found is not None:
            return found
    return None


def _byte_bound(texts: Sequence[str]) -> list[int]:
    # Byte-level BPE never makes more tokens than bytes: a safe bound, plus one.
    return [len(t.encode("utf-8")) + 1 for t in texts]


# ----------------------------------------------------------------------------- the base


class RemoteReranker(BaseReranker):
    """A reranking API. Subclasses implement :meth:`request_body` and :meth:`parse_response`;
    splitting, concurrency, retries, deadlines, validation and usage are handled here.

    Thread-safe like the embedding providers: a pooled HTTP client, locked usage totals.
    """

    #: Where an answer reports its tokens, first found first (:meth:`billed`).
    TOKEN_PATHS: tuple[tuple[str, ...], ...] = ()
    #: Whether ``meta.billed_units.search_units`` is counted (Cohere bills by it).
    SEARCH_UNITS = False

    #: Whether ``truncate`` reaches the API (TEI's and smysl's flag); where it does not, the
    #: API's own rule for long documents applies, and a refusal says so.
    SENDS_TRUNCATE = False
    #: Keyword options the subclass's constructor takes besides :class:`RemoteReranker`'s.
    OPTIONS: frozenset[str] = frozenset()
    remote = True
    #: What the server's prompt adds to each (query, document) pair, for request-size estimates:
    #: (tokens, UTF-8 bytes); the second is used without a tokenizer.
    PAIR_OVERHEAD: tuple[int, int] = (0, 0)

    def __init__(self, model: str, config: ProviderConfig, *, api_key: str | None = None,
                 name: str | None = None, tokenizer: str | os.PathLike[str] | Tokenizer | None
                 = None, price_per_search_unit: float | None = None, priced: bool = True,
                 transport: Any = None, seed: int | None = None) -> None:
        try:  # checked first so that a missing extra is the error a user sees
            import httpx  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("remote rerankers need httpx: pip install 'smysl[providers]'") \
                from e
        self.model = model
        self.config = config
        # the environment read as connect_reranker() reads it (SMYSL_URL was ignored here)
        env = config.env_base_url()
        self.base_url = (_root(config.name, env, f"${config.base_url_env}") if env
                         else config.base_url.rstrip("/"))
        self.name = name or f"{config.name}:{model or shown_url(self.base_url)}"
        self.backend = config.name
        self.max_tokens = config.max_tokens
        api_key = config.api_key(api_key)
        if price_per_search_unit is not None and price_per_search_unit < 0:
            raise ValueError("price_per_search_unit must be >= 0")
        self._tokenizer = _pick_tokenizer(tokenizer)
        #: Documents per request learned from 413 answers (servers below the config's limit).
        self._batch_limit = BatchLimit(config.max_batch_texts)
        #: Sleep function between retries (tests record instead of sleeping).
        self.sleep: Callable[[float], None] = time.sleep
        per_mtok = config.price_per_mtok
        if per_mtok is None and priced:
            per_mtok = rerank_price_for(config.name, model)
        per_unit = price_per_search_unit
        if per_unit is None and priced:
            per_unit = rerank_search_unit_price_for(config.name, model)
        self.usage = RerankUsage(config.name, model or self.base_url, per_mtok,
                                 config.price_per_request, price_per_search_unit=per_unit)
        self._http = RetryingClient(config, name=self.name, model=model, base_url=self.base_url,
                                    api_key=api_key, usage=self.usage, transport=transport,
                                    seed=seed, probe=self._probe)

    # ---------------------------------------------------------------- what a subclass writes
    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        """JSON body scoring every one of ``documents`` against ``query``."""
        raise NotImplementedError

    def parse_response(self, body: Any, n: int) -> tuple[Any, ...]:
        """Scores of the ``n`` documents in request order (checked: see
        :func:`scores_from_results`), tokens and search units reported (None: not reported),
        and optionally fourth the :class:`Ranking` that breaks ties among equal scores (an
        answer best first: :func:`ranking_from_results`).
        ``KeyError``/``TypeError``/``ValueError`` on an unexpected shape."""
        raise NotImplementedError

    # ---------------------------------------------------------------- attributes
    @property
    def healthy(self) -> bool:
        """False while the upstream does not answer (see ``Provider.healthy``)."""
        return self._http.healthy

    def usage_report(self) -> str:
        return str(self.usage)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, base_url={shown_url(self.base_url)!r})"

    # ---------------------------------------------------------------- BaseReranker
    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        return self._scores_and_keys(query, documents, instruction=instruction,
                                     truncate=truncate)[0]

    def _scores_and_keys(self, query: str, documents: list[str], *, instruction: str | None,
                         truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        """Scores, and keys that rank as the server did: its finer keys where every answer had
        them, else the scores; ties broken by each answer's order (a server ranking by keys
        it does not send, as a smysl server does, kept its order where its scores tie)."""
        instruction = expand_preset(instruction)  # as the local reranker reads it
        cfg = self.config
        sizes = (self._sizes(query, documents, instruction) if cfg.max_batch_tokens
                 else [0] * len(documents))
        limit = self._batch_limit.call()
        batches = plan_batches(sizes, SchedulerConfig(
            max_batch_tokens=cfg.max_batch_tokens, by_length=False,
            max_batch_size=min(cfg.max_batch_texts, limit.size)))
        out = np.full(len(documents), np.nan)
        keys = np.full(len(documents), np.nan)  # NaN where an answer had none
        places = np.zeros(len(documents), dtype=np.int64)
        # a place counts within its own answer: ties across requests go by the request's
        # first document (they went by those places, out of input order past one request)
        origin = np.zeros(len(documents), dtype=np.int64)
        deadline = _CallDeadline(cfg.job_timeout, self.name)
        error = run_batches(
            batches, lambda batch: self._send(query, documents, batch, instruction, truncate,
                                              (out, keys, places, origin), deadline, limit),
            workers=min(cfg.max_concurrency, len(batches)),
            thread_name=f"smysl-rerank-{cfg.name}")
        limit.finish()
        if error is None:
            primary = keys if not np.isnan(keys).any() else out
            # best first; ties: input order of the requests, then each answer's order
            ranked = np.lexsort((places, origin, -primary))
            rank_keys = np.empty(len(documents))
            rank_keys[ranked] = -np.arange(len(documents), dtype=np.float64)
            return out, rank_keys
        if isinstance(error, RetriesExhaustedError) and \
                isinstance(error.__cause__, MalformedResponseError):
            # Every try answered a malformed body: say so in the type, not only the text.
            raise MalformedResponseError(str(error)) from error
        raise error

    # ---------------------------------------------------------------- internals
    def _sizes(self, query: str, documents: list[str], instruction: str | None) -> list[int]:
        """Estimated tokens each document's pair adds to a request (exact counts with the
        tokenizer, else a UTF-8 byte bound)."""
        tok = self._tokenizer
        count: Callable[[Sequence[str]], list[int]] = tok.count if tok is not None \
            else _byte_bound
        fixed = (count([query])[0] + (count([instruction])[0] if instruction else 0)
                 + self.PAIR_OVERHEAD[0 if tok is not None else 1])
        return [fixed + d for d in count(documents)]

    def _send(self, query: str, documents: list[str], batch: list[int],
              instruction: str | None, truncate: bool,
              out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
              deadline: Deadline, limit: CallLimit) -> None:
        """Scores of ``batch`` into ``out`` (scores, keys, places in the answer, the first
        document of the request that answered: a batch a 413 split is several)."""
        deadline.check()
        cap = limit.size
        if len(batch) > cap:  # a 413 taught a smaller size since this batch was planned
            for k in range(0, len(batch), cap):
                self._send(query, documents, batch[k:k + cap], instruction, truncate, out,
                           deadline, limit)
            return
        chunk = [documents[i] for i in batch]
        try:
            scores, ranking = self._request(
                query, chunk, instruction=instruction, truncate=truncate, deadline=deadline)
        except PayloadTooLargeError as e:
            limit.refused(len(batch))  # for this batch, its retries and the call's later ones
            if len(batch) == 1:
                raise RejectedRerankError(f"{self.name}: document {batch[0]} was refused as too "
                                          f"large (413): {e}", e.status, e.body) from e
            self._send(query, documents, batch, instruction, truncate, out, deadline, limit)
            return
        except ProviderHTTPError as e:
            if e.status in (400, 422):
                first = f"document {batch[0]}" if len(batch) == 1 else \
                    f"documents {batch[0]}..{batch[-1]}"
                # neutral words: a server's Cohere route asks for truncation by default,
                # and its clients never did (they read "truncation was asked for")
                unsent = (" (this API takes no truncate flag: long documents are cut, or "
                          "refused, by its own length limit)"
                          if truncate and not self.SENDS_TRUNCATE else "")
                raise RejectedRerankError(f"{self.name}: the API rejected the request for "
                                          f"{first}: {e}{unsent}", e.status, e.body) from e
            raise
        limit.passed(len(batch))
        scored, keys, places, origin = out
        scored[batch] = scores
        origin[batch] = batch[0]
        if ranking.keys is not None:
            keys[batch] = ranking.keys
        if ranking.places is not None:
            places[batch] = ranking.places

    def _request(self, query: str, documents: list[str], *, instruction: str | None,
                 truncate: bool, deadline: Deadline | None = None
                 ) -> tuple[np.ndarray, Ranking]:
        body = self.request_body(query, documents, instruction=instruction, truncate=truncate)
        return self._http.post(body, len(documents), read=self._read, sleep=self.sleep,
                               deadline=deadline)

    def _read(self, body: Any, n: int) -> tuple[np.ndarray, Ranking]:
        """Scores and ranking of an answer for ``n`` documents. Its usage is recorded also
        when it is refused (and the request retried): the provider billed it all the same."""
        try:
            parsed = self.parse_response(body, n)
            scores, tokens, units = parsed[:3]
            if scores.shape != (n,):  # parse_response's helpers check this; a subclass may not
                raise MalformedResponseError(f"{self.name}: malformed response: "
                                             f"{scores.shape} scores for {n} documents")
        except (MalformedResponseError, ValueError, KeyError, TypeError, IndexError):
            tokens, units = self.billed(body)
            self.usage.record_rerank(documents=n, tokens=tokens, search_units=units)
            raise
        self.usage.record_rerank(documents=n, tokens=reported_count(tokens),
                                 search_units=reported_count(units))
        return scores, parsed[3] if len(parsed) > 3 else Ranking(None, None)

    def billed(self, body: Any) -> tuple[int | None, int | None]:
        """Tokens and search units an answer reports (None: not reported), read where this API
        puts them: the one reading of a good answer's and of one whose scores are refused."""
        return (_first_count(body, *self.TOKEN_PATHS),
                _first_count(body, ("meta", "billed_units", "search_units"))
                if self.SEARCH_UNITS else None)

    def _probe(self) -> None:
        """Whether a down upstream is back: one short pair, one timeout (usage records it)."""
        self._request("health probe", ["health probe"], instruction=None, truncate=True,
                      deadline=_CallDeadline(self.config.timeout, self.name))


def _pick_tokenizer(arg: str | os.PathLike[str] | Tokenizer | None) -> Tokenizer | None:
    """The tokenizer named by ``tokenizer=`` or ``$SMYSL_TOKENIZER``; none is looked up
    otherwise (request sizes are then bounded by UTF-8 bytes)."""
    if isinstance(arg, Tokenizer):
        return arg
    if arg is not None:
        return find_tokenizer(arg)
    return env_tokenizer()


# ----------------------------------------------------------------------------- the APIs


class CohereReranker(RemoteReranker):
    """Cohere ``POST /v2/rerank`` and any Cohere/Jina-compatible ``/rerank`` URL (vLLM, Infinity,
    LocalAI, LiteLLM...).

    Request ``{"model", "query", "documents": [str], "top_n"}``; answer
    ``{"results": [{"index", "relevance_score"}], "meta": {"billed_units": {"search_units"}}}``
    (docs.cohere.com/reference/rerank). Cohere truncates long documents itself
    (``max_tokens_per_doc``, 4,096 by default) and takes no instruction. At most 10,000
    documents per request, 1,000 recommended (docs.cohere.com/v2/docs/reranking-best-practices):
    requests carry at most 1,000.
    """

    SEARCH_UNITS = True
    TOKEN_PATHS = (("usage", "total_tokens"), ("usage", "prompt_tokens"),
                   ("tokens", "input_tokens"), ("meta", "tokens", "input_tokens"))
    #: Whether the body carries ``return_documents: false`` (APIs whose default is true).
    NO_DOCUMENTS = False

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "documents": documents,
                                "top_n": len(documents)}
        if self.model:
            body["model"] = self.model
        if self.NO_DOCUMENTS:
            body["return_documents"] = False
        return body

    #: A result field with finer scores than ``relevance_score`` (smysl's ``raw_score``).
    KEY_FIELD: str | None = None

    def parse_response(self, body: Any, n: int) -> tuple[Any, ...]:
        scores = scores_from_results(body["results"], n, self.name)
        tokens, units = self.billed(body)
        return scores, tokens, units, ranking_from_results(body["results"], n, self.name,
                                                           key=self.KEY_FIELD)


class JinaReranker(CohereReranker):
    """Jina AI ``POST https://api.jina.ai/v1/rerank`` (jina.ai/reranker): Cohere's shape,
    ``usage.total_tokens``; ``return_documents`` defaults to true there, so false is sent. No
    per-request document maximum is documented: requests carry at most 256 (``max_batch_texts``;
    a 413 halves it). Long documents are truncated server-side; no instruction."""

    SEARCH_UNITS = False
    NO_DOCUMENTS = True


class SiliconFlowReranker(CohereReranker):
    """SiliconFlow ``POST /v1/rerank`` (docs.siliconflow.com/en/api-reference/rerank/create-rerank):
    ``{"model", "query", "documents", "top_n", "return_documents", "instruction"}`` ->
    ``{"results": [{"index", "relevance_score"}], "tokens": {"input_tokens", "output_tokens"}}``.
    ``instruction`` is taken by the Qwen3-Reranker models only (0.6B, 4B, 8B), so only they are
    :attr:`instruction_aware`. Long documents are handled server-side (bge/bce models chunk them,
    ``max_chunks_per_doc``); no truncate flag. No per-request document maximum is documented:
    requests carry at most 256."""

    SEARCH_UNITS = False
    NO_DOCUMENTS = True

    def __init__(self, model: str, config: ProviderConfig, **options: Any) -> None:
        super().__init__(model, config, **options)
        self.instruction_aware = "qwen3-reranker" in model.lower()

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        body = super().request_body(query, documents, instruction=instruction,
                                    truncate=truncate)
        if instruction is not None:
            body["instruction"] = instruction
        return body


class SmyslReranker(CohereReranker):
    """Another ``smysl serve --reranker R``: its Cohere-shaped ``POST /v1/rerank``
    (smysl/server/rerank_routes.py) with smysl's extensions ``instruction`` (the Qwen3-Reranker
    ``<Instruct>`` line) and ``truncate`` (cut an over-long document instead of a 400). Limits
    are within the server's defaults (``max_inputs`` 2,048 documents; 65,536 prompt tokens per
    request, the default ``max_request_tokens`` of servers before 300,000); pass
    ``max_batch_texts=``/``max_batch_tokens=`` for a server started with others."""

    SEARCH_UNITS = False
    SENDS_TRUNCATE = True
    #: The Qwen3-Reranker prompt (system line, tags, empty think block, the default
    #: instruction) is about 75 tokens, about 330 bytes.
    PAIR_OVERHEAD = (100, 400)
    instruction_aware = True
    KEY_FIELD = "raw_score"

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        body = super().request_body(query, documents, instruction=instruction,
                                    truncate=truncate)
        body["truncate"] = truncate
        body["raw_scores"] = True  # each result's raw_score: ties across requests broken
        if instruction is not None:
            body["instruction"] = instruction
        return body


class TEIReranker(RemoteReranker):
    """text-embeddings-inference ``POST /rerank``: ``{"query", "texts", "truncate",
    "truncation_direction", "raw_scores", "return_text"}`` -> ``[{"index", "score"}]`` best first
    (TEI's OpenAPI, mirrored at ai.azure.com/catalog/models/baai-bge-reranker-v2-m3). ``truncate``
    is passed through (TEI refuses an over-long pair with 422 otherwise, 413 before 1.9.0: a
    :class:`RejectedRerankError` either way). TEI's default
    ``--max-client-batch-size`` is 32: requests carry at most 32 texts and a 413 halves that.
    No token usage, no instruction."""

    SENDS_TRUNCATE = True

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        return {"query": query, "texts": documents, "truncate": truncate,
                "truncation_direction": "Right", "raw_scores": False, "return_text": False}

    def parse_response(self, body: Any, n: int) -> tuple[Any, ...]:
        scores = scores_from_results(body, n, self.name, score_key="score")
        return scores, None, None, ranking_from_results(body, n, self.name)


class DeepInfraReranker(RemoteReranker):
    """DeepInfra's inference API for its rerankers (Qwen/Qwen3-Reranker-0.6B, -4B, -8B):
    ``POST https://api.deepinfra.com/v1/inference/{model}`` with ``{"queries", "documents"}``,
    the i-th query paired with the i-th document (so the query is repeated), ->
    ``{"scores": [...], "input_tokens"}`` in input order (deepinfra.com/Qwen/Qwen3-Reranker-8B/api,
    docs.deepinfra.com/apis/reranker). The documented input fields are those two only: no
    instruction, no truncate flag (context 32,768 tokens; longer input is the server's to
    handle). No per-request maximum is documented: requests carry at most 256 documents."""

    TOKEN_PATHS = (("input_tokens",), ("inference_status", "tokens_input"))

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        return {"queries": [query] * len(documents), "documents": documents}

    def parse_response(self, body: Any, n: int) -> tuple[Any, ...]:
        return scores_from_list(body["scores"], n, self.name), *self.billed(body)


#: DashScope paths: qwen3-rerank has the OpenAI-compatible one, the others the native one
#: (alibabacloud.com/help/en/model-studio/text-rerank-api, Jun 2026: "Each model uses a
#: different endpoint").
DASHSCOPE_COMPAT_PATH = "/compatible-api/v1/reranks"
DASHSCOPE_NATIVE_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
#: Documented limits per model: (max documents, max input tokens per request, where a request
#: costs query tokens x documents + document tokens), same page. Unknown models get the
#: smallest.
DASHSCOPE_LIMITS: dict[str, tuple[int, int]] = {
    "qwen3-rerank": (500, 120_000),
    "gte-rerank-v2": (500, 30_000),
    "qwen3-vl-rerank": (100, 120_000),
}
#: Models served in the China (Beijing) region only (same page).
_DASHSCOPE_BEIJING = {"gte-rerank-v2", "qwen3-vl-rerank"}
_DASHSCOPE_INTL = "https://dashscope-intl.aliyuncs.com"
_DASHSCOPE_CN = "https://dashscope.aliyuncs.com"


class DashScopeReranker(RemoteReranker):
    """Alibaba Model Studio text rerank (alibabacloud.com/help/en/model-studio/text-rerank-api).

    ``qwen3-rerank``: ``POST /compatible-api/v1/reranks`` with ``{"model", "query", "documents",
    "top_n", "instruct"}`` -> ``{"results": [{"index", "relevance_score"}], "usage":
    {"total_tokens"}}`` (docs.qwencloud.com/api-reference/rerank/openai-rerank); it takes an
    instruction. ``gte-rerank-v2`` and others: ``POST
    /api/v1/services/rerank/text-rerank/text-rerank`` with ``{"model", "input": {"query",
    "documents"}, "parameters": {"top_n", "return_documents"}}`` -> ``{"output": {"results":
    [...]}, "usage": {"total_tokens"}}``; no instruction. Each query or document over 4,000
    tokens is truncated server-side (no flag). Requests stay within the model's documents and
    tokens per request (:data:`DASHSCOPE_LIMITS`).
    """

    TOKEN_PATHS = (("usage", "total_tokens"), ("usage", "input_tokens"))

    def __init__(self, model: str, config: ProviderConfig, **options: Any) -> None:
        super().__init__(model, config, **options)
        self.compatible = model.lower() == "qwen3-rerank"
        self.instruction_aware = self.compatible

    @staticmethod
    def settings(model: str) -> dict[str, Any]:
        """Per-model :class:`ProviderConfig` fields (path, limits)."""
        docs, tokens = DASHSCOPE_LIMITS.get(model.lower(), (100, 30_000))
        path = DASHSCOPE_COMPAT_PATH if model.lower() == "qwen3-rerank" else DASHSCOPE_NATIVE_PATH
        return {"path": path, "max_batch_texts": docs, "max_batch_tokens": tokens}

    def request_body(self, query: str, documents: list[str], *, instruction: str | None,
                     truncate: bool) -> dict[str, Any]:
        if self.compatible:
            body: dict[str, Any] = {"model": self.model, "query": query, "documents": documents,
                                    "top_n": len(documents)}
            if instruction is not None:
                body["instruct"] = instruction
            return body
        return {"model": self.model, "input": {"query": query, "documents": documents},
                "parameters": {"top_n": len(documents), "return_documents": False}}

    def parse_response(self, body: Any, n: int) -> tuple[Any, ...]:
        results = body["results"] if self.compatible else body["output"]["results"]
        return (scores_from_results(results, n, self.name), *self.billed(body),
                ranking_from_results(results, n, self.name))


# ----------------------------------------------------------------------------- model strings

#: Default configuration per reranker scheme (base URLs include the API version; ``path`` is
#: appended). Limits are the documented ones where found (see each class).
RERANK_PRESETS: dict[str, ProviderConfig] = {
    "siliconflow": ProviderConfig(
        name="siliconflow", base_url="https://api.siliconflow.com/v1", path="/rerank",
        api_key_env="SILICONFLOW_API_KEY", api_key_required=True,
        base_url_env="SILICONFLOW_BASE_URL", max_batch_texts=256),
    "deepinfra": ProviderConfig(
        name="deepinfra", base_url="https://api.deepinfra.com/v1/inference", path="/",
        api_key_env="DEEPINFRA_API_KEY,DEEPINFRA_TOKEN", api_key_required=True,
        base_url_env="DEEPINFRA_BASE_URL", max_batch_texts=256, max_tokens=32768),
    "dashscope": ProviderConfig(
        name="dashscope", base_url=_DASHSCOPE_INTL, path=DASHSCOPE_COMPAT_PATH,
        api_key_env="DASHSCOPE_API_KEY", api_key_required=True,
        base_url_env="DASHSCOPE_BASE_URL", max_batch_texts=500, max_batch_tokens=30_000),
    "cohere": ProviderConfig(
        name="cohere", base_url="https://api.cohere.com/v2", path="/rerank",
        api_key_env="COHERE_API_KEY,CO_API_KEY", api_key_required=True, max_batch_texts=1000),
    "jina": ProviderConfig(
        name="jina", base_url="https://api.jina.ai/v1", path="/rerank",
        api_key_env="JINA_API_KEY", api_key_required=True, max_batch_texts=256),
    "tei": ProviderConfig(
        name="tei", base_url="http://localhost:8080", path="/rerank", api_key_env="TEI_API_KEY",
        base_url_env="TEI_URL", max_batch_texts=32),
    "smysl": ProviderConfig(
        name="smysl", base_url="http://127.0.0.1:8000/v1", path="/rerank",
        api_key_env="SMYSL_REMOTE_API_KEY,SMYSL_API_KEY", base_url_env="SMYSL_URL",
        max_batch_texts=2048,
        max_batch_tokens=65536),
}

_CLASSES: dict[str, type[RemoteReranker]] = {
    "siliconflow": SiliconFlowReranker, "deepinfra": DeepInfraReranker,
    "dashscope": DashScopeReranker, "cohere": CohereReranker, "jina": JinaReranker,
    "tei": TEIReranker, "smysl": SmyslReranker,
}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ProviderConfig)} - {"name"}
_OPTIONS = {"api_key", "name", "tokenizer", "price_per_search_unit", "transport", "seed"}
#: Schemes whose strings must name a model (the others: one model per server, or optional).
_NEEDS_MODEL = {"siliconflow", "deepinfra", "dashscope", "jina"}


def _root(scheme: str, url: str, what: str) -> str:
    """A base URL as the scheme's requests need it (:func:`with_scheme`)."""
    def rule(url: str) -> str:
        if scheme == "smysl" and not url.endswith("/v1"):
            url += "/v1"
        elif scheme == "dashscope":  # the embedding setting names a mode under the host
            for suffix in ("/compatible-mode/v1", "/compatible-api/v1", "/api/v1"):
                if url.endswith(suffix):
                    url = url[: -len(suffix)]
                    break
        elif scheme == "deepinfra" and url.endswith("/openai"):  # the embedding setting
            url = url[: -len("/openai")] + "/inference"
        return url

    return on_path(with_scheme(url, secure=RERANK_PRESETS[scheme].base_url.startswith(
        "https://"), what=what), rule)


def connect_reranker(scheme: str, rest: str = "", **options: Any) -> RemoteReranker:
    """Build the reranker for ``scheme:rest`` (``rest`` = ``MODEL``, ``URL#MODEL`` or ``URL``).

    ``options``: any :class:`ProviderConfig` field plus ``api_key``, ``base_url``, ``name``,
    ``tokenizer`` (a Qwen3 ``tokenizer.json`` for request-size estimates),
    ``price_per_search_unit``, ``transport`` and ``seed``.
    """
    if scheme not in RERANK_PRESETS:
        raise ValueError(f"unknown reranker provider {scheme!r}; known: "
                         f"{', '.join(sorted(RERANK_PRESETS))}")
    cls = _CLASSES[scheme]
    unknown = set(options) - _CONFIG_FIELDS - _OPTIONS - cls.OPTIONS - {"base_url"}
    if unknown:
        raise TypeError(f"unexpected options for {scheme}: {sorted(unknown)}")
    # TEI serves one model: anything given is its address
    url, model = url_and_model(rest, url_alone=scheme == "tei")
    if options.get("base_url"):
        url = str(options["base_url"])
    options.pop("base_url", None)
    overrides = {k: options.pop(k) for k in list(options) if k in _CONFIG_FIELDS}
    preset = RERANK_PRESETS[scheme]
    env = preset.env_base_url()  # blank is unset (it took the key requirement off)
    custom = bool(url or env)
    if not model and (scheme in _NEEDS_MODEL or (scheme == "cohere" and not custom)):
        raise ValueError(f"{scheme}: no model given (write {scheme}:MODEL or {scheme}:URL#MODEL)")
    if url or env:
        root = _root(scheme, url or env or "",
                     "the base URL" if url else f"${preset.base_url_env}")
    elif scheme == "dashscope" and model.lower() in _DASHSCOPE_BEIJING:
        root = _DASHSCOPE_CN
    else:
        root = preset.base_url
    settings: dict[str, Any] = {}
    if scheme == "dashscope":
        settings = DashScopeReranker.settings(model)
    elif scheme == "deepinfra":
        settings = {"path": "/" + model}
    # A URL of one's own may be a key-less server; the preset's own host needs its key.
    config = dataclasses.replace(preset, base_url=root, base_url_env=None,
                                 api_key_required=preset.api_key_required and not custom,
                                 **settings)
    config = dataclasses.replace(config, **overrides)
    # "cohere:URL#MODEL" is any Cohere-compatible server: Cohere's prices are not its prices.
    options.setdefault("priced", not (scheme == "cohere" and custom))
    return cls(model, config, **options)


def _factory(scheme: str) -> Callable[..., RemoteReranker]:
    def load(rest: str, options: ModelOptions | None = None, **kwargs: Any) -> RemoteReranker:
        # the registry lets no option through for remote rerankers today; mapped as the
        # embedding providers map theirs, should that change
        return connect_reranker(scheme, rest, **config_options(options), **kwargs)

    load.__name__ = f"load_{scheme}"
    load.__doc__ = f"``{scheme}:...`` reranker model strings (see :func:`connect_reranker`)."
    return load


load_siliconflow = _factory("siliconflow")
load_deepinfra = _factory("deepinfra")
load_dashscope = _factory("dashscope")
load_cohere = _factory("cohere")
load_jina = _factory("jina")
load_tei = _factory("tei")
load_smysl = _factory("smysl")
