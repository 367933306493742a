"""Small HTTP helpers shared by the route modules."""

from __future__ import annotations

import difflib
import itertools
import json
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from smysl.shown import nan_as_null


def json_response(body: object, *, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """Serialise with orjson, numpy arrays included: a 1,024-d vector costs ~20 us instead of
    ~0.4 ms through ``json.dumps`` of a list, which capped a GPU server at ~670 requests/s
    (docs/benchmarks.md). float32 values are written in their shortest round-tripping form, so
    they parse back to the identical float32. Vectors are finite (the service checks)."""
    try:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        # an integer past 64 bits (a document's metadata, which an index keeps as given):
        # every /search that met it was a 500; Python's json writes any int
        data = json.dumps(nan_as_null(body), default=_plain, ensure_ascii=False).encode()
    return Response(data, status_code=status_code, headers=headers,
                    media_type="application/json")


def _plain(value: object) -> object:
    """numpy's arrays and scalars as Python's, for :func:`json.dumps`."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")



#: Other APIs' names of a field the routes read (Voyage's and Cohere's ``output_dimension``,
#: Gemini's ``output_dimensionality``, sentence-transformers' ``truncate_dim``; Ollama's
#: ``prompt`` of the legacy ``/api/embeddings`` and ``input`` of ``/api/embed``, each sent
#: to the other route: an empty list of vectors came back, 200); near misses (``dimension``,
#: ``normalise``) are found by spelling. Not Voyage's ``truncation``: its SDK sends it on
#: every call (true), and the routes' own refusal of an over-long input says what to do.
SAME_MEANING = {"output_dimension": "dimensions", "output_dimensionality": "dimensions",
                "dims": "dimensions", "dim": "dimensions", "embedding_dim": "dimensions",
                "truncate_dim": "dimensions", "prompt": "input", "input": "prompt"}
#: Unknown keys of one body looked at (difflib's search costs ~5 us a key: a body of 100,000
#: unknown keys held the event loop for 0.9 s).
NEAR_MISS_KEYS = 16


class ApiRequest(BaseModel):
    """A request body of an API the server speaks. Fields it does not read are ignored (SDKs
    send their API's others), but a misspelling of one it reads, or another API's name for
    it, is refused with the right name: ``{"dimension": 256}`` gave the full-size vector as if
    no size had been asked for."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _near_misses(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        # a null asks for nothing (an SDK's unset option); a key far longer than any field
        # cannot be a near miss of one (a 0.8 ratio needs lengths within 1.5x)
        unknown = (k for k, v in data.items() if v is not None and isinstance(k, str)
                   and k not in fields and len(k) <= 48)
        for key in itertools.islice(unknown, NEAR_MISS_KEYS):
            meant = SAME_MEANING.get(key)
            if meant not in fields:
                meant = next(iter(difflib.get_close_matches(key, list(fields), n=1,
                                                            cutoff=0.8)), None)
            if meant is not None and data.get(meant) is None:  # a null sends nothing
                # no context given: pydantic leaves the message as it is (braces too)
                raise PydanticCustomError(
                    "unknown_field", f"unknown field {key!r}: did you mean {meant!r}? (fields "
                    "this server does not read are ignored, and this one would have been)")
        return data
