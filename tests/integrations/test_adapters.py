"""LangChain and LlamaIndex adapters with the real packages: in process, vectors equal smysl's
own; against a live loopback ``smysl serve`` through the ``smysl:`` scheme, equal to float
tolerance (issue 11: the frameworks users bring)."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_http import live_server

import smysl
from smysl.base import BaseEmbedder

QUERIES = ["как устроен семантический поиск?", "what is a vector database"]
DOCS = ["Семантический поиск сравнивает смыслы.", "A vector database stores embeddings.", "x"]

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")


def _langchain(model: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    from langchain_core.embeddings import Embeddings

    from smysl.integrations.langchain import SmyslEmbeddings

    emb = SmyslEmbeddings(model, **kw)
    assert isinstance(emb, Embeddings)
    q = np.array([emb.embed_query(t) for t in QUERIES], dtype=np.float32)
    d = np.array(emb.embed_documents(DOCS), dtype=np.float32)
    aq = asyncio.run(emb.aembed_query(QUERIES[0]))  # LangChain's async default runs the sync one
    np.testing.assert_array_equal(np.array(aq, dtype=np.float32), q[0])
    emb.close()
    return q, d


def _llama_index(model: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from smysl.integrations.llama_index import SmyslEmbedding

    emb = SmyslEmbedding(model, **kw)
    assert isinstance(emb, BaseEmbedding)
    q = np.array([emb.get_query_embedding(t) for t in QUERIES], dtype=np.float32)
    d = np.array(emb.get_text_embedding_batch(DOCS), dtype=np.float32)
    np.testing.assert_array_equal(np.array(emb.get_text_embedding(DOCS[0]), dtype=np.float32),
                                  d[0])
    aq = asyncio.run(emb.aget_query_embedding(QUERIES[0]))
    np.testing.assert_array_equal(np.array(aq, dtype=np.float32), q[0])
    emb.close()
    return q, d


ADAPTERS = {"langchain": _langchain, "llama_index": _llama_index}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_in_process_vectors_equal_smysls(tiny: BaseEmbedder, adapter: str) -> None:
    q, d = ADAPTERS[adapter](tiny, dimensions=32, task="qa")
    np.testing.assert_array_equal(q, tiny.embed_queries(QUERIES, "qa", dimensions=32))
    np.testing.assert_array_equal(d, tiny.embed_documents(DOCS, dimensions=32))
    # defaults: native size, the model's default task
    q, d = ADAPTERS[adapter](tiny)
    np.testing.assert_array_equal(q, tiny.embed_queries(QUERIES))
    np.testing.assert_array_equal(d, tiny.embed_documents(DOCS))


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_model_string_loads_through_smysl_load(tiny: BaseEmbedder, tiny_dir: Path,
                                               adapter: str) -> None:
    q, d = ADAPTERS[adapter](str(tiny_dir), device="cpu", dimensions=48)
    np.testing.assert_array_equal(q, tiny.embed_queries(QUERIES, dimensions=48))
    np.testing.assert_array_equal(d, tiny.embed_documents(DOCS, dimensions=48))


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_through_a_live_smysl_server(tiny: BaseEmbedder, adapter: str) -> None:
    with live_server(tiny, served_name="tiny") as url:
        remote = smysl.load(f"smysl:{url}#tiny")
        q, d = ADAPTERS[adapter](remote, dimensions=32, task="qa")
        q2, d2 = ADAPTERS[adapter](f"smysl:{url}#tiny")  # a model string works the same
        remote.close()
    np.testing.assert_allclose(q, tiny.embed_queries(QUERIES, "qa", dimensions=32), atol=2e-6)
    np.testing.assert_allclose(d, tiny.embed_documents(DOCS, dimensions=32), atol=2e-6)
    np.testing.assert_allclose(q2, tiny.embed_queries(QUERIES), atol=2e-6)
    np.testing.assert_allclose(d2, tiny.embed_documents(DOCS), atol=2e-6)


def test_bad_input_is_a_clear_error(tiny: BaseEmbedder) -> None:
    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.integrations.llama_index import SmyslEmbedding

    with pytest.raises(ValueError, match=r"dimensions must be in 32\.\.64"):
        SmyslEmbeddings(tiny, dimensions=7).embed_query("x")
    with pytest.raises(TypeError, match="only when model is a string"):
        SmyslEmbedding(tiny, device="cpu")
    with pytest.raises(ValueError, match="truncat"):
        SmyslEmbeddings(tiny).embed_documents(["word " * 3000])
    assert len(SmyslEmbeddings(tiny, truncate=True).embed_documents(["word " * 3000])[0]) == 64


@pytest.mark.parametrize(("module", "package", "extra"), [
    ("smysl.integrations.langchain", "langchain_core", "langchain"),
    ("smysl.integrations.llama_index", "llama_index", "llamaindex")])
def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str,
                                           package: str, extra: str) -> None:
    real_import = builtins.__import__

    def blocked(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == module or m.split(".")[0] == package]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ImportError, match=rf"pip install 'smysl\[{extra}\]'"):
        importlib.import_module(module)


def test_llama_index_dict_keys_the_ingestion_cache_by_size_and_model(tiny: BaseEmbedder) -> None:
    # LlamaIndex's IngestionPipeline keys its cache by to_dict(): without the size in it, a
    # second run at 48 dimensions got the first run's 32-wide vectors back, without a word
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline
    from llama_index.core.schema import Document

    from smysl.integrations.llama_index import SmyslEmbedding

    cache = IngestionCache()
    for dims in (32, 48):
        emb = SmyslEmbedding(tiny, dimensions=dims)
        nodes = IngestionPipeline(transformations=[emb], cache=cache).run(
            documents=[Document(text=t) for t in DOCS])
        np.testing.assert_array_equal(np.array([n.embedding for n in nodes], dtype=np.float32),
                                      tiny.embed_documents(DOCS, dimensions=dims))
    assert {k: emb.to_dict()[k] for k in ("dimensions", "task", "truncate", "fingerprint")} == {
        "dimensions": 48, "task": None, "truncate": False, "fingerprint": tiny.fingerprint()}
    emb.dimensions = 32  # a field set later is what embeds and what to_dict reports
    assert len(emb.get_query_embedding("q")) == 32 == emb.to_dict()["dimensions"]


def test_llama_index_from_dict_loads_the_same_model_again(tiny: BaseEmbedder,
                                                          tiny_dir: Path) -> None:
    from smysl.integrations.llama_index import SmyslEmbedding

    saved = SmyslEmbedding(str(tiny_dir), device="cpu", dimensions=48, task="qa").to_json()
    again = SmyslEmbedding.from_json(saved, device="cpu")  # smysl.load options ride along
    assert (again.dimensions, again.task) == (48, "qa")
    np.testing.assert_array_equal(np.array(again.get_query_embedding(QUERIES[0]), np.float32),
                                  tiny.embed_queries(QUERIES[:1], "qa", dimensions=48)[0])
    again.close()
    changed = {**SmyslEmbedding(tiny).to_dict(), "fingerprint": "0" * 32}
    with pytest.raises(ValueError, match="not the model this was saved with"):
        SmyslEmbedding.from_dict(changed)


def test_adapters_close_what_they_loaded_at_the_end_of_a_with(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: neither adapter was a context manager (BaseEmbedder is), and a remote one
    left unclosed warned of an unclosed socket at exit."""
    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.integrations.llama_index import SmyslEmbedding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for make in (SmyslEmbeddings, SmyslEmbedding):
        with make("tei:http://127.0.0.1:9#m", dimensions=64) as emb:
            assert isinstance(emb, make)
        model = emb.model
        with pytest.raises(Exception, match="the provider is closed"):
            model.embed(["a"])
        shared = smysl.load("ollama:http://127.0.0.1:9#m", dimensions=64)
        with make(shared):  # a model it was given stays open: its owner closes it
            pass
        with pytest.raises(Exception) as e:  # nothing listens there: but not closed
            shared.embed(["a"])
        assert "nothing listens" in str(e.value) and "is closed" not in str(e.value)
        shared.close()


