"""The embedding routes without FastAPI's per-request layers.

One short embedding request cost the server ~1.4 ms of Python (2-core EPYC, py-spy ``--gil``);
FastAPI's route matching over every route, dependency solving, ``Request`` objects and its
exception and telemetry middleware were about half of it, the handler itself a sixth. A route
declared with :meth:`FastRoutes.post` is registered with FastAPI as usual (OpenAPI, and every
request the fast path does not take), and :class:`~smysl.server.app.EdgeMiddleware` answers a
request whose JSON body the route's model accepts by calling the handler directly.

Anything else goes through FastAPI: a body that is not JSON or that the model rejects, a
content type FastAPI would not parse as JSON. So every validation error is FastAPI's, and a
request gets the same answer on either path (tests/server/test_fast.py compares them).
"""

from __future__ import annotations

import email.message
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope

#: A route's body: its parsed request model and the ASGI ``receive`` (read to its end already:
#: the next message is the client's disconnect) -> the response.
Handler = Callable[[Any, Receive], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    model: type[BaseModel]
    handler: Handler


class FastRoutes:
    """JSON POST routes the edge middleware may answer without FastAPI, by full path."""

    def __init__(self) -> None:
        self.routes: dict[str, FastRoute] = {}

    def post(self, router: APIRouter, model: type[BaseModel], path: str, *aliases: str,
             **options: Any) -> Callable[[Handler], Handler]:
        """Register the decorated handler at ``router.prefix + path`` (and at ``aliases``,
        left out of the OpenAPI schema) with FastAPI and with the fast path. ``options``:
        FastAPI's route options (``response_model``...)."""

        def register(handler: Handler) -> Handler:
            async def endpoint(body: BaseModel, request: Request) -> Response:
                return await handler(body, request.receive)

            # FastAPI reads the body model from the signature
            endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   annotation=model),
                 inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   annotation=Request)],
                return_annotation=Response)
            endpoint.__name__, endpoint.__doc__ = handler.__name__, handler.__doc__
            for p in (path, *aliases):
                router.post(p, include_in_schema=p == path, **options)(endpoint)
                self.routes[router.prefix + p] = FastRoute(model, handler)
            return handler

        return register

    def take(self, scope: Scope, body: bytes) -> tuple[Handler, BaseModel] | None:
        """The handler and parsed body when the fast path answers this request, else None."""
        route = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        if route is None or not _json(scope):
            return None
        try:
            return route.handler, route.model.model_validate_json(body)
        except ValidationError:
            return None  # FastAPI reports it, in its words


def content_type(scope: Scope) -> bytes | None:
    """The request's ``Content-Type`` header, None without one."""
    return next((v for k, v in scope.get("headers") or [] if k == b"content-type"), None)


def _json(scope: Scope) -> bool:
    """Whether FastAPI parses this body as JSON: ``application/json`` or
    ``application/*+json`` (its rule in ``fastapi.routing``; the edge middleware gives a body
    without a content type ``application/json``)."""
    value = content_type(scope)
    if value is None:
        return False
    if value == b"application/json":
        return True
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))
