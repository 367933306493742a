"""Text Embeddings Inference (TEI) compatible routes: ``/embed``, ``/similarity``, ``/tokenize``,
``/decode``, ``/info`` (``/health`` is the app's: it covers a reranker served beside).
``POST /`` and ``/invocations`` take an ``/embed`` body, as
TEI serves an embedding model there, or a ``/similarity`` body (``{"inputs": {"source_sentence",
"sentences"}}``, what TEI serves there under ``TASK=sentence-similarity``): ``huggingface_hub``'s
``InferenceClient(model=URL)`` posts both its ``feature_extraction`` and its
``sentence_similarity`` to the URL itself.

``prompt_name`` takes ``query`` (the model's default query instruction), ``document``, or any task
preset name from :data:`smysl.prompts.TASK_PRESETS`. ``/tokenize`` offsets are UTF-8 byte
offsets into the (prompted) text, as TEI's are. ``/embed`` takes token ids where TEI does, on a
server started with ``--token-ids`` (the one rule for token-id input, :meth:`Service.embed_ids`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
)
from starlette.types import Receive

from smysl.prompts import TASK_PRESETS
from smysl.server.config import ServerConfig
from smysl.server.errors import ApiError
from smysl.server.fast import FastRoutes
from smysl.server.http import ApiRequest, json_response
from smysl.server.service import Service, split_inputs, until_disconnected

Direction = Literal["right", "left", "Right", "Left"]

log = logging.getLogger("smysl.server")


class EmbedRequest(ApiRequest):
    inputs: StrictStr | list[StrictStr | list[StrictInt]] | list[StrictInt] = Field(
        description="text or list of texts; token ids or lists of them (--token-ids)")
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(None, description="default: false (no auto-truncate)")
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None
    # the other routes' extensions (they were ignored here: a document vector for a query);
    # prompt_name says the same, so not both
    instruction: StrictStr | None = Field(
        None, description="smysl extension: query instruction or task preset name")
    input_type: StrictStr | None = Field(
        None, description="smysl extension: 'query' or 'document'")


class SimilarityInput(ApiRequest):
    source_sentence: StrictStr
    sentences: list[StrictStr] = Field(description="compared with source_sentence")


class SimilarityParameters(ApiRequest):
    prompt_name: StrictStr | None = None
    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"


class SimilarityRequest(ApiRequest):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


def _root_kind(body: object) -> str:
    inputs = (body.get("inputs") if isinstance(body, dict)
              else body.inputs if isinstance(body, EmbedRequest | SimilarityRequest) else None)
    return "similarity" if isinstance(inputs, dict | SimilarityInput) else "embed"


#: The tags of :class:`RootRequest`'s two shapes (in a validation error's location).
ROOT_TAGS = frozenset({"embed", "similarity"})


class RootRequest(RootModel[Annotated[Annotated[EmbedRequest, Tag("embed")]
                                      | Annotated[SimilarityRequest, Tag("similarity")],
                                      Discriminator(_root_kind)]]):
    """``POST /`` and ``/invocations``: an ``/embed`` or a ``/similarity`` body, told apart
    by ``inputs`` (an object only in the latter; a bad body is reported against the one its
    ``inputs`` picks)."""


class DecodeRequest(ApiRequest):
    ids: list[StrictInt] | list[list[StrictInt]] = Field(
        description="token ids, or lists of them")
    skip_special_tokens: StrictBool = True


class TokenizeRequest(ApiRequest):
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
    #: The name clients send (TEI's ``--served-model-name``; here the served model's id).
    served_model_name: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, dict[str, Any]]
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
    #: smysl's addition: the served model's fingerprint (``BaseEmbedder.fingerprint``: a hash
    #: of its weights and numerics, not its name); a ``smysl:`` client reports it as its own,
    #: so an index built in process opens through the server of the same weights.
    fingerprint: str | None = None
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

    def direction(value: str) -> Literal["right", "left"]:
        return "left" if value.lower() == "left" else "right"

    async def embed_body(body: EmbedRequest, receive: Receive) -> Response:
        texts, ids = split_inputs(body.inputs, "inputs")
        # an empty extension field is an absent one, as on the other routes
        if body.prompt_name is not None and ((body.instruction or "").strip()
                                             or (body.input_type or "").strip()):
            raise ApiError("invalid", "prompt_name, and instruction or input_type, both say "
                           "what the inputs are; send one of them", param="prompt_name")
        task = (instruction(body.prompt_name) if body.prompt_name is not None
                else service.instruction(body.instruction, body.input_type))
        dims = service.dimensions(body.dimensions)
        if texts is not None:
            service.check_texts(texts, "inputs")
            result = await service.embed_texts(
                texts, instruction=task, dimensions=dims, truncate=bool(body.truncate),
                normalize=body.normalize, direction=direction(body.truncation_direction),
                what="inputs", disconnected=until_disconnected(receive))
        else:
            if task is not None:
                raise ApiError("invalid", "a query's instruction (prompt_name, instruction or "
                               "input_type) applies to text input only; apply the query "
                               "template before tokenising",
                               param="prompt_name" if body.prompt_name is not None
                               else "instruction")
            result = await service.embed_ids(
                ids, dimensions=dims, truncate=bool(body.truncate), normalize=body.normalize,
                direction=direction(body.truncation_direction), what="inputs",
                disconnected=until_disconnected(receive))
        return json_response(result.vectors, headers=service.timing_headers(result))

    async def similarity_body(body: SimilarityRequest, receive: Receive) -> Response:
        inputs, params = body.inputs, body.parameters or SimilarityParameters()
        if not inputs.sentences:
            raise ApiError("empty", "inputs.sentences must not be empty", param="inputs")
        texts = [inputs.source_sentence, *inputs.sentences]
        service.check_texts(texts, "inputs")
        result = await service.embed_texts(
            texts, instruction=instruction(params.prompt_name),
            dimensions=service.dimensions(None), truncate=bool(params.truncate),
            direction=direction(params.truncation_direction), what="inputs",
            disconnected=until_disconnected(receive))
        v = result.vectors  # unit rows: their dot products are the cosines
        cosines = (v[1:].astype(np.float64) @ v[0].astype(np.float64)).astype(np.float32)
        return json_response(cosines, headers=service.timing_headers(result))

    @fast.post(r, EmbedRequest, "/embed", response_model=list[list[float]])
    async def embed(body: EmbedRequest, receive: Receive) -> Response:
        """Embed one text or a list (TEI ``/embed``); token ids on a server started with
        ``--token-ids``."""
        return await embed_body(body, receive)

    @fast.post(r, SimilarityRequest, "/similarity", response_model=list[float])
    async def similarity(body: SimilarityRequest, receive: Receive) -> Response:
        """Cosine similarity of ``source_sentence`` to each of ``sentences`` (TEI
        ``/similarity``; the server's default dimensions)."""
        return await similarity_body(body, receive)

    @fast.post(r, RootRequest, "/", "/invocations",
               response_model=list[list[float]] | list[float])
    async def root(body: RootRequest, receive: Receive) -> Response:
        """An ``/embed`` or a ``/similarity`` body (TEI's routes for the model's task)."""
        if isinstance(body.root, SimilarityRequest):
            return await similarity_body(body.root, receive)
        return await embed_body(body.root, receive)

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

        # a large request off the loop (it would stall other clients), admitted as /embed is
        out = await service.tokenizer_work(work, sum(map(len, formatted)))
        return json_response(out)

    @r.post("/decode", response_model=list[str])
    async def decode(body: DecodeRequest) -> Response:
        """The text of token ids (TEI ``/decode``)."""
        # a flat list is one sequence (an empty one too: TEI decodes it to "")
        batch = split_inputs(body.ids, "ids")[1] if body.ids else [[]]
        return json_response(await service.decode(
            batch, skip_special_tokens=body.skip_special_tokens))

    @r.post("/embed_all", include_in_schema=False)
    @r.post("/embed_sparse", include_in_schema=False)
    async def not_served(request: Request) -> Response:
        """TEI routes for what this model does not give: said, not a bare 404."""
        what = ("every token's hidden state" if request.url.path == "/embed_all"
                else "sparse (SPLADE) vectors")
        raise ApiError("not_implemented", f"{request.url.path} is not served: model "
                       f"{service.model_id!r} gives pooled vectors ({service.info().pooling} "
                       f"pooling), not {what}; use /embed")

    @r.get("/info", response_model=Info)
    async def info() -> Response:
        """Model and router settings (TEI ``/info``)."""
        model = service.info()
        # computed once (file windows read: off the event loop); a `smysl:` upstream asks its
        # server, which may be down: /info still answers (TEI clients poll it), with null
        try:
            fingerprint = await anyio.to_thread.run_sync(service.embedder.fingerprint)
        except Exception as e:
            log.warning("/info: no fingerprint of %r: %s", model.name, e)
            fingerprint = None
        return json_response(info_body(
            service.config, name=model.name, dtype=model.dtype,
            model_type={"embedding": {"pooling": model.pooling}},
            max_input_length=model.max_tokens, max_batch_tokens=service.batcher.max_batch_tokens,
            cpu=model.cpu, cuda_graphs=model.cuda_graphs, kernel=model.kernel,
            slice_tokens=model.slice_tokens, tuned_at=model.tuned_at, threads=model.threads,
            lanes=model.lanes, fingerprint=fingerprint))

    return r


def info_body(cfg: ServerConfig, *, name: str, dtype: str | None,
              model_type: dict[str, dict[str, Any]], max_input_length: int | None,
              max_batch_tokens: int, **engine: Any) -> dict[str, Any]:
    """TEI's ``/info`` of a served model (the embedding model, or a reranker served alone);
    ``engine``: smysl's additions (cpu, kernel, slice_tokens... of a local engine)."""
    from smysl import __version__

    return {
        "model_id": name, "served_model_name": name, "model_sha": None,
        "model_dtype": dtype or "unknown", "model_type": model_type,
        # the server's, not this worker's: each of --workers queues its own max_queue
        "max_concurrent_requests": cfg.max_queue * cfg.workers,
        "max_input_length": max_input_length or 0, "max_batch_tokens": max_batch_tokens,
        "max_batch_requests": cfg.max_batch_requests, "max_client_batch_size": cfg.max_inputs,
        "auto_truncate": False,
        "tokenization_workers": cfg.workers,  # each worker tokenises its own requests
        "version": __version__, "sha": None, "docker_label": None, **engine,
    }
