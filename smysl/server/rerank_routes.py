"""Reranking routes: TEI ``POST /rerank`` and Cohere/Jina-style ``POST /v1/rerank``.

Both score (query, document) pairs with the served reranker (:class:`smysl.Reranker`, served
with ``smysl serve --reranker R``) and answer best first. Limits are the embedding routes'
(``max_inputs`` documents, ``max_request_tokens`` tokens, ``max_queue`` waiting requests, then
429; ``request_timeout_s`` waiting for compute, then 504), errors take each API's shape
(``/rerank`` TEI's, ``/v1/rerank`` the OpenAI-style one of every ``/v1`` route), and an
over-long pair is refused unless the request asks for truncation (``truncate: true``), which
cuts the document's end. Each request runs as one call of the reranker, which packs its pairs
into length-sorted batches; requests take turns on the engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import numpy as np
from fastapi import APIRouter, Response
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from smysl.registry import names_of
from smysl.server.config import ServerConfig
from smysl.server.errors import ApiError
from smysl.server.http import json_response
from smysl.server.metrics import Metrics
from smysl.server.service import CHARS_PER_TOKEN, check_unicode
from smysl.tokenize import InputTooLongError

#: Requests with more characters than this are tokenised off the event loop.
_INLINE_CHARS = 4096


class RerankerLike(Protocol):
    """What the routes use of :class:`smysl.qwen3.reranker.Reranker` (no torch import here)."""

    name: str
    max_tokens: int

    @property
    def healthy(self) -> bool: ...

    def tokenize(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
                 truncate: bool = False) -> list[list[int]]: ...

    def score_prepared(self, ids: list[list[int]], *, raw: bool = False) -> np.ndarray: ...


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr]
    truncate: StrictBool | None = Field(None, description="default: false (no auto-truncate)")
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    instruction: StrictStr | None = Field(None, description="smysl extension: the Instruct line")


class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: StrictStr


class RerankRequest(BaseModel):
    """Cohere ``/v1/rerank`` (Jina's has the same fields)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = None
    return_documents: StrictBool = False
    truncate: StrictBool = Field(False, description="smysl extension: cut over-long documents")
    instruction: StrictStr | None = Field(None, description="smysl extension: the Instruct line")


class Scored:
    """Scores of one request (input order) and what it cost."""

    def __init__(self, scores: np.ndarray, tokens: int) -> None:
        self.scores, self.tokens = scores, tokens

    def order(self, top_n: int | None = None) -> list[int]:
        """Indices best first (ties: input order), the best ``top_n`` when given."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])[:top_n]


class RerankService:
    """The served reranker: validation, limits, turns on the engine, metrics."""

    def __init__(self, reranker: RerankerLike, config: ServerConfig, metrics: Metrics) -> None:
        self.reranker = reranker
        self.config = config
        self.model_id = reranker.name
        self.names = names_of(reranker.name)
        self.waiting = 0
        self.engine = anyio.CapacityLimiter(1)  # one request computes at a time
        self.tokenizers = anyio.CapacityLimiter(2)
        r = metrics.registry
        self.pairs = Counter("smysl_rerank_pairs", "(query, document) pairs scored",
                             registry=r)
        self.tokens = Counter("smysl_rerank_tokens", "Prompt tokens scored", registry=r)
        self.compute = Histogram("smysl_rerank_compute_seconds", "Reranker time per request",
                                 registry=r)

    def resolve_model(self, name: str | None) -> str:
        if name is None or not name.strip() or name.strip().lower() in self.names:
            return self.model_id
        raise ApiError("not_found", f"model {name!r} is not a reranker served here; this server "
                       f"reranks with {self.model_id!r}", param="model")

    async def score(self, query: str, documents: list[str], *, instruction: str | None,
                    truncate: bool, raw: bool = False, what: str = "documents") -> Scored:
        """Scores of ``documents`` against ``query`` (input order), or a 4xx :class:`ApiError`."""
        cfg = self.config
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
        for i, d in enumerate(documents):
            check_unicode(d, f"{what}[{i}]", param=what)
        chars = sum(map(len, documents)) + len(query) * len(documents)
        if chars > CHARS_PER_TOKEN * cfg.max_request_tokens:
            raise ApiError("too_many", f"the request has {chars} characters of query and "
                           f"{what}, more than this server tokenises per request; split it",
                           param=what)
        if self.waiting >= cfg.max_queue:
            raise ApiError("overloaded", "too many rerank requests are waiting; retry shortly",
                           headers={"Retry-After": "1"})
        pairs = [(query, d) for d in documents]

        def tokenize() -> list[list[int]]:
            return self.reranker.tokenize(pairs, instruction=instruction, truncate=truncate)

        try:
            ids = (tokenize() if chars <= _INLINE_CHARS
                   else await anyio.to_thread.run_sync(tokenize, limiter=self.tokenizers))
        except InputTooLongError as e:
            raise ApiError("too_long", e.describe(f"{what}[{e.index}] with the query"),
                           param=what) from None
        except ValueError as e:
            raise ApiError("invalid", str(e), param="query") from None
        total = sum(map(len, ids))
        if total > cfg.max_request_tokens:
            raise ApiError("too_many", f"the request has {total} prompt tokens but at most "
                           f"{cfg.max_request_tokens} are allowed (max_request_tokens); split "
                           "it", param=what)
        return Scored(await self._compute(ids, raw), total)

    async def _compute(self, ids: list[list[int]], raw: bool) -> np.ndarray:
        self.waiting += 1
        try:
            with anyio.fail_after(self.config.request_timeout_s):
                await self.engine.acquire()
        except TimeoutError:
            raise ApiError("timeout", "the request waited longer than the server's time "
                           "budget for compute; retry") from None
        finally:
            self.waiting -= 1
        try:
            t0 = time.perf_counter()
            scores = await anyio.to_thread.run_sync(
                lambda: self.reranker.score_prepared(ids, raw=raw))
        except ValueError as e:
            raise ApiError("invalid", str(e)) from None
        except Exception:
            if not self.reranker.healthy:
                raise ApiError("unavailable", f"the reranker {self.model_id!r} is down (an "
                               "engine process that exited restarts itself); retry shortly",
                               headers={"Retry-After": "5"}) from None
            raise
        finally:
            self.engine.release()
        self.compute.observe(time.perf_counter() - t0)
        self.pairs.inc(len(ids))
        self.tokens.inc(sum(map(len, ids)))
        return scores


def router(rs: RerankService, *, health: bool = False) -> APIRouter:
    """The rerank routes; ``health`` adds ``GET /health`` (when no embedder serves it)."""
    r = APIRouter(tags=["rerank"])

    @r.post("/rerank")
    async def tei_rerank(body: TeiRerankRequest) -> Response:
        """TEI ``/rerank``: ``[{index, score, text?}]`` best first."""
        out = await rs.score(body.query, body.texts, instruction=body.instruction,
                             truncate=bool(body.truncate), raw=body.raw_scores, what="texts")
        rows: list[dict[str, Any]] = []
        for i in out.order():
            row: dict[str, Any] = {"index": i, "score": float(out.scores[i])}
            if body.return_text:
                row["text"] = body.texts[i]
            rows.append(row)
        return json_response(rows)

    @r.post("/v1/rerank")
    async def rerank(body: RerankRequest) -> Response:
        """Cohere/Jina ``/v1/rerank``: ``results[].index`` and ``relevance_score`` best first."""
        model = rs.resolve_model(body.model)
        if body.top_n is not None and body.top_n < 1:
            raise ApiError("invalid", f"top_n must be >= 1, got {body.top_n}", param="top_n")
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        out = await rs.score(body.query, texts, instruction=body.instruction,
                             truncate=body.truncate)
        results: list[dict[str, Any]] = []
        for i in out.order(body.top_n):
            item: dict[str, Any] = {"index": i, "relevance_score": float(out.scores[i])}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return json_response({
            "id": str(uuid.uuid4()), "model": model, "results": results,
            "usage": {"total_tokens": out.tokens},
            "meta": {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": out.tokens}},
        })

    if health:
        @r.get("/health")
        async def alive() -> Response:
            """200 while the reranker can compute, else 503."""
            if not rs.reranker.healthy:
                raise ApiError("unavailable", f"the reranker {rs.model_id!r} is down")
            return Response(status_code=200)

    return r