def test_llama_index_dict_holds_no_url_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """to_dict()/to_json() (stored by LlamaIndex) carried a server URL's password in
    model_name."""
    from smysl.integrations.llama_index import SmyslEmbedding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = smysl.load("tei:http://user:s3cret@127.0.0.1:9#m", dimensions=64)
    emb = SmyslEmbedding(model)
    assert "s3cret" not in emb.to_json()
    assert emb.to_dict()["model_name"] == "tei:http://127.0.0.1:9#m"
    model.close()


def test_llama_index_takes_its_own_fields(tiny: BaseEmbedder, tiny_dir: Path) -> None:
    # callback_manager, num_workers, embeddings_cache went to smysl.load (or were refused)
    from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding

    debug, kv = LlamaDebugHandler(), SimpleKVStore()
    emb = SmyslEmbedding(tiny, callback_manager=CallbackManager([debug]), num_workers=2,
                         embeddings_cache=kv, task="")  # queries as documents: one cache fits
    assert emb.num_workers == 2
    vectors = asyncio.run(emb.aget_text_embedding_batch(DOCS))
    np.testing.assert_array_equal(np.array(vectors, np.float32), tiny.embed_documents(DOCS))
    # in kv, under a collection named by the model and size
    assert debug.get_event_pairs() and emb.embeddings_cache.store is kv
    assert len(emb.embeddings_cache.get_all(collection="embeddings")) == len(DOCS)
    by_name = SmyslEmbedding(model_name=str(tiny_dir), device="cpu")  # LlamaIndex's spelling
    np.testing.assert_array_equal(np.array(by_name.get_text_embedding(DOCS[0]), np.float32),
                                  tiny.embed_documents(DOCS[:1])[0])
    by_name.close()
    with pytest.raises(TypeError, match="not both or neither"):
        SmyslEmbedding(tiny, model_name=str(tiny_dir))


