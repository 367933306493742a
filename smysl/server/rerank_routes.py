"""Reranking routes: TEI ``POST /rerank``, Cohere/Jina-style ``POST /v1/rerank`` and Cohere's
``POST /v2/rerank``.

All score (query, document) pairs with the served reranker (:class:`smysl.Reranker`, served
with ``smysl serve --reranker R``) and answer best first. Limits are the embedding routes'
(``max_inputs`` documents, ``max_request_tokens`` tokens, ``max_queue`` waiting requests, then
429; ``request_timeout_s`` waiting for compute, then 504), errors take each API's shape
(``/rerank`` TEI's, ``/v1/rerank`` and ``/v2/rerank`` the OpenAI-style one of every ``/v1``
route), and an over-long pair is refused unless the request asks for truncation
(``truncate: true``), which cuts the document's end (TEI's ``truncation_direction: "left"``:
its beginning). Cohere's
``max_tokens_per_doc`` keeps at most that many tokens of each document (truncation implied);
``/v2/rerank`` applies Cohere's default, 4,096, when it is absent.

A local Qwen3-Reranker (one with :meth:`~smysl.rerank.BaseReranker.token_level`) scores through
its own :class:`~smysl.server.batcher.Batcher`, as embeddings do: each request is tokenised on
arrival, and pairs of many requests share forward passes (small requests coalesce, large ones
are sliced and take turns), with the same queue limit, Retry-After, disconnect and time-budget
handling; metrics are ``smysl_rerank_*``. A remote reranker (``smysl serve --reranker
cohere:...``) is called once per request, a few at a time.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Hashable
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import (
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
)

from smysl.base import Pending, UpstreamError
from smysl.pooling import NonFiniteError
from smysl.registry import names_of, refers_to
from smysl.rerank import BaseReranker, PairError, RerankTokens, order
from smysl.server.batcher import BackendDown, Batcher, Job, Slot
from smysl.server.config import ServerConfig
from smysl.server.errors import ApiError, upstream_failed
from smysl.server.health import BackendHealth
from smysl.server.http import ApiRequest, json_response
from smysl.server.metrics import BatchMetrics, HealthMetrics, Metrics
from smysl.server.service import (
    CHARS_PER_TOKEN,
    Disconnected,
    check_unicode,
    until_disconnected,
)
from smysl.server.tei_routes import info_body
from smysl.tokenize import Direction, InputTooLongError


class TeiRerankRequest(ApiRequest):
    query: StrictStr
    texts: list[StrictStr]
    truncate: StrictBool | None = Field(None, description="default: false (no auto-truncate)")
    truncation_direction: Literal["right", "left", "Right", "Left"] = Field(
        "right", description="which end of an over-long document truncation cuts")
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    instruction: StrictStr | None = Field(None, description="smysl extension: the Instruct line")


#: Cohere ``/v2/rerank``'s ``max_tokens_per_doc`` when a request leaves it out
#: (docs.cohere.com/reference/rerank: "Defaults to 4096").
COHERE_MAX_TOKENS_PER_DOC = 4096
#: Documents one Cohere search unit covers (docs.cohere.com/docs/rerank: one query with up to
#: 100 documents).
DOCUMENTS_PER_SEARCH_UNIT = 100


class RerankRequest(ApiRequest):
    """Cohere ``/v1/rerank`` (Jina's has the same fields)."""

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | dict[str, Any]]
    top_n: StrictInt | None = None
    rank_fields: list[StrictStr] | None = None
    return_documents: StrictBool = False
    max_tokens_per_doc: StrictInt | None = None
    truncate: StrictBool = Field(False, description="smysl extension: cut over-long documents")
    instruction: StrictStr | None = Field(None, description="smysl extension: the Instruct line")
    raw_scores: StrictBool = Field(
        False, description="smysl extension: each result's raw_score (the logit difference the "
                           "ranking follows, where the reranker is local)")


