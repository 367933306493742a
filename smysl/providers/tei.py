"""Hugging Face text-embeddings-inference's native ``POST /embed``.

Request ``{"inputs": [...], "truncate": bool, "truncation_direction": "Right", "normalize"}``;
response: a bare list of rows. TEI reports no token usage, so tokens are counted locally with
the Qwen3 tokenizer. Its ``prompt_name`` is never sent (instructions are applied client-side);
start TEI without ``--default-prompt`` so that documents stay bare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smysl.providers.base import Provider


class TEIProvider(Provider):
    """A TEI server (``ghcr.io/huggingface/text-embeddings-inference``)."""

    SENDS_TRUNCATE = True

    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        # Raw rows: Matryoshka cuts and normalisation happen client-side like everywhere else.
        return {"inputs": texts, "truncate": truncate, "truncation_direction": "Right",
                "normalize": False}

    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], Any]:
        if not isinstance(body, list):
            raise TypeError("response is not a list of rows")
        return body, None