def test_llama_index_too_long_text_is_named_not_numbered_in_its_batch(
        tiny: BaseEmbedder) -> None:
    # LlamaIndex sends batches of embed_batch_size: "input 1" meant the 4th text here
    from smysl.integrations.llama_index import SmyslEmbedding
    from smysl.tokenize import InputTooLongError

    emb = SmyslEmbedding(tiny, embed_batch_size=2)
    texts = ["a", "b", "c", "long " * 3000]
    with pytest.raises(InputTooLongError, match="the text starting 'long long") as err:
        emb.get_text_embedding_batch(texts)
    assert "input 1" not in str(err.value)
    with pytest.raises(InputTooLongError, match="the text starting 'long long"):
        asyncio.run(emb.aget_text_embedding_batch(texts))


def test_llama_index_names_a_text_a_remote_model_refused(tiny: BaseEmbedder) -> None:
    """A server's refusal (400) named "input #1" and input[0]: places within LlamaIndex's
    batch of embed_batch_size, not the caller's list."""
    from smysl.integrations.llama_index import SmyslEmbedding
    from smysl.providers.errors import RejectedInputError

    with live_server(tiny, served_name="tiny") as url:
        remote = smysl.load(f"smysl:{url}#tiny")
        emb = SmyslEmbedding(remote, embed_batch_size=2)
        with pytest.raises(RejectedInputError, match="the text starting 'long long") as err:
            emb.get_text_embedding_batch(["a", "b", "c", "long " * 3000])
        # a review's: the inputs after the refused one were never sent, and "and 2 other(s)
        # of the same batch" said they were refused too
        emb = SmyslEmbedding(remote, embed_batch_size=4)
        with pytest.raises(RejectedInputError, match="the text starting 'long long") as two:
            emb.get_text_embedding_batch(["a", "long " * 3000, "b", "c"])
        remote.close()
    assert "#1" not in str(err.value) and "3002 tokens" in str(err.value), err.value
    assert re.search(r"sent alone: .*\(\d other text\(s\) of the batch were not embedded\)$",
                     str(two.value)), two.value


