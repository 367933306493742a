"""``smysl serve --index`` over a PostgreSQL table (issue 16's store behind issue 11's route):
searches answer through a restart of the database's connections, the database's refusals
become 503s that name the server, and neither ``/ui/info`` nor a log shows the DSN's
password."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_helpers import HashEmbedder

import smysl.server
from smysl.cli import main
from smysl.server import ServerConfig, create_app
from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.store import StoreConfig

pytest.importorskip("psycopg")

TEXTS = ["Cats purr when they are content.", "Dogs bark at the postman.",
         "Goldfish swim in a bowl of water.", "The capital of France is Paris."]


def with_secret(dsn: str, **params: str) -> str:
    """The test server's DSN with a password (trust auth ignores it) and URL parameters."""
    assert dsn.startswith("postgresql://postgres@")
    dsn = dsn.replace("postgres@", "postgres:sekret@", 1)
    return dsn + "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else dsn


def test_a_postgres_index_is_served_through_lost_connections_and_refusals(
        postgres_dsn: str) -> None:
    import psycopg
    from psycopg import sql

    table = f"kb_{uuid.uuid4().hex[:10]}"
    name = f"served-{uuid.uuid4().hex[:8]}"
    with Index.create_or_open(HashEmbedder(), IndexConfig(
            StoreConfig.parse(postgres_dsn, table=table))) as ix:
        ix.add_texts(TEXTS, [str(i) for i in range(len(TEXTS))])
    served = with_secret(postgres_dsn, application_name=name,
                         options="-c%20lock_timeout%3D300")
    port = postgres_dsn.rsplit(":", 1)[1].split("/")[0]
    app = create_app(HashEmbedder(), ServerConfig(index=served, index_table=table,
                                                  index_threads=2))
    query = {"query": TEXTS[1], "k": 2}
    with TestClient(app) as client, psycopg.connect(postgres_dsn) as c:
        info = client.get("/ui/info")
        assert info.status_code == 200 and "sekret" not in info.text
        assert info.json()["index"] == {
            "location": f"postgres:127.0.0.1:{port}/postgres table {table}",
            "dimensions": HashEmbedder.dimensions, "chunks": len(TEXTS), "problem": None,
            "most_hits": 100, "reranker": None}
        first = client.post("/search", json=query)
        assert first.status_code == 200, first.text
        assert first.json()["hits"][0]["id"] == "1#0"

        # the database ends every connection of the served store (a restart): answered anew
        ended = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE application_name = %s", [name]).fetchone()
        c.commit()
        assert ended is not None and ended[0] >= 1
        again = client.post("/search", json=query)
        assert again.status_code == 200, again.text
        assert again.json()["hits"] == first.json()["hits"]
        assert client.get("/ui/info").json()["index"]["chunks"] == len(TEXTS)

        # the table locked longer than the server's lock_timeout: 503 naming the server
        c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(table)))
        for got in (client.post("/search", json=query),
                    client.post("/search", json={**query, "mode": "text"})):
            assert got.status_code == 503, got.text
            assert f"PostgreSQL at 127.0.0.1:{port}/postgres" in got.text
            assert "lock timeout" in got.text and "sekret" not in got.text
        # the page's facts say it, and its similarity matrix (no index needed) still works
        info = client.get("/ui/info")
        assert info.status_code == 200 and info.json()["index"]["chunks"] is None
        problem = info.json()["index"]["problem"]
        assert f"PostgreSQL at 127.0.0.1:{port}/postgres" in problem
        assert "lock timeout" in problem and "sekret" not in info.text
        c.rollback()
        assert client.post("/search", json=query).json()["hits"] == first.json()["hits"]


def test_serve_cli_serves_the_named_table_without_printing_the_password(
        tiny_dir, postgres_dsn, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--index-table`` picks the table ``smysl index add --table`` wrote (the server could
    serve only ``chunks`` before); the start-up line names the index without its password."""
    seen: dict[str, Any] = {}

    def fake_serve(embedder: Any, config: ServerConfig, *, ready: Any) -> int:
        seen["config"] = config
        ready("127.0.0.1", 43211)
        return 0

    monkeypatch.setattr(smysl.server, "serve", fake_serve)
    served = with_secret(postgres_dsn)
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--threads", "1",
                 "--in-process", "--index", served, "--index-table", "docs"]) == 0
    assert (seen["config"].index, seen["config"].index_table) == (served, "docs")
    err = capsys.readouterr().err
    port = postgres_dsn.rsplit(":", 1)[1].split("/")[0]
    assert f"search /search over postgres:127.0.0.1:{port}/postgres table docs" in err
    assert "sekret" not in err


def test_an_index_that_cannot_be_served_is_named_without_its_password(
        postgres_dsn: str) -> None:
    """Start-up refusals name the index as ``/ui/info`` does: a table without smysl's
    metadata ("build it"), and a role the database refuses (a StoreError: no advice to build
    or re-serve what the database would not let it read)."""
    import numpy as np
    import psycopg

    from smysl.server.ui import open_index
    from smysl.toolkit.store import StoreError
    from smysl.toolkit.stores import open_store

    table, role = f"bare_{uuid.uuid4().hex[:8]}", f"reader_{uuid.uuid4().hex[:8]}"
    with open_store(StoreConfig.parse(postgres_dsn, table=table), 4) as s:
        s.upsert(["a"], np.full((1, 4), 0.5, np.float32))
    port = postgres_dsn.rsplit(":", 1)[1].split("/")[0]
    label = f"postgres:127.0.0.1:{port}/postgres table {table}"
    with pytest.raises(ValueError, match="rebuild the index") as bare:
        open_index(with_secret(postgres_dsn), table, HashEmbedder())
    assert str(bare.value).startswith(f"--index {label}: no smysl index metadata")
    assert "sekret" not in str(bare.value)

    with psycopg.connect(postgres_dsn, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")  # may read nothing, not even the schema's
        c.execute(f"REVOKE ALL ON SCHEMA public FROM {role}")
    refused = with_secret(postgres_dsn).replace("postgres:sekret@", f"{role}:sekret@")
    with pytest.raises(StoreError) as no_access:
        open_index(refused, table, HashEmbedder())
    message = str(no_access.value)
    assert message.startswith(f"--index {label}: PostgreSQL at 127.0.0.1:{port}/postgres: ")
    assert "build it" not in message and "--model" not in message and "sekret" not in message
