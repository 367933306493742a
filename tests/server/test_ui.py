"""The ``/ui`` page and ``POST /search`` over ``smysl serve --index`` (issue 11 item: the small web
page): in-process checks of the routes, and the page itself in a real headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_helpers import HashEmbedder, live_server

from smysl.base import BaseEmbedder
from smysl.server import ServerConfig, create_app
from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.search import SearchConfig
from smysl.toolkit.store import StoreConfig

pytest.importorskip("lancedb")  # the indexes here are LanceDB folders

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TEXTS = ["Cats purr when they are content.", "Dogs bark at the postman.",
         "Goldfish swim in a bowl of water.", "The capital of France is Paris.",
         "Photosynthesis turns light into sugar.", "Rust has a borrow checker."]


def build_index(embedder: BaseEmbedder, path: Path) -> Path:
    """A tiny LanceDB index as `smysl index add` builds it (one chunk per text)."""
    with Index.create_or_open(embedder, IndexConfig(StoreConfig(uri=str(path)))) as ix:
        ix.add_texts(TEXTS, [str(i) for i in range(len(TEXTS))],
                     metadata=[{"topic": t} for t in
                                      ["pets", "pets", "pets", "geo", "bio", "code"]])
    return path


def toolkit_search(embedder: BaseEmbedder, path: Path, query: str, k: int,
                   **search: Any) -> list[Any]:
    """What `smysl index search` answers, in-process (``search``: more SearchConfig)."""
    with Index.create_or_open(embedder, IndexConfig(StoreConfig(uri=str(path))),
                              create=False) as ix:
        (hits,) = ix.search(query, SearchConfig(k=k, **search))
    return hits


@pytest.fixture
def hash_index(tmp_path: Path) -> Path:
    return build_index(HashEmbedder(), tmp_path / "kb")


# ---------------------------------------------------------------------------- in-process


def test_ui_page_is_open_and_carries_its_csp() -> None:
    """issue 11 item "/ui": one self-contained page, public even with auth; its CSP allows exactly
    its own inline script and style (no CDN), and the page knows it must ask for the key."""
    app = create_app(HashEmbedder(), ServerConfig(api_key="k"))
    with TestClient(app) as client:
        r = client.get("/ui")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        html = r.text
        assert '<meta name="smysl-auth" content="required">' in html
        assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
        csp = r.headers["content-security-policy"]
        for tag in ("script", "style"):
            (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"{tag}-src 'sha256-{digest}'" in csp
        assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
        # the page is open, its API is not
        assert client.get("/ui/info").status_code == 401
        info = client.get("/ui/info", headers={"Authorization": "Bearer k"}).json()
        assert info["index"] is None
        assert (info["model"]["name"], info["model"]["dimensions"],
                info["model"]["min_dimensions"]) == ("hash-embedder", 48, 8)
        assert client.post("/search", json={"query": "q"},
                           headers={"Authorization": "Bearer k"}).status_code == 404
    with TestClient(create_app(HashEmbedder())) as client:
        assert '<meta name="smysl-auth" content="none">' in client.get("/ui").text


def test_search_answers_like_the_toolkit(hash_index: Path) -> None:
    """issue 11 item "/search": the served index gives the hits `smysl index search` gives (ids,
    scores, texts, payloads), behind the API key like every route."""
    backend = HashEmbedder()
    expected = toolkit_search(backend, hash_index, "a cat that purrs", 3)
    app = create_app(backend, ServerConfig(index=str(hash_index), api_key="k"))
    auth = {"Authorization": "Bearer k"}
    with TestClient(app) as client:
        assert client.post("/search", json={"query": "cats"}).status_code == 401
        r = client.post("/search", json={"query": "a cat that purrs", "k": 3}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "hash-embedder"
        assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
        np.testing.assert_allclose([h["score"] for h in body["hits"]],
                                   [h.score for h in expected], atol=1e-5)
        for got, want in zip(body["hits"], expected, strict=True):
            assert got["text"] == want.payload["text"]
            assert got["metadata"] == {k: v for k, v in want.payload.items() if k != "text"}
        filtered = client.post("/search", json={"query": "animals", "k": 10,
                                                "where": {"topic": "pets"}}, headers=auth).json()
        assert len(filtered["hits"]) == 3
        assert {h["metadata"]["topic"] for h in filtered["hits"]} == {"pets"}
        info = client.get("/ui/info", headers=auth).json()["index"]
        assert info == {"location": f"{hash_index} table chunks", "dimensions": 48,
                        "chunks": len(TEXTS), "problem": None, "most_hits": 100,
                        "reranker": None}


def test_an_index_that_cannot_be_read_leaves_the_page_its_matrix(
        hash_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/ui/info answered 503 when the index could not be counted (its files gone, its server
    down), and the page then showed nothing, not even the similarity matrix, which needs no
    index; the problem is said in the index's facts now."""
    from smysl.toolkit.lancedb import LanceStore

    def gone(self: Any, where: Any = None) -> int:
        raise ValueError(f"{hash_index}: the table's data files are missing")

    with TestClient(create_app(HashEmbedder(), ServerConfig(index=str(hash_index)))) as client:
        monkeypatch.setattr(LanceStore, "count", gone)
        r = client.get("/ui/info")
        assert r.status_code == 200 and r.json()["model"]["dimensions"] == 48
        assert r.json()["index"]["chunks"] is None
        assert "data files are missing" in r.json()["index"]["problem"]


def test_search_refuses_a_text_weight_outside_hybrid(hash_index: Path) -> None:
    """text_weight with mode vector or text did nothing, where the CLI refuses it."""
    with TestClient(create_app(HashEmbedder(), ServerConfig(index=str(hash_index)))) as client:
        for mode in ("vector", "text"):
            r = client.post("/search", json={"query": "cats", "mode": mode, "text_weight": 2})
            assert r.status_code == 422 and "in mode 'hybrid'" in r.text, r.text
        assert client.post("/search", json={"query": "cats", "mode": "hybrid",
                                            "text_weight": 2}).status_code == 200


