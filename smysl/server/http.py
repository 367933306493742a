"""Small HTTP helpers shared by the route modules."""

from __future__ import annotations

import json

import numpy as np
import orjson
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