def _rerank_shape(body: Any) -> str:
    """Which API a ``/rerank`` body is: Cohere/Jina's (vLLM's, Infinity's) when it has
    ``documents`` and no ``texts``, else TEI's (decided by its keys alone, so that an error
    names one shape's fields and a stray field does not switch the answer's shape)."""
    if isinstance(body, dict) and "documents" in body and "texts" not in body:
        return "cohere"
    return "tei"


#: The tags of ``/rerank``'s two body shapes: part of a validation error's location, which
#: the error message leaves out (``texts: Field required``, not ``tei.texts: ...``).
SHAPE_TAGS = frozenset({"tei", "cohere"})

#: ``/rerank``'s body: TEI's, or a Cohere/Jina one (:func:`_rerank_shape`).
RerankBody = Annotated[Annotated[TeiRerankRequest, Tag("tei")]
                       | Annotated[RerankRequest, Tag("cohere")], Discriminator(_rerank_shape)]


class RerankV2Request(ApiRequest):
    """Cohere ``/v2/rerank``: string documents, no ``return_documents``."""

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr]
    top_n: StrictInt | None = None
    max_tokens_per_doc: StrictInt | None = None
    #: Rerank v5's spans: an object with a ``mode``, or (some clients) a bare flag
    relevant_spans: dict[str, Any] | StrictBool | None = None
    instruction: StrictStr | None = Field(None, description="smysl extension: the Instruct line")


class Scored:
    """Scores of one request (input order), the keys they rank by, and what it cost."""

    def __init__(self, scores: np.ndarray, tokens: int, keys: np.ndarray | None = None,
                 raw: np.ndarray | None = None) -> None:
        #: ``keys``: what ranks the documents as the reranker ranked them (a local reranker's
        #: logit differences, which still differ where P("yes") has saturated to 1.0; a remote
        #: one's finer keys or answer order); else the scores.
        self.scores, self.tokens = scores, tokens
        self.keys = scores if keys is None else keys
        #: The logit differences where a local reranker gave them (smysl's ``raw_score``).
        self.raw = raw

    def order(self, top_n: int | None = None) -> list[int]:
        """Indices best first (ties: input order), the best ``top_n`` when given."""
        return order(self.keys, self.scores)[:top_n]


class RerankBackend:
    """The batcher's view of a local reranker: rows ``[n, 2]`` (score, raw score) per prompt."""

    def __init__(self, reranker: BaseReranker, tokens: RerankTokens) -> None:
        self.reranker, self.tokens = reranker, tokens

    @property
    def healthy(self) -> bool:
        return self.reranker.healthy

    @property
    def queues(self) -> int:
        return self.tokens.queues

    def start(self, key: tuple[Hashable, ...], items: list[Any]) -> Pending:
        return self.tokens.start_scores(items)


