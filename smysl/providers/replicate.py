"""Replicate's predictions API (``replicate:OWNER/NAME[:VERSION]``).

One batch is one prediction: ``POST /v1/predictions`` with ``{"version", "input"}`` (community
models, which need a version) or ``POST /v1/models/OWNER/NAME/predictions`` with
``{"input"}`` (official models and deployments), sent with ``Prefer: wait=N`` so that a quick
model answers in the same request. A prediction still ``starting``/``processing`` when the wait
ends is polled at its ``urls.get`` until ``succeeded``, ``failed``, ``canceled`` or
``aborted``; one that outlives the call's ``job_timeout`` is cancelled (``urls.cancel``) so that
it stops costing. Replicate bills per prediction (GPU seconds), not per token: see
:data:`smysl.providers.pricing.REQUEST_PRICES`.

A model's input schema is its author's. The default fits ``lucataco/qwen3-embedding-8b`` (the
Qwen3-Embedding-8B on Replicate): ``text`` holds the batch as a JSON array in one string,
``embedding_dim`` the width; the output is ``{"embedding_dim", "embeddings": [[...]]}`` (a bare
list of rows is read too). Other models: ``input_field=``, ``texts_as="list"``,
``dimensions_field=`` (None: not sent) and ``extra_input={...}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from smysl.providers.base import Provider
from smysl.providers.config import ProviderConfig
from smysl.providers.errors import JobTimeoutError, MalformedResponseError, ProviderError
from smysl.providers.retry import Deadline

#: Versions used when a model string names none (community models need one). From public code
#: calling the model, November 2026.
KNOWN_VERSIONS: dict[str, str] = {
    "lucataco/qwen3-embedding-8b":
        "42d968487820032a1535d81ea20df16f442ea308ec5abae6b5d6cf4675eb3e2f",
}
#: Prediction states after which nothing changes.
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
#: End states Replicate bills, whatever the output: the model ran (failed and canceled runs
#: too: replicate.com/docs/topics/predictions/lifecycle). An ``aborted`` one never started.
BILLED = frozenset({"succeeded", "failed", "canceled"})
#: Longest wait Replicate's sync mode allows (seconds), and the longest pause between polls.
_MAX_WAIT, _MAX_POLL = 60, 2.0


@dataclass(frozen=True)
class ReplicateInput:
    """How a batch of texts becomes a model's ``input`` object."""

    #: Input field holding the texts.
    field: str = "text"
    #: ``"json"``: one string holding a JSON array (lucataco's models); ``"list"``: a list.
    texts_as: Literal["json", "list"] = "json"
    #: Input field for the output width (None: not sent).
    dimensions_field: str | None = "embedding_dim"
    #: Further fixed input fields.
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.texts_as not in ("json", "list"):
            raise ValueError(f"texts_as must be 'json' or 'list', got {self.texts_as!r}")
        if not self.field:
            raise ValueError("input_field must be a non-empty string")