def test_pydantics_round_trip_of_the_llama_index_adapter(tiny: BaseEmbedder) -> None:
    """model_validate(model_dump()) passed the dump's class_name and fingerprint to
    smysl.load as options (TypeError)."""
    from smysl.integrations.llama_index import SmyslEmbedding

    emb = SmyslEmbedding(tiny, dimensions=32)
    for again in (SmyslEmbedding.model_validate(emb.model_dump()),
                  SmyslEmbedding.model_validate_json(emb.model_dump_json()),
                  SmyslEmbedding.model_validate(emb.to_dict())):
        assert again.dimensions == 32 and again.fingerprint == emb.fingerprint
        again.close()
    with pytest.raises(ValueError, match="not the model this was saved with"):
        SmyslEmbedding.model_validate({**emb.model_dump(), "fingerprint": "0" * 32})


def test_langchain_settings_assigned_are_checked_and_used(tiny: BaseEmbedder) -> None:
    """``emb.dimensions = 32`` was a plain attribute beside the config: ignored."""
    from smysl.integrations.langchain import SmyslEmbeddings

    emb = SmyslEmbeddings(tiny)
    emb.dimensions = 32
    emb.task = "qa"
    assert len(emb.embed_query("x")) == 32
    np.testing.assert_array_equal(np.array(emb.embed_query(QUERIES[0]), np.float32),
                                  tiny.embed_queries(QUERIES[:1], "qa", dimensions=32)[0])
    with pytest.raises(ValueError):
        emb.dimensions = 10**6
    with pytest.raises(ValueError):
        emb.truncate = "maybe"  # type: ignore[assignment]
    assert (emb.dimensions, emb.task, emb.truncate) == (32, "qa", False)  # kept


def test_langchain_documents_must_be_a_list(tiny: BaseEmbedder) -> None:
    from smysl.integrations.langchain import SmyslEmbeddings

    # list("abc") made three one-letter documents
    with pytest.raises(ValueError, match="got one string"):
        SmyslEmbeddings(tiny).embed_documents("abc")  # type: ignore[arg-type]


