"""OpenAI-shaped ``POST {base}/embeddings``: OpenAI itself, OpenRouter, DashScope compatible
mode, DeepInfra, Fireworks, SiliconFlow, vLLM/llama.cpp servers and ``smysl serve``.

Request ``{"model", "input": [...], "encoding_format": "float"[, "dimensions"]}``; response
``{"data": [{"index", "embedding"}], "usage": {"prompt_tokens", "total_tokens"}}``.
Inputs are sent exactly as formatted (the query instruction is already in the text); no
provider-side prompt option is used.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np

from smysl.providers.base import Provider
from smysl.providers.errors import BilledAnswerError, PayloadTooLargeError, ProviderHTTPError
from smysl.providers.retry import RETRYABLE_STATUS, Deadline
from smysl.providers.usage import reported_count


class OpenAIProvider(Provider):
    """Any OpenAI-compatible embeddings endpoint."""

    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        dimensions = self.sent_dimensions()  # once: another batch may change it meanwhile
        if dimensions is not None:
            body["dimensions"] = dimensions
        return body

    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], Any]:
        if not isinstance(body, dict):  # a list, a string: malformed (and retried)
            raise TypeError(f"the answer is a {type(body).__name__}, not an object")
        if "data" not in body and body.get("error"):
            raise self._error_in_body(body)
        usage = body.get("usage")
        tokens = None
        if isinstance(usage, dict):
            # Embeddings have no output tokens, so total_tokens is the input count too: the one
            # to read where prompt_tokens is missing or null (some OpenAI-compatible servers).
            tokens = reported_count(usage.get("prompt_tokens"))
            if tokens is None:
                tokens = reported_count(usage.get("total_tokens"))
        # rows that cannot be placed are refused with the usage read first: the answer was
        # billed (it went unrecorded, or recorded, by which row was wrong)
        data = body["data"]
        if not isinstance(data, list):
            raise BilledAnswerError("'data' is not a list", tokens)
        if len(data) != n:
            raise BilledAnswerError(f"{len(data)} embeddings for {n} inputs", tokens)
        rows: list[Any] = [None] * len(data)
        for pos, item in enumerate(data):
            if not isinstance(item, dict):  # null: an AttributeError, not retried, before
                raise BilledAnswerError(f"data[{pos}] is not an object", tokens)
            # ``index`` says which input a row belongs to; servers may return them shuffled.
            idx = item.get("index", pos)
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(data):
                raise BilledAnswerError(f"data[{pos}] has a bad index", tokens)
            if rows[idx] is not None:
                raise BilledAnswerError(f"index {idx} appears twice", tokens)
            emb = item["embedding"]
            if isinstance(emb, str):  # encoding_format=base64 from servers that ignore ours
                emb = np.frombuffer(base64.b64decode(emb), dtype="<f4")
            rows[idx] = emb  # checked, with the rest, by ``rows.check_rows``
        return rows, tokens

    def _error_in_body(self, body: dict[str, Any]) -> Exception:
        """An error an upstream answered with status 200 (OpenRouter does, with the HTTP code
        inside): one whose code is not worth retrying stops the call as that status would
        (a 402 for credits was retried as a malformed answer until the retries ran out);
        any other is a malformed answer, retried."""
        error = body["error"]
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message", error) if isinstance(error, dict) else error
        # the upstream's words, without this client's secrets (one that echoes the key)
        message = self._http.shown(str(message))
        if code == 413:  # as the status: the batch is split
            return PayloadTooLargeError(f"{self.name}: request too large (413, in a 200 "
                                        f"answer): {str(message)[:300]}", 413,
                                        self._http.shown(json.dumps(body)))
        if (isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600
                and code not in RETRYABLE_STATUS):
            return ProviderHTTPError(f"{self.name}: HTTP 200 carrying an error {code}: "
                                     f"{str(message)[:300]}", code,
                                     self._http.shown(json.dumps(body)))
        return ValueError(f"an error in a 200 answer: {str(message)[:300]}")


class SmyslProvider(OpenAIProvider):
    """Another ``smysl serve``: its OpenAI route plus the ``truncate`` extension it accepts,
    and the served model's own fingerprint (its ``/info``)."""

    SENDS_TRUNCATE = True
    _served: str | None = None  # the served model's fingerprint, once asked

    def fingerprint(self) -> str:
        """The fingerprint the server publishes for its model (a hash of the weights and
        numerics), so that an index built in process opens through a server of the same
        weights whatever name reaches it, and one of other weights or numerics (``--quantize
        int8``) is refused; asked once. A server that publishes none (an older smysl, another
        OpenAI-compatible one): the name's, as for other APIs. An unreachable one raises."""
        if self._served is None:
            parts = urllib.parse.urlsplit(self.base_url)
            root = parts.path.rstrip("/").removesuffix("/v1")  # /info is beside /v1
            url = urllib.parse.urlunsplit(parts._replace(path=root + "/info", query="",
                                                         fragment=""))
            try:
                got = self._http.request(
                    "GET", url, None, 0, sleep=self.sleep,
                    read=lambda body, _: body.get("fingerprint") if isinstance(body, dict)
                    else None, deadline=Deadline(self.config.timeout, self.name))
            except ProviderHTTPError as e:
                if e.status != 404:
                    raise
                got = None
            self._served = got if isinstance(got, str) and got else super().fingerprint()
        return self._served

    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        # Inputs carry their instruction already, so no ``instruction``/``input_type`` is sent:
        # the server embeds them as documents, i.e. exactly as given.
        return {**super().request_body(texts, truncate=truncate), "truncate": truncate}