def test_the_json_fallback_writes_json() -> None:
    """The fallback for an integer past 64 bits wrote a NaN beside it as a bare NaN (no JSON;
    orjson writes null)."""
    import json

    from smysl.server.http import json_response

    body = json_response({"big": 2**70, "score": float("nan"), "v": np.arange(2.0)}).body
    assert json.loads(bytes(body), parse_constant=lambda c: pytest.fail(c)) == {
        "big": 2**70, "score": None, "v": [0.0, 1.0]}


def test_search_answers_metadata_with_an_integer_past_64_bits(hash_index: Path) -> None:
    """An index keeps metadata as given; one integer past 64 bits made every /search that
    met its chunk a 500 (orjson: "Integer exceeds 64-bit range")."""
    backend = HashEmbedder()
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                              create=False) as ix:
        ix.add_texts(["Whales sing under the sea."], ids=["whale"],
                     metadata=[{"big": 123456789012345678901234567890}])
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        r = client.post("/search", json={"query": "Whales sing under the sea.", "k": 2})
        assert r.status_code == 200, r.text
        hit = r.json()["hits"][0]
        assert hit["id"] == "whale#0" and hit["metadata"]["big"] == 123456789012345678901234567890


def test_search_by_words_and_hybrid_as_the_toolkit(hash_index: Path) -> None:
    """/search ``mode``: ``text`` ranks by the query's words (nothing embedded), ``hybrid``
    fuses both rankings, each as the toolkit's search; an index of an earlier smysl is a
    clear 4xx in those modes."""
    from smysl.toolkit.index import LEXICAL

    backend = HashEmbedder()
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                              create=False) as ix:
        want = {mode: ix.search("purring cats", SearchConfig(k=3, mode=mode))[0]
                for mode in ("text", "hybrid")}
    assert want["text"] and want["hybrid"][0].text_rank is not None
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        for mode, hits in want.items():
            r = client.post("/search", json={"query": "purring cats", "k": 3, "mode": mode})
            assert r.status_code == 200, r.text
            got = r.json()["hits"]
            assert [h["id"] for h in got] == [h.id for h in hits]
            np.testing.assert_allclose([h["score"] for h in got], [h.score for h in hits],
                                       rtol=1e-6)
            if mode == "hybrid":
                assert [(h["vector_rank"], h["text_rank"]) for h in got] == [
                    (h.vector_rank, h.text_rank) for h in hits]
            else:  # nothing embedded: no model timing to report
                assert "text_rank" not in got[0] and "x-compute-time" not in r.headers
        bad = client.post("/search", json={"query": "q", "mode": "bm25"})
        assert bad.status_code == 422
        heavy = client.post("/search", json={"query": "purring cats", "k": 3, "mode": "hybrid",
                                             "text_weight": 0}).json()["hits"]
        assert [h["id"] for h in heavy] == [h.id for h in toolkit_search(
            backend, hash_index, "purring cats", 3)]  # weight 0: the vector ranking
        bad = client.post("/search", json={"query": "q", "mode": "hybrid", "text_weight": -1})
        assert bad.status_code in (400, 422) and "text_weight" in bad.text
        with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                                  create=False) as ix:
            ix.store.update_meta({LEXICAL: None})
        old = client.post("/search", json={"query": "cats", "mode": "text"})
        assert old.status_code in (400, 422) and "earlier smysl" in old.text
        assert client.post("/search", json={"query": "cats"}).status_code == 200


def test_search_reranks_with_the_served_reranker(hash_index: Path,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """issue 15: with ``--reranker`` /search reorders its ``rerank_top`` nearest chunks by the
    reranker (through its batcher) and gives what the toolkit's reranked search gives, both
    scores kept; ``rerank: false`` is the plain vector search; asking a server without a
    reranker to rerank is a clear 4xx."""
    from qwen_tiny import build_tiny_reranker

    from smysl import Reranker

    reranker = Reranker.load(str(build_tiny_reranker(tmp_path_factory.mktemp("rr")).path),
                             device="cpu", process=False)
    backend = HashEmbedder()
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                              create=False) as ix:
        (want,) = ix.search("a cat that purrs", SearchConfig(k=3, rerank_top=5),
                            reranker=reranker)
    app = create_app(backend, ServerConfig(index=str(hash_index)), reranker=reranker)
    with TestClient(app) as client:
        body = client.post("/search", json={"query": "a cat that purrs", "k": 3,
                                            "rerank_top": 5}).json()
        assert body["reranker"] == reranker.name
        assert [h["id"] for h in body["hits"]] == [h.id for h in want]
        assert [h["score"] for h in body["hits"]] == [h.score for h in want]
        assert [h["vector_rank"] for h in body["hits"]] == [h.vector_rank for h in want]
        plain = client.post("/search", json={"query": "a cat that purrs", "k": 3,
                                             "rerank": False}).json()
        assert plain["reranker"] is None and "vector_score" not in plain["hits"][0]
        bad = client.post("/search", json={"query": "q", "k": 5, "rerank_top": 2})
        assert bad.status_code == 422 and "rerank_top" in bad.json()["error"]  # TEI's shape
        # a hit without text (an index written by another tool) was scored as "", ranked
        # anywhere; `smysl index search --rerank` refuses it naming the hit: so does /search
        import smysl.toolkit.search as toolkit_search_module

        real = toolkit_search_module.search_vectors

        def textless(*a: Any, **k: Any) -> Any:
            found = real(*a, **k)
            found[0][1] = dataclasses.replace(found[0][1], payload={})
            return found

        with pytest.MonkeyPatch.context() as m:
            m.setattr(toolkit_search_module, "search_vectors", textless)
            r = client.post("/search", json={"query": "a cat that purrs", "k": 3,
                                             "rerank_top": 5})
        assert r.status_code == 503 and "has no text in its payload to rerank" in r.text, r.text
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        r = client.post("/search", json={"query": "q", "rerank": True})
        assert r.status_code == 422 and "no reranker" in r.json()["error"]
        # rerank_top did nothing without reranking, and was a 424 "internal error" below 1
        for top in (0, 5):
            r = client.post("/search", json={"query": "q", "rerank_top": top})
            assert r.status_code == 422 and "not reranked" in r.json()["error"]
    # a server taking 4 inputs a request: the default rerank_top (50) failed every search with
    # "documents has 6 items but at most 4"; now it reranks the 4 nearest, and a rerank_top
    # asked for above that is refused naming it
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                              create=False) as ix:
        (four,) = ix.search("a cat that purrs", SearchConfig(k=3, rerank_top=4),
                            reranker=reranker)
    app = create_app(backend, ServerConfig(index=str(hash_index), max_inputs=4),
                     reranker=reranker)
    with TestClient(app) as client:
        r = client.post("/search", json={"query": "a cat that purrs", "k": 3})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in four]
        r = client.post("/search", json={"query": "q", "k": 3, "rerank_top": 5})
        assert r.status_code == 422 and "rerank_top must be between k (3) and 4" in \
            r.json()["error"]
        # a review's: the page's Hits field went to 100, and k 20 got "rerank_top must be
        # between k (20) and 4", a setting the page does not have. /ui/info says the cap,
        # and the error names k
        assert client.get("/ui/info").json()["index"]["most_hits"] == 4
        assert client.get("/ui/info").json()["index"]["reranker"] == reranker.name
        r = client.post("/search", json={"query": "q", "k": 20})
        assert r.status_code == 422, r.text
        assert "k (20): a reranked search on this server returns at most 4 hits" in \
            r.json()["error"]
        assert client.post("/search", json={"query": "q", "k": 20, "rerank": False}
                           ).status_code == 200


