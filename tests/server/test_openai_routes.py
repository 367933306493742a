"""OpenAI-compatible routes in process: served vectors equal Embedder's bit for bit; bad input
gets the right 4xx in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_helpers import errors_left_in_cycles

from smysl.prompts import TASK_PRESETS
from smysl.server import ServerConfig, create_app

TEXTS = ["Привет, мир!", "The quick brown fox jumps over the lazy dog.", "a",
         "Смысл жизни — в поиске смысла. " * 6, "Instruct: fake\nQuery:not a real query"]


@pytest.fixture(scope="module")
def client(tiny):  # type: ignore[no-untyped-def]
    cfg = ServerConfig(max_inputs=16, max_request_bytes=64 * 1024, served_name="my-embedder",
                       token_ids=True)
    with TestClient(create_app(tiny, cfg)) as c:
        yield c


def floats(resp) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def b64(resp) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            for d in resp.json()["data"]]
    return np.stack(rows)


def test_vectors_are_bit_for_bit_embed(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "my-embedder"})
    assert np.array_equal(floats(r), tiny.embed(TEXTS))
    body = r.json()
    assert body["object"] == "list" and body["model"] == "my-embedder"
    assert body["usage"]["prompt_tokens"] == sum(tiny.count_tokens(TEXTS))
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    # single string, one request at a time
    for t in TEXTS:
        got = floats(client.post("/v1/embeddings", json={"input": t, "model": "my-embedder"}))
        assert np.array_equal(got, tiny.embed([t]))


def test_base64_dimensions_and_instruction(client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64",
                                             "dimensions": 32})
    got = b64(r)
    assert got.shape == (len(TEXTS), 32)
    assert np.array_equal(got, tiny.embed(TEXTS, dimensions=32))
    # input_type=query uses the model's default task; instruction takes presets or free text
    q = floats(client.post("/v1/embeddings", json={"input": TEXTS[:2], "input_type": "query"}))
    assert np.array_equal(q, tiny.embed_queries(TEXTS[:2]))
    # any case, as the other routes read it (it was a 422 here)
    assert np.array_equal(floats(client.post("/v1/embeddings", json={
        "input": TEXTS[:2], "input_type": "Query"})), q)
    s = floats(client.post("/v1/embeddings", json={"input": TEXTS[:2], "instruction": "sts"}))
    assert np.array_equal(s, tiny.embed(TEXTS[:2], instruction=TASK_PRESETS["sts"]))
    d = floats(client.post("/v1/embeddings", json={"input": TEXTS[:2],
                                                    "input_type": "document"}))
    assert np.array_equal(d, tiny.embed(TEXTS[:2]))
    assert not np.array_equal(q, d)


def test_token_id_inputs(client, tiny) -> None:  # type: ignore[no-untyped-def]
    ids = tiny.tokenize(TEXTS[:3])
    got = floats(client.post("/v1/embeddings", json={"input": ids}))
    assert np.array_equal(got, tiny.embed_token_ids(ids))
    one = floats(client.post("/v1/embeddings", json={"input": ids[1], "dimensions": 40}))
    assert np.array_equal(one, tiny.embed_token_ids([ids[1]], dimensions=40))
    # token ids embed like the text they came from
    np.testing.assert_allclose(got, tiny.embed(TEXTS[:3]), atol=1e-6)


def test_model_names_resolve(client, tiny) -> None:  # type: ignore[no-untyped-def]
    for name in ["my-embedder", tiny.name, tiny.name.rsplit("/", 1)[-1], "MY-EMBEDDER"]:
        assert client.post("/v1/embeddings", json={"input": "x", "model": name}).status_code == 200
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "my-embedder"
    assert client.get("/v1/models/my-embedder").json()["object"] == "model"
    r = client.get("/v1/models/text-embedding-3-small")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def error(resp, status: int, *words: str) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err["message"]
    return err  # type: ignore[no-any-return]


def test_bad_input_gets_openai_errors(client) -> None:  # type: ignore[no-untyped-def]
    post = client.post
    assert error(post("/v1/embeddings", json={"input": "x", "model": "gpt-4"}),
                 404, "gpt-4")["code"] == "model_not_found"
    error(post("/v1/embeddings", json={"input": ""}), 400, "empty string")
    error(post("/v1/embeddings", json={"input": ["ok", ""]}), 400, "input[1]")
    error(post("/v1/embeddings", json={"input": []}), 400, "must not be empty")
    # an empty list is no token-id input: the same answer when asked as a query
    error(post("/v1/embeddings", json={"input": [], "input_type": "query"}), 400,
          "must not be empty")
    error(post("/v1/embeddings", json={"input": 5}), 400, "input")
    error(post("/v1/embeddings", json={"input": ["a", 1]}), 400, "input")
    error(post("/v1/embeddings", json={}), 400, "input")
    error(post("/v1/embeddings", json={"input": "x", "dimensions": 4096}), 400, "32..64")
    error(post("/v1/embeddings", json={"input": "x", "dimensions": "64"}), 400, "dimensions")
    error(post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 400,
          "encoding_format")
    error(post("/v1/embeddings", json={"input": "x", "input_type": "query",
                                       "instruction": "sts", "truncate": "yes"}), 400, "truncate")
    error(post("/v1/embeddings", json={"input": ["x"] * 17}), 400, "at most 16")
    error(post("/v1/embeddings", content=b'{"input": ', headers={"content-type":
                                                                 "application/json"}),
          400, "not valid JSON")
    error(post("/v1/embeddings", json={"input": [[1, 2], []]}), 400, "empty token list")
    # curl -d's default type: the JSON was never read ("Input should be a valid dictionary")
    form = {"content-type": "application/x-www-form-urlencoded"}
    error(post("/v1/embeddings", content=b'{"input": "hi"}', headers=form), 400,
          "sent as 'application/x-www-form-urlencoded', not JSON: send it with Content-Type")
    assert "Content-Type: application/json" in post(
        "/embed", content=b'{"inputs": "hi"}', headers=form).text
    error(post("/v1/embeddings", json={"input": [[1, 10**9]]}), 400, "token ids outside")
    error(post("/v1/embeddings", json={"input": [1, 2], "input_type": "query"}), 400,
          "text input only")
    error(post("/v1/embeddings", json={"input": [1, 2], "input_type": "Query"}), 400,
          "text input only")
    error(post("/v1/embeddings", json={"input": "x", "input_type": "queries"}), 400,
          "input_type must be")
    error(post("/v1/embeddings", json={"input": "x", "input_type": "document",
                                       "instruction": "qa"}), 400, "instruction")
    error(post("/v1/embeddings", content=b'{"input": "\\ud800"}',  # a JSON-escaped lone surrogate
               headers={"content-type": "application/json"}), 400, "surrogate")
    body = json.dumps({"input": "x" * 70_000}).encode()
    error(post("/v1/embeddings", content=body, headers={"content-type": "application/json"}),
          413, "larger than")
    error(client.get("/v1/embeddings"), 405, "GET")


def test_refused_requests_leave_no_error_in_a_cycle(client, tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: each over-long text refused kept its tokens and the tokenizer's encoding
    in the frames of an error cycle that only a full collection frees; a server rarely runs
    one, and 2.4 MB texts grew it by 150-300 MB a request. Every API's refusal lets go."""
    long = " ".join(f"w{i}" for i in range(2000))
    for path, body in [("/v1/embeddings", {"input": ["ok", long]}),
                       ("/v1/embeddings", {"input": [[5] * (tiny.max_tokens + 1)]}),
                       ("/embed", {"inputs": [long]}),
                       ("/api/embed", {"input": [long], "truncate": False}),
                       ("/api/embeddings", {"prompt": long, "truncate": False})]:
        status, left = errors_left_in_cycles(
            lambda p=path, b=body: client.post(p, json=b).status_code)
        assert status in (400, 413, 422) and left == [], (path, status, left)
    # a body not UTF-8: its UnicodeDecodeError holds the whole body (a diff review's)
    for path in ("/v1/embeddings", "/embed"):
        status, left = errors_left_in_cycles(lambda p=path: client.post(
            p, content=b'{"input": "' + b"\xff" * 10_000 + b'"}',
            headers={"content-type": "application/json"}).status_code)
        assert status in (400, 422) and left == [], (path, status, left)


