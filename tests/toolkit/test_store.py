"""The store contract, run on every backend: LanceDB for real, Qdrant in-process, PostgreSQL +
pgvector on a real server started for the session (issue 16), memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from smysl.toolkit.store import StoreConfig, matches, parse_where
from smysl.toolkit.stores import open_store
from toolkit.helpers import brute_force, check_reads_beside_a_writer, unit_rows

D = 16
N = 120


def payload(i: int) -> dict:
    return {"n": i, "lang": ["en", "de", "fr"][i % 3], "even": i % 2 == 0, "w": i / 4,
            "tags": ["x", str(i)], "ns": 2**60 + i}


@pytest.fixture(scope="module")
def qdrant_http() -> Iterator[str]:
    """A Qdrant REST endpoint (qdrant-client's local mode behind its routes): the store's
    server path, through the REST client, without a Qdrant server."""
    pytest.importorskip("qdrant_client")
    from toolkit.qdrant_http import qdrant_http_server

    with qdrant_http_server() as url:
        yield url


@pytest.fixture(params=["lancedb", "qdrant", "qdrant-http", "memory", "qdrant-live", "postgres"])
def store(request, tmp_path):
    kind = request.param
    if kind == "qdrant-http":
        cfg = StoreConfig(backend="qdrant", uri=request.getfixturevalue("qdrant_http"),
                          table=f"t-{uuid.uuid4().hex[:8]}")
    elif kind == "postgres":
        # a fresh table per test on the session's server
        cfg = StoreConfig(backend="postgres", uri=request.getfixturevalue("postgres_dsn"),
                          table=f"t_{uuid.uuid4().hex[:12]}")
    elif kind == "lancedb":
        pytest.importorskip("lancedb")
        cfg = StoreConfig(backend="lancedb", uri=str(tmp_path / "db"))
    elif kind == "qdrant":
        pytest.importorskip("qdrant_client")
        cfg = StoreConfig(backend="qdrant", uri=":memory:")
    elif kind == "qdrant-live":
        url = os.environ.get("SMYSL_QDRANT_URL")
        if not url:
            pytest.skip("set SMYSL_QDRANT_URL to run against a live Qdrant")
        pytest.importorskip("qdrant_client")
        cfg = StoreConfig(backend="qdrant", uri=url, table=f"smysl-test-{uuid.uuid4().hex[:8]}")
    else:
        cfg = StoreConfig(backend="memory")
    s = open_store(cfg, D)
    yield s
    if kind == "qdrant-live":
        s.client.delete_collection(cfg.table)  # type: ignore[attr-defined]
    s.close()


@pytest.fixture
def filled(store):
    x = unit_rows(N, D, seed=1)
    store.upsert([f"id{i}" for i in range(N)], x, [payload(i) for i in range(N)])
    return store, x


def test_exact_search_equals_brute_force(filled) -> None:
    store, x = filled
    q = unit_rows(7, D, seed=2)
    hits = store.search(q, 10, exact=True)
    ref_idx, ref_scores = brute_force(x, q, 10)
    for row, (h, idx, sc) in enumerate(zip(hits, ref_idx, ref_scores, strict=True)):
        assert [int(x.id[2:]) for x in h] == idx.tolist(), row
        np.testing.assert_allclose([x.score for x in h], sc, atol=1e-5)
        assert h[0].payload == payload(int(h[0].id[2:]))


@pytest.mark.parametrize("where", [
    {"lang": "de"}, {"lang": ["en", "fr"]}, {"n": {"$gte": 30, "$lt": 60}}, {"even": True},
    {"lang": "en", "n": {"$gt": 50}}, {"w": 2.5}, {"n": "3"}, {"missing": 1}, {"w": {"$lte": 3}},
    # mixed types (Qdrant took only all-str or all-int lists), and a number matching int and
    # float payloads alike but never a bool (audit item 7)
    {"even": [True, False]}, {"n": [1, "1"]}, {"n": [True, 3, "x", 5]}, {"w": 1},
    {"w": [1, 2.5, "x"]}, {"even": 1}, {"even": [0, "True"]},
    # a float against an int column (LanceDB refused to compare them: "damaged store")
    {"n": 4.0}, {"n": [3, 5.0]}, {"n": 4.5}, {"n": {"$gt": 4.5, "$lte": 9.5}},
    {"n": {"$gte": 4.5, "$lt": 8.0}},
    # ints no float holds: matched exactly, not as a float range
    {"ns": 2**60 + 3}, {"ns": [2**60 + 1, 2**60 + 5, "x"]},
])
def test_filters_match_reference_semantics(filled, where) -> None:
    store, x = filled
    conds = parse_where(where)
    keep = [i for i in range(N) if matches(payload(i), conds)]
    assert store.count(where) == len(keep)
    q = unit_rows(3, D, seed=3)
    hits = store.search(q, 5, where=where)
    if not keep:
        assert all(h == [] for h in hits)
        return
    ref_idx, _ = brute_force(x[keep], q, 5)
    for h, idx in zip(hits, ref_idx, strict=True):
        assert [x.id for x in h] == [f"id{keep[j]}" for j in idx]
    assert {r.id for b in store.scan(17, where=where) for r in b} == {f"id{i}" for i in keep}


def test_get_upsert_replace_delete_count(filled) -> None:
    store, x = filled
    got = store.get(["id5", "nope", "id0"])
    assert [r.id for r in got] == ["id5", "id0"]
    np.testing.assert_allclose(got[0].vector, x[5], atol=1e-6)
    assert got[0].payload == payload(5)
    store.upsert(["id5"], x[6:7], [{"lang": "xx"}])  # replace: vector and payload
    (r,) = store.get(["id5"])
    np.testing.assert_allclose(r.vector, x[6], atol=1e-6)
    assert r.payload == {"lang": "xx"}
    assert store.count({"n": 5}) == 0 and store.count() == N
    alive = set(range(N))
    assert store.delete(["id1", "id2", "nope"]) == 2
    alive -= {1, 2}
    german = {i for i in alive if i % 3 == 1 and i != 5}  # id5 was relabelled "xx"
    assert store.delete(where={"lang": "de"}) == len(german)
    alive -= german
    # ids AND filter: id3 is English, id8 French, id4 already gone as German
    assert store.delete(["id3", "id4", "id8"], where={"lang": "en"}) == 1
    alive -= {3}
    assert store.count() == len(alive)
    assert sorted(r.id for b in store.scan(50) for r in b) == sorted(f"id{i}" for i in alive)
    with pytest.raises(ValueError, match="ids or a filter"):
        store.delete()


def test_scan_meta_and_validation(store) -> None:
    x = unit_rows(30, D, seed=4)
    ids = [f"d{i}" for i in range(30)]
    store.upsert([*ids, "d0"], np.vstack([x, x[1:2]]), [{"i": i} for i in range(30)] + [{"i": -1}])
    assert store.count() == 30  # duplicate id in one batch: last write wins
    (r,) = store.get(["d0"])
    assert r.payload == {"i": -1}
    assert sorted(r.id for b in store.scan(7) for r in b) == sorted(ids)
    assert store.read_meta() == {}
    assert store.claim_meta({"model": "m", "dimensions": D}) == {"model": "m", "dimensions": D}
    assert store.read_meta() == {"model": "m", "dimensions": D}
    # keys not named stay, None removes one, values are replaced whole
    store.update_meta({"dimensions": None, "shards": {"a": [1]}, "gone": None})
    store.update_meta({"shards": {"b": [2]}, "x": "я"})
    assert store.read_meta() == {"model": "m", "shards": {"b": [2]}, "x": "я"}
    # a claim writes only where nothing is held, and answers what is
    assert store.claim_meta({"model": "other"}) == store.read_meta()
    assert store.read_meta()["model"] == "m"
    with pytest.raises(ValueError, match="shape"):
        store.upsert(["a"], np.zeros((1, D + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        store.upsert(["a"], np.full((1, D), np.nan, np.float32))
    with pytest.raises(ValueError, match="operator"):
        store.count({"i": {"$regex": "x"}})
    for bad in ({"i": float("inf")}, {"i": {"$gt": float("nan")}}, {"i": [1, float("-inf")]}):
        with pytest.raises(ValueError, match="finite"):
            store.count(bad)


def test_lancedb_reopens_with_data_and_checks_dimensions(tmp_path) -> None:
    pytest.importorskip("lancedb")
    cfg = StoreConfig(uri=str(tmp_path / "db"))
    x = unit_rows(10, D)
    with open_store(cfg, D) as s:
        s.upsert([str(i) for i in range(10)], x, [{"k": "v"}] * 10)
    with open_store(cfg) as s:
        assert s.dimensions == D and s.count({"k": "v"}) == 10
    with pytest.raises(ValueError, match="16-d"):
        open_store(cfg, D * 2)
    with pytest.raises(FileNotFoundError):
        open_store(StoreConfig(uri=str(tmp_path / "other")))


def test_lancedb_ann_recall_at_10(tmp_path) -> None:
    """An approximate index is measured against exact search (the bar: recall@10 >= 0.98)."""
    pytest.importorskip("lancedb")
    x = unit_rows(3000, 32, seed=5, clusters=40)
    q = unit_rows(100, 32, seed=6, clusters=40)
    with open_store(StoreConfig(uri=str(tmp_path / "db")), 32) as s:
        s.upsert([str(i) for i in range(len(x))], x)
        assert s.build_index()
        assert s._has_index()  # type: ignore[attr-defined]
        exact = s.search(q, 10, exact=True)
        approx = s.search(q, 10, exact=False)
    recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / 10
                      for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.98, recall


def test_store_spec_parsing() -> None:
    assert StoreConfig.parse("kb").backend == "lancedb"
    assert StoreConfig.parse("qdrant:http://h:6333").uri == "http://h:6333"
    assert StoreConfig.parse("https://q.example").backend == "qdrant"
    assert StoreConfig.parse("lancedb:/x", table="t").table == "t"
    # issue 16: PostgreSQL, as a URL or as postgres:DSN
    assert StoreConfig.parse("postgres://u@h/db").uri == "postgres://u@h/db"
    assert StoreConfig.parse("postgresql://u@h/db").backend == "postgres"
    pg = StoreConfig.parse("postgres:host=h dbname=db")
    assert (pg.backend, pg.uri) == ("postgres", "host=h dbname=db")


def _shared_store(kind: str, tmp_path, request) -> StoreConfig:
    """A store other processes can open too: a LanceDB folder, or a fresh PostgreSQL table."""
    if kind == "lancedb":
        pytest.importorskip("lancedb")
        return StoreConfig(backend="lancedb", uri=str(tmp_path / "db"))
    return StoreConfig(backend="postgres", uri=request.getfixturevalue("postgres_dsn"),
                       table=f"t_{uuid.uuid4().hex[:12]}")


def _at_once(target, cfg: StoreConfig, n: int, processes: int = 3) -> None:
    """Run ``target(cfg, worker, n, ready, go)`` in spawned processes that start their work
    together (each releases ``ready``, then waits for ``go``); all must exit cleanly."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=target, args=(cfg, w, n, ready, go)) for w in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        assert ready.acquire(timeout=120)
    go.set()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0


def _update_meta_in_turn(cfg: StoreConfig, worker: int, n: int, ready, go) -> None:
    """A process adding its own keys one update at a time (drivers of one corpus job)."""
    with open_store(cfg) as s:
        ready.release()
        go.wait(60)
        for i in range(n):
            s.update_meta({f"w{worker}-{i}": i})


@pytest.mark.parametrize("kind", ["lancedb", "postgres"])
def test_concurrent_meta_updates_lose_nothing(kind, tmp_path, request) -> None:
    """Two drivers of one corpus job committing shards into one index at the same time: each
    read the metadata, added its shard and wrote it all back, so one could undo the other's
    (and on LanceDB both wrote one temporary file: one rename failed, or moved the other's
    half-written file into place). Every key of every process is kept."""
    cfg = _shared_store(kind, tmp_path, request)
    with open_store(cfg, D) as s:
        s.update_meta({"model": "m"})
    _at_once(_update_meta_in_turn, cfg, 40)
    with open_store(cfg) as s:
        meta = s.read_meta()
    assert meta == {"model": "m", **{f"w{w}-{i}": i for w in range(3) for i in range(40)}}
    if kind == "lancedb":
        assert not [p.name for p in (tmp_path / "db").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["lancedb", "postgres"])
def test_an_open_store_sees_later_writes(kind, tmp_path, request) -> None:
    """`smysl serve --index` keeps its store open: LanceDB read the version it had opened, so
    documents another process added later were never found (nor counted, nor got), whatever
    was written, until the server restarted."""
    cfg = _shared_store(kind, tmp_path, request)
    x = unit_rows(3, D, seed=5)
    with open_store(cfg, D) as reader:
        reader.upsert(["a"], x[:1], [{"n": 1}])
        assert reader.count() == 1
        with open_store(cfg) as writer:
            writer.upsert(["b", "c"], x[1:], [{"n": 2, "new": "field"}, {"n": 3}])
            writer.update_meta({"records": 3})
        assert reader.count() == 3 and reader.count({"new": "field"}) == 1
        assert [h.id for h in reader.search(x[2:3], k=1)[0]] == ["c"]
        assert [r.id for r in reader.get(["b"])] == ["b"]
        assert reader.read_meta()["records"] == 3


def _write_and_compact(cfg: StoreConfig, worker: int, n: int, ready, go) -> None:
    """A process opening (creating) the table at the same moment as others, then writing its
    own rows and compacting after each write, as `smysl index add` does."""
    ready.release()
    go.wait(60)
    with open_store(cfg, D) as s:
        for i in range(n):
            s.upsert([f"w{worker}-{i}"], unit_rows(1, D, seed=100 * worker + i),
                     [{"worker": worker, f"f{worker}": i}])
            s.optimize()


def test_processes_creating_writing_and_compacting_at_once(tmp_path) -> None:
    """Two first `smysl index add` runs into a new folder: the slower one's create failed
    ("Table 'chunks' already exists"); later, a compaction that lost to another process's
    commit (LanceDB's "Retryable commit conflict", 7-13 of 40 while another process wrote)
    was reported as a damaged store, after every row had been written."""
    pytest.importorskip("lancedb")
    cfg = StoreConfig(backend="lancedb", uri=str(tmp_path / "db"))
    _at_once(_write_and_compact, cfg, 12)
    with open_store(cfg) as s:
        assert s.count() == 36 and all(s.count({f"f{w}": {"$gte": 0}}) == 12 for w in range(3))


def test_a_local_qdrant_folder_held_by_another_is_named(tmp_path) -> None:
    """A second process on a local Qdrant folder (`smysl index search` while a server holds
    it) got qdrant-client's traceback; now one line saying why and what to do."""
    pytest.importorskip("qdrant_client")
    cfg = StoreConfig(backend="qdrant", uri=str(tmp_path / "q"))
    held = r"another process has this local Qdrant folder open.*qdrant:http://HOST:6333"
    with open_store(cfg, D), pytest.raises(ValueError, match=held):
        open_store(cfg)
    open_store(cfg).close()  # free again once the first one closed


def test_a_claim_binds_metadata_other_writers_started(store) -> None:
    """Another writer's keys (a job's shard record) in metadata that names no model yet do
    not bind the store: a claim adds the binding to them."""
    store.update_meta({"embed_shard:x": True})
    assert store.claim_meta({"model": "m"}) == {"embed_shard:x": True, "model": "m"}
    assert store.claim_meta({"model": "other"})["model"] == "m"


def test_range_bounds_beyond_int64(filled) -> None:
    """A filter bound outside int64 (`{"n": {"$lt": 2**63}}`) made LanceDB refuse the SQL
    literal, reported as a damaged store (503 from /search); so did int64's least value."""
    store, _ = filled
    assert store.count({"n": {"$lt": 2**63}}) == N
    assert store.count({"n": {"$gt": 10**30}}) == 0
    assert store.count({"n": {"$gte": -(2**70), "$lt": 3}}) == 3
    # an equal value beyond int64 finds no int (Qdrant's match values are 64-bit: it answered
    # 400 to one), next to one that does
    assert store.count({"n": 2**64}) == 0 and store.count({"n": -(2**63) - 1}) == 0
    assert store.count({"n": [2**64, 1, 2**63]}) == 1
    assert store.count({"n": [2**62, -(2**63)]}) == 0
    store.upsert(["least"], unit_rows(1, D, seed=3), [{"n": -(2**63)}])  # int64's least value
    assert store.count({"n": [2**62, -(2**63)]}) == 1  # LanceDB's SQL read it as a float
    assert store.count({"n": {"$lte": -(2**63)}}) == 1


@pytest.mark.parametrize(("spec", "shown"), [
    ("kb", "kb"),
    ("lancedb:/data/kb", "/data/kb"),
    ("lancedb:s3://AKIA:s3cret@bucket/kb", "s3://bucket/kb"),
    ("lancedb:s3+ddb://bucket/kb?ddbTableName=locks", "s3+ddb://bucket/kb?ddbTableName=locks"),
    ("qdrant::memory:", "qdrant::memory:"),
    ("qdrant:http://admin:s3cret@q.example:6333/?api_key=k3y", "http://q.example:6333/"),
    ("https://admin:s3cret@[::1]:6333", "https://[::1]:6333"),
    ("qdrant:http://q.example:port/", "http://q.example:port/"),  # as written
    ("postgresql://u:s3cret@db.example:5433/kb?sslmode=require&password=s3cret",
     "postgres:db.example:5433/kb"),
    ("postgres:host=db.example password='s3 cret' dbname=kb", "postgres:db.example:5432/kb"),
    ("postgresql://u:s3@cret@db.example/kb", "postgres:db.example:5432/kb"),  # '@' unescaped
    ("postgresql://u@[::1]:5433/kb", "postgres:[::1]:5433/kb"),
    ("memory:", "memory:"),
])
def test_a_store_is_named_without_secrets(spec: str, shown: str) -> None:
    """What logs, errors and ``/ui/info`` show of an index: its place and table, never a
    password, a URL's user part or an ``api_key`` in its query."""
    pytest.importorskip("psycopg")
    from smysl.toolkit.stores import described

    assert described(StoreConfig.parse(spec, table="docs")) == f"{shown} table docs"


def test_a_postgres_store_config_prints_without_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    """``repr`` of a PostgreSQL StoreConfig (pytest's output, logs) names the place without
    the password, psycopg (an optional extra) installed or not."""
    import smysl.toolkit.postgres as postgres

    def missing() -> None:
        raise ImportError("the PostgreSQL store needs psycopg 3")

    monkeypatch.setattr(postgres, "_import", missing)
    for spec in ("postgresql://u:s3cret@db.example:5433/kb", "postgres:host=db.example "
                 "port=5433 password=s3cret dbname=kb"):
        shown = repr(StoreConfig.parse(spec))
        assert "uri='postgres:db.example:5433/kb'" in shown and "s3cret" not in shown


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_a_missing_qdrant_collection_is_named_without_credentials() -> None:
    """A Qdrant URL's user part does not reach the error of a missing collection (a served
    index printed it at start-up). The server here answers as Qdrant does for a collection
    that does not exist."""
    pytest.importorskip("qdrant_client")
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Qdrant(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = ({"result": {"exists": False}, "status": "ok", "time": 0}
                    if self.path.endswith("/exists") else {"title": "qdrant", "version": "1.12.0"})
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Qdrant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        with pytest.raises(FileNotFoundError) as missing:
            open_store(StoreConfig.parse(f"qdrant:http://admin:s3cret@127.0.0.1:{port}"))
    finally:
        server.shutdown()
        server.server_close()
    assert str(missing.value) == f"no collection 'chunks' at http://127.0.0.1:{port}"


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize(("status", "body", "headers", "says"), [
    (500, '{"status": {"error": "boom for KEY"}, "time": 0}', {},
     "Qdrant at {url}: HTTP 500 Internal Server Error: boom for ***"),
    (429, '{"status": {"error": "slow down KEY"}}', {"Retry-After": "1"},
     "Qdrant at {url}: "),
    (200, "<html>a proxy's page for KEY</html>", {}, "bad answer from Qdrant at {url}: "),
    (200, '{"result": null, "status": "ok", "time": 0}', {}, "bad answer from Qdrant at {url}"),
])
def test_a_qdrant_server_that_fails_gives_a_store_error_without_secrets(
        status: int, body: str, headers: dict, says: str) -> None:
    """A Qdrant server that refuses a call (a status, 429 with Retry-After), answers what the
    client cannot read (a proxy's HTML page, a result missing), or cannot be reached: a
    QdrantStoreError (a StoreError: a served index answers 503, not 500) naming the server
    without the URL's user part, with the reason and no API key in it."""
    pytest.importorskip("qdrant_client")
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from smysl.toolkit.qdrant import QdrantStoreError
    from smysl.toolkit.store import StoreError

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            raw = body.replace("KEY", str(self.headers.get("api-key"))).encode()
            self.send_response(status)
            for name, value in {"content-type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        with pytest.raises(QdrantStoreError) as failed:
            open_store(StoreConfig.parse(f"qdrant:http://admin:s3cret@127.0.0.1:{port}",
                                         api_key="k3y-secret"))
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(failed.value, StoreError)
    assert str(failed.value).startswith(says.format(url=f"http://127.0.0.1:{port}"))
    assert "k3y-secret" not in str(failed.value) and "s3cret" not in str(failed.value)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_a_qdrant_server_out_of_reach_or_a_bad_url_names_no_secret() -> None:
    pytest.importorskip("qdrant_client")
    import socket

    from smysl.toolkit.qdrant import QdrantStoreError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(QdrantStoreError, match=f"cannot reach Qdrant at http://127.0.0.1:{closed}"):
        open_store(StoreConfig.parse(f"qdrant:http://admin:s3cret@127.0.0.1:{closed}"))
    with pytest.raises(ValueError, match=r"bad Qdrant URL http://127\.0\.0\.1:99999") as bad:
        open_store(StoreConfig.parse("qdrant:http://admin:s3cret@127.0.0.1:99999"))
    assert "s3cret" not in str(bad.value)


def test_a_qdrant_server_store_serves_several_threads(qdrant_http) -> None:
    """Through a server, reads from eight threads at once (the server's ``/search`` runs a
    store's calls on ``--index-threads`` threads where ``concurrent_reads``) give what they
    give one at a time, beside a writer; the local mode keeps one call at a time."""
    x = unit_rows(200, D, seed=12)
    texts = [f"common word{i % 13} row{i}" for i in range(len(x))]
    config = StoreConfig(backend="qdrant", uri=qdrant_http, table=f"t-{uuid.uuid4().hex[:8]}")
    with open_store(config, D) as s, open_store(StoreConfig(backend="qdrant", uri=":memory:"),
                                                D) as local:
        assert s.concurrent_reads and not local.concurrent_reads
        s.upsert([str(i) for i in range(len(x))], x,
                 [{"text": t, "g": i % 4} for i, t in enumerate(texts)])

        check_reads_beside_a_writer(s, x, texts, reads=48)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize("where", ["server", "local"])
def test_a_closed_qdrant_store_says_so_to_reads_in_flight_and_after(where: str,
                                                                    tmp_path) -> None:
    """Reads running while another thread closes the store, and calls after it, fail saying
    the store is closed; reads on a server failed "cannot reach Qdrant ... Bad file
    descriptor", as if the server were down."""
    pytest.importorskip("qdrant_client")
    import threading

    from smysl.toolkit.qdrant import QdrantStoreError

    def check(spec: str) -> None:
        s = open_store(StoreConfig.parse(spec), D)
        s.upsert([f"id{i}" for i in range(50)], unit_rows(50, D, seed=1))
        failures: list[BaseException] = []
        started = threading.Barrier(5)

        def read() -> None:
            started.wait()
            try:
                while True:
                    s.search(unit_rows(2, D, seed=2), 5)
            except Exception as e:  # the test looks at every kind
                failures.append(e)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        s.close()
        for t in threads:
            t.join(10)
        assert len(failures) == 4
        for e in failures:
            assert isinstance(e, QdrantStoreError) and str(e).endswith("is closed"), repr(e)
        with pytest.raises(QdrantStoreError, match="is closed"):
            s.count()

    if where == "server":
        from toolkit.qdrant_http import qdrant_http_server

        with qdrant_http_server() as url:
            check(f"qdrant:{url}")
    else:
        check(f"qdrant:{tmp_path / 'q'}")


def test_memory_search_takes_the_k_best_as_a_full_stable_sort_would() -> None:
    """The memory store picks the top k without sorting every score (a dedup of 100,000 rows
    spent most of its time there): the same hits, ties in insertion order, as before."""
    rng = np.random.default_rng(7)
    x = unit_rows(6, D, seed=7)[rng.integers(0, 6, 300)]  # 300 rows, 6 distinct: many ties
    s = open_store(StoreConfig(backend="memory"), D)
    s.upsert([f"r{i}" for i in range(300)], x)
    q = unit_rows(4, D, seed=8)
    for k in (1, 7, 50, 299, 300, 400):
        # the scores as the store computes them (one product for all queries: a copy of a
        # row can score a last bit apart from it in another product)
        want = [[f"r{j}" for j in np.argsort(-row, kind="stable")[:k]] for row in q @ x.T]
        assert [[h.id for h in hits] for hits in s.search(q, k)] == want
    s.delete(["r0", "r5"])  # rows left out: the path over the rows alive
    alive = np.array([i for i in range(300) if i not in (0, 5)])
    for k in (1, 7, 298):
        want = [[f"r{alive[j]}" for j in np.argsort(-row, kind="stable")[:k]]
                for row in q @ x[alive].T]
        assert [[h.id for h in hits] for hits in s.search(q, k)] == want


def test_a_payload_with_nan_is_refused_and_nothing_is_written(store) -> None:
    """NaN or infinity in a payload, at any depth: refused naming the record and field, on
    every store (LanceDB and the memory store took it, and a search's JSON output then held
    a bare NaN; PostgreSQL's JSON refuses it)."""
    x = unit_rows(2, D, seed=1)
    for bad in ({"score": float("nan")}, {"n": {"deep": [1.0, float("inf")]}},
                {"v": np.float32("nan")}):
        with pytest.raises(ValueError, match=r"payload of 'b' has NaN or infinity in"):
            store.upsert(["a", "b"], x, [{"ok": 1.5}, bad])
    assert store.count() == 0


def test_a_file_where_a_lancedb_folder_should_be_is_named(tmp_path) -> None:
    pytest.importorskip("lancedb")
    f = tmp_path / "notes.txt"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is a file, not a LanceDB folder"):
        open_store(StoreConfig(uri=str(f)), D)


def test_opening_a_missing_lancedb_folder_makes_none(tmp_path) -> None:
    """`smysl index search`/`verify`/`delete` of a mistyped path left an empty folder."""
    pytest.importorskip("lancedb")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        open_store(StoreConfig(uri=str(tmp_path / "typo")))
    assert not (tmp_path / "typo").exists()
    open_store(StoreConfig(uri=str(tmp_path / "new")), D).close()  # creating one still does
    assert (tmp_path / "new").is_dir()


def test_fields_not_named_like_identifiers_filter_as_on_every_backend(store) -> None:
    """LanceDB made no filter column for `язык`, `doc-type` or `Year Published` (no results,
    no error); Qdrant read `v1.2` as a path into nested payloads (no results) and `Year
    Published` as an invalid one (an error)."""
    x = unit_rows(2, D, seed=3)
    pays = [{"язык": "ru", "doc-type": "faq", "Year Published": 2020, "Lang": "ru", "lang": "en",
             "v1.2": "yes", "meta": {"lang": "ru"}},
            {"язык": "en", "doc-type": "man", "Year Published": 2021, "Lang": "en", "lang": "ru",
             "v1.2": "no"}]
    store.upsert(["a", "b"], x, pays)
    for where, want in (({"язык": "ru"}, ["a"]), ({"doc-type": "man"}, ["b"]),
                        ({"Year Published": {"$gte": 2021}}, ["b"]), ({"Lang": "ru"}, ["a"]),
                        ({"lang": "ru"}, ["b"]), ({"x" * 80: "y"}, []), ({"v1.2": "yes"}, ["a"]),
                        ({"meta.lang": "ru"}, [])):
        (hits,) = store.search(x[0], 5, where=where)
        assert sorted(h.id for h in hits) == want, where
        assert store.count(where) == len(want), where


def test_a_range_bound_with_all_its_digits_is_compared_exactly(store) -> None:
    """A float bound of 16-17 significant digits (a time.time() stamp, 30/7): PostgreSQL cast
    it through float8 to 15 digits, so a record equal to the bound was missed by $gte and
    deleted by $lte with its neighbour."""
    ts = 1765000000.123456
    x = unit_rows(3, D, seed=1)
    store.upsert(["old", "new", "third"], x, [{"ts": ts}, {"ts": ts + 4e-6}, {"ts": 30 / 7}])
    assert store.count({"ts": {"$gte": ts}}) == 2
    assert store.count({"ts": {"$lte": ts}}) == 2  # "old" and 30/7
    assert store.count({"ts": {"$gt": ts}}) == 1
    assert store.count({"ts": {"$gte": 30 / 7, "$lte": 30 / 7}}) == 1
    assert store.count({"ts": {"$gte": np.float64(ts)}}) == 2  # numpy's repr is no number
    assert store.delete(where={"ts": {"$gte": 1e9, "$lte": ts}}) == 1
    assert [r.id for r in store.get(["old", "new"])] == ["new"]


def test_the_field_stores_keep_for_themselves_is_refused_in_every_store(store) -> None:
    """Qdrant keeps a record's id in the payload under ID_FIELD: a user's field of that name
    was overwritten and dropped there, kept elsewhere; now every store refuses it."""
    from smysl.toolkit.store import ID_FIELD

    x = unit_rows(2, D, seed=1)
    with pytest.raises(ValueError, match=f"payload of 'b' has the field '{ID_FIELD}'"):
        store.upsert(["a", "b"], x, [{"ok": 1}, {ID_FIELD: "ext-42"}])
    assert store.count() == 0


def test_an_id_no_store_can_hold_is_refused_as_input(store) -> None:
    """A lone surrogate in an id: LanceDB called the store damaged ("restore it from a
    backup"), others failed unnamed; every store now says the id is not valid Unicode."""
    x = unit_rows(1, D, seed=1)
    store.upsert(["a"], x)
    for call in (lambda: store.upsert(["b\ud800"], x), lambda: store.get(["a", "b\ud800"]),
                 lambda: store.delete(["b\ud800"])):
        with pytest.raises(ValueError, match="is not valid Unicode"):
            call()
    assert store.count() == 1


def test_a_nul_in_a_payload_or_filter_is_the_caller_s_not_the_store_s(store) -> None:
    """PostgreSQL's NUL check looked at the JSON text, where a NUL is escaped, so the database
    refused the write (a StoreError: a 503 for a served index); a filter value with a NUL
    failed there the same way. Stores that hold NUL keep it; PostgreSQL refuses it as bad
    input, and a filter for it matches nothing there."""
    from smysl.toolkit.store import StoreError

    x = unit_rows(1, D, seed=1)
    try:
        store.upsert(["a"], x, [{"n": {"deep": ["x\x00y"]}}])
        held = True
    except StoreError:
        raise
    except ValueError as e:
        assert "NUL" in str(e)
        held = False
    assert store.count({"k": "x\x00y"}) == 0
    assert store.count({"k\x00": 1}) == 0
    assert store.count({"k": ["x\x00y", "z"]}) == 0
    assert store.count() == (1 if held else 0)
    # an id with a NUL: where it cannot be held it is not found, as any absent id
    assert store.get(["b\x00"]) == [] and store.delete(["b\x00"]) == 0


def test_a_field_stored_with_values_of_several_types_filters_as_one(store) -> None:
    """LanceDB typed a field's filter column by its first value: a score stored as 1, then
    as 2.5 in a later batch, was missed by `score > 2` (the float had no column), and a flag
    corrected from 1 to true matched neither filter. Every store now matches the reference."""
    from smysl.toolkit.store import matches, parse_where

    x = unit_rows(5, D, seed=1)
    # (no list values: Qdrant matches one when any element matches, as documented)
    rows = [{"score": 1, "flag": 1}, {"score": 2.5, "flag": True}, {"score": "high", "flag": "y"},
            {"score": 3, "flag": None}, {"score": 2.0, "flag": False}]
    for i, p in enumerate(rows):  # one batch each: a field's type is fixed by its first
        store.upsert([f"r{i}"], x[i : i + 1], [p])
    for where in ({"score": {"$gt": 2}}, {"score": 2.5}, {"score": 2}, {"score": [1, "high"]},
                  {"score": {"$gte": 1, "$lt": 3}}, {"flag": True}, {"flag": 1},
                  {"flag": [1, True, "y"]}, {"flag": False}, {"flag": 0}):
        want = sum(matches(p, parse_where(where)) for p in rows)
        assert store.count(where) == want, where
    store.upsert(["r1"], x[1:2], [{"score": 2, "flag": False}])  # a value moves column
    rows[1] = {"score": 2, "flag": False}
    for where in ({"score": {"$gt": 2}}, {"score": 2.5}, {"score": 2}, {"flag": False},
                  {"flag": True}):
        want = sum(matches(p, parse_where(where)) for p in rows)
        assert store.count(where) == want, where


def test_same_payload_reads_values_as_filters_do() -> None:
    from smysl.toolkit.store import same_payload

    assert same_payload({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not same_payload({"a": 1}, {"a": True}) and not same_payload([0], [False])
    assert not same_payload({"a": 1}, {"a": 1, "b": None}) and not same_payload([1], 1)
    # PostgreSQL's jsonb gives a float such as 1e23 back as the int 10**23
    assert same_payload({"v": 1e23}, {"v": 10**23}) and same_payload(10**23, 1e23)


@pytest.mark.parametrize("table", ["Мои документы", "a b", ".", "..", "x" * 201])
def test_a_table_name_lancedb_refuses_is_refused_by_name(table) -> None:  # type: ignore[no-untyped-def]
    """A review's: LanceDB's refusal came back as "damaged or unreadable ... rebuild it"."""
    with pytest.raises(ValueError, match="a LanceDB table name holds only ASCII letters"):
        StoreConfig(table=table)
    StoreConfig(backend="postgres", uri="postgresql://h/db", table=table)  # others take them