def test_llama_index_batches_must_be_lists(tiny: BaseEmbedder) -> None:
    """A review's: get_text_embedding_batch("abc") returned three vectors, one per letter
    (LlamaIndex's batching iterates the string); the LangChain adapter refused it."""
    import asyncio

    from smysl.integrations.llama_index import SmyslEmbedding

    emb = SmyslEmbedding(tiny)
    with pytest.raises(ValueError, match=r"get_text_embedding_batch takes a list of texts, got "
                                         r"one string: pass \[text\], or get_text_embedding"):
        emb.get_text_embedding_batch("abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aget_text_embedding_batch takes a list of texts"):
        asyncio.run(emb.aget_text_embedding_batch("abc"))  # type: ignore[arg-type]
    assert emb.get_text_embedding_batch(["abc"]) == [emb.get_text_embedding("abc")]
    # one text that is none: named as the caller wrote it (it was "texts[0] must be a string")
    from smysl.integrations.langchain import SmyslEmbeddings

    for call, name in ((emb.get_query_embedding, "get_query_embedding"),
                       (emb.get_text_embedding, "get_text_embedding"),
                       (SmyslEmbeddings(tiny).embed_query, "embed_query")):
        with pytest.raises(ValueError, match=rf"^{name} takes one text \(a string\), got "
                                             r"NoneType$"):
            call(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_bad_settings_fail_when_the_adapter_is_made(tiny: BaseEmbedder,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    adapter: str) -> None:
    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.integrations.llama_index import SmyslEmbedding

    cls: Any = {"langchain": SmyslEmbeddings, "llama_index": SmyslEmbedding}[adapter]
    with pytest.raises(ValueError, match=r"dimensions must be in 32\.\.64"):
        cls(tiny, dimensions=7)
    with pytest.raises(ValueError, match=r"instruction must be a string|task\n.*valid string"):
        cls(tiny, task=5)  # smysl's words, or pydantic's for the LlamaIndex field
    with pytest.raises(ValueError, match="truncate"):
        cls(tiny, truncate="maybe")
    # a model the adapter loaded for itself is closed when its settings are refused
    closed: list[bool] = []
    monkeypatch.setattr("smysl.registry.load", lambda *a, **k: tiny)
    monkeypatch.setattr(tiny, "close", lambda: closed.append(True))
    with pytest.raises(ValueError, match="dimensions"):
        cls("some/model", dimensions=7)
    assert closed == [True]


def test_pickling_keeps_the_model_or_says_why_not(tiny: BaseEmbedder, tiny_dir: Path) -> None:
    # LlamaIndex dropped the model with a log line (IngestionPipeline(num_workers=...) pickles
    # its transformations): the copy failed later with an AttributeError
    import copy
    import pickle

    from smysl import Embedder
    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.integrations.llama_index import SmyslEmbedding

    with pytest.raises(TypeError, match=r"cannot be pickled.*model\.share\(\).*remote API"):
        pickle.dumps(SmyslEmbedding(tiny))
    lc_copy = copy.copy(SmyslEmbeddings(tiny))  # a shallow copy shares the model, no pickling
    assert lc_copy.model is tiny
    with Embedder.load(str(tiny_dir), device="cpu", process=True) as served:
        lc = pickle.loads(pickle.dumps(SmyslEmbeddings(served.share(), dimensions=32)))
        li = pickle.loads(pickle.dumps(SmyslEmbedding(served.share(), dimensions=32)))
        np.testing.assert_array_equal(np.array(lc.embed_query(QUERIES[0]), np.float32),
                                      tiny.embed_queries(QUERIES[:1], dimensions=32)[0])
        np.testing.assert_array_equal(np.array(li.get_text_embedding(DOCS[0]), np.float32),
                                      tiny.embed_documents(DOCS[:1], dimensions=32)[0])
        assert li.dimensions == 32
        lc.model.close()
        li.model.close()


def test_llama_index_refuses_a_text_keyed_cache_while_queries_get_an_instruction(
        tiny: BaseEmbedder) -> None:
    # LlamaIndex's embeddings_cache keys by text alone: a query embedded earlier as a document
    # got the document's vector (no instruction), without a word
    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding

    with pytest.raises(ValueError, match="embeddings_cache keys vectors by text alone"):
        SmyslEmbedding(tiny, embeddings_cache=SimpleKVStore())


def test_llama_index_fields_assigned_later_are_checked_and_a_refusal_keeps_the_old(
        tiny: BaseEmbedder) -> None:
    # pydantic took any assignment: truncate="no" cut texts as True would; a task given after a
    # cache handed queries the documents' vectors
    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding

    emb = SmyslEmbedding(tiny)
    with pytest.raises(ValueError, match="truncate"):
        emb.truncate = "no"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"dimensions must be in 32\.\.64"):
        emb.dimensions = 7
    assert emb.truncate is False and emb.dimensions is None
    emb.dimensions = np.int64(48)  # type: ignore[assignment]  # numpy sizes, as smysl takes
    assert emb.dimensions == 48 and len(emb.get_text_embedding(DOCS[0])) == 48
    with pytest.raises(ValueError, match="dimensions must be a positive integer"):
        SmyslEmbedding(tiny, dimensions=True)  # type: ignore[arg-type]
    cached = SmyslEmbedding(tiny, task="", embeddings_cache=SimpleKVStore())
    with pytest.raises(ValueError, match="embeddings_cache keys vectors by text alone"):
        cached.task = "qa"
    assert cached.task == ""


def test_llama_index_cache_shared_by_two_sizes_keeps_each_sizes_vectors(
        tiny: BaseEmbedder) -> None:
    # LlamaIndex keys embeddings_cache by text alone: the second adapter got the first's
    # 32-wide vectors from the shared store (widths [32, 48] in one batch)
    import json

    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding

    store = SimpleKVStore()
    small = SmyslEmbedding(tiny, task="", dimensions=32, embeddings_cache=store)
    large = SmyslEmbedding(tiny, task="", dimensions=48, embeddings_cache=store)
    assert len(small.get_text_embedding(DOCS[0])) == 32
    got = np.array(large.get_text_embedding_batch(DOCS[:2]), np.float32)
    np.testing.assert_array_equal(got, tiny.embed_documents(DOCS[:2], dimensions=48))
    again = np.array(small.get_text_embedding_batch(DOCS[:2]), np.float32)  # from its cache
    np.testing.assert_array_equal(again, tiny.embed_documents(DOCS[:2], dimensions=32))
    assert "embeddings_cache" not in json.loads(large.to_json())  # a store is no setting


