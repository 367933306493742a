"""A loopback fake of the embedding APIs smysl talks to, with fault injection.

One threaded HTTP server on 127.0.0.1 (random port) answers the documented shapes:

* OpenAI-style ``POST .../embeddings`` (OpenAI, OpenRouter, DashScope compatible mode,
  DeepInfra, Fireworks, SiliconFlow, smysl): ``{"data": [{"object", "index", "embedding"}],
  "model", "object": "list", "usage": {"prompt_tokens", "total_tokens"}}``; honours
  ``dimensions`` (first d components, re-normalised); ``max_inputs`` answers DashScope's 400
  for too many rows.
* Ollama ``POST /api/embed``: ``{"model", "embeddings", "total_duration", "load_duration",
  "prompt_eval_count"}``.
* TEI ``POST /embed``: a bare list of rows; 413 past ``max_client_batch_size``; no usage.
* Replicate ``POST /v1/predictions`` (``{"version", "input": {"text": "<JSON array>",
  "embedding_dim"}}``), ``GET /v1/predictions/{id}`` and ``POST .../cancel``: answered at once
  (``Prefer: wait``), after ``replicate_polls`` polls, or failed (``replicate_error``).

Rerank routes (scores are :func:`rerank_score` of the query, the document and the
instruction, if any; lists are answered best first and cut to ``top_n`` when it is sent):

* Cohere ``POST /v2/rerank``: ``{"id", "results": [{"index", "relevance_score"}], "meta":
  {"api_version", "billed_units": {"search_units"}}}``, one search unit per 100 documents.
* Jina/SiliconFlow/smysl-style ``POST .../v1/rerank``: ``{"id", "model", "results", "usage":
  {"total_tokens"}, "tokens": {"input_tokens", "output_tokens"}}`` (``instruction``: SiliconFlow's
  and smysl's field).
* TEI ``POST /rerank`` (``texts``): a bare ``[{"index", "score"}]``; 413 past
  ``max_client_batch_size``.
* DeepInfra ``POST /v1/inference/{model}``: ``{"queries", "documents"}`` of equal length ->
  ``{"scores", "input_tokens", "request_id", "inference_status"}`` in input order.
* DashScope ``POST /compatible-api/v1/reranks`` (``instruct``) -> ``{"results", "usage"}`` and
  ``POST /api/v1/services/rerank/text-rerank/text-rerank`` (``input``, ``parameters``) ->
  ``{"output": {"results"}, "usage", "request_id"}``.

``rerank_max_docs`` answers 400 to a rerank request with more documents (an API's per-request
maximum); every rerank request bills the tokens of its "query document" pairs.

Faults: scripted per request (:class:`Fault`: status, delay, a dropped socket, a body that
drips in byte by byte, an edited body) or random (``p429``, ``p500``, ``pdrop``); ``too_large``
answers 413 past that many inputs (a server whose limit is below the client's); ``refuse`` answers
400 to a request holding a text it refuses (an input the API will not take).

Vectors are a deterministic function of the text (or of a given embed function), so where a
row lands is checkable. The server bills the tokens of every request it answers with 200,
counted with the same Qwen3 tokenizer the client uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def det_vector(text: str, dims: int) -> np.ndarray:
    """A pseudo-random float32 vector determined by ``text`` alone."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def rerank_score(query: str, document: str, instruction: str | None = None) -> float:
    """A pseudo-random relevance score in (0, 1) determined by the pair (and instruction)."""
    key = f"{instruction}\x00{query}\x00{document}".encode()
    return (int.from_bytes(hashlib.sha256(key).digest()[:8], "little") + 0.5) / 2.0 ** 64


def expected(texts: list[str], dims: int, native: int) -> np.ndarray:
    """What a client should return: the deterministic rows cut to ``dims`` and normalised."""
    rows = np.stack([det_vector(t, native)[:dims] for t in texts])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@dataclass
