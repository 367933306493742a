"""Ollama's native ``POST /api/embed``.

Request ``{"model", "input": [...], "truncate": bool}`` (and ``dimensions`` when a width is
asked for); response
``{"model", "embeddings": [[...]], "total_duration", "load_duration", "prompt_eval_count"}``.
``truncate`` is always sent because Ollama truncates silently by default, which would hide
over-long inputs that the local engine rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smysl.providers.base import Provider


class OllamaProvider(Provider):
    """A model served by Ollama (``ollama pull qwen3-embedding:0.6b``)."""

    SENDS_TRUNCATE = True

    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "truncate": truncate}
        dimensions = self.sent_dimensions()  # once: another batch may change it meanwhile
        if dimensions is not None:  # Ollama 0.11+; older ones answer full rows, cut here
            body["dimensions"] = dimensions
        return body

    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], Any]:
        rows = body["embeddings"]
        if not isinstance(rows, list):
            raise TypeError("'embeddings' is not a list")
        tokens = body.get("prompt_eval_count")
        return rows, tokens