def test_search_never_serves_a_damaged_stored_vector(hash_index: Path) -> None:
    """issue 11 item 1 (served index): a stored vector damaged on disk is left out of /search's
    hits (the toolkit's own hit check), and the search still returns k hits."""
    backend = HashEmbedder()
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                              create=False) as ix:
        records = {r.id: r for b in ix.store.scan() for r in b}
    needle = records["0#0"].vector.tobytes()
    files = [p for p in hash_index.rglob("*.lance") if p.is_file() and needle in p.read_bytes()]
    assert files, "vector bytes not found in the store"
    for f in files:  # the exponent of value 2: the norm goes far from 1
        data = bytearray(f.read_bytes())
        data[data.find(needle) + 4 * 2 + 3] ^= 1 << 6
        f.write_bytes(bytes(data))
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        r = client.post("/search", json={"query": "Cats purr when they are content.", "k": 5})
        assert r.status_code == 200, r.text
        ids = [h["id"] for h in r.json()["hits"]]
    assert len(ids) == 5 and "0#0" not in ids


def test_search_rejects_bad_requests(hash_index: Path) -> None:
    """issue 11 item "/search": bad input gets a clear TEI-shaped error naming the field."""
    app = create_app(HashEmbedder(), ServerConfig(index=str(hash_index)))
    with TestClient(app) as client:
        cases = [({"query": "q", "k": 0}, 422, "k must be between 1 and 100"),
                 ({"query": "q", "k": 101}, 422, "k must be between 1 and 100"),
                 ({"query": ""}, 400, "query[0] is an empty string"),
                 # a review's: a whitespace query passed here, the index's own rule refuses it
                 ({"query": "  \n"}, 400, "a query is empty (query 0); give its text"),
                 ({"query": "q", "where": {"topic": {"$near": 1}}}, 422, "unknown filter"),
                 ({"query": "q", "limit": 3}, 422, "limit"),
                 ({"k": 3}, 422, "query"),
                 # bounded for any client (1.7M doc ids took 41 s and 6 GB in the store)
                 ({"query": "q", "where": {"doc_id": [str(i) for i in range(1025)]}}, 422,
                  "has 1025 values; at most 1024"),
                 ({"query": "q", "where": {f"k{i}": 1 for i in range(65)}}, 422,
                  "65 conditions"),
                 ({"query": "q", "where": {"topic": "x" * 1025}}, 422, "1025 characters"),
                 # a client's filter, not a damaged index (it was a 503 naming the index)
                 ({"query": "q", "where": {"topic": "\ud800"}}, 422, "lone surrogate"),
                 ({"query": "q", "where": {"\ud800": "x"}}, 422, "lone surrogate"),
                 ({"query": "q", "where": {"topic": "a\x00b"}}, 422, "NUL")]
        for body, status, message in cases:
            # as JSON escapes (a lone surrogate cannot be encoded as UTF-8 text)
            r = client.post("/search", content=json.dumps(body).encode(),
                            headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            assert message in r.json()["error"] and r.json()["error_type"]


def test_index_of_another_model_is_refused_at_start(hash_index: Path, tmp_path: Path) -> None:
    """issue 11 item "--index": an index built with another model, a missing folder and a store
    smysl did not build stop the server before it serves, with the reason; none is modified."""

    class Other(HashEmbedder):
        name = "other-embedder"

    with pytest.raises(ValueError, match=r"built with model 'hash-embedder'.*--model "
                                         r"hash-embedder"):
        create_app(Other(), ServerConfig(index=str(hash_index)))
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        create_app(HashEmbedder(), ServerConfig(index=str(missing)))
    assert not missing.exists()
    from smysl.toolkit.stores import open_store

    foreign = tmp_path / "foreign"
    with open_store(StoreConfig(uri=str(foreign)), 48) as store:  # vectors without smysl's meta
        store.upsert(["a"], np.eye(1, 48, dtype=np.float32))
    with pytest.raises(ValueError, match="no smysl index metadata"):
        create_app(HashEmbedder(), ServerConfig(index=str(foreign)))
    with open_store(StoreConfig(uri=str(foreign))) as store:
        assert store.read_meta() == {}  # not claimed for the served model
    with pytest.raises(ValueError, match="index"):
        ServerConfig(index=" ")


def test_serve_cli_refuses_a_foreign_index(tiny_dir, hash_index, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item "--index": `smysl serve --index` passes the index on, and a mismatch is an
    error message and exit code 2 before anything listens."""
    import smysl.server
    from smysl.cli import main

    built: list[object] = []

    def build_only(embedder: Any, config: ServerConfig, **kw: Any) -> int:
        built.append(create_app(embedder, config))  # what serve() does before it binds a port
        return 0

    monkeypatch.setattr(smysl.server, "serve", build_only)
    rc = main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process",
               "--index", str(hash_index)])
    assert rc == 2 and built == []
    err = capsys.readouterr().err
    assert "smysl serve: error: --index" in err and "'hash-embedder'" in err


def test_workers_refuse_a_foreign_index_before_they_start(tiny_dir, hash_index, capsys) -> None:  # type: ignore[no-untyped-def]
    """With HTTP workers (the default on CUDA) the supervisor checks the index before it binds
    the port: one error, not every worker's traceback and restarts."""
    from smysl.cli import main

    rc = main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--workers", "2",
               "--port", "0", "--index", str(hash_index)])
    err = capsys.readouterr().err
    assert rc == 2 and "smysl serve: error: --index" in err and "'hash-embedder'" in err
    assert "listening" not in err and "Traceback" not in err


