"""The browser page ``GET /ui`` and index search ``POST /search`` (with ``smysl serve --index``).

The page (``static/ui.html``: HTML, CSS and vanilla JS, no CDN, no build step) talks to the
server's own routes only: ``GET /ui/info`` for the model's facts (the Matryoshka range, the
length limit, whether it takes instructions) and the index, ``POST /v1/embeddings`` with
``input_type`` and ``dimensions`` for the similarity matrix, and ``POST /search``. ``/ui`` itself
is open (see ``app.OPEN_PATHS``); every call it makes carries the key the user typed when the
server has one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from smysl.server.errors import ApiError
from smysl.server.http import json_response
from smysl.server.rerank_routes import RerankService
from smysl.server.service import Service, until_disconnected
from smysl.toolkit.search import check_queries
from smysl.toolkit.store import Condition, parse_where

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder
    from smysl.toolkit.store import VectorStore

T = TypeVar("T")

#: Most hits one ``/search`` request may ask for.
MAX_K = 100
#: Most candidates one ``/search`` asks the reranker to score.
MAX_RERANK_TOP = 500
#: Bounds of one ``/search``'s ``where``: conditions, values of one "any of" list, characters
#: of a field name or string value. A 16 MB body of 1.7M doc ids took 41 s and 6 GB in the
#: store's query (two at once), for any client; a filter of the toolkit's own (Python, the
#: CLI) has no such bound.
MAX_WHERE_CONDITIONS = 64
MAX_WHERE_VALUES = 1024
MAX_WHERE_CHARS = 1024
#: Placeholder in ui.html the server replaces with ``required`` or ``none``, so that a page
#: behind auth asks for the key before its first call instead of collecting a 401.
_AUTH_MARK = "@@AUTH@@"


class SearchRequest(BaseModel):
    """``POST /search``: the top ``k`` chunks of the served index for one query."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="query text (embedded as a query, like smysl index "
                                         "search)")
    k: StrictInt = Field(10, description=f"hits to return, 1..{MAX_K}")
    mode: Literal["vector", "hybrid", "text"] = Field(
        "vector", description="rank by the query's embedding (vector), by its words (text: "
                              "BM25 over Russian/English stems), or both fused (hybrid)")
    text_weight: StrictFloat | StrictInt = Field(
        1.0, description="mode hybrid: the weight of the word ranking (the vector ranking "
                         "weighs 1; 0: the vector ranking alone)")
    instruction: StrictStr | None = Field(
        None, description="query instruction or preset name; default: the model's task, "
                          "'' for none")
    where: dict[str, Any] | None = Field(
        None, description="payload filter, e.g. {\"lang\": \"en\"} (see docs/toolkit.md)")
    rerank: StrictBool | None = Field(
        None, description="reorder the nearest rerank_top chunks with the served reranker "
                          "(default: when the server has one, smysl serve --reranker)")
    rerank_top: StrictInt = Field(50, description=f"candidates the reranker scores, "
                                                   f"k..{MAX_RERANK_TOP}")
    per_document: StrictInt | None = Field(
        None, description="at most this many chunks of one document (their doc_id) among the "
                          "hits (and the reranker's candidates); default: no limit")
    truncate: StrictBool = Field(
        False, description="cut a query longer than the model takes (default: refuse it)")


def check_where_size(conditions: list[Condition]) -> None:
    """ValueError unless a ``/search`` filter is within :data:`MAX_WHERE_CONDITIONS`,
    :data:`MAX_WHERE_VALUES` and :data:`MAX_WHERE_CHARS`."""
    if len(conditions) > MAX_WHERE_CONDITIONS:
        raise ValueError(f"the filter has {len(conditions)} conditions; at most "
                         f"{MAX_WHERE_CONDITIONS} are taken here")
    for c in conditions:
        values = c.value if c.op == "in" else [c.value]
        if len(values) > MAX_WHERE_VALUES:
            raise ValueError(f"the filter's list for {c.key[:40]!r} has {len(values)} values; "
                             f"at most {MAX_WHERE_VALUES} are taken here")
        texts = [x for x in (c.key, *values) if isinstance(x, str)]
        if any("\x00" in x for x in texts):  # PostgreSQL's text holds none
            raise ValueError(f"the filter for {c.key[:40]!r} holds a NUL character")
        long = [x for x in texts if len(x) > MAX_WHERE_CHARS]
        if long:
            raise ValueError(f"the filter for {c.key[:40]!r} holds a string of {len(long[0])} "
                             f"characters; at most {MAX_WHERE_CHARS} are taken here")