def test_over_long_input(client, tiny) -> None:  # type: ignore[no-untyped-def]
    long = " ".join(f"w{i}" for i in range(2000))
    assert tiny.count_tokens([long])[0] > tiny.max_tokens
    err = error(client.post("/v1/embeddings", json={"input": ["ok", long]}), 400, "input[1]",
                f"at most {tiny.max_tokens}")
    assert err["code"] == "context_length_exceeded"  # OpenAI's code
    # LiteLLM reads the words, not the code (a review's: no ContextWindowExceededError)
    assert "input[1] is longer than the model's context length: " in err["message"]
    # a review's: "ask for truncation" left an SDK user to guess the (extension) field
    assert 'send "truncate": true' in err["message"]
    r = client.post("/v1/embeddings", json={"input": ["ok", long], "truncate": True})
    assert np.array_equal(floats(r), tiny.embed(["ok", long], truncate=True))
    embedded = tiny.count_tokens(["ok"])[0] + tiny.max_tokens
    assert r.json()["usage"]["prompt_tokens"] == embedded  # what was embedded, not sent
    # token ids too: usage counted every id sent, the ones cut off as well
    ids = [tiny.tokenize(["ok"])[0], tiny.tokenize([long], truncate=True)[0][:-1] * 2]
    r = client.post("/v1/embeddings", json={"input": ids, "truncate": True})
    assert np.array_equal(floats(r), tiny.embed_token_ids(ids, truncate=True))
    assert r.json()["usage"]["prompt_tokens"] == embedded
    # the EOS appended to ids sent without it is embedded, so counted: as the same text is
    # (it was one less, and so was the compute header)
    bare = [tiny.tokenize(["ok", "Привет, мир!"])[1][:-1]]
    r = client.post("/v1/embeddings", json={"input": bare})
    assert r.json()["usage"]["prompt_tokens"] == tiny.count_tokens(["Привет, мир!"])[0] == \
        len(bare[0]) + 1