def test_workers_and_a_local_qdrant_folder_from_the_command_line(
        tiny_dir, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """--workers 2 with a local Qdrant folder is refused before any model loads (a review's:
    it came after the load); --workers auto serves it with one worker whatever the device."""
    import smysl.server
    import smysl.server.workers
    from smysl.cli import main

    qd = f"qdrant:{tmp_path / 'qd'}"
    loads: list[str] = []
    monkeypatch.setattr("smysl.registry.load", lambda *a, **k: loads.append("x"))
    rc = main(["serve", "--model", str(tiny_dir), "--workers", "2", "--index", qd])
    assert rc == 2 and "local Qdrant folder" in capsys.readouterr().err and not loads
    monkeypatch.undo()
    seen: list[ServerConfig] = []
    monkeypatch.setattr(smysl.server.workers, "auto_workers", lambda *a, **k: 4)
    monkeypatch.setattr(smysl.server, "serve",
                        lambda embedder, config, ready: seen.append(config) or 0)
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--index", qd]) == 0
    assert seen[0].workers == 1
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu",
                 "--index", str(tmp_path / "kb")]) == 0
    assert seen[1].workers == 4  # auto's count stands for any other index


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); the README test command "
                    "installs it")
    from playwright.sync_api import sync_playwright  # the dev extra; no browser download

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh browser page that records console errors, page errors and requests."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def cells(self) -> np.ndarray:
        """The heatmap's shown values, ``[queries, documents]``."""
        rows = self.page.locator("#heatmap tbody tr")
        return np.array([[float(t) for t in rows.nth(i).locator("td.cell").all_inner_texts()]
                         for i in range(rows.count())])


def lines(page: Any, selector: str) -> list[str]:
    return [s.strip() for s in page.input_value(selector).split("\n") if s.strip()]


def cosines(embedder: BaseEmbedder, queries: list[str], docs: list[str], dims: int) -> np.ndarray:
    """The in-process reference: queries with the model's query instruction, documents bare."""
    q = embedder.embed(queries, instruction=embedder.choose_instruction(role="query"),
                       dimensions=dims)
    d = embedder.embed(docs, instruction=embedder.choose_instruction(role="document"),
                       dimensions=dims)
    return np.asarray(q @ d.T)