def test_llama_index_cache_shared_with_a_truncating_adapter_keeps_the_refusal(
        tiny: BaseEmbedder) -> None:
    """An adapter with truncate=False sharing its embeddings_cache with one that truncates got
    the cut vector of an over-long text, where alone it raises InputTooLongError."""
    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding
    from smysl.tokenize import InputTooLongError

    store, long = SimpleKVStore(), "длинный " * 600
    cutting = SmyslEmbedding(tiny, task="", truncate=True, embeddings_cache=store)
    strict = SmyslEmbedding(tiny, task="", truncate=False, embeddings_cache=store)
    np.testing.assert_array_equal(np.array(cutting.get_text_embedding(long), np.float32),
                                  tiny.embed([long], truncate=True)[0])
    with pytest.raises(InputTooLongError):
        strict.get_text_embedding(long)
    # texts within the limit: either adapter's vector is the model's
    np.testing.assert_array_equal(np.array(strict.get_text_embedding(DOCS[0]), np.float32),
                                  tiny.embed_documents([DOCS[0]])[0])


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_copies_share_the_model_and_pickling_a_local_one_says_why_not(
        tiny: BaseEmbedder, tiny_dir: Path, adapter: str) -> None:
    # a deep copy (and pickling the LangChain adapter) reached the weights and failed in torch:
    # "Cannot access storage of OpaqueTensorImpl"
    import copy
    import pickle

    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.integrations.llama_index import SmyslEmbedding

    cls: Any = {"langchain": SmyslEmbeddings, "llama_index": SmyslEmbedding}[adapter]
    emb = cls(str(tiny_dir), device="cpu", dimensions=32)
    twin = copy.deepcopy(emb)
    assert twin.model is emb.model and twin.dimensions == 32 if adapter == "llama_index" \
        else twin.model is emb.model and twin.config == emb.config
    twin.close()  # a copy does not close the model it shares
    shallow = copy.copy(emb)
    shallow.close()
    assert emb.model.engine.alive  # type: ignore[attr-defined]
    query = emb.embed_query if adapter == "langchain" else emb.get_query_embedding
    np.testing.assert_array_equal(np.array(query(QUERIES[0]), np.float32),
                                  tiny.embed_queries(QUERIES[:1], dimensions=32)[0])
    with pytest.raises(TypeError, match=r"cannot be pickled.*share\(\)"):
        pickle.dumps(emb)
    emb.close()


def test_llama_index_copies_and_refusals_keep_the_cache_right(tiny: BaseEmbedder,
                                                              tmp_path: Path) -> None:
    # a refused store stayed assigned; model_copy(update=...) kept the first size's cache
    # (32-wide rows at 48) and skipped the checks; a deep copy split an in-memory store in two
    import copy

    from llama_index.core.storage.kvstore import SimpleKVStore

    from smysl.integrations.llama_index import SmyslEmbedding

    store = SimpleKVStore()
    emb = SmyslEmbedding(tiny, task="", dimensions=32, embeddings_cache=store)
    with pytest.raises(TypeError, match="BaseKVStore"):
        emb.embeddings_cache = "x"
    assert emb.embeddings_cache.store is store
    emb.get_text_embedding(DOCS[0])
    wider = emb.model_copy(update={"dimensions": 48})
    assert len(wider.get_text_embedding(DOCS[0])) == 48
    with pytest.raises(ValueError, match="embeddings_cache keys vectors by text alone"):
        emb.model_copy(update={"task": "qa"})
    assert copy.deepcopy(emb).embeddings_cache.store is store
    emb.embeddings_cache.persist(str(tmp_path / "cache.json"))  # the store's own
    assert (tmp_path / "cache.json").exists()