def test_token_ids_are_refused_unless_the_server_takes_them(tiny) -> None:  # type: ignore[no-untyped-def]
    """An OpenAI client's token ids are tiktoken's: LangChain's OpenAIEmbeddings sends cl100k
    ids (``"the"`` is 1820 there, 1782 in Qwen3), which would embed another text. Without
    ``--token-ids`` they get a 400 that says what to do; the text itself is embedded as ever."""
    with TestClient(create_app(tiny, ServerConfig())) as c:
        cl100k = [[1820, 4062, 14198, 39935]]  # "the quick brown fox" in tiktoken's cl100k_base
        for body in ({"input": cl100k}, {"input": cl100k[0]}, {"input": tiny.tokenize(["x"])}):
            err = error(c.post("/v1/embeddings", json=body), 400, "check_embedding_ctx_length",
                        "--token-ids")
            assert err["param"] == "input"
        assert c.post("/v1/embeddings", json={"input": ["the quick brown fox"]}).status_code == 200


def test_a_misspelt_or_foreign_field_is_refused_with_its_name_on_every_api(
        client, tiny) -> None:  # type: ignore[no-untyped-def]
    """A review's: fields a route does not read are ignored (SDKs send their API's others),
    so ``{"dimension": 32}`` gave the full-size vector as if no size was asked. A field that
    is a misspelling of one the route reads, or another API's name for it, is now refused
    with the right name, in each API's error shape; unknown fields of other APIs still pass."""
    for path, body, meant, status in (
            ("/v1/embeddings", {"input": "x", "dimension": 32}, "dimensions", 400),
            ("/v1/embeddings", {"input": "x", "output_dimension": 32}, "dimensions", 400),
            ("/v1/embeddings", {"input": "x", "Dimensions": 32}, "dimensions", 400),
            ("/api/embed", {"input": "x", "dimension": 32}, "dimensions", 400),
            ("/api/embed", {"input": "x", "truncate_dim": 32}, "dimensions", 400),
            ("/v1/embeddings", {"input": "x", "dimension}": 32}, "dimensions", 400),
            ("/embed", {"inputs": "x", "normalise": False}, "normalize", 422),
            ("/embed", {"inputs": "x", "output_dimensionality": 32}, "dimensions", 422),
            ("/", {"inputs": "x", "dimension": 32}, "dimensions", 422)):
        r = client.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert f"did you mean {meant!r}" in r.text, r.text
        assert repr(next(iter(set(body) - {"input", "inputs"}))) in str(r.json()["error"])
    # Ollama's two routes' names for the text, each sent to the other: an empty list of
    # vectors came back, 200 (a review's)
    for path, body, meant in (("/api/embed", {"prompt": "x"}, "input"),
                              ("/api/embeddings", {"input": "x"}, "prompt"),
                              ("/api/embed", {"prompt": "x", "input": None}, "input"),
                              ("/api/embeddings", {"input": "x", "prompt": None}, "prompt")):
        r = client.post(path, json=body)
        assert r.status_code == 400 and f"did you mean {meant!r}" in r.text, (path, r.text)
    # what SDKs send beside (the OpenAI SDK's user, Ollama's options, TEI's parameters)
    # (and a null: an SDK's unset option, as Voyage's output_dimension; its truncation, sent
    # on every call, is left alone)
    for path, body in (("/v1/embeddings", {"input": "x", "user": "u", "dimensions": 32}),
                       ("/v1/embeddings", {"input": "x", "output_dimension": None,
                                           "truncation": True}),
                       ("/api/embed", {"input": "x", "options": {}, "stream": False}),
                       ("/embed", {"inputs": "x", "parameters": {}})):
        assert client.post(path, json=body).status_code == 200, (path, body)
    # a body of many unknown keys is looked at in part (100,000 of them held the loop 0.9 s)
    from smysl.server.openai_routes import EmbeddingRequest

    many = json.dumps({"input": "x", **{f"k{i}": 0 for i in range(100_000)}})
    t0 = time.perf_counter()
    EmbeddingRequest.model_validate_json(many)
    assert time.perf_counter() - t0 < 0.3


def test_a_body_not_utf8_or_empty_is_named_as_such(client) -> None:  # type: ignore[no-untyped-def]
    """A review's: a body that is not UTF-8 got FastAPI's "There was an error parsing the
    body", an empty one "invalid request: body: Field required"."""
    json_type = {"content-type": "application/json"}
    for path in ("/v1/embeddings", "/api/embed", "/embed", "/", "/invocations"):
        r = client.post(path, content=b'{"input": "\xff"}', headers=json_type)
        assert r.status_code == 400 and "not UTF-8 (byte 0xff at offset 11)" in r.text, r.text
        for body, says in ((b"", "has no body"), (b"null", "body is null"),
                           (b'["x"]', "body is an array"), (b'"x"', "body is a string"),
                           (b"true", "body is a boolean"), (b"7", "body is a number")):
            r = client.post(path, content=body, headers=json_type)
            assert r.status_code in (400, 422) and says in r.text, (path, body, r.text)