@pytest.mark.browser
def test_page_in_chromium(chromium, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item "/ui in a real browser": the page loads, the heatmap shows the in-process
    cosines, the Matryoshka slider re-embeds at another size, a search shows the toolkit's hits
    with scores, every field has a label, and nothing lands on the console."""
    kb = build_index(tiny, tmp_path / "kb")
    with live_server(tiny, index=str(kb)) as url:
        view = Page(chromium)
        page = view.page
        try:
            page.goto(f"{url}/ui")
            page.wait_for_selector("#heatmap[data-dims='64'] td.cell")
            queries, docs = lines(page, "#queries"), lines(page, "#documents")
            shown = view.cells()
            assert shown.shape == (len(queries), len(docs)) == (2, 3)
            full = cosines(tiny, queries, docs, 64)
            np.testing.assert_allclose(shown, full, atol=1e-3)
            assert page.locator("#dims-out").inner_text() == "64 dims"
            assert page.locator("#model-facts").inner_text().count("32–64 dimensions") == 1
            # unlabelled controls are invisible to screen readers
            unlabelled = page.evaluate("""[...document.querySelectorAll('input, textarea')]
                .filter(e => e.labels.length === 0).map(e => e.id)""")
            assert unlabelled == []

            page.locator("#dims").fill("0")  # the first step: the smallest size
            page.wait_for_selector("#heatmap[data-dims='32'] td.cell")
            assert page.locator("#dims-out").inner_text() == "32 dims"
            cut = view.cells()
            np.testing.assert_allclose(cut, cosines(tiny, queries, docs, 32), atol=1e-3)
            assert np.abs(cut - full).max() > 1e-3  # the slider changed the values shown

            page.get_by_label("Search query", exact=True).fill("a cat that purrs")
            page.get_by_label("Hits", exact=True).fill("4")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_selector("#hits li.hit")
            hits = toolkit_search(tiny, kb, "a cat that purrs", 4)
            assert page.locator("#hits li.hit .hit-id").all_inner_texts() == [h.id for h in hits]
            scores = [float(s) for s in page.locator("#hits .score").all_inner_texts()]
            np.testing.assert_allclose(scores, [h.score for h in hits], atol=1e-3)
            assert page.locator("#hits .snippet").first.inner_text() == hits[0].payload["text"]
            page.get_by_label("Rank by", exact=True).select_option("text")  # by its words
            page.get_by_label("Search query", exact=True).fill("purrs")
            page.get_by_role("button", name="Search", exact=True).click()
            from playwright.sync_api import expect  # (no wait_for_function: the CSP bars eval)

            expect(page.locator("#hits li.hit")).to_have_count(1)
            assert page.locator("#hits .snippet").first.inner_text() == TEXTS[0]
            # both fused, the words weighing 3: the field shows with the mode that uses it
            assert page.locator("#search-weight").is_hidden()
            page.get_by_label("Rank by", exact=True).select_option("hybrid")
            page.get_by_label("Words weigh", exact=True).fill("3")
            page.get_by_label("Search query", exact=True).fill("a cat that purrs")
            page.get_by_role("button", name="Search", exact=True).click()
            fused = toolkit_search(tiny, kb, "a cat that purrs", 4, mode="hybrid",
                                   text_weight=3.0)
            expect(page.locator("#search-status")).to_contain_text("hits for “a cat that purrs”")
            assert page.locator("#hits li.hit .hit-id").all_inner_texts() == [h.id for h in fused]
            scores = [float(s) for s in page.locator("#hits .score").all_inner_texts()]
            np.testing.assert_allclose(scores, [h.score for h in fused], atol=1e-3)
            even = toolkit_search(tiny, kb, "a cat that purrs", 4, mode="hybrid")
            assert not np.allclose(scores, [h.score for h in even], atol=1e-3)  # it was sent
            # a weight the field refuses, then another mode: that search is not held back
            page.get_by_label("Words weigh", exact=True).fill("500")
            page.get_by_label("Rank by", exact=True).select_option("text")
            page.get_by_label("Search query", exact=True).fill("barking dogs")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#search-status")).to_contain_text("hits for “barking dogs”")
            assert page.locator("#hits .snippet").first.inner_text() == TEXTS[1]
            # an earlier search answered after a later one: its hits replaced the later ones
            held: list[Any] = []
            page.route("**/search", lambda r: held.append(r) if not held else r.continue_())
            page.get_by_label("Search query", exact=True).fill("barking dogs")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_timeout(200)
            assert len(held) == 1
            page.get_by_label("Search query", exact=True).fill("purrs")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#search-status")).to_contain_text("hits for “purrs”")
            held[0].continue_()  # the first search's answer arrives now
            page.wait_for_timeout(500)
            assert "hits for “purrs”" in page.locator("#search-status").inner_text()
            assert page.locator("#hits .snippet").first.inner_text() == TEXTS[0]
            page.unroute("**/search")
            assert view.errors == []
        finally:
            view.context.close()


@pytest.mark.browser
def test_page_with_auth_in_chromium(chromium, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item "/ui with auth": the page asks for the key before calling anything, then
    every call carries it (heatmap and search work), and no 401 reaches the console."""
    kb = build_index(tiny, tmp_path / "kb")
    with live_server(tiny, index=str(kb), api_key="s3cret") as url:
        view = Page(chromium)
        page = view.page
        try:
            page.goto(f"{url}/ui")
            page.get_by_label("API key", exact=True).wait_for()
            assert page.locator("#similarity").is_hidden()
            assert [u for u in view.requests if u != f"{url}/ui"] == []  # nothing before the key
            page.get_by_label("API key", exact=True).fill("s3cret")
            page.get_by_role("button", name="Use key", exact=True).click()
            page.wait_for_selector("#heatmap td.cell")
            assert view.cells().shape == (2, 3)
            assert page.locator("#auth").is_hidden()
            assert page.evaluate("sessionStorage.getItem('smysl-api-key')") == "s3cret"
            page.get_by_label("Search query", exact=True).fill("dogs")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_selector("#hits li.hit")
            assert page.locator("#hits li.hit").count() == 5  # the page's default k
            # the key can be forgotten once taken (its button was inside the hidden form)
            page.get_by_role("button", name="Forget key", exact=True).click()
            assert page.locator("#auth").is_visible() and page.locator("#similarity").is_hidden()
            assert page.locator("#hits li.hit").count() == 0
            assert page.evaluate("sessionStorage.getItem('smysl-api-key')") is None
            page.get_by_label("API key", exact=True).fill("s3cret")
            page.get_by_role("button", name="Use key", exact=True).click()
            page.wait_for_selector("#heatmap td.cell")
            # "Forget key" while a search is on its way: its answer, arriving after, showed
            # its hits and "5 hits for ..." beside the key form
            held: list[Any] = []
            page.route("**/search", lambda r: held.append(r))
            page.get_by_label("Search query", exact=True).fill("dogs")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_timeout(200)
            assert len(held) == 1
            page.get_by_role("button", name="Forget key", exact=True).click()
            held[0].continue_()
            page.wait_for_timeout(500)
            assert page.locator("#hits li").count() == 0
            assert "hits for" not in page.locator("#search-status").inner_text()
            page.unroute("**/search")
            # a key a browser cannot send (not Latin-1): every call failed, and once stored
            # the page started with neither the key form nor a way to forget it; one of
            # Latin-1 (é) the browser sends as other bytes than the server's (a review's)
            for key in ("ключ", "clé"):
                page.get_by_label("API key", exact=True).fill(key)
                page.get_by_role("button", name="Use key", exact=True).click()
                assert page.locator("#auth").is_visible()
                assert "cannot send in a header" in page.locator("#error").inner_text()
            assert page.evaluate("sessionStorage.getItem('smysl-api-key')") is None
            page.evaluate("sessionStorage.setItem('smysl-api-key', 'ключ')")
            page.reload()
            page.get_by_label("API key", exact=True).wait_for()
            assert "cannot send in a header" in page.locator("#error").inner_text()
            assert view.errors == []
        finally:
            view.context.close()


@pytest.mark.browser
def test_page_names_the_line_offers_truncation_and_works_behind_a_prefix(  # type: ignore[no-untyped-def]
        chromium, tiny, tmp_path) -> None:
    """A review's: a too-long document said "input[2] has ... tokens; ask for truncation", the
    API's index (0-based, blank lines skipped) and advice the page could not follow; behind a
    proxy serving the page at /smysl/ui its calls went to /v1/embeddings, past the prefix."""
    from playwright.sync_api import expect

    limit = tiny.max_tokens
    long = " ".join(["word"] * (limit + 50))
    with live_server(tiny) as url:
        view = Page(chromium)
        page = view.page
        # the proxy: /smysl/<path> is this server's /<path>
        page.route(f"{url}/smysl/**",
                   lambda r: r.continue_(url=r.request.url.replace("/smysl/", "/", 1)))
        try:
            page.goto(f"{url}/smysl/ui")
            page.wait_for_selector("#heatmap td.cell")
            assert f"{url}/smysl/v1/embeddings" in view.requests
            assert f"{url}/smysl/ui/info" in view.requests
            assert not any(u.startswith(f"{url}/v1/") for u in view.requests)
            page.get_by_label("Documents, one per line (embedded as documents)").fill(
                f"The capital of China is Beijing.\n\n{long}\nParis.")
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#sim-error")).to_contain_text(
                "Documents, line 3, is longer than the model's context length")
            error = page.locator("#sim-error").inner_text()
            assert "(here: tick “Cut long texts”)" in error and "input[" not in error, error
            page.get_by_label("Cut long texts").check()
            # an instruction too long on its own: ticking the box cannot help, so the page
            # does not say to (a review's)
            page.locator("#instruction").fill("инструкция " * 600)
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#sim-error")).to_contain_text("instruction alone has")
            assert "Cut long texts" not in page.locator("#sim-error").inner_text()
            page.locator("#instruction").fill("")
            page.get_by_role("button", name="Compare", exact=True).click()
            # the new matrix: the page's first one (its own example documents) has 3 columns
            # too, and was read when the answer came late (a flaky failure under load)
            expect(page.locator("#heatmap thead th").last).to_have_attribute("title", "Paris.")
            expect(page.locator("#sim-error")).to_have_text("")
            docs = ["The capital of China is Beijing.", long, "Paris."]
            queries = lines(page, "#queries")
            q = tiny.embed(queries, instruction=tiny.choose_instruction(role="query"))
            d = tiny.embed(docs, truncate=True)
            expect(page.locator("#heatmap tbody tr").first.locator("td.cell")).to_have_count(3)
            np.testing.assert_allclose(view.cells(), q @ d.T, atol=1e-3)
            # the refused request's 400 is the browser's console line, nothing else is
            assert [e for e in view.errors if "400" not in e] == []
        finally:
            view.context.close()