class Fault:
    """A scripted answer for one request: status (+headers/body), delay, or a dropped socket."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body instead of the real one
    delay: float = 0.0
    drop: bool = False  # close the connection without answering
    mutate: Callable[[Any], Any] | None = None  # edit the real JSON body (malformed shapes)
    drip: float = 0.0  # seconds between the bytes of the (real) answer's body


class FakeServer:
    """Loopback embedding server. Use as a context manager; ``url`` is its root."""

    def __init__(self, *, dims: int = 64, tokenizer: Any = None,
                 embed_fn: Callable[[list[str]], np.ndarray] | None = None,
                 p429: float = 0.0, p500: float = 0.0, max_delay: float = 0.0,
                 retry_after: str | None = "0", retry_after_ms: str | None = "2",
                 max_inputs: int | None = None, tei_max_batch: int = 32,
                 api_key: str | None = None, models: set[str] | None = None,
                 shuffle: bool = False, normalize: bool = True, seed: int = 0,
                 reject: Callable[[list[str]], bool] | None = None, pdrop: float = 0.0,
                 too_large: int | None = None, replicate_polls: int = 0,
                 replicate_error: str | None = None,
                 rerank_max_docs: int | None = None,
                 refuse: Callable[[str], bool] | None = None) -> None:
        self.dims = dims
        self.tokenizer = tokenizer
        self.embed_fn = embed_fn
        self.p429, self.p500, self.pdrop, self.max_delay = p429, p500, pdrop, max_delay
        self.too_large = too_large
        self.replicate_polls, self.replicate_error = replicate_polls, replicate_error
        #: Replicate predictions by id: {"status", "output", "polls_left", "error"}.
        self.predictions: dict[str, dict[str, Any]] = {}
        self.cancelled: list[str] = []
        #: Inputs of every request answered with 200, in order (what was billed).
        self.billed_texts: list[str] = []
        self.retry_after, self.retry_after_ms = retry_after, retry_after_ms
        self.max_inputs = max_inputs
        self.rerank_max_docs = rerank_max_docs
        self.tei_max_batch = tei_max_batch
        self.api_key = api_key
        self.models = models
        self.shuffle = shuffle
        self.reject = reject  # batches it answers 500 to, every time
        self.refuse = refuse  # texts a request holding them is answered 400 for (bad input)
        self.normalize = normalize
        self.rng = random.Random(seed)
        self.script: deque[Fault] = deque()
        self.lock = threading.Lock()
        #: Tokens in requests answered with 200 (what a provider would bill).
        self.billed_tokens = 0
        self.ok_requests = 0
        self.connections = 0  # TCP connections accepted (a client's pool churn shows here)
        self.faults = 0  # injected 429/500/drops/malformed
        self.too_large_answers = 0  # 413s sent (a request faulted first gets none)
        self.requests: list[dict[str, Any]] = []  # every parsed JSON body, in arrival order
        self.headers_seen: list[dict[str, str]] = []
        self.paths: list[str] = []  # the path of every POST, in arrival order
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ------------------------------------------------------------------ behaviour
    def vectors(self, texts: list[str], dims: int | None) -> np.ndarray:
        if self.embed_fn is not None:
            rows = np.asarray(self.embed_fn(texts), dtype=np.float32)
        else:
            rows = np.stack([det_vector(t, self.dims) for t in texts]) if texts else \
                np.zeros((0, self.dims), np.float32)
        if dims is not None:
            rows = rows[:, :dims]
        if self.normalize and len(rows):
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return rows

    def count(self, texts: list[str]) -> int:
        if self.tokenizer is None:
            return sum(len(t.split()) + 1 for t in texts)
        return int(sum(self.tokenizer.count(texts)))

    def _next_fault(self) -> Fault | None:
        with self.lock:
            if self.script:
                return self.script.popleft()
            r = self.rng.random()
            delay = self.rng.uniform(0, self.max_delay) if self.max_delay else 0.0
        if r < self.p429:
            headers = {}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = self.retry_after_ms
            return Fault(429, headers, json.dumps({"error": {"message": "rate limited",
                                                             "type": "rate_limit"}}), delay)
        if r < self.p429 + self.p500:
            return Fault(500, {}, json.dumps({"error": {"message": "internal error"}}), delay)
        if r < self.p429 + self.p500 + self.pdrop:
            return Fault(drop=True, delay=delay)
        return Fault(delay=delay) if delay else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits out a delayed ACK

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                      raw: str | None = None, drip: float = 0.0) -> None:
                data = (raw if raw is not None else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                # The client may have timed out and gone.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if not drip:
                        self.wfile.write(data)
                        return
                    for i in range(len(data)):  # an upstream that never stalls a whole read
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(drip)

            def do_GET(self) -> None:
                if self.path.startswith("/v1/predictions/"):
                    self.poll_prediction(self.path.rsplit("/", 1)[1])
                elif self.path == "/info":  # TEI
                    self._send(200, {"model_id": "fake", "max_client_batch_size":
                                     server.tei_max_batch})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.headers_seen.append(dict(self.headers))
                    server.paths.append(self.path)
                fault = server._next_fault()
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.drop:
                    with server.lock:
                        server.faults += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault is not None and fault.status != 200:
                    with server.lock:
                        server.faults += 1
                    self._send(fault.status, None, fault.headers, raw=fault.body or "{}")
                    return
                if server.api_key is not None and \
                        self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error"}})
                    return
                texts = body.get("input", body.get("inputs"))
                if server.reject is not None and isinstance(texts, list) and server.reject(texts):
                    self._send(500, {"error": {"message": "poisoned batch"}})
                    return
                if server.refuse is not None and isinstance(texts, list) and \
                        any(map(server.refuse, texts)):
                    self._send(400, {"error": {"message": "an input was refused"}})
                    return
                status, out = self.route(body)
                if fault is not None and 200 <= status < 300 and (fault.body is not None or
                                                                  fault.mutate is not None):
                    with server.lock:
                        server.faults += 1
                    if fault.body is not None:
                        self._send(status, None, raw=fault.body)
                    else:
                        self._send(status, fault.mutate(out) if fault.mutate else out)
                    return
                self._send(status, out, drip=fault.drip if fault is not None else 0.0)

            def route(self, body: dict[str, Any]) -> tuple[int, Any]:
                path = self.path
                texts = body.get("input", body.get("inputs"))
                if server.too_large is not None and isinstance(texts, list) and \
                        len(texts) > server.too_large:
                    with server.lock:
                        server.too_large_answers += 1
                    return 413, {"error": f"at most {server.too_large} inputs per request"}
                if path.endswith("/predictions"):
                    return self.replicate(body)
                if path.endswith("/cancel"):
                    with server.lock:
                        server.cancelled.append(path.split("/")[-2])
                        server.predictions[path.split("/")[-2]]["status"] = "canceled"
                    return 200, {"status": "canceled"}
                if path.endswith("/embeddings"):
                    return self.openai(body)
                if path == "/rerank" and "texts" in body:
                    return self.tei_rerank(body)
                if path.endswith("/rerank") or path.endswith("/reranks") or \
                        path.endswith("/text-rerank/text-rerank"):
                    return self.rerank(body)
                if path.startswith("/v1/inference/"):
                    return self.deepinfra_rerank(body)
                if path == "/api/embed":
                    return self.ollama(body)
                if path == "/embed":
                    return self.tei(body)
                return 404, {"error": f"no route {path}"}

            def _model_ok(self, body: dict[str, Any]) -> bool:
                return server.models is None or body.get("model") in server.models

            def _bill(self, texts: list[str]) -> int:
                n = server.count(texts)
                with server.lock:
                    server.billed_tokens += n
                    server.ok_requests += 1
                    server.billed_texts.extend(texts)
                return n

            def replicate(self, body: dict[str, Any]) -> tuple[int, Any]:
                inp = body.get("input", {})
                texts = json.loads(inp["text"]) if isinstance(inp.get("text"), str) else None
                if not isinstance(texts, list):
                    return 422, {"detail": "input.text: a JSON array of strings is required"}
                with server.lock:
                    pid = f"p{len(server.predictions)}"
                    pred: dict[str, Any] = {
                        "status": "starting", "polls_left": server.replicate_polls,
                        "texts": texts, "dims": inp.get("embedding_dim"),
                        "prefer": self.headers.get("Prefer"), "version": body.get("version")}
                    server.predictions[pid] = pred
                if not server.replicate_polls:
                    self.advance(pid)
                return 201, self.prediction(pid)

            def advance(self, pid: str) -> None:
                """One step of a prediction's life: processing, then its end."""
                pred = server.predictions[pid]
                if pred["status"] in ("succeeded", "failed", "canceled"):
                    return
                if pred["polls_left"] > 0:
                    pred["polls_left"] -= 1
                    pred["status"] = "processing"
                    return
                if server.replicate_error is not None:
                    pred.update(status="failed", error=server.replicate_error)
                    return
                rows = server.vectors(pred["texts"], pred["dims"])
                self._bill(pred["texts"])
                pred.update(status="succeeded", output={"embedding_dim": rows.shape[1],
                                                        "embeddings": rows.tolist()})

            def prediction(self, pid: str) -> dict[str, Any]:
                pred = server.predictions[pid]
                root = f"{server.url}/v1/predictions/{pid}"
                return {"id": pid, "status": pred["status"], "output": pred.get("output"),
                        "error": pred.get("error"), "version": pred["version"],
                        "urls": {"get": root, "cancel": f"{root}/cancel"}}

            def poll_prediction(self, pid: str) -> None:
                if pid not in server.predictions:
                    self._send(404, {"detail": "Not found."})
                    return
                self.advance(pid)
                self._send(200, self.prediction(pid))

            def openai(self, body: dict[str, Any]) -> tuple[int, Any]:
                if not self._model_ok(body):
                    return 404, {"error": {"message": f"model {body.get('model')} not found",
                                           "code": "model_not_found"}}
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                if server.max_inputs is not None and len(texts) > server.max_inputs:
                    # DashScope compatible mode's answer to more than 10 rows.
                    return 400, {"error": {"code": "InvalidParameter", "type":
                                           "InvalidParameter", "message": "batch size is invalid,"
                                           f" it should not be larger than {server.max_inputs}."}}
                rows = server.vectors(texts, body.get("dimensions"))
                data = [{"object": "embedding", "index": i, "embedding": r.tolist()}
                        for i, r in enumerate(rows)]
                if server.shuffle:
                    with server.lock:
                        server.rng.shuffle(data)
                n = self._bill(texts)
                return 200, {"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": n, "total_tokens": n}}

            def _rerank_bill(self, query: str, documents: list[str]) -> int:
                return self._bill([f"{query} {d}" for d in documents])

            def _too_many(self, n: int) -> tuple[int, Any] | None:
                if server.rerank_max_docs is not None and n > server.rerank_max_docs:
                    return 400, {"code": "InvalidParameter", "message": f"{n} documents, more "
                                 f"than the maximum of {server.rerank_max_docs}"}
                return None

            def rerank(self, body: dict[str, Any]) -> tuple[int, Any]:
                """Cohere, Jina, SiliconFlow, smysl and both DashScope shapes."""
                if not self._model_ok(body):
                    return 404, {"message": f"model {body.get('model')} not found"}
                native = self.path.endswith("/text-rerank/text-rerank")
                inp = body["input"] if native else body
                params = body.get("parameters", {}) if native else body
                query, docs = inp["query"], inp["documents"]
                if not isinstance(query, str) or not query or not isinstance(docs, list) \
                        or not docs or not all(isinstance(d, str) for d in docs):
                    return 400, {"message": "query and documents are required"}
                too_many = self._too_many(len(docs))
                if too_many is not None:
                    return too_many
                instruction = body.get("instruction", body.get("instruct"))
                ranked = sorted(({"index": i, "relevance_score":
                                  rerank_score(query, d, instruction)}
                                 for i, d in enumerate(docs)),
                                key=lambda r: -r["relevance_score"])
                top_n = params.get("top_n")
                if top_n is not None:
                    ranked = ranked[:top_n]
                n = self._rerank_bill(query, docs)
                if native:
                    return 200, {"output": {"results": ranked}, "usage": {"total_tokens": n},
                                 "request_id": "r"}
                if self.path.endswith("/v2/rerank"):  # Cohere
                    return 200, {"id": "r", "results": ranked, "meta": {
                        "api_version": {"version": "2"},
                        "billed_units": {"search_units": -(-len(docs) // 100)}}}
                return 200, {"id": "r", "model": body.get("model"), "results": ranked,
                             "usage": {"total_tokens": n},
                             "tokens": {"input_tokens": n, "output_tokens": 0}}

            def tei_rerank(self, body: dict[str, Any]) -> tuple[int, Any]:
                texts = body["texts"]
                if len(texts) > server.tei_max_batch:
                    return 413, {"error": f"batch size {len(texts)} > maximum allowed batch "
                                          f"size {server.tei_max_batch}",
                                 "error_type": "validation"}
                self._rerank_bill(body["query"], texts)
                rows = [{"index": i, "score": rerank_score(body["query"], t)}
                        for i, t in enumerate(texts)]
                return 200, sorted(rows, key=lambda r: -r["score"])

            def deepinfra_rerank(self, body: dict[str, Any]) -> tuple[int, Any]:
                queries, docs = body.get("queries"), body.get("documents")
                if not isinstance(queries, list) or not isinstance(docs, list) \
                        or len(queries) != len(docs):
                    return 422, {"detail": "queries and documents must have the same length"}
                too_many = self._too_many(len(docs))
                if too_many is not None:
                    return too_many
                n = self._bill([f"{q} {d}" for q, d in zip(queries, docs, strict=True)])
                return 200, {"scores": [rerank_score(q, d) for q, d in
                                        zip(queries, docs, strict=True)],
                             "input_tokens": n, "request_id": None,
                             "inference_status": {"status": "succeeded", "runtime_ms": 1,
                                                  "cost": 0.0, "tokens_input": n}}

            def ollama(self, body: dict[str, Any]) -> tuple[int, Any]:
                if not self._model_ok(body):
                    return 404, {"error": f"model \"{body.get('model')}\" not found, try pulling"
                                          " it first"}
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                rows = server.vectors(texts, body.get("dimensions"))
                n = self._bill(texts)
                return 200, {"model": body.get("model"), "embeddings": rows.tolist(),
                             "total_duration": 1000, "load_duration": 10,
                             "prompt_eval_count": n}

            def tei(self, body: dict[str, Any]) -> tuple[int, Any]:
                texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
                if len(texts) > server.tei_max_batch:
                    return 413, {"error": f"batch size {len(texts)} > maximum allowed batch "
                                          f"size {server.tei_max_batch}",
                                 "error_type": "validation"}
                rows = server.vectors(texts, None) if body.get("normalize", True) \
                    else _raw(server, texts)
                self._bill(texts)
                return 200, rows.tolist()

        return Handler


def _raw(server: FakeServer, texts: list[str]) -> np.ndarray:
    if server.embed_fn is not None:
        return np.asarray(server.embed_fn(texts), dtype=np.float32)
    return np.stack([det_vector(t, server.dims) for t in texts])
