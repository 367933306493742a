"""Ollama- and TEI-compatible routes in process: shapes, values, and error shapes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from smysl.prompts import TASK_PRESETS
from smysl.server import ServerConfig, create_app
from smysl.server.access_log import AccessLog

TEXTS = ["Привет, мир!", "The quick brown fox jumps over the lazy dog.", "a"]
LONG = " ".join(f"w{i}" for i in range(2000))


@pytest.fixture(scope="module")
def client(tiny):  # type: ignore[no-untyped-def]
    with TestClient(create_app(tiny, ServerConfig(served_name="qwen3-embedding:0.6b"))) as c:
        yield c


def vecs(x: object) -> np.ndarray:
    return np.array(x, dtype=np.float32)


def test_ollama_keep_alive_read_as_ollama_reads_it(client) -> None:  # type: ignore[no-untyped-def]
    # Ollama parses a string keep_alive with Go's time.ParseDuration and answers 400 when it
    # cannot; numbers are seconds (negative: forever)
    for good in ("5m", "1h30m", "-1s", "0", "+0", "1.5h", ".5s", "300ms", 300, -1, 2.5, None):
        for route, body in (("/api/embed", {"input": "x"}), ("/api/embeddings", {"prompt": "x"})):
            r = client.post(route, json={**body, "keep_alive": good})
            assert r.status_code == 200, (route, good, r.text)
    for bad in ("forever", "-1", "5", "", "5 m", "m", "1d", "\u0665m", "\uff15m", True, [1]):
        for route, body in (("/api/embed", {"input": "x"}), ("/api/embeddings", {"prompt": "x"})):
            r = client.post(route, json={**body, "keep_alive": bad})
            assert r.status_code == 400, (route, bad, r.text)
            assert "keep_alive" in r.json()["error"], r.text


def test_ollama_embed(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/embed", json={"model": "qwen3-embedding:0.6b", "input": TEXTS,
                                        "keep_alive": "5m", "options": {"num_ctx": 512}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"}
    assert body["model"] == "qwen3-embedding:0.6b"
    assert np.array_equal(vecs(body["embeddings"]), tiny.embed(TEXTS))
    assert body["prompt_eval_count"] == sum(tiny.count_tokens(TEXTS))
    assert body["total_duration"] > 0
    one = client.post("/api/embed", json={"model": "qwen3-embedding:0.6b:latest",
                                          "input": TEXTS[0], "dimensions": 32}).json()
    assert np.array_equal(vecs(one["embeddings"]), tiny.embed(TEXTS[:1], dimensions=32))
    # Ollama truncates by default; truncate=false makes over-long input an error
    r = client.post("/api/embed", json={"model": "qwen3-embedding:0.6b", "input": [LONG]})
    assert np.array_equal(vecs(r.json()["embeddings"]), tiny.embed([LONG], truncate=True))
    r = client.post("/api/embed", json={"input": LONG, "truncate": False})
    assert r.status_code == 400 and "at most" in r.json()["error"]
    q = client.post("/api/embed", json={"input": TEXTS, "input_type": "query"}).json()
    assert np.array_equal(vecs(q["embeddings"]), tiny.embed_queries(TEXTS))


def test_ollama_legacy_and_metadata(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/embeddings", json={"model": "qwen3-embedding", "prompt": TEXTS[1]})
    assert np.array_equal(vecs(r.json()["embedding"]), tiny.embed(TEXTS[1:2])[0])
    assert client.post("/api/embeddings", json={"prompt": ""}).json() == {"embedding": []}
    # /api/embed's fields, read the same way (they were ignored: the full document vector,
    # truncated whatever was asked)
    r = client.post("/api/embeddings", json={"prompt": TEXTS[1], "dimensions": 32,
                                             "input_type": "query"})
    assert np.array_equal(vecs(r.json()["embedding"]),
                          tiny.embed_queries(TEXTS[1:2], dimensions=32)[0])
    r = client.post("/api/embeddings", json={"prompt": TEXTS[1], "instruction": "sts"})
    assert np.array_equal(vecs(r.json()["embedding"]), tiny.embed_queries(TEXTS[1:2], "sts")[0])
    r = client.post("/api/embeddings", json={"prompt": LONG, "truncate": False})
    assert r.status_code == 400 and "at most" in r.json()["error"], r.text
    r = client.post("/api/embeddings", json={"prompt": LONG})
    assert np.array_equal(vecs(r.json()["embedding"]), tiny.embed([LONG], truncate=True)[0])
    assert client.post("/api/embeddings", json={"prompt": "x", "dimensions": 7}).status_code \
        == 400
    empty = client.post("/api/embed", json={"input": []}).json()
    assert empty["embeddings"] == []
    tags = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in tags] == ["qwen3-embedding:0.6b"]
    # `ollama ps` (it was a 404): the model, loaded for the server's life, on the CPU
    (ps,) = client.get("/api/ps").json()["models"]
    assert ps["name"] == "qwen3-embedding:0.6b" and ps["size_vram"] == 0
    assert ps["expires_at"].startswith("2318") and ps["context_length"] == tiny.max_tokens
    assert len(tags[0]["digest"]) == 64 and tags[0]["details"]["family"] == "qwen3"
    # the weights' bytes, as Ollama lists a model's size (it was 0)
    assert tags[0]["size"] == tiny.info().file_size == sum(
        w.stat().st_size for w in tiny.checkpoint.weights) > 0
    show = client.post("/api/show", json={"model": "Qwen/Qwen3-Embedding-0.6B"}).json()
    assert show["capabilities"] == ["embedding"]
    assert show["model_info"]["qwen3.embedding_length"] == tiny.dimensions
    assert client.post("/api/show", json={"name": "qwen3-embedding:0.6b"}).status_code == 200
    assert client.get("/api/version").json()["version"].count(".") == 2


def test_ollama_reads_requests_as_ollama_does(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """What Ollama accepts: "", null or no input (ollama-python's `embed(model=...)` preload
    sends input=""), null fields as unset (Go), dimensions 0 as none asked; the model named
    as the request named it. All were 400s, and the model came back as the served id."""
    for body in ({"model": "qwen3-embedding", "input": ""}, {"model": "qwen3-embedding"},
                 {"model": "qwen3-embedding", "input": None}):
        r = client.post("/api/embed", json=body)
        assert r.status_code == 200, (body, r.text)
        assert r.json()["embeddings"] == [] and r.json()["model"] == "qwen3-embedding"
    r = client.post("/api/embed", json={"input": LONG, "truncate": None, "dimensions": 0,
                                        "keep_alive": None, "options": None})
    assert r.status_code == 200, r.text
    assert np.array_equal(vecs(r.json()["embeddings"]), tiny.embed([LONG], truncate=True))
    assert r.json()["model"] == "qwen3-embedding:0.6b"  # none named: the served name
    r = client.post("/api/embed", json={"model": "Qwen3-Embedding:0.6B:latest", "input": "a"})
    assert r.json()["model"] == "Qwen3-Embedding:0.6B:latest"
    assert client.post("/api/embeddings", json={"prompt": None}).json() == {"embedding": []}


def test_ollama_errors(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/embed", json={"model": "llama3", "input": "x"})
    assert r.status_code == 404 and "llama3" in r.json()["error"]
    assert client.post("/api/show", json={"model": "nomic"}).status_code == 404
    r = client.post("/api/embed", json={"input": ["a", ""]})
    assert r.status_code == 400 and "input[1]" in r.json()["error"]
    r = client.post("/api/embed", json={"input": {"text": "x"}})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = client.post("/api/embed", json={"input": "x", "dimensions": 8})
    assert r.status_code == 400 and "dimensions" in r.json()["error"]


def test_tei_embed(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/embed", json={"inputs": TEXTS})
    assert np.array_equal(vecs(r.json()), tiny.embed(TEXTS))
    r = client.post("/embed", json={"inputs": TEXTS[0]})  # a single string still nests
    assert np.array_equal(vecs(r.json()), tiny.embed(TEXTS[:1]))
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "query", "dimensions": 48})
    assert np.array_equal(vecs(r.json()), tiny.embed_queries(TEXTS, dimensions=48))
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "qa"})
    assert np.array_equal(vecs(r.json()), tiny.embed(TEXTS, instruction=TASK_PRESETS["qa"]))
    # the other routes' extensions, read here too (they were ignored: document vectors)
    r = client.post("/embed", json={"inputs": TEXTS, "input_type": "Query"})
    assert np.array_equal(vecs(r.json()), tiny.embed_queries(TEXTS))
    r = client.post("/embed", json={"inputs": TEXTS, "instruction": "Find the answer"})
    assert np.array_equal(vecs(r.json()), tiny.embed(TEXTS, instruction="Find the answer"))
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "qa", "input_type": "query"})
    assert r.status_code == 422 and "send one of them" in r.text, r.text
    # an empty extension field is an absent one, as elsewhere: no conflict
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "qa", "instruction": ""})
    assert np.array_equal(vecs(r.json()), tiny.embed(TEXTS, instruction=TASK_PRESETS["qa"]))
    raw = vecs(client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               tiny.embed(TEXTS), atol=1e-6)
    # raw rows cut to fewer dimensions: a strided slice, once refused by the JSON encoder
    r = client.post("/embed", json={"inputs": TEXTS, "normalize": False, "dimensions": 32})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(vecs(r.json()), raw[:, :32])


def test_tei_truncation(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/embed", json={"inputs": [LONG]})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"  # TEI >= 1.9
    right = client.post("/embed", json={"inputs": [LONG], "truncate": True}).json()
    assert np.array_equal(vecs(right), tiny.embed([LONG], truncate=True))
    left = client.post("/embed", json={"inputs": [LONG], "truncate": True,
                                       "truncation_direction": "Left"}).json()
    ids = tiny.tokenize([LONG], truncate=True, direction="left")
    assert np.array_equal(vecs(left), tiny.embed_token_ids(ids))
    assert not np.allclose(vecs(left), vecs(right))


def test_tei_left_truncation_of_a_query_keeps_its_instruction(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: ``truncation_direction: left`` on a query cut its instruction away (the
    vector was a document's tail). It keeps the instruction and the query's end; Ollama's
    ``num_ctx`` that the instruction alone fills is a 400 naming it, not an instruction's
    vector."""
    query, template = tiny.format_texts([LONG, ""], tiny.default_task)
    ids = tiny.tokenize([query], truncate=True, direction="left", head_chars=len(template))
    head = tiny.tokenize([template])[0][:-2]
    assert ids[0][:len(head)] == head
    assert tiny.tokenize([query], truncate=True, direction="left")[0][:len(head)] != head
    r = client.post("/embed", json={"inputs": [LONG], "prompt_name": "query", "truncate": True,
                                    "truncation_direction": "left"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(vecs(r.json()), tiny.embed_token_ids(ids))
    for route, body in (("/api/embed", {"input": ["short"]}), ("/api/embeddings",
                                                                {"prompt": "short"})):
        r = client.post(route, json={**body, "input_type": "query", "options": {"num_ctx": 8}})
        assert r.status_code == 400, r.text
        assert "instruction alone" in r.json()["error"] and "options.num_ctx" in r.json()["error"]


def test_tei_tokenize(client, tiny) -> None:  # type: ignore[no-untyped-def]
    text = "Привет, world"
    toks = client.post("/tokenize", json={"inputs": text}).json()[0]
    assert [t["id"] for t in toks] == tiny.tokenize([text])[0]
    assert toks[-1]["special"] and toks[-1]["start"] is None
    raw = text.encode()
    for t in toks[:-1]:
        assert raw[t["start"] : t["stop"]].decode() == t["text"]  # byte offsets, as TEI's
    plain = client.post("/tokenize", json={"inputs": [text, "a"],
                                           "add_special_tokens": False}).json()
    assert len(plain) == 2 and not any(t["special"] for t in plain[0])
    # an empty text has tokens to show too (the empty-input rule is for embedding routes)
    empty = client.post("/tokenize", json={"inputs": ""})
    assert empty.status_code == 200, empty.text
    assert [t["id"] for t in empty.json()[0]] == tiny.tokenize([""])[0]


def test_tei_info_health_errors(client, tiny) -> None:  # type: ignore[no-untyped-def]
    info = client.get("/info").json()
    assert info["model_id"] == "qwen3-embedding:0.6b"
    assert info["max_input_length"] == tiny.max_tokens
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}
    assert client.get("/health").status_code == 200
    for body, status, kind in [({"inputs": []}, 400, "Empty"), ({"inputs": [""]}, 400, "Empty"),
                               ({"inputs": 3}, 422, "Validation"),
                               ({"inputs": "x", "prompt_name": "nope"}, 422, "Validation"),
                               ({"inputs": "x", "truncation_direction": "up"}, 422,
                                "Validation")]:
        r = client.post("/embed", json=body)
        assert (r.status_code, r.json()["error_type"]) == (status, kind), r.text
        assert r.json()["error"]


@pytest.mark.parametrize("arrangement", ["create_app", "serving_app"])
def test_cors_for_the_origins_allowed(tiny, arrangement: str) -> None:  # type: ignore[no-untyped-def]
    """``--cors-allow-origin``: a page of that origin may call the server (its preflight
    needs no key, its calls do); others get no CORS headers; none allowed by default. Alike
    with the edge inside FastAPI's middleware (an app of yours) and in front of it (what
    ``smysl serve`` runs)."""
    from smysl.server import app

    def build(config: ServerConfig, log: AccessLog | None = None) -> Any:
        return (app.create_app(tiny, config, access_log=log) if arrangement == "create_app"
                else app.serving_app(tiny, config, access_log=log)[0])

    page = "https://app.example"
    preflight = {"Origin": page, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    config = ServerConfig(api_key="sekret", cors_origins=(page,))
    out = io.StringIO()
    log = AccessLog(out)
    with TestClient(build(config, log)) as c:
        r = c.options("/v1/embeddings", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        # the preflight is answered before the edge, and still counted and logged
        assert ('smysl_requests_total{api="openai",route="/v1/embeddings",status="200"} 1.0'
                in c.get("/metrics", headers={"Authorization": "Bearer sekret"}).text)
        assert log.flush()
        assert '"OPTIONS /v1/embeddings HTTP/1.1" 200 OK' in out.getvalue()
        r = c.post("/embed", json={"inputs": "fox"},
                   headers={"Origin": page, "Authorization": "Bearer sekret"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert "x-compute-time" in r.headers["access-control-expose-headers"]
        r = c.post("/embed", json={"inputs": "fox"}, headers={"Origin": page})
        assert r.status_code == 401  # the key is still needed
        assert r.headers["access-control-allow-origin"] == page  # and the page can read why
        other = c.options("/v1/embeddings", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(build(ServerConfig())) as c:
        r = c.options("/v1/embeddings", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with pytest.raises(ValueError, match="cors_origins"):
        ServerConfig(cors_origins=("app.example",))


def test_pages_of_other_origins_cannot_make_it_compute(tiny) -> None:  # type: ignore[no-untyped-def]
    """A keyless server (a loopback default) refuses a browser's call from another site's page
    with 403 before it computes: a ``no-cors`` POST of ``text/plain`` reaches the Ollama routes
    (they take any content type as JSON), so CORS alone let the page spend the server's
    compute. Its own page (``/ui``), allowed origins, pages on this machine, and clients that
    are not browsers pass."""
    from smysl.server import app

    body = '{"model": "qwen3-embedding:0.6b", "input": "fox"}'
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    name = "qwen3-embedding:0.6b"
    with TestClient(app.serving_app(tiny, ServerConfig(served_name=name))[0]) as c:
        for headers in [evil, {**evil, "Sec-Fetch-Site": "cross-site"},
                        {**evil, "Origin": "null"}, {**evil, "Sec-Fetch-Site": "same-site"},
                        {**evil, "Origin": "http://localhost.evil.example"},
                        {**evil, "Origin": "http://127.0.0.1.evil.example:80"},
                        # a sandboxed frame's "null" beside an empty host a proxy sent
                        {**evil, "Origin": "null", "Forwarded": "for=10.0.0.1;host="}]:
            r = c.post("/api/embed", content=body, headers=headers)
            assert r.status_code == 403 and "--cors-allow-origin" in r.json()["error"], r.text
        r = c.post("/v1/embeddings", json={"input": "fox"}, headers=evil)
        assert r.status_code == 403 and r.json()["error"]["type"] == "invalid_request_error"
        assert c.post("/embed", json={"inputs": "fox"}, headers=evil).status_code == 403
        metrics = c.get("/metrics").text
        assert 'smysl_errors_total{api="ollama",kind="forbidden"} 7.0' in metrics, metrics
        assert "smysl_inputs_total 0.0" in metrics  # nothing computed
        # a probe from a page is harmless and stays open
        assert c.get("/health", headers=evil).status_code == 200
        for headers in [{}, {"Origin": "http://testserver"},  # its own page, old browser
                        {**evil, "Sec-Fetch-Site": "same-origin"},  # its own, behind a proxy
                        {"Origin": "https://smysl.example", "X-Forwarded-Host": "smysl.example"},
                        # pages on this machine, as Ollama takes them by default
                        {**evil, "Origin": "http://localhost:3000"},
                        {**evil, "Origin": "http://127.0.0.1:5173"},
                        {**evil, "Origin": "app://obsidian.md"},
                        {**evil, "Origin": "http://0.0.0.0:8080"},
                        # behind a proxy that says the host it was asked for (RFC 7239)
                        {"Origin": "https://smysl.example",
                         "Forwarded": 'for=10.0.0.1;host="smysl.example";proto=https'},
                        {"Origin": "https://smysl.example",  # two proxies, each adding its own
                         "X-Forwarded-Host": "smysl.example, inner.example:8080"}]:
            r = c.post("/api/embed", content=body, headers=headers)
            assert r.status_code == 200 and r.json()["embeddings"], (headers, r.text)
    extension = {**evil, "Origin": "chrome-extension://abcdef"}
    with TestClient(app.serving_app(tiny, ServerConfig(served_name=name))[0]) as c:
        assert c.post("/api/embed", content=body, headers=extension).status_code == 403
    config = ServerConfig(served_name=name, cors_origins=("chrome-extension://abcdef",))
    with TestClient(app.serving_app(tiny, config)[0]) as c:  # an extension can be allowed
        assert c.post("/api/embed", content=body, headers=extension).status_code == 200
    for allowed in ["https://evil.example", "HTTPS://Evil.example/", "*"]:
        config = ServerConfig(served_name=name, cors_origins=(allowed,))
        with TestClient(app.serving_app(tiny, config)[0]) as c:
            r = c.post("/api/embed", content=body, headers=evil)
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] in ("*", "https://evil.example")


def test_a_404_does_not_show_the_folder_a_served_name_hides(tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: with ``--served-name``, an unknown model's 404 listed every name the server
    answers, the model's local folder among them. The folder still answers; it is not shown."""
    from smysl.server import app

    with TestClient(app.serving_app(tiny, ServerConfig(served_name="qwen3-embedding:0.6b"))[0]
                    ) as c:
        r = c.post("/api/embed", json={"model": "nomic-embed-text", "input": "fox"})
        assert r.status_code == 404 and "qwen3-embedding:0.6b" in r.json()["error"], r.text
        folder = tiny.name  # loaded from its folder: the path
        assert "/" in folder and folder not in r.text, r.text
        r = c.post("/api/embed", json={"model": folder, "input": "fox"})
        assert r.status_code == 200, r.text


def test_the_open_api_page_does_not_name_the_model(tiny) -> None:  # type: ignore[no-untyped-def]
    """``/openapi.json`` and ``/docs`` need no key: they must not show the model's name, which
    is its local path unless ``--served-name`` is given."""
    from smysl.server import app

    with TestClient(app.serving_app(tiny, ServerConfig(api_key="k"))[0]) as c:
        served = c.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["data"]
        path = served[0]["id"]
        assert "/" in path  # a path, as served without --served-name
        page = c.get("/openapi.json")
        assert page.status_code == 200 and path not in page.text


def test_tei_similarity_at_its_route_and_at_the_root(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """TEI's /similarity: the cosine of source_sentence to each sentence, with prompt_name
    and truncation as parameters; POST / and /invocations take its body too (huggingface_hub's
    sentence_similarity posts it to the URL itself)."""
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": [*TEXTS[1:], TEXTS[0]]}}
    v = tiny.embed([*TEXTS, TEXTS[0]])
    want = v[1:] @ v[0]
    for path in ("/similarity", "/", "/invocations"):
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json(), want, atol=1e-6)
        assert abs(r.json()[-1] - 1.0) < 1e-6
    q = client.post("/similarity", json={**body, "parameters": {"prompt_name": "query"}}).json()
    vq = tiny.embed_queries([*TEXTS, TEXTS[0]])
    np.testing.assert_allclose(q, vq[1:] @ vq[0], atol=1e-6)
    long = {"inputs": {"source_sentence": "a", "sentences": [LONG]}}
    r = client.post("/similarity", json=long)
    assert r.status_code == 422 and "inputs[1]" in r.json()["error"]
    cut = client.post("/", json={**long, "parameters": {"truncate": True}}).json()
    va = tiny.embed(["a", LONG], truncate=True)
    np.testing.assert_allclose(cut, [va[1] @ va[0]], atol=1e-6)
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}})
    assert (r.status_code, r.json()["error_type"]) == (400, "Empty")
    # the root still embeds an /embed body
    assert np.array_equal(vecs(client.post("/", json={"inputs": TEXTS}).json()), tiny.embed(TEXTS))


def test_tei_decode(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """TEI's /decode: a list of ids or lists of them -> their texts, special tokens skipped
    unless asked; ids outside the vocabulary are refused, not dropped silently."""
    ids = tiny.tokenize(TEXTS)
    assert client.post("/decode", json={"ids": ids}).json() == TEXTS
    assert client.post("/decode", json={"ids": ids[0]}).json() == [TEXTS[0]]
    kept = client.post("/decode", json={"ids": ids[0], "skip_special_tokens": False}).json()
    assert kept == [TEXTS[0] + "<|endoftext|>"]
    assert client.post("/decode", json={"ids": []}).json() == [""]
    r = client.post("/decode", json={"ids": [ids[0][0], 10**9]})
    assert (r.status_code, r.json()["error_type"]) == (422, "Validation")
    assert "outside" in r.json()["error"]


def test_tei_embed_takes_token_ids_where_the_server_does(tiny) -> None:  # type: ignore[no-untyped-def]
    """TEI's /embed takes token ids (a list, or lists) on a server started with --token-ids,
    with normalize, dimensions and truncation of either end; without the flag, or mixed with
    texts, or with a query prompt, they are refused with what to do."""
    ids = tiny.tokenize(TEXTS)
    long = tiny.tokenize([LONG], truncate=True)[0][:-1] * 2
    with TestClient(create_app(tiny, ServerConfig(token_ids=True))) as c:
        assert np.array_equal(vecs(c.post("/embed", json={"inputs": ids}).json()),
                              tiny.embed(TEXTS))
        one = c.post("/embed", json={"inputs": ids[1], "dimensions": 32}).json()
        assert np.array_equal(vecs(one), tiny.embed(TEXTS[1:2], dimensions=32))
        raw = vecs(c.post("/embed", json={"inputs": ids, "normalize": False}).json())
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True),
                                   tiny.embed(TEXTS), atol=1e-6)
        for direction in ("right", "left"):
            got = c.post("/embed", json={"inputs": [long], "truncate": True,
                                         "truncation_direction": direction}).json()
            want = tiny.embed_token_ids(
                [long[: tiny.max_tokens - 1] if direction == "right"
                 else long[-(tiny.max_tokens - 1):]])
            assert np.array_equal(vecs(got), want), direction
        r = c.post("/embed", json={"inputs": [long]})
        assert r.status_code == 422 and "inputs[0]" in r.json()["error"]
        r = c.post("/embed", json={"inputs": [TEXTS[0], ids[1]]})
        assert r.status_code == 422 and "not texts and token ids" in r.json()["error"]
        r = c.post("/embed", json={"inputs": ids, "prompt_name": "query"})
        assert r.status_code == 422 and "query template" in r.json()["error"]
    with TestClient(create_app(tiny, ServerConfig())) as c:
        r = c.post("/embed", json={"inputs": ids})
        assert r.status_code == 422 and "--token-ids" in r.json()["error"]


def test_token_ids_to_truncate_count_what_is_embedded(tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: token-id inputs were held to max_request_tokens before truncation, so a
    long list to truncate was a 422 where the same text was cut and embedded."""
    long = tiny.tokenize([LONG], truncate=True)[0][:-1] * 3  # ~3x the model's limit
    config = ServerConfig(token_ids=True, max_request_tokens=tiny.max_tokens + 10)
    with TestClient(create_app(tiny, config)) as c:
        r = c.post("/embed", json={"inputs": [long], "truncate": True})
        assert r.status_code == 200, r.text
        assert np.array_equal(vecs(r.json()),
                              tiny.embed_token_ids([long[: tiny.max_tokens - 1]]))
        r = c.post("/embed", json={"inputs": [long, long], "truncate": True})
        assert r.status_code in (413, 422), r.text  # 2 x 512 > the cap
        assert "max_request_tokens" in r.text
        r = c.post("/embed", json={"inputs": [long]})
        assert r.status_code in (413, 422), r.text


def test_tei_routes_for_other_models_say_so(client) -> None:  # type: ignore[no-untyped-def]
    """/embed_all and /embed_sparse (TEI's per-token and SPLADE outputs) answer 501 with what
    to use instead, not a bare 404."""
    for path in ("/embed_all", "/embed_sparse"):
        r = client.post(path, json={"inputs": "x"})
        assert r.status_code == 501 and "use /embed" in r.json()["error"], r.text


def test_metrics_label_every_route_by_its_path(client) -> None:  # type: ignore[no-untyped-def]
    """The metrics' route label comes from the routes themselves: /similarity and /decode were
    counted as "other" (a hand-kept list missed them); an unknown path is still "other"."""
    client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"]}})
    client.post("/decode", json={"ids": [1, 2]})
    client.post("/no-such-route", json={})
    for probe in ("/health", "/ping"):  # the app's own routes were "other", with the typos
        client.get(probe)
    text = client.get("/metrics").text
    for route in ("/similarity", "/decode"):
        assert f'smysl_requests_total{{api="tei",route="{route}",status="200"}}' in text, route
    for route in ("/health", "/ping"):
        assert f'route="{route}",status="200"}}' in text, route
    assert 'route="/no-such-route"' not in text
    assert 'smysl_requests_total{api="tei",route="other",status="404"}' in text


def test_tei_decode_needs_a_local_tokenizer() -> None:
    """A backend without a tokenizer (a provider, a generic model) answers /decode 501."""
    from server_helpers import HashEmbedder

    with TestClient(create_app(HashEmbedder(), ServerConfig())) as c:
        r = c.post("/decode", json={"ids": [1, 2]})
        assert r.status_code == 501 and "no local tokenizer" in r.json()["error"]


def test_a_local_folder_is_listed_by_its_name(tiny, tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """A server of `--model /path/to/dir` listed "/path/to/dir" in /api/tags, and a client
    that checks its model against the list (langchain-ollama) found no "dir" there."""
    from smysl.server.ollama_routes import listed_name

    assert listed_name(str(tiny_dir)) == tiny_dir.name
    assert listed_name("Qwen/Qwen3-Embedding-8B") == "Qwen/Qwen3-Embedding-8B"
    assert listed_name("qwen3-embedding:0.6b") == "qwen3-embedding:0.6b"
    with TestClient(create_app(tiny, ServerConfig())) as c:  # tiny: loaded from tiny_dir
        (entry,) = c.get("/api/tags").json()["models"]
        assert entry["name"] == entry["model"] == f"{tiny_dir.name}:latest", entry
        r = c.post("/api/embed", json={"model": entry["name"], "input": "x"})
        assert r.status_code == 200, r.text


def test_the_list_names_models_as_ollama_clients_check_them(tiny, tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """A review's: /api/tags listed `tiny` and `Qwen/Qwen3-Embedding-0.6B` untagged, so
    langchain-ollama's validate_model_on_init refused `tiny:latest` (as `ollama list` shows
    names) and `qwen3-embedding:0.6b` / `qwen3-embedding` (a client moving from Ollama), which
    /api/embed takes. Its check: the name, or a listed one that starts with it and a colon."""

    def validated(name: str, listed: list[str]) -> bool:  # langchain-ollama's rule
        return any(name == m or m.startswith(name + ":") for m in listed)

    for served, names in ((None, [tiny_dir.name, f"{tiny_dir.name}:latest"]),
                          ("Qwen/Qwen3-Embedding-0.6B", ["qwen3-embedding:0.6b",
                                                         "qwen3-embedding",
                                                         "Qwen/Qwen3-Embedding-0.6B",
                                                         "Qwen/Qwen3-Embedding-0.6B:latest"])):
        with TestClient(create_app(tiny, ServerConfig(served_name=served))) as c:
            tags = c.get("/api/tags").json()["models"]
            listed = [m["name"] for m in tags]
            assert len({m["digest"] for m in tags}) == 1  # one model, under several names
            for name in names:
                assert validated(name, listed), (name, listed)
                r = c.post("/api/embed", json={"model": name, "input": "x"})
                assert r.status_code == 200, (name, r.text)
            (ps,) = c.get("/api/ps").json()["models"]
            assert ps["name"] == listed[0]
    # a diff review's: the family's bare name (0.6B in smysl's aliases) served on the 8B
    # listed qwen3-embedding:0.6b; the sizes come from the model loaded
    from smysl.server.ollama_routes import listed_names

    assert listed_names("qwen3-embedding", "Qwen/Qwen3-Embedding-8B") == [
        "qwen3-embedding:latest", "qwen3-embedding:8b"]


def test_ollama_num_ctx_truncates_as_ollama_does(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: ``options.num_ctx`` was accepted and ignored, so an input Ollama cuts to
    num_ctx tokens was embedded whole here (other vectors, more compute). It is held to as the
    model's limit is: cut with truncate (Ollama's default), refused without; 0 or null is
    unset; anything but a whole number is a 400."""
    ids = tiny.tokenize([LONG[:400]])[0]  # EOS last
    assert len(ids) > 40
    want = tiny.embed_token_ids([ids[:39]])  # 39 text tokens + EOS = 40
    for route, body in (("/api/embed", {"input": [LONG[:400]]}),
                        ("/api/embeddings", {"prompt": LONG[:400]})):
        r = client.post(route, json={**body, "options": {"num_ctx": 40}})
        assert r.status_code == 200, r.text
        got = r.json()["embeddings"] if route == "/api/embed" else [r.json()["embedding"]]
        np.testing.assert_allclose(vecs(got), want, atol=1e-6)
        if route == "/api/embed":
            assert r.json()["prompt_eval_count"] == 40
        r = client.post(route, json={**body, "options": {"num_ctx": 40}, "truncate": False})
        assert r.status_code == 400 and "options.num_ctx" in r.json()["error"], r.text
    short = client.post("/api/embed", json={"input": "a", "options": {"num_ctx": 40}})
    assert np.array_equal(vecs(short.json()["embeddings"]), tiny.embed(["a"]))
    for unset in (0, None):
        r = client.post("/api/embed", json={"input": [LONG[:400]], "options": {"num_ctx": unset}})
        np.testing.assert_allclose(vecs(r.json()["embeddings"]), tiny.embed([LONG[:400]]),
                                   atol=1e-6)
    for bad in ("40", 1.5, True, 1):
        r = client.post("/api/embed", json={"input": "a", "options": {"num_ctx": bad}})
        assert r.status_code == 400 and "num_ctx" in r.json()["error"], (bad, r.text)


def test_ollama_num_ctx_on_a_model_that_cuts_only_to_its_own_limit(minilm) -> None:  # type: ignore[no-untyped-def]
    """A review's: a sentence-transformers model took ``options.num_ctx`` 8 as it took
    100,000 (the same vector, 200). It takes texts, not token ids, and cuts them to its own
    limit only: an input over num_ctx is cut here at a token's end by its own tokenizer (the
    vector of the model run with max_tokens 8), or refused without truncate; inputs within
    it are embedded as without it."""
    import smysl
    from smysl.options import ModelOptions

    text = " ".join(["word"] * 100)
    eight = smysl.load("st:all-minilm-l6-v2", ModelOptions(max_tokens=8))
    with TestClient(create_app(minilm, ServerConfig())) as c:
        r = c.post("/api/embed", json={"input": [text], "options": {"num_ctx": 8},
                                       "truncate": False})
        assert r.status_code == 400 and "options.num_ctx takes at most 8" in r.json()["error"]
        r = c.post("/api/embed", json={"input": ["hi", text, "a b c d e f g h i j"],
                                       "options": {"num_ctx": 8}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            vecs(r.json()["embeddings"]),
            eight.embed(["hi", text, "a b c d e f g h i j"], truncate=True), atol=1e-6)
        assert r.json()["prompt_eval_count"] == 3 + 8 + 8
        # [CLS] and [SEP] fill 2: no token of the text fits, and no instruction is blamed
        r = c.post("/api/embed", json={"input": [text], "options": {"num_ctx": 2}})
        assert r.status_code == 400 and "keeps no token of its text;" in r.json()["error"]
        for ctx in (8, 100_000):
            r = c.post("/api/embed", json={"input": ["hi there"], "options": {"num_ctx": ctx}})
            assert np.array_equal(vecs(r.json()["embeddings"]), minilm.embed(["hi there"]))


def test_ollama_takes_a_whole_corpus_in_one_request_as_ollama_does(tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: langchain-ollama's embed_documents, ollama-python and litellm's ollama/
    send every text in one /api/embed call, and Ollama has no per-request cap: 3,000 chunks
    were a 400 ("at most 2048"). They are embedded in pieces within the caps, each text named
    by its place in the whole request; OpenAI's route keeps OpenAI's caps."""
    texts = [f"фрагмент {i}: " + "слово " * (i % 9) for i in range(23)]
    want = tiny.embed(texts)
    config = ServerConfig(max_inputs=4, max_request_tokens=120)
    with TestClient(create_app(tiny, config)) as c:
        r = c.post("/api/embed", json={"input": texts})
        assert r.status_code == 200, r.text
        got = vecs(r.json()["embeddings"])
        assert np.array_equal(got, want)
        assert r.json()["prompt_eval_count"] == sum(tiny.count_tokens(texts))
        query = c.post("/api/embed", json={"input": texts, "input_type": "query"}).json()
        assert np.array_equal(vecs(query["embeddings"]), tiny.embed_queries(texts))
        # a fault far into the request is named by its place there (an empty one found before
        # any piece is embedded; a long one when its piece is tokenised)
        bad = c.post("/api/embed", json={"input": [*texts[:17], "", *texts[18:]]})
        assert bad.status_code == 400 and "input[17] is an empty string" in bad.text, bad.text
        for long in ("слово " * 400, "слово " * 100):  # past the characters, the tokens
            cut = c.post("/api/embed", json={"input": [*texts[:21], long, texts[22]]})
            assert cut.status_code == 400 and "input[21] has" in cut.text, cut.text
        assert c.post("/v1/embeddings", json={"input": texts}).status_code == 400


def test_a_request_in_pieces_keeps_its_place_and_names_its_first_piece(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A diff review's: each piece of an Ollama request was admitted afresh, so a queue that
    filled up after its first piece answered 429 and threw the computed pieces away; and a
    fault in the first piece of a split request was named as the whole request's."""
    import contextlib

    texts = [f"фрагмент {i}" for i in range(10)]
    app = create_app(tiny, ServerConfig(max_queue=1, max_inputs=4))
    service = app.state.service
    real, firsts, held = service.embed_texts, [], contextlib.ExitStack()

    async def another_client_after_the_first_piece(pieces: list[str], **kw: Any) -> Any:
        out = await real(pieces, **kw)
        firsts.append(kw["first"])
        if len(firsts) == 1:  # the queue's one place taken by someone else
            held.enter_context(service.batcher.admitted())
        return out

    monkeypatch.setattr(service, "embed_texts", another_client_after_the_first_piece)
    with TestClient(app) as c, held:
        r = c.post("/api/embed", json={"input": texts})
        assert r.status_code == 200, r.text
        assert np.array_equal(vecs(r.json()["embeddings"]), tiny.embed(texts))
        assert firsts == [0, 4, 8]
        # a new request finds the queue full, as before
        assert c.post("/api/embed", json={"input": texts}).status_code == 429
    held.close()
    with TestClient(create_app(tiny, ServerConfig(max_inputs=4, max_request_tokens=120))) as c:
        r = c.post("/api/embed", json={"input": ["слово " * 400, *texts]})
        assert r.status_code == 400 and "input[0] has 2400 characters" in r.text, r.text
        r = c.post("/api/embed", json={"input": ["слово " * 400]})  # one piece: the request
        assert r.status_code == 400 and "input has 2400 characters" in r.text, r.text