@pytest.mark.browser
def test_page_says_each_sections_error_beside_it_and_shows_what_it_was_given(  # type: ignore[no-untyped-def]
        chromium, tiny, tmp_path) -> None:
    """A review's, in a real browser: a failed Compare said so below the search section, out of
    view, its old matrix left as if it were the answer, and the next search erased the error;
    an emoji was cut in half in a header; metadata 12345678901234567891 was shown rounded; a
    stopped server was "Queries: Failed to fetch"; "Forget key" left the model's name and
    focus on nothing; a reranked search did not say so, and could not be turned off."""
    from playwright.sync_api import expect
    from qwen_tiny import build_tiny_reranker

    from smysl.qwen3.reranker import Reranker

    kb = tmp_path / "kb"
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(kb)))) as ix:
        ix.add_texts(TEXTS[:3], ["a", "b", "c"],
                     metadata=[{"n": 12345678901234567891, "m": 9007199254740993}] * 3)
    reranker = Reranker.load(str(build_tiny_reranker(tmp_path / "rr").path), device="cpu")
    long = " ".join(["word"] * (tiny.max_tokens + 50))
    with live_server(tiny, reranker, index=str(kb), api_key="k") as url:
        view = Page(chromium)
        page = view.page
        try:
            page.goto(f"{url}/ui")
            page.get_by_label("API key", exact=True).fill("k")
            page.get_by_role("button", name="Use key", exact=True).click()
            page.wait_for_selector("#heatmap td.cell")
            assert page.locator("#model-name").inner_text() != ""
            docs = page.get_by_label("Documents, one per line (embedded as documents)")
            docs.fill("a" * 26 + "🐱🐶🐶\n" + long)
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#sim-error")).to_contain_text("Documents, line 2, is longer")
            assert page.locator("#heatmap").count() == 0
            assert page.locator("#error").inner_text() == ""
            # the search's own lines: the matrix's error stays; reranked, and said so
            page.get_by_label("Search query", exact=True).fill("a cat")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#search-status")).to_contain_text(
                f"reranked by {reranker.name}")
            assert "Documents, line 2" in page.locator("#sim-error").inner_text()
            assert page.locator("#hits .meta").first.inner_text().startswith(
                "n: 12345678901234567891 · m: 9007199254740993 · ")
            page.get_by_label(f"Rerank with {reranker.name}").uncheck()
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#search-status")).to_have_text("3 hits for “a cat”.")
            docs.fill("a" * 26 + "🐱🐶🐶")
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#heatmap thead th").first).to_have_text("a" * 26 + "🐱…")
            # the server unreachable: said so, not as a text box's fault
            page.route("**/v1/embeddings", lambda r: r.abort())
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#sim-error")).to_contain_text("The server cannot be reached")
            page.unroute("**/v1/embeddings")
            page.get_by_role("button", name="Forget key", exact=True).click()
            assert page.locator("#model-name").inner_text() == ""
            assert page.evaluate("document.activeElement.id") == "api-key"
            assert page.locator("#sim-error").inner_text() == ""
            # the aborted call's console line, and the refused one's 400
            assert [e for e in view.errors if "400" not in e and "FAILED" not in e] == [], \
                view.errors
        finally:
            view.context.close()


