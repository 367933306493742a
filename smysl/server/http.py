"""Small HTTP helpers shared by the route modules."""

from __future__ import annotations

import json

from starlette.responses import Response


def json_response(body: object, *, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """Serialise with the stdlib directly: vectors are plain lists already, and skipping
    FastAPI's generic encoder matters for large responses. Python's float repr round-trips,
    so a float32 sent this way parses back to the identical float32."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(data.encode("utf-8"), status_code=status_code, headers=headers,
                    media_type="application/json")
