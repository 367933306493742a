"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``
(these two list the reranker too).

Extensions (ignored by OpenAI's own API, accepted here): ``instruction`` (a task description or
preset name; makes the inputs queries), ``input_type`` (``query`` or ``document``) and
``truncate`` (OpenAI never truncates; default false).
"""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.types import Receive

from smysl.server.errors import ApiError
from smysl.server.fast import FastRoutes
from smysl.server.http import ApiRequest, json_response
from smysl.server.rerank_routes import RerankService
from smysl.server.service import Service, split_inputs, until_disconnected

Input = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(ApiRequest):
    """OpenAI's embeddings request plus smysl's extensions."""

    input: Input = Field(description="text, list of texts, token ids, or lists of token ids")
    model: StrictStr | None = Field(None, description="served model name (any alias)")
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: StrictInt | None = Field(None, description="Matryoshka output size")
    user: StrictStr | None = None
    instruction: StrictStr | None = Field(
        None, description="smysl extension: query instruction or task preset name")
    # any case, as the Ollama and TEI routes read it ("Query" was a 422 here alone)
    input_type: StrictStr | None = Field(
        None, description="smysl extension: embed inputs as queries or documents ('query', "
                          "'document' or 'passage', any case)")
    truncate: StrictBool = Field(False, description="smysl extension: truncate over-long input")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    dimensions: int | None = Field(description="the width a request without dimensions gets "
                                               "(null for a reranker)")
    max_model_len: int | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def router(service: Service, fast: FastRoutes) -> APIRouter:
    r = APIRouter(tags=["openai"])  # no prefix: /embeddings is an alias, as in TEI

    @fast.post(r, EmbeddingRequest, "/v1/embeddings", "/embeddings",
               response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingRequest, receive: Receive) -> Response:
        """Create embeddings (OpenAI ``embeddings.create``)."""
        model = service.resolve_model(body.model)
        dims = service.dimensions(body.dimensions)
        texts, ids = split_inputs(body.input)
        if texts is not None:
            service.check_texts(texts)
            task = service.instruction(body.instruction, body.input_type)
            result = await service.embed_texts(texts, instruction=task, dimensions=dims,
                                               truncate=body.truncate,
                                               disconnected=until_disconnected(receive))
        else:
            if service.instruction(body.instruction, body.input_type) is not None:
                raise ApiError("invalid", "instruction and input_type 'query' apply to text "
                               "input only; apply the query template before tokenising",
                               param="instruction")
            result = await service.embed_ids(ids, dimensions=dims, truncate=body.truncate,
                                             disconnected=until_disconnected(receive))
        vectors = result.vectors
        if body.encoding_format == "base64":
            # float32 little-endian bytes, as OpenAI returns them and its SDK decodes them
            le = vectors.astype("<f4", copy=False)
            emb: list[object] = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
        else:
            emb = list(vectors)  # rows as numpy arrays: orjson writes them directly
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(emb)]
        return json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": result.tokens,
                                        "total_tokens": result.tokens}},
                             headers=service.timing_headers(result))

    return r


def models_router(service: Service | None, reranking: RerankService | None) -> APIRouter:
    """``GET /v1/models`` and ``/v1/models/{id}``: every served model, the embedding model first
    (as vLLM lists the reranker it serves: clients pick a model from this list)."""
    r = APIRouter(tags=["openai"])
    started = int(service.started if service is not None else time.time())

    def cards() -> list[dict[str, object]]:
        # OpenAI's fields, plus the width and context that vLLM-style clients read: the width
        # a request without ``dimensions`` gets (``--dimensions``), which sizes their stores
        out: list[dict[str, object]] = []
        if service is not None:
            out.append({"id": service.model_id, "object": "model", "created": started,
                        "owned_by": "smysl", "dimensions": service.dimensions(None),
                        "max_model_len": service.info().max_tokens})
        if reranking is not None:
            out.append({"id": reranking.model_id, "object": "model", "created": started,
                        "owned_by": "smysl", "dimensions": None,
                        "max_model_len": reranking.reranker.info().max_tokens})
        return out

    @r.get("/v1/models", response_model=ModelList)
    async def models() -> Response:
        """The served models."""
        return json_response({"object": "list", "data": cards()})

    @r.get("/v1/models/{model:path}", response_model=ModelCard)
    async def model(model: str) -> Response:
        """One model, if it is a served one (404 otherwise)."""
        served = [s for s in (service, reranking) if s is not None]
        refusals = []
        for s, card in zip(served, cards(), strict=True):
            try:
                s.resolve_model(model)
            except ApiError as e:
                refusals.append(e)
                continue
            return json_response(card)
        if len(refusals) == 1:
            raise refusals[0]
        raise ApiError("not_found", f"model {model!r} is not served here; this server serves "
                       f"{[c['id'] for c in cards()]}", param="model")

    return r