@pytest.mark.browser
def test_page_draws_a_matrix_of_160000_cells(chromium, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """400 queries x 400 documents (within the server's 2,048 inputs) failed with "Maximum
    call stack size exceeded": the colour scale spread every value into Math.min."""
    with live_server(tiny) as url:
        view = Page(chromium)
        page = view.page
        try:
            page.goto(f"{url}/ui")
            page.wait_for_selector("#heatmap td.cell")
            n = 400
            page.evaluate("""n => {
                const rows = Array.from({length: n}, (_, i) =>
                    Array.from({length: n}, (_, j) => Math.cos(i * n + j)));
                const names = Array.from({length: n}, (_, i) => "t" + i);
                renderHeatmap(names, names, rows, 64);
            }""", n)
            assert page.locator("#heatmap tbody tr").count() == n
            # more than a million cells is refused before anything is sent (a review's: a
            # box takes the server's 2,048 lines, and 4.2M cells would freeze the tab)
            from playwright.sync_api import expect

            sent = len(view.requests)
            page.locator("#queries").fill("\n".join(f"q{i}" for i in range(1001)))
            page.locator("#documents").fill("\n".join(f"d{i}" for i in range(1000)))
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#sim-error")).to_contain_text(
                "1001 queries x 1000 documents: the page draws at most 1,000,000 cells")
            assert len(view.requests) == sent
            assert page.locator("#heatmap").count() == 0  # not left as if it answered
            assert view.errors == []
        finally:
            view.context.close()


def test_search_instruction_empty_means_none(hash_index: Path) -> None:
    """/search's ``instruction: ""`` embedded the query with the model's task (the OpenAI
    extension's rule for an empty field); it means none, as documented and as in `smysl index
    search --instruction ''`."""

    class Aware(HashEmbedder):
        instruction_aware = True
        default_task = "Find the pet"

    backend = Aware()
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        # blank is none too, as the CLI has it (a review's: "   " embedded with the task)
        for instruction, sent in (("", "a cat"), ("  \n", "a cat"),
                                  (None, "Instruct: Find the pet\nQuery:a cat"), ("qa", None)):
            backend.calls.clear()
            body = {"query": "a cat"} if instruction is None else {
                "query": "a cat", "instruction": instruction}
            assert client.post("/search", json=body).status_code == 200
            if sent is not None:
                assert backend.calls == [[sent]], instruction
            else:
                assert backend.calls[0][0].startswith("Instruct: ") and backend.calls[0][0] != (
                    "Instruct: Find the pet\nQuery:a cat")
        # mode text embeds nothing: an instruction did nothing there (or was refused as one
        # the model does not take), as `smysl index search --mode text --instruction` says
        r = client.post("/search", json={"query": "a cat", "mode": "text", "instruction": "qa"})
        assert r.status_code == 422 and "mode 'text' ranks by its words" in r.text, r.text


def test_search_finds_what_was_added_while_serving(hash_index: Path) -> None:
    """The server keeps its store open: LanceDB kept the version it had opened, so documents
    `smysl index add` wrote while the server ran were never found until a restart."""
    backend = HashEmbedder()
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        query = {"query": "Moscow is the capital of Russia", "k": 1}
        assert client.post("/search", json=query).json()["hits"][0]["text"] != query["query"]
        with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(hash_index))),
                                  create=False) as ix:
            ix.add_texts([query["query"]], ids=["moscow"], metadata=[{"topic": "geo"}])
        (hit,) = client.post("/search", json=query).json()["hits"]
        assert hit["text"] == query["query"] and hit["metadata"]["topic"] == "geo"
        assert client.get("/ui/info").json()["index"]["chunks"] == len(TEXTS) + 1


def test_search_refuses_an_index_rebuilt_for_another_model(hash_index: Path) -> None:
    """`smysl index add --rebuild` with another model while the server ran: /search compared
    its queries with the other model's vectors (same width: 200 and meaningless hits; another
    width: 422 blaming the filter, with the "damaged, restore a backup" text)."""

    class Other(HashEmbedder):
        name = "another-hash-model"

        def fingerprint(self) -> str:
            return "0123456789abcdef"

    backend = HashEmbedder()
    with TestClient(create_app(backend, ServerConfig(index=str(hash_index)))) as client:
        assert client.post("/search", json={"query": "cats"}).status_code == 200
        with Index.create_or_open(Other(), IndexConfig(StoreConfig(uri=str(hash_index))),
                                  rebuild=True) as ix:
            ix.add_texts(TEXTS)
        r = client.post("/search", json={"query": "cats"})
        assert r.status_code == 503, r.text
        assert "another process rebuilt the index" in r.json()["error"]
        assert "another-hash-model" in r.json()["error"]
        # the page was told the index was fine (a review's): /ui/info says what search says
        problem = client.get("/ui/info").json()["index"]["problem"]
        assert problem and "another-hash-model" in problem
        shutil.rmtree(hash_index)  # removed: said as removed, not as "damaged"
        problem = client.get("/ui/info").json()["index"]["problem"]
        assert "removed" in problem and "damaged" not in problem, problem
        bad = client.post("/search", json={"query": "cats", "where": {"n": {"$regex": "x"}}})
        assert bad.status_code == 422 and "operator" in bad.json()["error"]  # still the filter's


def test_workers_refuse_a_local_qdrant_folder_one_process_may_open(tmp_path: Path) -> None:
    """A review's: with --workers 2 each HTTP worker opened the local Qdrant folder; the second
    was refused, restarted three times, and the server stopped. Refused at start now (and
    --workers auto runs one worker for it)."""
    from smysl.server.workers import check_settings, one_process_index

    qd = f"qdrant:{tmp_path / 'qd'}"
    assert one_process_index(ServerConfig(index=qd))
    assert not one_process_index(ServerConfig(index=str(tmp_path / "kb")))
    assert not one_process_index(ServerConfig(index="qdrant:http://127.0.0.1:6333"))
    assert not one_process_index(ServerConfig())
    with pytest.raises(ValueError, match="local Qdrant folder, which one process"):
        check_settings(HashEmbedder(), ServerConfig(index=qd, workers=2))
    # a folder that is not there is refused, and not made (a Qdrant client wrote its files)
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        check_settings(HashEmbedder(), ServerConfig(index=qd))
    assert not (tmp_path / "qd").exists()


