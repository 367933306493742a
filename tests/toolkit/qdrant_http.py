"""A Qdrant REST endpoint for tests: qdrant-client's own local mode behind the REST routes the
Qdrant store calls, on loopback, one request at a time.

Not Qdrant (no server can be run here): what it checks is smysl's side of a server. The store
then goes through qdrant-client's REST client, as against a real server: its requests and
answers pass through JSON (filters, payloads, sparse vectors, metadata), and its errors are
the REST client's. A route the store does not call answers 404.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextlib.contextmanager
def qdrant_http_server() -> Iterator[str]:
    """Serve a fresh in-memory Qdrant on a free loopback port; yields its URL."""
    from pydantic import TypeAdapter
    from qdrant_client import QdrantClient, models

    local = QdrantClient(":memory:")
    lock = threading.Lock()  # the local mode is not made for calls from several threads

    def dump(value: Any) -> Any:
        if isinstance(value, list):
            return [dump(v) for v in value]
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    def done(_: Any) -> dict[str, Any]:
        return {"operation_id": 0, "status": "completed"}

    def create(c: str, body: dict[str, Any]) -> bool:
        spec = models.CreateCollection.model_validate(body)
        return local.create_collection(c, vectors_config=spec.vectors,
                                       sparse_vectors_config=spec.sparse_vectors,
                                       metadata=spec.metadata)

    def scroll(c: str, body: dict[str, Any]) -> dict[str, Any]:
        r = models.ScrollRequest.model_validate(body)
        points, offset = local.scroll(c, scroll_filter=r.filter, limit=r.limit or 10,
                                      offset=r.offset, with_payload=r.with_payload,
                                      with_vectors=r.with_vector)
        return {"points": dump(points), "next_page_offset": offset}

    def retrieve(c: str, body: dict[str, Any]) -> Any:
        r = models.PointRequest.model_validate(body)
        return dump(local.retrieve(c, r.ids, with_payload=r.with_payload,
                                   with_vectors=r.with_vector))

    def count(c: str, body: dict[str, Any]) -> dict[str, int]:
        r = models.CountRequest.model_validate(body)
        return {"count": local.count(c, count_filter=r.filter, exact=r.exact).count}

    def query(c: str, body: dict[str, Any]) -> Any:
        batch = models.QueryRequestBatch.model_validate(body)
        # the local mode is always exact, and warns about search parameters
        searches = [s.model_copy(update={"params": None}) for s in batch.searches]
        return dump(local.query_batch_points(c, requests=searches))

    points = TypeAdapter(models.PointInsertOperations)
    selector = TypeAdapter(models.PointsSelector)
    new_vector = TypeAdapter(models.VectorNameConfig)
    # (method, path pattern, handler(collection, vector name or None, body) -> result)
    routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", r"/collections/([^/]+)/exists",
         lambda c, b: {"exists": local.collection_exists(c)}),
        ("GET", r"/collections/([^/]+)", lambda c, b: dump(local.get_collection(c))),
        ("PUT", r"/collections/([^/]+)", create),
        ("PATCH", r"/collections/([^/]+)", lambda c, b: local.update_collection(
            c, metadata=models.UpdateCollection.model_validate(b).metadata)),
        ("DELETE", r"/collections/([^/]+)", lambda c, b: local.delete_collection(c)),
        ("PUT", r"/collections/([^/]+)/vectors/([^/]+)", lambda c, v, b: done(
            local.create_vector_name(c, v, new_vector.validate_python(b)))),
        ("PUT", r"/collections/([^/]+)/points", lambda c, b: done(local.upsert(
            c, points=points.validate_python(b).points))),  # type: ignore[union-attr]
        ("POST", r"/collections/([^/]+)/points", retrieve),
        ("POST", r"/collections/([^/]+)/points/delete", lambda c, b: done(local.delete(
            c, points_selector=selector.validate_python(b)))),
        ("POST", r"/collections/([^/]+)/points/count", count),
        ("POST", r"/collections/([^/]+)/points/scroll", scroll),
        ("POST", r"/collections/([^/]+)/points/query/batch", query),
    ]

    def beyond_int64(value: Any) -> bool:
        """Whether a filter in ``value`` matches an int Qdrant cannot read: its match values
        are 64-bit signed (``ValueVariants::Integer(i64)``); the server answers 400."""
        if isinstance(value, list):
            return any(beyond_int64(v) for v in value)
        if not isinstance(value, dict):
            return False
        match = value.get("match")
        if isinstance(match, dict):
            wanted = match.get("value", match.get("any"))
            for v in wanted if isinstance(wanted, list) else [wanted]:
                if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                    return True
        return any(beyond_int64(v) for v in value.values())

    class Handler(BaseHTTPRequestHandler):
        # keep-alive (HTTP/1.1), as a server: the client's pooled connections are then reused
        # across threads (on 127.0.0.1 or localhost qdrant-client turns keep-alive off)
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            path = self.path.partition("?")[0]
            size = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(size)) if size else {}
            status, out = 404, {"status": {"error": f"no route {self.command} {path}"}}
            if path == "/":
                status, out = 200, {"title": "qdrant - vector search engine",
                                    "version": "1.20.0"}
            for method, pattern, handler in routes:
                m = re.fullmatch(pattern, path)
                if method == self.command and m and beyond_int64(body):
                    status, out = 400, {"status": {"error": "Format error in JSON body: data "
                                                   "did not match any variant of untagged "
                                                   "enum ValueVariants"}, "time": 0.0}
                    break
                if method == self.command and m:
                    try:
                        with lock:
                            result = handler(*m.groups(), body)
                        status, out = 200, {"result": result, "status": "ok", "time": 0.0}
                    except (ValueError, KeyError) as e:
                        status, out = 400, {"status": {"error": str(e)}, "time": 0.0}
                    break
            raw = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    try:  # 127.0.0.2: a loopback host on which qdrant-client keeps connections alive
        server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    except OSError:  # only 127.0.0.1 is loopback here (macOS)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        local.close()
