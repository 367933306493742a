"""Ollama-compatible routes: ``/api/embed``, legacy ``/api/embeddings``, ``/api/tags``,
``/api/ps``, ``/api/show`` and ``/api/version``.

Differences from Ollama, on purpose: vectors are always unit length (Ollama's legacy route
returns raw ones), ``keep_alive`` and ``options`` are accepted and ignored (the model stays
loaded for the life of the server) save ``options.num_ctx``, to which inputs are truncated (or
refused) as Ollama does, and, as in Ollama, ``truncate`` defaults to true.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from starlette.types import Receive

from smysl.base import ModelInfo
from smysl.registry import sized_aliases
from smysl.server.errors import ApiError
from smysl.server.fast import FastRoutes
from smysl.server.http import ApiRequest, json_response
from smysl.server.service import Embedded, Service, until_disconnected

#: The Ollama API level these routes follow (clients gate features such as ``dimensions`` on it).
OLLAMA_API_VERSION = "0.12.0"

#: Go's ``time.ParseDuration`` grammar, which Ollama reads a string ``keep_alive`` with: a
#: signed sequence of decimal numbers, each with a unit, or a bare "0".
_GO_DURATION = re.compile(
    r"[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+)")


def _go_duration(value: str | int | float | None) -> str | int | float | None:
    # Ollama answers 400 to a keep_alive it cannot read ("forever", "-1"): accepting it here
    # would tell a client its setting took when Ollama would have said it is wrong
    if isinstance(value, str) and not _GO_DURATION.fullmatch(value):
        raise ValueError(f"invalid duration {value!r}: keep_alive is a number of seconds or "
                         'a duration with units, such as "5m", "1h30m" or "-1s"')
    return value


KeepAlive = Annotated[StrictStr | StrictInt | StrictFloat | None, AfterValidator(_go_duration)]


class EmbedRequest(ApiRequest):
    model: StrictStr | None = Field(None, description="served model name (any alias)")
    # null, missing or "": no input, as Ollama reads it (ollama-python's embed(model=...) sends
    # input="" to load a model); it answers no embeddings
    input: StrictStr | list[StrictStr] | None = Field(None, description="text or list of texts")
    # null is unset in Ollama's Go (a nil pointer): truncate then defaults to true, and a
    # dimensions of 0 (Go's zero value) is no size asked for
    truncate: StrictBool | None = True
    dimensions: StrictInt | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    instruction: StrictStr | None = Field(
        None, description="smysl extension: query instruction or task preset name")
    input_type: StrictStr | None = Field(
        None, description="smysl extension: 'query' or 'document'")


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbeddingsRequest(ApiRequest):
    model: StrictStr | None = None
    prompt: StrictStr | None = ""  # null is Go's "": a preload
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    # /api/embed's, read the same way here (they were ignored: `truncate: false` truncated,
    # `dimensions` gave the full vector, `input_type: "query"` a document's)
    truncate: StrictBool | None = Field(
        True, description="smysl extension, as /api/embed: false refuses an over-long prompt")
    dimensions: StrictInt | None = Field(None, description="smysl extension, as /api/embed")
    instruction: StrictStr | None = Field(
        None, description="smysl extension: query instruction or task preset name")
    input_type: StrictStr | None = Field(
        None, description="smysl extension: 'query' or 'document'")


class LegacyEmbeddingsResponse(BaseModel):
    embedding: list[float]


class ShowRequest(ApiRequest):
    model: StrictStr | None = None
    name: StrictStr | None = Field(None, description="deprecated alias of model")
    verbose: StrictBool | None = None


#: ``expires_at`` of ``/api/ps``: the model stays loaded as long as the server runs (a
#: far-off time, as Ollama shows a model kept with ``keep_alive: -1``).
NEVER_EXPIRES = "2318-01-01T00:00:00Z"


def listed_name(model_id: str) -> str:
    """The served model as ``/api/tags`` and ``/api/ps`` list it: a local folder or file by
    its last path component, any other name (a Hub id, an alias, ``--served-name``) as is."""
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", "./", "../", "~", "\\")) or path.exists():
        return path.name or model_id
    return model_id


def listed_names(model_id: str, loaded: str) -> list[str]:
    """The names ``/api/tags`` lists the served model (``model_id``, loaded as ``loaded``: its
    backend's name) under, as Ollama lists models: each with its tag (an untagged one as
    ``:latest``: langchain-ollama's ``validate_model_on_init`` refused ``x:latest``, copied
    from ``ollama list``, when the list said ``x``), then the sized Ollama names of the Hub
    repo it was loaded from (``qwen3-embedding:0.6b`` beside ``Qwen/Qwen3-Embedding-0.6B``: a
    client moving from Ollama keeps its name; or of the served name, where it is such a repo),
    one entry each, as Ollama lists a model's tags. The family's bare name gives none
    (``--served-name qwen3-embedding`` on the 8B listed ``qwen3-embedding:0.6b``)."""
    first = listed_name(model_id)
    if ":" not in first.rsplit("/", 1)[-1]:
        first += ":latest"
    return list(dict.fromkeys([first, *sized_aliases(model_id), *sized_aliases(loaded)]))


def parameter_size(count: int | None) -> str:
    """Ollama's ``parameter_size`` (``595.78M``, ``7.57B``); empty when unknown."""
    if not count:
        return ""
    if count >= 10**9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.2f}M"