def index_label(spec: str, table: str) -> str:
    """The served index as logs, errors and ``/ui/info`` name it: its place without secrets
    (a PostgreSQL DSN's password never reaches a client or a log) and its table."""
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import described

    return described(StoreConfig.parse(spec, table=table))


def open_index(spec: str, table: str, embedder: BaseEmbedder) -> tuple[VectorStore, bool]:
    """The store of table ``table`` of the index ``spec`` (a ``smysl index`` location),
    checked for ``embedder``, and whether its records carry vector checksums (see
    :func:`~smysl.toolkit.index.hit_problem`).

    Refuses a missing index, a store without smysl's metadata (rather than claiming it), and an
    index built with another model or size (the toolkit's own check, :meth:`Index.create_or_open`).
    A database that fails or refuses (:class:`~smysl.toolkit.store.StoreError`) says so, with
    no advice to build or re-serve the index. Searching needs the store alone: the index's
    embedding cache (an SQLite connection bound to the opening thread) is closed again at once,
    and nothing is written to the store.
    """
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig, StoreError, local_path
    from smysl.toolkit.stores import described, open_store

    store = StoreConfig.parse(spec, table=table)
    label = described(store)
    # a local folder that is not there is no index (opening it made one: a Qdrant client
    # writes its lock and metadata files first)
    path = local_path(store.uri) if store.backend in ("lancedb", "qdrant") else None
    if path is not None and not path.is_dir():
        flag = "" if table == StoreConfig.table else f" --table {table}"
        raise FileNotFoundError(f"--index {spec}: no such index folder; build one with "
                                f"'smysl index add {spec} FILES --model MODEL{flag}'")

    def named(e: Exception) -> str:  # the toolkit's messages may name the index already
        return f"--index {e}" if str(e).startswith(label) else f"--index {label}: {e}"

    try:
        built_with = Index.stored_model(store)  # a store without smysl metadata stops here
    except StoreError as e:
        raise StoreError(named(e)) from None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{named(e)}; build it with 'smysl index add'") from None
    except ValueError as e:  # its own advice (no metadata; a folder another process holds)
        raise ValueError(named(e)) from None
    try:
        with Index.create_or_open(embedder, IndexConfig(store=store), create=False) as index:
            checksums = index.checksums
    except StoreError as e:
        raise StoreError(named(e)) from None
    except ValueError as e:
        raise ValueError(f"{named(e)}; serve it with --model {built_with}") from None
    return open_store(store), checksums


def _page(auth_required: bool) -> tuple[bytes, str]:
    """The page with its auth mode filled in, and a Content-Security-Policy that allows exactly
    its own inline script and style (by hash) and connections to this server."""
    html = resources.files("smysl.server").joinpath("static/ui.html").read_text("utf-8")
    if html.count(_AUTH_MARK) != 1:
        raise RuntimeError(f"ui.html must contain {_AUTH_MARK} exactly once")
    html = html.replace(_AUTH_MARK, "required" if auth_required else "none")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest())
                        .decode() + "'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html.encode("utf-8"), csp