class RerankService:
    """The served reranker: validation, limits, batching (local) or calls (remote), metrics."""

    def __init__(self, reranker: BaseReranker, config: ServerConfig, metrics: Metrics) -> None:
        self.reranker = reranker
        self.config = config
        self.model_id = reranker.name
        self.names = names_of(reranker.name)
        self.tokens = reranker.token_level()
        self.metrics = BatchMetrics(metrics.registry, "smysl_rerank", "scored")
        self.health = BackendHealth(f"the reranker {self.model_id!r}", lambda: reranker.healthy,
                                    HealthMetrics(metrics.registry, "smysl_rerank"),
                                    remote=reranker.remote,
                                    unhealthy_exit_s=config.unhealthy_exit_s)
        self.batcher: Batcher | None = None
        if self.tokens is not None:
            wait_ms = config.max_wait_ms
            if wait_ms is None:  # as for embeddings: no idle-time wait on a GPU
                wait_ms = 0.0 if (reranker.info().device or "").startswith("cuda") else 2.0
            self.batcher = Batcher(RerankBackend(reranker, self.tokens), self.metrics,
                                   max_batch_tokens=self.tokens.batch_tokens,
                                   max_batch_requests=config.max_batch_requests,
                                   max_wait_s=wait_ms / 1000, max_queue=config.max_queue)
        #: Remote rerankers: requests in flight upstream at most, and how many wait.
        self.calls = anyio.CapacityLimiter(4)
        self.waiting = 0
        self.tokenizers = anyio.CapacityLimiter(2)

    def resolve_model(self, name: str | None) -> str:
        if name is None or not name.strip() or refers_to(name, self.names):
            return self.model_id
        raise ApiError("not_found", f"model {name!r} is not a reranker served here; this server "
                       f"reranks with {self.model_id!r}", param="model")

    async def score(self, query: str, documents: list[str], *, instruction: str | None,
                    truncate: bool, raw: bool = False, what: str = "documents",
                    direction: Direction = "right", max_document_tokens: int | None = None,
                    disconnected: Disconnected | None = None) -> Scored:
        """Scores of ``documents`` against ``query`` (input order), or a 4xx :class:`ApiError`.
        ``max_document_tokens`` keeps at most that many tokens of each document and implies
        ``truncate``; ``direction`` is the end truncation cuts. ``raw``: the raw scores in
        place of the scores (TEI's ``raw_scores``), refused where the reranker has none (a
        remote API). ``/v1/rerank``'s ``raw_scores`` adds :attr:`Scored.raw` where there is
        one and leaves it out elsewhere: a ``smysl:`` client always asks for it."""
        if raw and self.tokens is None:
            raise ApiError("unsupported", f"raw_scores needs a local Qwen3-Reranker; "
                           f"{self.model_id!r} is a remote API", param="raw_scores")
        cfg = self.config
        if max_document_tokens is not None:
            if max_document_tokens < 1:
                raise ApiError("invalid", "max_tokens_per_doc must be >= 1, got "
                               f"{max_document_tokens}", param="max_tokens_per_doc")
            truncate = True
        if not query.strip():
            raise ApiError("empty", "query must not be empty", param="query")
        if not documents:
            raise ApiError("empty", f"{what} must not be empty; send at least one document",
                           param=what)
        if len(documents) > cfg.max_inputs:
            raise ApiError("too_many", f"{what} has {len(documents)} items but at most "
                           f"{cfg.max_inputs} are allowed per request; split it", param=what)
        check_unicode(query, "query")
        check_unicode(instruction, "instruction")
        try:
            self.reranker.check_instruction(instruction)
        except ValueError as e:
            raise ApiError("invalid", str(e), param="instruction") from None
        for i, d in enumerate(documents):
            check_unicode(d, f"{what}[{i}]", param=what)
        # truncating a document's end, a local reranker reads at most cut_chars of it (it cuts
        # the rest before tokenising; the tokens it keeps are the whole document's, or the
        # pair is refused)
        cut = (self.tokens.cut_chars if truncate and direction == "right"
               and self.tokens is not None else None)
        chars = (sum(len(d) if cut is None else min(len(d), cut) for d in documents)
                 + len(query) * len(documents))
        if chars > CHARS_PER_TOKEN * cfg.max_request_tokens:
            raise ApiError("too_many", f"the request has {chars} characters of query and "
                           f"{what}, more than this server tokenises per request; split it",
                           param=what)
        if self.tokens is None:
            if direction != "right":
                raise ApiError("unsupported", "truncation_direction 'left' needs a local "
                               f"Qwen3-Reranker; {self.model_id!r} is a remote API (its "
                               "truncation cuts the end)", param="truncation_direction")
            return await self._remote(query, documents, instruction, truncate, chars, what)
        assert self.batcher is not None
        # a full queue answers 429 before any tokenising, and the request holds its place
        # while it is tokenised (its time budget counts from here)
        with self.batcher.admitted() as slot:
            return await self._local(slot, query, documents, instruction, truncate, raw,
                                     direction, max_document_tokens, cut, chars, what,
                                     disconnected)

    async def _local(self, slot: Slot, query: str, documents: list[str],
                     instruction: str | None, truncate: bool, raw: bool,
                     direction: Direction, max_document_tokens: int | None, cut: int | None,
                     chars: int, what: str, disconnected: Disconnected | None) -> Scored:
        """:meth:`score` on the local reranker, within the queue place ``slot`` holds."""
        assert self.batcher is not None and self.tokens is not None
        cfg = self.config
        tokens = self.tokens
        pairs = [(query, d) for d in documents]

        def tokenize() -> list[list[int]]:
            return tokens.tokenize(pairs, instruction=instruction, truncate=truncate,
                                   direction=direction, max_document_tokens=max_document_tokens,
                                   read_chars=cut)  # what the character budget charged

        try:
            ids = await self.batcher.prepare(tokenize, chars, self.tokenizers, slot,
                                             cfg.request_timeout_s)
        except InputTooLongError as e:
            raise ApiError("too_long", e.describe(f"{what}[{e.index}] with the query"),
                           param=what) from None
        except PairError as e:  # the request's query, or one of its documents
            if e.part == "query":
                raise ApiError("invalid", e.problem, param="query") from None
            raise ApiError("invalid", f"{what}[{e.index}]: {e.problem}", param=what) from None
        except ValueError as e:
            raise ApiError("invalid", str(e), param="query") from None
        total = sum(map(len, ids))
        if total > cfg.max_request_tokens:
            raise ApiError("too_many", f"the request has {total} prompt tokens but at most "
                           f"{cfg.max_request_tokens} are allowed (max_request_tokens); split "
                           "it", param=what)
        # rows are [score, raw score]: 2 "dimensions", never normalised (finish() keeps them)
        job = Job(key=("ids",), items=ids, lengths=[len(x) for x in ids], dimensions=2,
                  normalize=False, disconnected=disconnected, timeout_s=cfg.request_timeout_s)
        try:
            rows = await self.batcher.submit(job, slot)  # finite rows (finish() checks them)
        except NonFiniteError as e:  # the model's failure on this pair: never null or NaN
            raise ApiError("internal", f"the reranker {self.model_id!r} computed a non-finite "
                           f"score for {what}[{e.index}]") from None
        except ValueError as e:  # the backend's contract: ValueError means bad input
            raise ApiError("invalid", str(e), param=what) from None
        except BackendDown:
            raise self.health.unavailable() from None
        except ApiError:
            raise
        except Exception:
            if not self.reranker.healthy:
                raise self.health.unavailable() from None
            raise
        return Scored(rows[:, 1 if raw else 0], total, keys=rows[:, 1], raw=rows[:, 1])

    async def _remote(self, query: str, documents: list[str], instruction: str | None,
                      truncate: bool, chars: int, what: str) -> Scored:
        """One call of a reranker without token ids (a remote API) per request."""
        if self.waiting >= self.config.max_queue:
            raise ApiError("overloaded", "too many rerank requests are waiting; retry shortly",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            with anyio.fail_after(self.config.request_timeout_s):
                # the keys too: where the upstream's scores tie (a smysl server's saturated
                # P("yes")), its finer keys or its answer's order rank them, as in Python
                scores, keys = await anyio.to_thread.run_sync(
                    lambda: self.reranker.scores_and_keys(query, documents,
                                                          instruction=instruction,
                                                          truncate=truncate),
                    limiter=self.calls, abandon_on_cancel=True)
        except ValueError as e:  # the API refused the input (RejectedRerankError) or ours
            raise ApiError("invalid", str(e), param=what) from None
        except UpstreamError as e:  # before TimeoutError: a provider's timeout is one too
            raise upstream_failed(self.model_id, e) from None
        except TimeoutError:
            raise ApiError("timeout", "the reranker did not answer within the server's time "
                           "budget (request_timeout_s); retry") from None
        except Exception:
            if not self.reranker.healthy:
                raise self.health.unavailable() from None
            raise
        finally:
            self.waiting -= 1
        self.metrics.inputs.inc(len(documents))
        # the upstream API counts tokens; this is the server's estimate
        estimate = max(1, chars // CHARS_PER_TOKEN)
        self.metrics.tokens.inc(estimate)
        return Scored(np.asarray(scores, dtype=np.float32), estimate, keys=keys)


def router(rs: RerankService, *, root: bool = False) -> APIRouter:
    """The rerank routes; ``root``: also TEI's ``/`` and ``/invocations`` (a server with no
    embedding model, whose TEI routes have them otherwise)."""
    r = APIRouter(tags=["rerank"])

    @r.post("/rerank")
    async def tei_rerank(body: RerankBody, request: Request) -> Response:
        """TEI ``/rerank``: ``[{index, score, text?}]`` best first; a body with
        ``documents`` instead of ``texts`` is a Cohere/Jina one, answered as ``/v1/rerank``
        answers it (vLLM's and Infinity's ``/rerank``, litellm's ``hosted_vllm/``)."""
        if isinstance(body, RerankRequest):
            return await rerank(body, request)
        return await tei_body(body, request)

    async def tei_body(body: TeiRerankRequest, request: Request) -> Response:
        out = await rs.score(body.query, body.texts, instruction=body.instruction,
                             truncate=bool(body.truncate), raw=body.raw_scores, what="texts",
                             direction="left" if body.truncation_direction.lower() == "left"
                             else "right",
                             disconnected=until_disconnected(request.receive))
        rows: list[dict[str, Any]] = []
        for i in out.order():
            row: dict[str, Any] = {"index": i, "score": float(out.scores[i])}
            if body.return_text:
                row["text"] = body.texts[i]
            rows.append(row)
        return json_response(rows)

    if root:  # TEI's "/" and SageMaker's "/invocations" run the served model's task
        @r.post("/", include_in_schema=False)
        @r.post("/invocations", include_in_schema=False)
        async def tei_root(body: TeiRerankRequest, request: Request) -> Response:
            return await tei_body(body, request)

    @r.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        """Cohere/Jina ``/v1/rerank``: ``results[].index`` and ``relevance_score`` best first."""
        model = rs.resolve_model(body.model)
        check_top_n(body.top_n)
        texts = [document_text(d, i, body.rank_fields) for i, d in enumerate(body.documents)]
        out = await rs.score(body.query, texts, instruction=body.instruction,
                             truncate=body.truncate, max_document_tokens=body.max_tokens_per_doc,
                             disconnected=until_disconnected(request.receive))
        results: list[dict[str, Any]] = []
        for i in out.order(body.top_n):
            item: dict[str, Any] = {"index": i, "relevance_score": float(out.scores[i])}
            if body.raw_scores and out.raw is not None:  # P("yes") ties at 1.0; these do not
                item["raw_score"] = float(out.raw[i])
            if body.return_documents:  # as sent (Cohere echoes a string as {"text": ...})
                d = body.documents[i]
                item["document"] = {"text": d} if isinstance(d, str) else d
            results.append(item)
        return json_response({
            "id": str(uuid.uuid4()), "model": model, "results": results,
            "usage": {"total_tokens": out.tokens},
            "meta": {"billed_units": {"search_units": search_units(len(texts))},
                     "tokens": {"input_tokens": out.tokens}},
        })

    @r.post("/v2/rerank")
    async def rerank_v2(body: RerankV2Request, request: Request) -> Response:
        """Cohere ``/v2/rerank``: ``results[].index`` and ``relevance_score`` best first;
        documents are cut to ``max_tokens_per_doc`` tokens (Cohere's default: 4,096)."""
        rs.resolve_model(body.model)
        check_top_n(body.top_n)
        spans = body.relevant_spans
        if spans is True or (isinstance(spans, dict)
                             and spans.get("mode", "disabled") != "disabled"):
            raise ApiError("unsupported", "relevant_spans needs a Cohere Rerank v5 model; this "
                           f"server reranks with {rs.model_id!r} and returns no spans",
                           param="relevant_spans")
        limit = (COHERE_MAX_TOKENS_PER_DOC if body.max_tokens_per_doc is None
                 else body.max_tokens_per_doc)
        out = await rs.score(body.query, body.documents, instruction=body.instruction,
                             truncate=True, max_document_tokens=limit,
                             disconnected=until_disconnected(request.receive))
        return json_response({
            "id": str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": float(out.scores[i])}
                        for i in out.order(body.top_n)],
            "meta": {"billed_units": {"search_units": search_units(len(body.documents))},
                     "tokens": {"input_tokens": out.tokens}},
        })

    return r


def info_router(rs: RerankService) -> APIRouter:
    """TEI's ``/info`` for a server that serves a reranker and no embedding model (TEI
    describes a reranker as a classifier: ``model_type: {"reranker": {"id2label",
    "label2id"}}``; the Qwen3-Reranker's one label is "yes", whose probability is the score)."""
    r = APIRouter(tags=["rerank"])

    @r.get("/info")
    async def info() -> Response:
        """The reranker and the server's limits (TEI ``/info``)."""
        model = rs.reranker.info()
        return json_response(info_body(
            rs.config, name=model.name, dtype=model.dtype,
            model_type={"reranker": {"id2label": {"0": "yes"}, "label2id": {"yes": 0}}},
            max_input_length=model.max_tokens,
            max_batch_tokens=rs.tokens.batch_tokens if rs.tokens is not None else 0,
            device=model.device, kernel=model.kernel, slice_tokens=model.slice_tokens,
            tuned_at=model.tuned_at, threads=model.threads))

    @r.get("/ui", include_in_schema=False)
    async def no_page() -> Response:
        """The page compares embeddings: a reranker alone has none (a bare "no route")."""
        raise ApiError("route_not_found", "the page /ui needs an embedding model: this server "
                       f"serves the reranker {rs.model_id!r} alone (smysl serve --model M "
                       "--reranker R serves both)")

    return r


def check_top_n(top_n: int | None) -> None:
    """400 for a ``top_n`` below 1 (None: every document)."""
    if top_n is not None and top_n < 1:
        raise ApiError("invalid", f"top_n must be >= 1, got {top_n}", param="top_n")


def search_units(documents: int) -> int:
    """Cohere's billing of one query: a search unit per started 100 documents."""
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT))


def document_text(document: str | dict[str, Any], index: int,
                  rank_fields: list[str] | None) -> str:
    """The text a Cohere ``/v1/rerank`` document is scored by: a string as it is; an object's
    ``text`` field, or with ``rank_fields`` those fields in that order, as ``field: value``
    lines (the YAML form Cohere recommends for structured documents) when there are several.
    A string document is ``{"text": string}``. 400 for a field missing or not a string."""
    fields = rank_fields or ["text"]
    if len(set(fields)) != len(fields):
        raise ApiError("invalid", f"rank_fields must name distinct fields, got {rank_fields}",
                       param="rank_fields")
    obj = {"text": document} if isinstance(document, str) else document
    values = []
    for f in fields:
        value = obj.get(f)
        if not isinstance(value, str):
            why = "has no" if value is None else f"has a {type(value).__name__} in its"
            hint = "" if rank_fields else " (or name the fields to rank by in rank_fields)"
            raise ApiError("invalid", f"documents[{index}] {why} {f!r} field; each document "
                           f"needs a string {f!r}{hint}", param="documents")
        values.append(value)
    return values[0] if len(fields) == 1 else "\n".join(
        f"{f}: {v}" for f, v in zip(fields, values, strict=True))
