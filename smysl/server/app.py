"""The ASGI application: routes of all three APIs, auth, body limits, metrics, error shapes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.server import HANDLED_SIGNALS

from smysl.base import BaseEmbedder
from smysl.rerank import BaseReranker
from smysl.server import ollama_routes, openai_routes, rerank_routes, tei_routes, ui
from smysl.server.access_log import AccessLog
from smysl.server.config import (
    LOOPBACK_HOSTS,
    ServerConfig,
    host_name,
    is_loopback,
    switch_interval,
)
from smysl.server.errors import Api, ApiError, api_of, render, shutting_down
from smysl.server.fast import FastRoutes, content_type
from smysl.server.health import BackendHealth
from smysl.server.metrics import Metrics
from smysl.server.service import TIMING_HEADERS, Service

log = logging.getLogger("smysl.server")

#: Paths a GET or HEAD reaches without the API key: probes and API tooling (``POST /`` is
#: TEI's embedding route and needs the key). ``/ui`` is the page alone: the calls it makes
#: carry the key the user types.
OPEN_PATHS = frozenset({"/health", "/ping", "/", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/ui"})


def create_app(embedder: BaseEmbedder | None, config: ServerConfig | None = None, *,
               reranker: BaseReranker | None = None, access_log: AccessLog | None = None
               ) -> FastAPI:
    """Build the server for ``embedder`` (any :class:`~smysl.base.BaseEmbedder`) and/or
    ``reranker`` (any :class:`~smysl.rerank.BaseReranker`: the rerank routes).
    ``access_log``: where a line per request goes (:func:`serve` passes one when
    ``config.access_log``; under your own uvicorn, its access log does that)."""
    app, edge = _build(embedder, config or ServerConfig(), reranker=reranker,
                       access_log=access_log)
    for cls, options in edge:  # the first innermost
        app.add_middleware(cls, **options)
    return app


def serving_app(embedder: BaseEmbedder | None, config: ServerConfig | None = None, *,
                reranker: BaseReranker | None = None, access_log: AccessLog | None = None
                ) -> tuple[ASGIApp, FastAPI]:
    """What :func:`serve` runs: (the ASGI app, the FastAPI app of the routes behind it). The
    app of :func:`create_app`, with the edge (:class:`EdgeMiddleware`, and CORS outside it
    where configured) in front of FastAPI instead of inside its middleware stack: the
    embedding routes the edge answers itself skip FastAPI's per-request layers (its
    OpenTelemetry check, body-limit and error wrappers: 5-6% less CPU per short request,
    ~7% more of them a second from one HTTP process, docs/benchmarks.md), and every other
    route passes through all of them as before. Middleware you add to the FastAPI app sees
    only those other routes: to add your own, use :func:`create_app`."""
    app, layers = _build(embedder, config or ServerConfig(), reranker=reranker,
                         access_log=access_log)
    front: ASGIApp = app
    for cls, options in layers:
        front = cls(front, **options)
    return front, app


#: ASGI middleware to wrap the routes' app in, innermost first: (class, keyword arguments).
Layers = list[tuple[Any, dict[str, Any]]]


def _build(embedder: BaseEmbedder | None, config: ServerConfig, *,
           reranker: BaseReranker | None, access_log: AccessLog | None
           ) -> tuple[FastAPI, Layers]:
    """The routes' app, and the layers in front of it: :class:`EdgeMiddleware`, and CORS
    outside it where configured (a browser's preflight carries no API key)."""
    if embedder is None and reranker is None:
        raise ValueError("nothing to serve: give an embedding model, a reranker or both")
    metrics = Metrics()
    service = Service(embedder, config, metrics) if embedder is not None else None
    reranking = (rerank_routes.RerankService(reranker, config, metrics)
                 if reranker is not None else None)
    batchers = [b for b in (service.batcher if service else None,
                            reranking.batcher if reranking else None) if b is not None]
    healths = [s.health for s in (service, reranking) if s is not None]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for b in batchers:
            b.open()
        watchers = [asyncio.create_task(h.watch()) for h in healths]
        forced = False
        try:
            yield
        except asyncio.CancelledError:
            # A forced stop (a second signal): uvicorn cut the requests off, skipped this
            # shutdown and the loop cancels what is left. Waiting for the batch being computed
            # held the exit for as long as it took (26 s of a 30 s batch); and letting the
            # cancellation through made Starlette log it as a failed shutdown.
            forced = True
        finally:
            for w in watchers:
                w.cancel()
            # uvicorn has stopped accepting and waited for in-flight requests (or cut them off);
            # finish what is queued, unless forced to stop now.
            for b in batchers:
                if forced:
                    b.abort()
                else:
                    await b.close()
            if access_log is not None:
                access_log.close()

    from smysl import __version__

    app = FastAPI(title="smysl embedding server", version=__version__, lifespan=lifespan,
                  # not the model's name: it may be a local path, and this page needs no key
                  description="OpenAI-, Ollama- and TEI-compatible embeddings"
                              f"{'' if service else ' (none served)'} and reranking"
                              f"{'' if reranker else ' (none served)'}; GET /v1/models names "
                              "the models (with the API key where one is set). See "
                              "docs/server.md.")
    app.state.service = service
    app.state.metrics = metrics
    app.state.healths = healths
    fast = FastRoutes()
    routers = []
    if service is not None:
        routers += [openai_routes.router(service, fast), ollama_routes.router(service, fast),
                    tei_routes.router(service, fast),
                    # opens config.index (a bad one fails here); /search reranks with the
                    # served reranker
                    ui.router(service, reranking)]
    if reranking is not None:
        routers.append(rerank_routes.router(reranking, root=service is None))
        if service is None:  # the embedding model's /info describes it otherwise
            routers.append(rerank_routes.info_router(reranking))
    routers.append(openai_routes.models_router(service, reranking))
    for router in routers:
        app.include_router(router)

    # "/" and "/ping": the probes of TEI (SageMaker pings next to /invocations) and of the
    # Ollama client, which checks the server with ``HEAD /`` before its commands
    @app.get("/", include_in_schema=False, tags=["ops"])
    @app.get("/ping", include_in_schema=False, tags=["ops"])
    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        """200 while the server takes requests; 503 once it is shutting down or a model backend
        it serves (the embedding model's, the reranker's) is down."""
        if not all(b.healthy for b in batchers):  # a balancer retries another instance
            raise shutting_down()
        for h in healths:
            if not h.check():
                raise h.unavailable()
        return Response(status_code=200)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=metrics.content_type)

    def answer(request: Request, err: ApiError) -> Response:
        return error_response(metrics, api_of(request.url.path), err)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        _let_go(exc)
        return answer(request, validation_error(exc, request.headers.get("content-type")))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = ApiError("route_not_found", f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:  # with its Allow header, which says what is
            err = ApiError("method_not_allowed",
                           f"{request.method} is not allowed on {request.url.path}",
                           headers=dict(exc.headers or {}))
        elif isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI: "error parsing the body"
            bad = exc.__cause__
            err = ApiError("malformed", f"the request body is not UTF-8 (byte "
                           f"0x{bad.object[bad.start]:02x} at offset {bad.start}); JSON is "
                           "UTF-8 text: send it encoded so")
        else:
            err = ApiError("malformed" if exc.status_code < 500 else "internal", str(exc.detail))
        _let_go(exc)  # a body not UTF-8: its UnicodeDecodeError holds the whole body, in a cycle
        return answer(request, err)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        return answer(request, crashed(request.method, request.url.path, exc))

    # the routes' own paths label the metrics (any other path is "other": a client's typos
    # must not grow the label set); a path with parameters is labelled by its pattern below.
    # Read from the routers: FastAPI may keep an included router as one lazy entry
    # (and the app's own: the probes /health and /ping were "other", with the typos)
    routes = frozenset(r.path for rs in [app.routes, *(router.routes for router in routers)]
                       for r in rs if isinstance(r, Route) and "{" not in r.path)
    ledger = Ledger(metrics, routes, access_log)
    reads = app.state.body_reads = BodyReads()
    layers: Layers = [(EdgeMiddleware, {"config": config, "fast": fast, "ledger": ledger,
                                        "reads": reads})]
    if config.cors_origins:  # outermost: a browser's preflight carries no API key
        layers.append((CountedCORS, {
            "ledger": ledger, "allow_origins": list(config.cors_origins),
            "allow_methods": ["GET", "HEAD", "POST"], "allow_headers": ["*"],
            # what a page may read besides the safelisted ones
            "expose_headers": [*TIMING_HEADERS, "retry-after"]}))
    return app, layers


def error_response(metrics: Metrics, api: Api, err: ApiError) -> Response:
    """An error as ``api``'s clients expect it, counted; the tracebacks it carries let go."""
    metrics.errors.labels(api, err.kind).inc()
    _let_go(err)
    return render(err, api)


def _let_go(err: BaseException) -> None:
    """Drop the tracebacks of ``err`` and of the errors it was raised from or while handling.
    A route's ``except E as e: raise ApiError(...)`` leaves the cycle frame -> e -> traceback
    -> frame, which only a full collection frees, and a busy server rarely runs one: each
    refused over-long text (2.4 MB) kept its tokens and the tokenizer's encoding in the
    frames, 150-300 MB a request, the server's memory growing with every refusal."""
    todo, seen = [err], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def crashed(method: str, path: str, exc: Exception) -> ApiError:
    """The 500 of an unexpected exception, logged with its traceback."""
    log.exception("unhandled error on %s %s", method, path, exc_info=exc)
    return ApiError("internal", f"internal error: {type(exc).__name__}")


def validation_error(exc: RequestValidationError, sent_as: str | None = None) -> ApiError:
    """FastAPI's validation report as one readable message naming the fields to fix;
    ``sent_as``: the request's Content-Type."""
    errors = list(exc.errors())
    tags = rerank_routes.SHAPE_TAGS | tei_routes.ROOT_TAGS

    def where(e: Any) -> list[str]:
        # the error's location, without a union's tag after "body" (/rerank's two shapes,
        # TEI's "/" and "/invocations")
        loc = [str(x) for x in e.get("loc", ())]
        if loc[:1] == ["body"] and len(loc) > 1 and loc[1] in tags:
            del loc[1]
        return loc

    whole = [e for e in errors if where(e) == ["body"]]
    if whole and sent_as is not None and "json" not in sent_as.lower():
        # curl -d sends application/x-www-form-urlencoded: the JSON in it was never read
        return ApiError("invalid", f"the request body was sent as {sent_as.split(';')[0]!r}, "
                        "not JSON: send it with Content-Type: application/json")
    if any(e.get("type") == "missing" for e in whole):
        return ApiError("invalid", "the request has no body: send a JSON object")
    shape = next((e for e in whole if e.get("type") in ("model_type", "model_attributes_type")),
                 None)
    if shape is not None:  # null, an array, a string: "Input should be a valid dictionary..."
        value = shape.get("input")
        kind = ("null" if value is None else "an array" if isinstance(value, list)
                else "a string" if isinstance(value, str)
                else "a boolean" if isinstance(value, bool) else "a number")
        return ApiError("invalid", f"the request body is {kind}; send a JSON object")
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next(e for e in errors if e.get("type") == "json_invalid").get("ctx") or {}
        return ApiError("malformed", "request body is not valid JSON"
                        + (f": {ctx.get('error')}" if ctx.get("error") else ""))
    parts = []
    for e in errors[:5]:
        loc = ".".join(x for x in where(e) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = where(errors[0]) if errors else []
    param = first[1] if len(first) > 1 else None
    return ApiError("invalid", "invalid request: " + "; ".join(parts) + more, param=param)


def _as_json(scope: Scope) -> Scope:
    """The scope with ``Content-Type: application/json``. Ollama reads every body as JSON
    whatever the header says, and its documented ``curl URL/api/embed -d '{...}'`` sends
    ``application/x-www-form-urlencoded``. Every route reads a body without the header as
    JSON (``requests.post(url, data=json.dumps(...))`` sends none), as FastAPI did before
    0.132; FastAPI now refuses it, while the fast path took it (one rule for both here)."""
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


class Ledger:
    """Where each request is counted, timed and logged: by the edge, and by the CORS layer for
    the preflights it answers before the edge sees them."""

    def __init__(self, metrics: Metrics, routes: frozenset[str],
                 access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.routes = routes  # paths that label the metrics as themselves
        self.access_log = access_log

    def route(self, path: str) -> str:
        """The metrics' label of ``path``: any other path is "other" (typos must not grow
        the label set)."""
        return path if path in self.routes else ("/v1/models/{model}"
                                                 if path.startswith("/v1/models/") else "other")

    def add(self, scope: Scope, status: int, seconds: float) -> None:
        """One request, as the client sent it (``scope``), answered ``status``."""
        path = scope["path"]
        api, route = api_of(path), self.route(path)
        self.metrics.requests.labels(api, route, str(status)).inc()
        self.metrics.latency.labels(api, route).observe(seconds)
        if self.access_log is not None:
            self.access_log.add(scope, status, seconds)


#: The headers that make an OPTIONS request a CORS preflight (Starlette's own test).
_PREFLIGHT = frozenset({b"origin", b"access-control-request-method"})


class CountedCORS(CORSMiddleware):
    """Starlette's CORS middleware, with the preflights it answers itself in the ledger."""

    def __init__(self, app: ASGIApp, ledger: Ledger, **options: Any) -> None:
        super().__init__(app, **options)
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the method first: the header names only for an OPTIONS, not on every request
        preflight = scope["type"] == "http" and scope["method"] == "OPTIONS" and {
            name for name, _ in scope.get("headers") or []} >= _PREFLIGHT
        if not preflight:
            await super().__call__(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 499}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_wrapper)
        finally:
            self.ledger.add(scope, status["code"], time.perf_counter() - start)


#: Schemes of the pages of apps on the user's machine (Electron, Tauri, VS Code webviews), whose
#: calls Ollama takes by default, as it does those of pages on a loopback address.
_APP_SCHEMES = (b"app", b"file", b"tauri", b"vscode-webview", b"vscode-file")


def _local_origin(origin: bytes) -> bool:
    """Whether ``origin`` (lower case) is a page on this machine: on a loopback address, or an
    app's (:data:`_APP_SCHEMES`); a page of another site never is, DNS rebinding's neither."""
    scheme, sep, rest = origin.partition(b"://")
    if not sep:
        return False
    if scheme in _APP_SCHEMES:
        return True
    return scheme in (b"http", b"https") and host_name(rest) in (*LOOPBACK_HOSTS, "0.0.0.0")


def _hosts(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The hosts a request was sent to, lower case: ``Host``, and what proxies say
    (``X-Forwarded-Host``, a list if several; RFC 7239 ``Forwarded: for=...;host=...``)."""
    hosts: list[bytes] = []
    for name, value in headers:
        if name in (b"host", b"x-forwarded-host"):
            hosts += [h.strip().lower() for h in value.split(b",")]
        elif name == b"forwarded":
            hosts += [v.strip().strip(b'"').lower() for k, _, v in (
                pair.strip().partition(b"=") for hop in value.split(b",")
                for pair in hop.split(b";")) if k.strip().lower() == b"host"]
    return hosts


class BodyReads:
    """The waits of requests whose bodies are still arriving. From a graceful stop on
    (:meth:`stop`) each part of a body has :data:`STOP_IDLE_S` to arrive, then the request is
    answered 503: nothing of it has run, and a client that stopped sending held the stop for
    the whole grace period. A body still arriving steadily is read to its end."""

    def __init__(self) -> None:
        self.waits: set[asyncio.Timeout] = set()
        self.stopped = False

    def idle_s(self) -> float:
        """How long the next part of a body may take to arrive."""
        return min(STOP_IDLE_S, BODY_IDLE_S) if self.stopped else BODY_IDLE_S

    def stop(self) -> None:
        """Cut the waits now running to :data:`STOP_IDLE_S` (from the event loop)."""
        self.stopped = True
        soon = asyncio.get_running_loop().time() + STOP_IDLE_S
        for wait in list(self.waits):
            when = wait.when()
            if when is None or when > soon:
                wait.reschedule(soon)


class EdgeMiddleware:
    """Pure ASGI (no per-request task, disconnects stay visible): body size limit, bearer auth,
    request counting and latency. Runs before routing, so it answers in the API's error shape;
    answers the routes of ``fast`` itself when it can (:mod:`smysl.server.fast`)."""

    def __init__(self, app: ASGIApp, config: ServerConfig, fast: FastRoutes,
                 ledger: Ledger, reads: BodyReads) -> None:
        self.app = app
        self.reads = reads
        self.config = config
        self.ledger = ledger
        self.metrics = ledger.metrics
        self.fast = fast
        self._key = config.api_key.encode() if config.api_key else None
        hosts = config.allowed_hosts
        self._hosts = (None if hosts is None or "*" in hosts
                       else frozenset(h.lower() for h in hosts))
        origins = config.cors_origins
        self._origins = None if "*" in origins else frozenset(o.encode() for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        asked = scope  # as the client sent it, for the access log (a HEAD is routed as GET)
        api = api_of(path)
        start = time.perf_counter()
        status = {"code": 499}  # stays so only when no response started: the client left

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            err = self._check_host(scope) or self._check_origin(scope)
            if err is None:
                err = self._check_auth(scope, path)
            if err is None:
                body, err = await self._read_body(scope, receive)
            if err is not None:
                self.metrics.errors.labels(api, err.kind).inc()
                await render(err, api)(scope, receive, send_wrapper)
                return
            if scope["method"] == "POST" and (api == "ollama" or content_type(scope) is None):
                scope = _as_json(scope)
            elif scope["method"] == "HEAD":  # as GET, for probes; uvicorn sends no body
                scope = {**scope, "method": "GET"}
            taken = self.fast.take(scope, body)
            if taken is None:
                try:
                    await self.app(scope, _replay(body, receive), send_wrapper)
                except Exception:
                    if status["code"] == 499:  # FastAPI's outer layer answered on_crash's 500
                        status["code"] = ApiError("internal", "").status(api)
                    raise
                return
            handler, parsed = taken
            try:
                response = await handler(parsed, receive)
            except ApiError as e:
                response = error_response(self.metrics, api, e)
            except Exception as e:
                response = error_response(self.metrics, api, crashed(scope["method"], path, e))
            await response(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the graceful shutdown period ends;
            # answer them in their API's shape (it would send a plain-text 500) and end.
            if status["code"] != 499:
                raise
            err = shutting_down("the server shut down before this request finished; retry "
                                "(on another instance)")
            self.metrics.errors.labels(api, err.kind).inc()
            with contextlib.suppress(Exception):
                await render(err, api)(scope, receive, send_wrapper)
        finally:
            self.ledger.add(asked, status["code"], time.perf_counter() - start)

    def _check_host(self, scope: Scope) -> ApiError | None:
        """400 for a ``Host`` outside :attr:`ServerConfig.allowed_hosts` (every route: a
        rebinding page must not read even a probe's answer)."""
        if self._hosts is None:
            return None
        given = [v for k, v in scope.get("headers") or [] if k == b"host"]
        if len(given) == 1 and host_name(given[0]) in self._hosts:
            return None
        return ApiError("malformed", "this server does not answer that Host (a page may have "
                        "bound its own domain to this address); start it with "
                        "--allowed-host NAME to serve a name of your own")

    def _check_origin(self, scope: Scope) -> ApiError | None:
        """403 for a call (any method but GET, HEAD, OPTIONS) that a browser sent from a page
        of another origin than the server's own and :attr:`ServerConfig.cors_origins`. CORS
        only keeps such a page from reading the answer: a ``no-cors`` POST (``text/plain``,
        which the Ollama routes take as JSON, as Ollama does) still made a keyless server
        compute. Browsers send ``Origin`` with every POST; other clients send none, and pass,
        as do pages on this machine (:func:`_local_origin`, Ollama's default origins)."""
        if self._origins is None or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None
        headers = scope.get("headers") or []
        origin = next((v.strip().lower() for k, v in headers if k == b"origin"), None)
        if origin is None or origin in self._origins or _local_origin(origin):
            return None  # the common case, before any other header is read
        site = next((v.strip().lower() for k, v in headers if k == b"sec-fetch-site"), None)
        if site is not None:  # the browser's own verdict: right behind a proxy that sets Host
            if site in (b"same-origin", b"none"):
                return None
        elif (page := origin.partition(b"://")[2]) and page in _hosts(headers):
            return None  # a browser without Sec-Fetch-Site, on its own page
        return ApiError("forbidden", f"a page of {origin.decode('latin-1')!r} may not call this "
                        "server; start it with --cors-allow-origin ORIGIN to let a page of "
                        "that origin call it")

    def _check_auth(self, scope: Scope, path: str) -> ApiError | None:
        if self._key is None or (path in OPEN_PATHS and scope["method"] in ("GET", "HEAD")):
            return None
        # one Authorization header: with two, which one counted depended on the parser
        given = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
        auth: bytes = given[0] if len(given) == 1 else b""
        scheme, _, token = auth.partition(b" ")
        # compare_digest: the time taken does not reveal how much of the key matched
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            return None
        return ApiError("unauthorized", "missing or wrong API key; send the header "
                        "'Authorization: Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, ApiError | None]:
        """Read the body up to the limit (rejecting early on Content-Length); each part of it
        must arrive within :data:`BODY_IDLE_S` of the last (a body that stopped short held its
        connection open for ever). An answer before the whole body closes the connection: the
        rest of the body would be read as the next request."""
        limit = self.config.max_request_bytes
        close = {"Connection": "close"}

        def too_big() -> ApiError:
            return ApiError("payload_too_large", f"request body is larger than {limit} bytes; "
                            "send fewer or shorter inputs per request", headers=close)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return b"", too_big()
            except ValueError:
                return b"", ApiError("malformed", "Content-Length is not a number")
        def stopping() -> ApiError:
            err = shutting_down("the server is stopping and this request's body stopped "
                                "arriving; send it again (to another instance)")
            err.headers.update(close)
            return err

        chunks: list[bytes] = []
        size = 0
        while True:
            idle = self.reads.idle_s()
            try:
                async with asyncio.timeout(idle) as wait:
                    self.reads.waits.add(wait)
                    try:
                        message = await receive()
                    finally:
                        self.reads.waits.discard(wait)
            except TimeoutError:
                if self.reads.stopped:
                    return b"", stopping()
                return b"", ApiError("body_timeout", f"the request body stopped arriving: "
                                     f"nothing for {idle:g} s", headers=close)
            if message["type"] != "http.request":
                break  # client gone; the app will see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already read body once, then the real stream (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


#: Seconds a request's body may go without a byte arriving (then 408, connection closed).
BODY_IDLE_S = 60.0
#: The same once the server is stopping (then 503, connection closed: :class:`BodyReads`).
STOP_IDLE_S = 1.0

#: ``serve``'s return value when it stopped because the backend stayed down.
EXIT_BACKEND_DOWN = 3

#: Called once the server accepts connections, with the host and port (the real one when
#: ``port`` was 0).
Ready = Callable[[str, int], None]


def serve(embedder: BaseEmbedder | None, config: ServerConfig, *, ready: Ready | None = None,
          reranker: BaseReranker | None = None, sockets: list[socket.socket] | None = None,
          heartbeat: Callable[[], None] | None = None, announces_outages: bool = True,
          **uvicorn_options: Any) -> int:
    """Run the server with uvicorn until interrupted (SIGINT/SIGTERM shut down gracefully);
    with ``config.workers`` > 1 in that many processes (:mod:`smysl.server.workers`).
    ``sockets``: listen on these instead of binding ``config.host``/``config.port`` (one
    worker of ``config.workers``: this process serves alone on them). ``heartbeat``: called
    from the event loop about every 0.1 s while it runs, from before ``ready`` on (a
    worker's supervisor watches it for a stalled loop). ``announces_outages``: whether this
    process logs and counts its backends' outages (one worker of several does).

    Returns 0, or :data:`EXIT_BACKEND_DOWN` when it stopped because the backend stayed
    unhealthy for ``config.unhealthy_exit_s`` (a supervisor should restart the process).
    """
    import sys

    if is_loopback(config.host) and "*" not in (config.allowed_hosts or ()):
        # a loopback server answers this machine's names (DNS rebinding), the address it was
        # bound to (127.0.0.2), and the names given besides (they added to these: local
        # checks kept working)
        bound = host_name(config.host.encode()) if ":" not in config.host else None
        config = dataclasses.replace(config, allowed_hosts=tuple(dict.fromkeys(
            [*LOOPBACK_HOSTS, *([bound] if bound else []), *(config.allowed_hosts or ())])))
    if config.workers > 1 and sockets is None:
        from smysl.server.workers import serve_workers

        return serve_workers(embedder, config, ready=ready, reranker=reranker)
    if sockets is None:
        from smysl.server.workers import listening_sockets

        # bound here, as for workers: a port taken or a host that does not resolve is one
        # line and exit status 2 (uvicorn's own bind printed a traceback and gave 3, the
        # status that asks a supervisor to restart)
        socks = listening_sockets(config.host, config.port)
        try:
            return serve(embedder, config, ready=ready, reranker=reranker, sockets=socks,
                         heartbeat=heartbeat, **uvicorn_options)
        finally:
            for sock in socks:
                sock.close()

    # smysl's own line per request instead of uvicorn's (the same line, at a fraction of its
    # cost), unless the caller configures uvicorn's logging: then uvicorn's access logger
    own_log = config.access_log and "log_config" not in uvicorn_options
    access_log = AccessLog() if own_log else None
    front, app = serving_app(embedder, config, reranker=reranker, access_log=access_log)
    for health in app.state.healths:
        health.announces = announces_outages
    # process-wide, hence here and not in create_app
    interval = switch_interval(config.switch_interval_s,
                               [m for m in (embedder, reranker) if m is not None])
    if interval is not None:
        sys.setswitchinterval(interval)
    if "http" not in uvicorn_options:
        uvicorn_options["http"] = http_protocol()
    server = _Server(uvicorn.Config(
        front, host=config.host, port=config.port, log_level="info",
        access_log=config.access_log and not own_log,
        # uvicorn annotates an int but hands it to asyncio.timeout, which takes any seconds:
        # int() made 0.9 s a cut at once
        timeout_graceful_shutdown=cast(int, config.graceful_timeout_s), **uvicorn_options))
    # uvicorn's own loop choice (uvloop where installed): asyncio.run would take the
    # pure-Python loop, which uvicorn.run avoids
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        return runner.run(_supervise(server, app.state.healths, config, ready, sockets,
                                     heartbeat, app.state.body_reads))


def http_protocol() -> Any:
    """httptools' protocol with the request's head bounded (:mod:`smysl.server.head`), or
    uvicorn's choice where httptools is not installed (h11, whose own limit holds)."""
    try:
        from smysl.server.head import BoundedHeadProtocol
    except ImportError:
        return "auto"
    return BoundedHeadProtocol


class _Server(uvicorn.Server):
    """uvicorn's server, where a second stop signal of either kind forces the stop. uvicorn
    forces only on a SIGINT after a first stop; and when a SIGTERM and a SIGINT are both
    pending (the loop was busy), Python runs SIGINT's handler first, which uvicorn then took
    as the first stop: the second was lost (tests/server/test_workers.py)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without raising the stop signal again once stopped: that ended the
        process by SIGTERM (status -15) inside :func:`serve`, before the caller closed the
        engine, the reranker and the index (``smysl serve``'s ``finally``); a stop asked
        for is a clean exit, status 0, as with ``--workers``."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread alone
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def _supervise(server: Any, healths: list[BackendHealth], config: ServerConfig,
                     ready: Ready | None, sockets: list[socket.socket] | None,
                     heartbeat: Callable[[], None] | None, reads: BodyReads) -> int:
    """Run uvicorn; report the bound port once; stop when a backend stays down too long;
    beat while the loop runs; once stopping, answer the requests still waiting for their
    bodies (:class:`BodyReads`)."""
    task = asyncio.create_task(server.serve(sockets=sockets))
    code = 0
    while not task.done():
        if heartbeat is not None:
            heartbeat()
        if server.should_exit and not reads.stopped:
            reads.stop()
        if ready is not None and server.started:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            ready(str(host), int(port))
            ready = None
        down = [(h, limit) for h in healths
                if (limit := h.exit_after_s) is not None
                and h.down_for() > limit]
        if down and not server.should_exit:
            log.error("%s has been down for %.0f s (unhealthy_exit_s); exiting with status %d "
                      "so a supervisor can restart the server", down[0][0].what, down[0][1],
                      EXIT_BACKEND_DOWN)
            code = EXIT_BACKEND_DOWN
            server.should_exit = True
        await asyncio.wait({task}, timeout=0.1)
    task.result()
    return code
