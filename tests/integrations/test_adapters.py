"""LangChain and LlamaIndex adapters with the real packages: in process, vectors equal smysl's
own; against a live loopback ``smysl serve`` through the ``smysl:`` scheme, equal to float
tolerance (issue 11: the frameworks users bring)."""

from __future__ import annotations

import asyncio
import builtins
import importlib
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
