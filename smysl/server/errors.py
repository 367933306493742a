"""One error type for the whole server, rendered in the shape of whichever API the client speaks.

OpenAI clients expect ``{"error": {"message", "type", "param", "code"}}``, Ollama clients
``{"error": "..."}`` and TEI clients ``{"error": "...", "error_type": "..."}``; each API also
has its own status code for a few kinds (TEI answers 422 for validation, for instance).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Literal

from starlette.responses import JSONResponse

from smysl.base import UpstreamError

Api = Literal["openai", "ollama", "tei"]

log = logging.getLogger("smysl.server")

#: kind -> (OpenAI status, Ollama status, TEI status, TEI error_type)
_KINDS: dict[str, tuple[int, int, int, str]] = {
    "malformed": (400, 400, 400, "Validation"),
    "invalid": (400, 400, 422, "Validation"),
    "empty": (400, 400, 400, "Empty"),
    # TEI answered these 413 before 1.9.0 (huggingface/text-embeddings-inference#818)
    "too_long": (400, 400, 422, "Validation"),
    "too_many": (400, 400, 422, "Validation"),
    "payload_too_large": (413, 413, 413, "Validation"),
    # the body stopped arriving for app.BODY_IDLE_S (a client that never sends the rest)
    "body_timeout": (408, 408, 408, "Validation"),
    "unsupported": (400, 400, 422, "Validation"),
    "not_implemented": (501, 501, 501, "Backend"),
    "not_found": (404, 404, 404, "Validation"),
    "route_not_found": (404, 404, 404, "Validation"),
    "method_not_allowed": (405, 405, 405, "Validation"),
    # TEI answers 401 with no body; its ErrorType has no member for it, and a client decoding
    # error_type as that enum must still parse the body
    "unauthorized": (401, 401, 401, "Validation"),
    # a browser's call from a page of an origin the server does not allow (EdgeMiddleware)
    "forbidden": (403, 403, 403, "Validation"),
    "overloaded": (429, 429, 429, "Overloaded"),
    "shutting_down": (503, 503, 503, "Unhealthy"),
    "unavailable": (503, 503, 503, "Unhealthy"),
    # the request's time budget ran out (ServerConfig.request_timeout_s)
    "timeout": (504, 504, 504, "Backend"),
    # nginx's "client closed request": logged and counted, never delivered
    "client_gone": (499, 499, 499, "Validation"),
    "internal": (500, 500, 424, "Backend"),
    # a remote backend (a provider) failed for a reason of its own (UpstreamError)
    "upstream": (502, 502, 502, "Backend"),
}

_OPENAI_TYPE = {
    "unauthorized": "invalid_request_error",
    "forbidden": "invalid_request_error",
    "overloaded": "requests",
    "shutting_down": "server_error",
    "unavailable": "server_error",
    "timeout": "server_error",
    "internal": "server_error",
    "not_implemented": "server_error",
    "upstream": "server_error",
}
_OPENAI_CODE = {
    # OpenAI's code for input past the context (LiteLLM's ContextWindowExceededError reads
    # the message's words: InputTooLongError.describe)
    "too_long": "context_length_exceeded",
    "not_found": "model_not_found",
    "unauthorized": "invalid_api_key",
    "overloaded": "rate_limit_exceeded",
    "timeout": "timeout",
    "upstream": "upstream_error",
}


class ApiError(Exception):
    """A request the server answers with an error; ``kind`` picks the status per API."""

    def __init__(self, kind: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        # a message may quote client text: a lone surrogate in it must not break the response
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.headers = headers or {}

    def status(self, api: Api) -> int:
        openai, ollama, tei, _ = _KINDS[self.kind]
        return {"openai": openai, "ollama": ollama, "tei": tei}[api]


#: Seconds between two log lines about one model's upstream failures of one status (a rate
#: limit answered to every request would write a line per request).
UPSTREAM_LOG_S = 10.0
_logged: dict[tuple[str, int], tuple[float, int]] = {}  # (model, status) -> (when, unlogged)
_logged_lock = threading.Lock()


#: The Retry-After of a 503 from a server that is shutting down (seconds): a balancer, or a
#: supervisor's restart, has another instance up in about this long.
SHUTDOWN_RETRY_S = 5


def shutting_down(message: str = "the server is shutting down; retry (on another "
                                 "instance)") -> ApiError:
    """The 503 of a request refused, dropped or cut off while the server stops, with a
    Retry-After (clients that retry 503s wait that long; without one some gave up)."""
    return ApiError("shutting_down", message, headers={"Retry-After": str(SHUTDOWN_RETRY_S)})


def upstream_failed(model: str, e: UpstreamError) -> ApiError:
    """The answer when the remote backend of ``model`` failed: its rate limit as a 429 with its
    ``Retry-After``, unavailable as 503, timed out as 504, anything else 502; its words (a
    provider's errors carry no secrets) rather than a 500 "internal error" and a traceback.
    Logged as a warning, at most one line per model and status every :data:`UPSTREAM_LOG_S`."""
    key, now = (model, e.status_to_answer), time.monotonic()
    with _logged_lock:
        when, unlogged = _logged.get(key, (-math.inf, 0))
        due = now - when >= UPSTREAM_LOG_S
        _logged[key] = (now, 0) if due else (when, unlogged + 1)
    if due:
        log.warning("model %r: upstream failed%s: %s", model,
                    f" (and {unlogged} more like it)" if unlogged else "", e)
    kind = {429: "overloaded", 503: "unavailable", 504: "timeout"}.get(e.status_to_answer,
                                                                        "upstream")
    wait = e.retry_after
    headers = ({"Retry-After": str(max(1, math.ceil(wait)))}
               if wait is not None and math.isfinite(wait) else {})
    verb = {429: "is rate limited", 503: "is unavailable",
            504: "did not answer in time"}.get(e.status_to_answer, "failed")
    # the upstream's words, not the advice to the operator (a key's variable, the upstream's
    # URL) that the log line above has
    return ApiError(kind, f"the upstream of {model!r} {verb}: {e.told_clients()}",
                    headers=headers)


def api_of(path: str) -> Api:
    """Which API a path belongs to (decides the error shape)."""
    if path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/embeddings"):  # TEI's alias
        return "openai"  # and Cohere's /v2/rerank: its SDK reads any JSON error, 400 as 400
    if path.startswith("/api/"):
        return "ollama"
    return "tei"


def render(err: ApiError, api: Api) -> JSONResponse:
    """The error as that API's clients expect it."""
    body: object
    if api == "openai":
        body = {"error": {"message": err.message,
                          "type": _OPENAI_TYPE.get(err.kind, "invalid_request_error"),
                          "param": err.param, "code": _OPENAI_CODE.get(err.kind)}}
    elif api == "ollama":
        body = {"error": err.message}
    else:
        body = {"error": err.message, "error_type": _KINDS[err.kind][3]}
    return JSONResponse(body, status_code=err.status(api), headers=err.headers)