class ReplicateProvider(Provider):
    """A Qwen3-Embedding model run as Replicate predictions."""

    OPTIONS = frozenset({"input_field", "texts_as", "dimensions_field", "extra_input"})

    def __init__(self, model: str, config: ProviderConfig, *, input_field: str = "text",
                 texts_as: Literal["json", "list"] = "json",
                 dimensions_field: str | None = "embedding_dim",
                 extra_input: Mapping[str, Any] | None = None, **options: Any) -> None:
        ref, _, version = model.partition(":")
        if ref.count("/") != 1 or not all(ref.split("/")):
            raise ValueError(f"replicate: model must be OWNER/NAME or OWNER/NAME:VERSION, "
                             f"got {model!r}")
        #: ``OWNER/NAME`` and the version id ("" for official models and deployments).
        self.ref, self.version = ref, version or KNOWN_VERSIONS.get(ref.lower(), "")
        self.input = ReplicateInput(input_field, texts_as, dimensions_field,
                                    tuple(sorted((extra_input or {}).items())))
        super().__init__(model, config, **options)
        # without a field for it the width is never sent: wider rows are no Matryoshka prefix
        # the server chose, so they are an error, not cut to the width asked for
        self.sends_dimensions = self.sends_dimensions and dimensions_field is not None

    def request_body(self, texts: list[str], *, truncate: bool) -> dict[str, Any]:
        inp: dict[str, Any] = dict(self.input.extra)
        inp[self.input.field] = (json.dumps(texts, ensure_ascii=False)
                                 if self.input.texts_as == "json" else texts)
        if self.input.dimensions_field and self._width is not None:
            # The model's default width may be smaller than its native one: always ask.
            inp[self.input.dimensions_field] = self._width
        body: dict[str, Any] = {"input": inp}
        if self.version:
            body["version"] = self.version
        return body

    def parse_response(self, body: Any, n: int) -> tuple[Sequence[Sequence[float]], Any]:
        """``body`` is the prediction's ``output``."""
        rows = body.get("embeddings") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            raise TypeError("output has no list of embeddings")
        return rows, None

    def _request(self, texts: list[str], *, truncate: bool, positions: list[int] | None = None,
                 deadline: Deadline | None = None) -> np.ndarray:
        cfg, n = self.config, len(texts)
        budget = min(cfg.timeout, deadline.remaining() if deadline is not None else cfg.timeout)
        wait = int(max(1, min(_MAX_WAIT, budget - 1)))  # the POST must end within our limit
        path = cfg.path if self.version else f"/models/{self.ref}/predictions"
        pred = self._http.post(self.request_body(texts, truncate=truncate), n, read=_prediction,
                               sleep=self.sleep, deadline=deadline, path=path,
                               headers={"Prefer": f"wait={wait}"})
        pause = 0.25
        ours = False  # the loop stopped it (the client counts the failures it raised)
        try:
            while pred["status"] not in TERMINAL:
                if deadline is not None and deadline.remaining() <= pause:
                    ours = True
                    raise deadline.error()
                self.sleep(pause)
                pause = min(2 * pause, _MAX_POLL)
                pred = self._http.request("GET", _at(pred), None, n, read=_prediction,
                                          sleep=self.sleep, deadline=deadline)
        except JobTimeoutError:
            # stop paying for a prediction nobody will read
            self._http.fire("POST", f"{_at(pred)}/cancel", min(cfg.connect_timeout, 5.0))
            if pred["status"] == "processing":  # it ran until canceled: billed (BILLED)
                self._record(texts, None)
            if ours:
                self.usage.record_failure()
            raise
        if pred["status"] in BILLED:  # before its output is read: a bad one was paid for too
            self._record(texts, None)
        if pred["status"] != "succeeded":
            self.usage.record_failure()
            raise ProviderError(f"{self.name}: prediction {pred.get('id')} {pred['status']}: "
                                f"{pred.get('error') or 'no error message'}",
                                reason=f"the prediction {pred['status']}")
        try:
            rows, _ = self.parse_response(pred.get("output"), n)  # Replicate reports no tokens
            return self._check(rows, n, positions)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            self.usage.record_failure()
            raise MalformedResponseError(f"{self.name}: prediction {pred.get('id')}: malformed "
                                         f"output ({e})") from e


def _prediction(body: Any, n: int) -> dict[str, Any]:
    """A prediction object, checked for what the polling loop reads (ValueError: malformed)."""
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise ValueError("not a prediction object")
    if body["status"] not in TERMINAL and not (isinstance(body.get("id"), str) and body["id"]):
        raise ValueError(f"prediction is {body['status']} without an id")
    return body


def _at(prediction: dict[str, Any]) -> str:
    """The path of a prediction under the base URL (``GET /predictions/{id}``, ``POST
    .../cancel``). Not its ``urls.get``: the API key goes with every request, and an answer
    naming another host (or ``http://``) had it sent there; behind a proxy the answer's URLs
    name Replicate, past the proxy."""
    return f"/predictions/{quote(prediction['id'], safe='')}"