def num_ctx(options: dict[str, Any] | None) -> tuple[str, int] | None:
    """``options.num_ctx``, the context a request allows (Ollama truncates its inputs to it, or
    refuses them with ``truncate: false``), as ``Service.embed_texts`` takes it; None when not
    given (0 or null: Go's unset). 400 for anything but a whole number."""
    value = (options or {}).get("num_ctx")
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ApiError("invalid", f"options.num_ctx must be a whole number of tokens >= 2 "
                       f"(the text's last token and EOS), got {value!r}", param="options")
    return "options.num_ctx", value


def router(service: Service, fast: FastRoutes) -> APIRouter:
    r = APIRouter(prefix="/api", tags=["ollama"])
    modified = datetime.fromtimestamp(service.started, UTC).isoformat()
    # Not a content hash (the weights stay behind the BaseEmbedder contract): a stable id of the
    # served name, so clients that key caches on the digest see one model.
    digest = hashlib.sha256(service.model_id.encode()).hexdigest()

    def details(model: ModelInfo) -> dict[str, object]:
        # what the model is (a MiniLM served through st: is no qwen3); "" where unknown
        family = model.architecture or ""
        return {"parent_model": "", "format": model.file_format or "", "family": family,
                "families": [family] if family else None,
                "parameter_size": parameter_size(model.parameters),
                "quantization_level": model.quantization_level}

    async def embed_as_asked(body: EmbedRequest | LegacyEmbeddingsRequest, texts: list[str],
                             dims: int, receive: Receive, what: str) -> Embedded:
        """Both embedding routes: their texts checked, embedded with the request's instruction
        extensions and truncation (Ollama's default: on). Any number of them, as Ollama takes:
        past the per-request caps in pieces within them (:meth:`Service.pieces`; a corpus of
        3,000 chunks from langchain-ollama was a 400), each text named by its place in the
        whole request, every piece checked before any is embedded."""
        t0 = time.perf_counter()
        task = service.instruction(body.instruction, body.input_type)
        pieces = service.pieces(texts, task)
        starts: list[int | None] = [p.start for p in pieces] if len(pieces) > 1 else [None]
        for piece, first in zip(pieces, starts, strict=True):
            service.check_texts(texts[piece], what, first=first)
        disconnected, context = until_disconnected(receive), num_ctx(body.options)
        parts = [await service.embed_texts(texts[piece], instruction=task, dimensions=dims,
                                           truncate=body.truncate is not False,
                                           disconnected=disconnected, what=what,
                                           context=context, first=first)
                 for piece, first in zip(pieces, starts, strict=True)]
        return Embedded.joined(parts, time.perf_counter() - t0)

    @fast.post(r, EmbedRequest, "/embed", response_model=EmbedResponse)
    async def embed(body: EmbedRequest, receive: Receive) -> Response:
        """Embed one text or a list (Ollama ``/api/embed``)."""
        # Ollama answers with the model name as the request gave it
        model = service.resolve_model(body.model)
        if body.model and body.model.strip():
            model = body.model
        dims = service.dimensions(body.dimensions or None)
        texts = ([] if body.input is None or body.input == "" else
                 [body.input] if isinstance(body.input, str) else list(body.input))
        if not texts:
            # Ollama answers an empty input with no embeddings: clients use it to preload.
            return json_response({"model": model, "embeddings": [], "total_duration": 0,
                                  "load_duration": 0, "prompt_eval_count": 0})
        result = await embed_as_asked(body, texts, dims, receive, "input")
        return json_response({"model": model, "embeddings": result.vectors,
                              "total_duration": int(result.total_s * 1e9), "load_duration": 0,
                              "prompt_eval_count": result.tokens},
                             headers=service.timing_headers(result))

    @fast.post(r, LegacyEmbeddingsRequest, "/embeddings", response_model=LegacyEmbeddingsResponse)
    async def embeddings(body: LegacyEmbeddingsRequest, receive: Receive) -> Response:
        """Legacy single-prompt embedding (Ollama ``/api/embeddings``)."""
        service.resolve_model(body.model)
        if not body.prompt:
            # Ollama's legacy route answers an empty prompt with an empty embedding (a preload).
            return json_response({"embedding": []})
        dims = service.dimensions(body.dimensions or None)
        result = await embed_as_asked(body, [body.prompt], dims, receive, "prompt")
        return json_response({"embedding": result.vectors[0]},
                             headers=service.timing_headers(result))

    # a local folder or file by its name, as Ollama lists models (a client that checks its
    # model against the list, e.g. langchain-ollama's validate_model_on_init, looked for
    # "tinym" among "/data/tinym"); every route takes that name (Service.names)
    listed = listed_names(service.model_id, service.embedder.name)

    def entry(name: str) -> dict[str, object]:
        info = service.info()
        return {"name": name, "model": name, "modified_at": modified,
                "size": info.file_size or 0, "digest": digest, "details": details(info)}

    @r.get("/tags")
    async def tags() -> Response:
        """The model this server serves, under each of its names (:func:`listed_names`)."""
        return json_response({"models": [entry(name) for name in listed]})

    @r.get("/ps")
    async def ps() -> Response:
        """Models loaded now (Ollama ``/api/ps``, ``ollama ps``): the one served, loaded for
        the life of the server."""
        info = service.info()
        on_gpu = (info.device or "").startswith("cuda")
        return json_response({"models": [entry(listed[0]) | {
            "expires_at": NEVER_EXPIRES, "size_vram": (info.file_size or 0) if on_gpu else 0,
            "context_length": info.max_tokens or 0}]})

    @r.post("/show")
    async def show(body: ShowRequest) -> Response:
        """Model details (Ollama ``/api/show``)."""
        service.resolve_model(body.model if body.model is not None else body.name)
        model = service.info()
        # Ollama's keys are "<architecture>.<field>"; a backend of unknown architecture (a
        # remote API) is named by its scheme
        arch = model.architecture or model.backend
        info: dict[str, object] = {
            "general.architecture": arch,
            "general.basename": service.model_id,
            # what a request without ``dimensions`` gets (``--dimensions``)
            f"{arch}.embedding_length": service.dimensions(None),
        }
        if model.parameters:
            info["general.parameter_count"] = model.parameters
        if model.max_tokens:
            info[f"{arch}.context_length"] = model.max_tokens
        return json_response({"license": "", "modelfile": f"FROM {service.model_id}\n",
                              "parameters": "", "template": "", "details": details(model),
                              "model_info": info, "capabilities": ["embedding"],
                              "modified_at": modified})

    @r.get("/version")
    async def version() -> Response:
        """The Ollama API level emulated."""
        return json_response({"version": OLLAMA_API_VERSION})

    return r
