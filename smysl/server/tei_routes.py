"""Text Embeddings Inference (TEI) compatible routes: ``/embed`` (also ``POST /`` and
``/invocations``, as TEI serves an embedding model there: ``huggingface_hub``'s
``InferenceClient(model=URL)`` posts to the URL itself), ``/tokenize``, ``/info``, ``/health``.

``prompt_name`` takes ``query`` (the model's default query instruction), ``document``, or any task
preset name from :data:`smysl.prompts.TASK_PRESETS`. ``/tokenize`` offsets are UTF-8 byte
offsets into the (prompted) text, as TEI's are.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import anyio
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.types import Receive

from smysl.prompts import TASK_PRESETS
from smysl.server.errors import ApiError
from smysl.server.fast import FastRoutes
from smysl.server.http import json_response
from smysl.server.service import Service, until_disconnected

Direction = Literal["right", "left", "Right", "Left"]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr] = Field(description="text or list of texts")
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(None, description="default: false (no auto-truncate)")
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Info(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, dict[str, str]]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None
    #: smysl's addition: the CPU and the features that chose its compute path (local CPU engine).
    cpu: str | None = None
    #: smysl's addition: token counts of the batch shapes replayed as CUDA graphs.
    cuda_graphs: list[int] | None = None
    #: smysl's addition: what the linear layers run (``onednn``, ``onednn-int8``...).
    kernel: str | None = None
    #: smysl's addition: tokens per slice of the engine's per-token work, and when ``smysl
    #: tune`` measured it on this machine (None: the defaults).
    slice_tokens: int | None = None
    tuned_at: str | None = None
    #: smysl's addition: torch's CPU threads of a local CPU engine.
    threads: int | None = None
    #: smysl's addition: batches of a bulk call a local CPU engine computes at once.
    lanes: int | None = None


def router(service: Service, fast: FastRoutes) -> APIRouter:
    r = APIRouter(tags=["tei"])
    emb = service.embedder

    def instruction(prompt_name: str | None) -> str | None:
        if prompt_name is None:
            return None
        name = prompt_name.strip().lower()
        if name == "query":
            return service.instruction(None, "query")
        if name in ("document", "passage", ""):
            return None
        if name in TASK_PRESETS:
            return service.instruction(name, None)
        raise ApiError("invalid", f"prompt_name {prompt_name!r} is unknown; use 'query', "
                       f"'document' or one of {sorted(TASK_PRESETS)}", param="prompt_name")

    @fast.post(r, EmbedRequest, "/embed", "/", "/invocations",
               response_model=list[list[float]])
    async def embed(body: EmbedRequest, receive: Receive) -> Response:
        """Embed one text or a list (TEI ``/embed``; ``POST /`` and ``/invocations`` take
        the same body)."""
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        service.check_texts(texts, "inputs")
        dims = service.dimensions(body.dimensions)
        result = await service.embed_texts(
            texts, instruction=instruction(body.prompt_name), dimensions=dims,
            truncate=bool(body.truncate), normalize=body.normalize,
            direction="left" if body.truncation_direction.lower() == "left" else "right",
            what="inputs",
            disconnected=until_disconnected(receive))
        return json_response(result.vectors, headers=service.timing_headers(result))

    @r.post("/tokenize", response_model=list[list[SimpleToken]])
    async def tokenize(body: TokenizeRequest) -> Response:
        """Tokens of each input with byte offsets (TEI ``/tokenize``)."""
        tokens = service.tokens
        if tokens is None:
            raise ApiError("not_implemented",
                           f"model {service.model_id!r} has no local tokenizer to show")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        # refuses huge bodies before tokenising; "" has tokens to show (TEI shows them)
        service.check_texts(texts, "inputs", empty_ok=True)
        formatted = emb.format_texts(texts, instruction(body.prompt_name))

        def work() -> list[list[dict[str, object]]]:
            # the token cap before any per-token Python object is made (they cost ~0.5 KB each)
            service.check_tokens(emb.count_tokens(formatted), "inputs")
            spans = tokens.token_spans(formatted, add_special_tokens=body.add_special_tokens)
            return [[dataclasses.asdict(t) for t in row] for row in spans]

        # tokenising a large request takes long enough to stall other clients: off the loop
        out = await anyio.to_thread.run_sync(work, limiter=service.tokenizers)
        return json_response(out)

    @r.get("/info", response_model=Info)
    async def info() -> Response:
        """Model and router settings (TEI ``/info``)."""
        from smysl import __version__

        cfg = service.config
        model = service.info()
        return json_response({
            "model_id": model.name, "model_sha": None,
            "model_dtype": model.dtype or "unknown",
            "model_type": {"embedding": {"pooling": model.pooling}},
            # the server's, not this worker's: each of --workers queues its own max_queue
            "max_concurrent_requests": cfg.max_queue * cfg.workers,
            "max_input_length": model.max_tokens or 0,
            "max_batch_tokens": service.batcher.max_batch_tokens,
            "max_batch_requests": cfg.max_batch_requests,
            "max_client_batch_size": cfg.max_inputs,
            "auto_truncate": False,
            "tokenization_workers": cfg.workers,  # each worker tokenises its own requests
            "version": __version__, "sha": None, "docker_label": None, "cpu": model.cpu,
            "cuda_graphs": model.cuda_graphs, "kernel": model.kernel,
            "slice_tokens": model.slice_tokens, "tuned_at": model.tuned_at,
            "threads": model.threads, "lanes": model.lanes,
        })

    # "/" and "/ping": the probes of TEI (SageMaker pings next to /invocations) and of the
    # Ollama client, which checks the server with ``HEAD /`` before its commands
    @r.get("/", include_in_schema=False)
    @r.get("/ping", include_in_schema=False)
    @r.get("/health")
    async def health() -> Response:
        """200 while the server takes requests; 503 once it is shutting down or its model
        backend is down."""
        if not service.batcher.healthy:
            raise ApiError("shutting_down", "the server is shutting down")
        if not service.check_backend():
            raise service.unavailable()
        return Response(status_code=200)

    return r