def _concurrent_posts(client: TestClient, bodies: list[dict[str, Any]]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: client.post("/search", json=b), bodies))


def test_search_runs_side_by_side_where_the_store_allows(hash_index: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``/search`` runs a store's calls on ``index_threads`` threads of its own where the store
    takes calls at once (LanceDB; PostgreSQL: a connection each): two searches meet inside
    the store (one lock held every /search's store calls in turn before)."""
    import threading

    from smysl.toolkit.lancedb import LanceStore

    real = LanceStore.search
    met = threading.Barrier(2, timeout=20)

    def search(self: LanceStore, *a: Any, **kw: Any) -> Any:
        met.wait()  # both inside at once, then both into LanceDB
        return real(self, *a, **kw)

    assert LanceStore.concurrent_reads
    monkeypatch.setattr(LanceStore, "search", search)
    app = create_app(HashEmbedder(), ServerConfig(index=str(hash_index), index_threads=2))
    with TestClient(app) as client:
        got = _concurrent_posts(client, [{"query": "cats", "k": 2}, {"query": "dogs", "k": 2}])
    assert [r.status_code for r in got] == [200, 200], [r.text for r in got]
    assert [len(r.json()["hits"]) for r in got] == [2, 2]


def test_search_runs_one_store_call_at_a_time_otherwise(hash_index: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that does not take calls at once (a local Qdrant folder, the memory store; here
    LanceDB's class said so) gets one thread: its calls never overlap, however many searches
    come in together."""
    import threading
    import time

    from smysl.toolkit.lancedb import LanceStore

    real = LanceStore.search
    seen: list[tuple[str, int]] = []
    inside = [0]

    def search(self: LanceStore, *a: Any, **kw: Any) -> Any:
        inside[0] += 1
        seen.append((threading.current_thread().name, inside[0]))
        time.sleep(0.02)  # long enough for another call to come in beside it
        inside[0] -= 1
        return real(self, *a, **kw)

    monkeypatch.setattr(LanceStore, "concurrent_reads", False)
    monkeypatch.setattr(LanceStore, "search", search)
    app = create_app(HashEmbedder(), ServerConfig(index=str(hash_index), index_threads=4))
    with TestClient(app) as client:
        got = _concurrent_posts(client, [{"query": f"q{i}", "k": 1} for i in range(6)])
    assert [r.status_code for r in got] == [200] * 6
    assert len(seen) == 6 and {n for _, n in seen} == {1}  # never two inside at once
    assert len({name for name, _ in seen}) == 1  # one thread of the server's own


def test_search_per_document_caps_a_long_documents_chunks(tmp_path: Path) -> None:
    """``per_document``: at most that many chunks of one document, as the toolkit's
    ``SearchConfig(per_document=)`` gives them; below 1 refused (422, TEI's shape). By words:
    the hash model's vectors rank nothing."""
    from smysl.toolkit.chunking import ChunkConfig
    from smysl.toolkit.ingest import Document, IngestConfig

    backend = HashEmbedder()
    path = tmp_path / "long"
    long = " ".join(f"Cats purr and sleep, part {i}." for i in range(40))
    with Index.create_or_open(backend, IndexConfig(StoreConfig(uri=str(path)))) as ix:
        ix.add([Document("long", long), *(Document(str(i), t) for i, t in enumerate(TEXTS))],
               IngestConfig(chunk=ChunkConfig(max_tokens=16, overlap=0)))
        assert ix.count({"doc_id": "long"}) >= 8
    plain = toolkit_search(backend, path, "cats purr", 5, mode="text")
    assert sum(h.payload["doc_id"] == "long" for h in plain) >= 3  # one document fills them
    capped = toolkit_search(backend, path, "cats purr", 5, mode="text", per_document=1)
    with TestClient(create_app(backend, ServerConfig(index=str(path)))) as client:
        r = client.post("/search", json={"query": "cats purr", "k": 5, "mode": "text",
                                              "per_document": 1})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in capped]
        docs = [h["metadata"]["doc_id"] for h in hits]
        assert docs == ["long", "0"]  # the two documents with these words, once each
        for bad in (0, -2):
            r = client.post("/search", json={"query": "q", "per_document": bad})
            assert r.status_code == 422 and "per_document" in r.json()["error"], r.text


def test_search_refuses_an_over_long_query_unless_truncate(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """/search cut a query longer than the model takes without a word, as `smysl index
    search` did: now a 422 (TEI-shaped, as /search errors are), or cut with ``truncate``."""
    path = build_index(tiny, tmp_path / "kb")
    long = "why " * 600  # the tiny model takes 512 tokens
    with TestClient(create_app(tiny, ServerConfig(index=str(path)))) as client:
        r = client.post("/search", json={"query": long})
        assert r.status_code == 422 and "at most 512" in r.json()["error"], r.text
        r = client.post("/search", json={"query": long, "truncate": True, "k": 2})
        assert r.status_code == 200 and len(r.json()["hits"]) == 2, r.text
        want = toolkit_search(tiny, path, long, 2, truncate=True)
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in want]
        r = client.post("/search", json={"query": "cats", "truncate": True, "mode": "text"})
        assert r.status_code == 422 and "mode 'text'" in r.text, r.text


def test_the_playground_sends_each_line_as_given() -> None:
    """The page trimmed every line (JavaScript's trim(): edge spaces, NBSP, U+2028), so its
    vectors were not the API's for the same text. It drops a CRLF's \\r and blank lines only."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node to run the page's script")
    html = (Path(__file__).parents[2] / "smysl/server/static/ui.html").read_text("utf-8")
    fn = re.search(r"function lines\(id\) \{.*?\n\}", html, re.S)
    assert fn is not None
    value = "  indented\r\nnbsp\u00a0\n\n   \nplain\n"
    script = (f"const $ = () => ({{value: {json.dumps(value)}}});\n{fn.group()}\n"
              "process.stdout.write(JSON.stringify(lines('x')));")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"texts": ["  indented", "nbsp\u00a0", "plain"],
                                      "at": [1, 2, 5]}