def router(service: Service, reranking: RerankService | None = None) -> APIRouter:
    """``/ui``, ``/ui/info`` and, when ``service.config.index`` names one, ``/search`` (which
    reranks its candidates through ``reranking``, the served reranker, when there is one).

    The index is opened and checked here, so a bad ``--index`` stops the server before it
    listens; its store is closed when the app shuts down.
    """
    served = service.config
    store, checksums = (open_index(served.index, served.index_table, service.embedder)
                        if served.index else (None, False))
    label = index_label(served.index, served.index_table) if served.index else ""
    # the store's calls run on threads of its own: several where it takes calls at once
    # (PostgreSQL: a connection per thread), else one, so that they never overlap
    pool = (ThreadPoolExecutor(service.config.index_threads if store.concurrent_reads else 1,
                               thread_name_prefix="smysl-index")
            if store is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if pool is not None:
                pool.shutdown()
            if store is not None:
                store.close()

    r = APIRouter(tags=["ui"], lifespan=lifespan)
    page, csp = _page(service.config.api_key is not None)
    page_headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                    "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}

    async def in_thread(fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    # the reranker scores at most the server's max_inputs documents a request: a default
    # rerank_top of 50 failed every search on a server started with fewer
    rerank_most = min(MAX_RERANK_TOP, served.max_inputs)

    def most_hits() -> int:
        """The largest ``k`` of a search as the page sends it (reranked where the server
        serves a reranker: at most the chunks it scores a request)."""
        return MAX_K if reranking is None else min(MAX_K, rerank_most)

    @r.get("/ui", include_in_schema=False)
    async def ui() -> Response:
        """The similarity and search page."""
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    @r.get("/ui/info")
    async def ui_info() -> Response:
        """The served model's facts and the served index (null without ``--index``)."""
        described: dict[str, object] | None = None
        if store is not None:
            from smysl.toolkit.index import binding_problem

            chunks, problem = None, None
            opened = store

            def look() -> tuple[int | None, str | None]:
                # another process may have removed it, or rebuilt it for another model or
                # size, since the start (every search is refused then; this said "healthy")
                found = binding_problem(opened, service.embedder, opened.dimensions,
                                        opened.read_meta())
                if found is not None:  # said as /search says it (counting it may fail)
                    return None, f"{found}; restart the server with its model"
                return opened.count(), None

            try:
                chunks, problem = await in_thread(look)
            except ValueError as e:  # the store's (its server gone, say; it names the place)
                # said, not a 503: the page's similarity matrix needs no index
                problem = str(e)
            described = {"location": label, "dimensions": store.dimensions, "chunks": chunks,
                         "problem": problem, "most_hits": most_hits(),
                         # what /search reranks with unless asked not to (the page says so)
                         "reranker": reranking.model_id if reranking else None}
        return json_response({"model": dataclasses.asdict(service.info()),
                              "index": described})

    if store is None:
        return r
    searched: VectorStore = store  # narrowed for the closure below

    @r.post("/search")
    async def search(body: SearchRequest, request: Request) -> Response:
        """Top-k chunks of the served index: ``{"hits": [{"id", "score", "text", "metadata"}]}``
        (score: cosine, BM25 in mode ``text``, the fusion score in mode ``hybrid``, whose hits
        also carry their ``vector_rank``/``text_rank``; metadata: the stored payload without
        the text)."""
        from smysl.toolkit import lexical
        from smysl.toolkit.index import binding_problem, hit_problem, lexical_problem
        from smysl.toolkit.search import (
            MAX_TEXT_WEIGHT,
            FusedHit,
            RerankedHit,
            SearchConfig,
            candidates,
            hit_texts,
            reorder_hits,
            search_vectors,
        )

        if not 1 <= body.k <= MAX_K:
            raise ApiError("invalid", f"k must be between 1 and {MAX_K}, got {body.k}",
                           param="k")
        rerank = reranking is not None if body.rerank is None else body.rerank
        if rerank and reranking is None:
            raise ApiError("unsupported", "this server has no reranker (smysl serve "
                           "--reranker R)", param="rerank")
        given = "rerank_top" in body.model_fields_set
        if rerank and not given and body.k > rerank_most:  # the k asked is what cannot be
            raise ApiError("invalid", f"k ({body.k}): a reranked search on this server returns "
                           f"at most {rerank_most} hits (its reranker scores at most max_inputs "
                           f"{service.config.max_inputs} chunks a request); ask for fewer, "
                           "or send rerank false", param="k")
        if given and not rerank:  # it did nothing, or was a 500 when below 1
            raise ApiError("invalid", "rerank_top is how many nearest hits the reranker "
                           "scores, and this search is not reranked (rerank is false, or the "
                           "server has no reranker)", param="rerank_top")
        top = body.rerank_top if given else max(body.k, min(body.rerank_top, rerank_most))
        if rerank and not body.k <= top <= rerank_most:
            raise ApiError("invalid", f"rerank_top must be between k ({body.k}) and {rerank_most} "
                           f"(at most {MAX_RERANK_TOP}, and this server's max_inputs), got "
                           f"{top}", param="rerank_top" if top != body.k else "k")
        service.check_texts([body.query], "query")
        try:  # the index's rule: a whitespace-only query too
            check_queries([body.query])
        except ValueError as e:
            raise ApiError("empty", str(e), param="query") from None
        try:  # the filter's own problems are the request's; the store's are the server's
            check_where_size(parse_where(body.where))
        except ValueError as e:
            raise ApiError("invalid", str(e), param="where") from None
        if "text_weight" in body.model_fields_set and body.mode != "hybrid":
            # did nothing, as `smysl index search --text-weight` refuses outside hybrid
            raise ApiError("invalid", f"text_weight weighs the word ranking against the "
                           f"vector one in mode 'hybrid'; this search is mode {body.mode!r}",
                           param="text_weight")
        if body.truncate and body.mode == "text":  # as `smysl index search --truncate`
            raise ApiError("invalid", "truncate cuts the query's embedding; mode 'text' ranks "
                           "by its words", param="truncate")
        if body.instruction is not None and body.mode == "text":  # ignored, or refused as
            # one the model does not take: as `smysl index search --instruction` has it
            raise ApiError("invalid", "instruction is for the query's embedding; mode 'text' "
                           "ranks by its words", param="instruction")
        if not 0 <= body.text_weight <= MAX_TEXT_WEIGHT:
            raise ApiError("invalid", f"text_weight must be between 0 and {MAX_TEXT_WEIGHT:g}, "
                           f"got {body.text_weight}", param="text_weight")
        if body.per_document is not None and body.per_document < 1:
            raise ApiError("invalid", f"per_document must be at least 1, got "
                           f"{body.per_document}", param="per_document")
        config = SearchConfig(k=body.k, mode=body.mode, where=body.where,
                              rerank_top=top, text_weight=body.text_weight,
                              per_document=body.per_document)
        disconnected = until_disconnected(request.receive)
        # the query side of `smysl index search`: the instruction rule of the model, the
        # index's stored size, an over-long query refused unless truncate (through the
        # batcher, like every route)
        # "" (or blank) is no instruction, as `smysl index search --instruction ''` has it
        # (the OpenAI extension's empty field is an absent one instead: the model's task)
        task = None  # mode text embeds nothing
        if body.mode != "text" and (body.instruction is None or body.instruction.strip()):
            task = service.instruction(body.instruction, "query")
        result = (await service.embed_texts(
            [body.query], instruction=task,
            dimensions=searched.dimensions, truncate=body.truncate, what="query",
            disconnected=disconnected) if body.mode != "text" else None)
        wanted = dataclasses.replace(config, k=candidates(config, reranking=rerank))

        def nearest() -> list[Any]:
            # another process may have rebuilt the index for another model since the start
            meta = searched.read_meta()
            problem = binding_problem(searched, service.embedder, searched.dimensions, meta)
            if problem is not None:
                raise ApiError("unavailable", f"--index {label}: {problem}; "
                                              f"restart the server with its model")
            if body.mode != "vector" and (problem := lexical_problem(meta)):
                raise ApiError("unsupported", f"--index {label}: {problem}",
                               param="mode")
            # damaged stored vectors are never served: left out, the search widened to k
            (found,) = search_vectors(
                searched, result.vectors if result is not None else None, wanted,
                check=lambda h: hit_problem(h, searched.dimensions, checksums) is None,
                terms=[lexical.query_terms(body.query)] if body.mode != "vector" else None)
            return found

        try:
            hits = await in_thread(nearest)
        except ValueError as e:  # the store's (a damaged folder, say; it names the place)
            raise ApiError("unavailable", str(e)) from None
        if rerank and reranking is not None and hits:
            # the candidates through the reranker's batcher, like any /rerank request
            try:
                texts = hit_texts(hits)
            except ValueError as e:  # the index's, as `smysl index search --rerank` says
                raise ApiError("unavailable", f"--index {label}: {e}") from None
            scored = await reranking.score(body.query, texts, instruction=None, truncate=True,
                                           disconnected=disconnected)
            hits = list(reorder_hits(hits, [(i, float(scored.scores[i]))
                                            for i in scored.order(body.k)]))
        rows = []
        for h in hits:
            row: dict[str, Any] = {"id": h.id, "score": float(h.score),
                                   "text": str(h.payload.get("text", "")),
                                   "metadata": {k: v for k, v in h.payload.items()
                                                if k != "text"}}
            if isinstance(h, RerankedHit):
                row.update(vector_score=h.vector_score, vector_rank=h.vector_rank)
            elif isinstance(h, FusedHit):
                row.update(vector_score=h.vector_score, vector_rank=h.vector_rank,
                           text_score=h.text_score, text_rank=h.text_rank)
            rows.append(row)
        return json_response({"model": service.model_id,
                              "reranker": reranking.model_id if rerank and reranking else None,
                              "hits": rows},
                             headers=service.timing_headers(result) if result is not None else None)

    return r
