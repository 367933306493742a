"""Search with reranking (issue 15): the vector search's top ``rerank_top`` chunks reordered by a
:class:`~smysl.rerank.BaseReranker`, in Python, through ``smysl index search --rerank`` and in the
RAG context; ``smysl rerank`` through :func:`smysl.load_reranker`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smysl.cli import main
from smysl.rerank import BaseReranker
from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.search import (
    RerankedHit,
    SearchConfig,
    build_context,
    format_json,
    format_table,
    hits_to_rows,
    reorder_hits,
)
from smysl.toolkit.store import Hit, StoreConfig

pytest.importorskip("lancedb")

TEXTS = [
    "Moscow is the capital of Russia and its largest city.",
    "Paris is the capital of France, on the Seine.",
    "Cats sleep for most of the day and purr when content.",
    "Dogs bark at strangers and love long walks.",
    "The Volga is the longest river in Europe.",
    "Столица России — Москва, крупнейший город страны.",
    "Berlin became the capital of reunified Germany in 1990.",
    "A vector database stores embeddings and finds nearest neighbours.",
    "Rerankers score each query and document pair with a cross-encoder.",
    "Tea is grown on the hills of Darjeeling and Assam.",
    "The Amazon carries more water than any other river.",
    "Owls hunt at night and turn their heads almost all the way round.",
]
TOPICS = ["city", "city", "animal", "animal", "river", "city", "city", "tech", "tech", "food",
          "river", "animal"]
QUERY = "What is the capital of Russia?"


class Reverse(BaseReranker):
    """Deterministic: the i-th of n candidates scores i / n, so the vector order comes back
    reversed. Records every call."""

    name = "reverse"
    backend = "fake"
    instruction_aware = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], str | None, bool]] = []

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        self.calls.append((query, list(documents), instruction, truncate))
        return np.arange(len(documents), dtype=np.float64) / len(documents)


@pytest.fixture
def kb(tiny, tmp_path: Path):  # type: ignore[no-untyped-def]
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add_texts(TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))],
                     metadata=[{"topic": t} for t in TOPICS])
        yield ix


def test_rerank_reorders_the_top_candidates_and_keeps_both_scores(kb: Index) -> None:
    (plain,) = kb.search(QUERY, SearchConfig(k=len(TEXTS)))
    r = Reverse()
    (hits,) = kb.search(QUERY, SearchConfig(k=3, rerank_top=8, rerank_instruction="find cities"),
                        reranker=r)
    # the reranker saw exactly the 8 nearest chunks' texts, in vector order, in one call
    ((query, docs, instruction, truncate),) = r.calls
    assert query == QUERY and instruction == "find cities" and truncate is True
    assert docs == [h.payload["text"] for h in plain[:8]]
    # its order (the 8th nearest first), its scores, the cosines and ranks of the first stage
    assert [h.id for h in hits] == [plain[i].id for i in (7, 6, 5)]
    assert all(isinstance(h, RerankedHit) for h in hits)
    assert [h.score for h in hits] == [7 / 8, 6 / 8, 5 / 8]
    np.testing.assert_allclose([h.vector_score for h in hits],
                               [plain[i].score for i in (7, 6, 5)], atol=1e-6)
    assert [h.vector_rank for h in hits] == [8, 7, 6]
    assert [h.payload for h in hits] == [plain[i].payload for i in (7, 6, 5)]
    assert all(h.vector is None for h in hits)


def test_filters_apply_to_the_candidates(kb: Index) -> None:
    r = Reverse()
    (hits,) = kb.search(QUERY, SearchConfig(k=2, rerank_top=3, where={"topic": "animal"}),
                        reranker=r)
    ((_, docs, _, _),) = r.calls
    animals = {t for t, topic in zip(TEXTS, TOPICS, strict=True) if topic == "animal"}
    assert len(docs) == 3 and set(docs) == animals
    assert len(hits) == 2 and all(h.payload["topic"] == "animal" for h in hits)


def test_candidate_counts_queries_and_refusals(kb: Index) -> None:
    r = Reverse()
    # rerank_top below k: the reranker still scores k candidates (every hit is reranked)
    (hits,) = kb.search(QUERY, SearchConfig(k=4, rerank_top=2), reranker=r)
    assert len(r.calls[-1][1]) == 4 and len(hits) == 4
    # more candidates asked than stored: all of them
    (hits,) = kb.search(QUERY, SearchConfig(k=5), reranker=r)  # rerank_top defaults to 50
    assert len(r.calls[-1][1]) == len(TEXTS) and len(hits) == 5
    # several queries: one reranker call each, with its own query
    r.calls.clear()
    out = kb.search(["cats", "rivers"], SearchConfig(k=2, rerank_top=4), reranker=r)
    assert [c[0] for c in r.calls] == ["cats", "rivers"] and [len(h) for h in out] == [2, 2]
    # MMR and reranking together are refused before anything is embedded or scored
    r.calls.clear()
    with pytest.raises(ValueError, match="MMR and reranking"):
        kb.search(QUERY, SearchConfig(k=2, mmr=True), reranker=r)
    assert not r.calls
    with pytest.raises(ValueError, match="rerank_top"):
        SearchConfig(rerank_top=0)
    # without a reranker the rerank settings change nothing
    assert kb.search(QUERY, SearchConfig(k=3, rerank_top=7)) == kb.search(QUERY,
                                                                         SearchConfig(k=3))


def test_reranked_output_formats_and_rag_context() -> None:
    hits = [Hit("a#0", 0.9, {"text": "first chunk", "doc_id": "a"}),
            Hit("b#0", 0.8, {"text": "second chunk", "doc_id": "b"})]
    reranked = reorder_hits(hits, [(1, 0.75), (0, 0.125)])
    assert [(h.id, h.score, h.vector_score, h.vector_rank) for h in reranked] == [
        ("b#0", 0.75, 0.8, 2), ("a#0", 0.125, 0.9, 1)]
    table = format_table(["q"], [reranked])
    header, first = table.splitlines()[1:3]
    assert header.split()[:5] == ["#", "rerank", "vector", "was", "id"]
    assert first.split()[:5] == ["1", "0.7500", "0.8000", "2", "b#0"]
    (line,) = format_json(["q"], [reranked]).splitlines()
    assert json.loads(line)["hits"][0] == {"id": "b#0", "score": 0.75, "vector_score": 0.8,
                                           "vector_rank": 2, "payload": hits[1].payload}
    row = hits_to_rows(["q"], [reranked])[0]
    assert (row["rank"], row["score"], row["vector_score"], row["vector_rank"]) == (1, 0.75,
                                                                                    0.8, 2)
    # the RAG context follows the reranker's order
    assert build_context(reranked).startswith("[1] b\nsecond chunk\n\n[2] a\nfirst chunk")
    # plain hits keep the plain columns
    assert "rerank" not in format_table(["q"], [hits]) and "vector_score" not in format_json(
        ["q"], [hits])


def test_reranked_search_imports_no_torch(tmp_path: Path) -> None:
    """The toolkit's reranking path needs no torch: a fresh interpreter where ``import torch``
    fails searches a memory store and reranks with a non-torch reranker."""
    code = """
import sys
sys.modules["torch"] = None
import numpy as np
from smysl.rerank import BaseReranker
from smysl.toolkit.search import SearchConfig, search_vectors
from smysl.toolkit.store import StoreConfig
from smysl.toolkit.stores import open_store

class Len(BaseReranker):
    def _scores(self, query, documents, *, instruction, truncate):
        return np.array([len(d) for d in documents], dtype=float)

v = np.eye(4, dtype=np.float32)
store = open_store(StoreConfig(backend="memory"), 4)
store.upsert([f"r{i}" for i in range(4)], v, [{"text": "x" * (i + 1)} for i in range(4)])
q = np.array([[4, 3, 2, 1]], dtype=np.float32) / np.sqrt(30)  # nearest: r0, r1, r2, r3
(hits,) = search_vectors(store, q, SearchConfig(k=2, rerank_top=3), reranker=Len(),
                         texts=["q"])
print([h.id for h in hits], "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    # candidates r0, r1, r2; the longest text wins
    assert out.stdout.split() == ["['r2',", "'r1']", "False"]


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen_tiny import build_tiny_reranker

    return build_tiny_reranker(tmp_path_factory.mktemp("reranker") / "r", seed=4).path


def test_index_search_rerank_command(tiny_dir: Path, tiny_reranker: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``smysl index search KB Q --rerank R --rerank-top N``: the real (tiny random)
    Qwen3-Reranker's order and scores, both scores shown, the RAG context in that order."""
    from smysl import Reranker

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"t{i}", "text": t, "topic": topic},
                                       ensure_ascii=False) + "\n"
                            for i, (t, topic) in enumerate(zip(TEXTS, TOPICS, strict=True))),
                    encoding="utf-8")
    kb = str(tmp_path / "kb")
    assert main(["index", "add", kb, str(docs), "--id-field", "id", "--model", str(tiny_dir),
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "search", kb, QUERY, "-k", "6", "--format", "json",
                 "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out)["hits"]
    rerank = ["--rerank", str(tiny_reranker), "--rerank-top", "6", "--device", "cpu"]
    assert main(["index", "search", kb, QUERY, "-k", "3", "--format", "json", *rerank]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    with Reranker.load(str(tiny_reranker), device="cpu") as reference:
        want = reference.rerank(QUERY, [h["payload"]["text"] for h in plain], top_n=3,
                                truncate=True)
    assert [h["id"] for h in hits] == [plain[i]["id"] for i, _ in want]
    assert [h["score"] for h in hits] == [round(s, 6) for _, s in want]
    assert [h["vector_score"] for h in hits] == [plain[i]["score"] for i, _ in want]
    assert [h["vector_rank"] for h in hits] == [i + 1 for i, _ in want]
    # the table shows both scores; the context is in the reranker's order
    assert main(["index", "search", kb, QUERY, "-k", "3", *rerank]) == 0
    assert "rerank   vector" in capsys.readouterr().out
    assert main(["index", "search", kb, QUERY, "-k", "3", "--format", "context", *rerank]) == 0
    context = capsys.readouterr().out
    first = plain[want[0][0]]["payload"]
    assert context.startswith(f"[1] {first['doc_id']}\n{first['text']}")
    # filters reach the candidates
    assert main(["index", "search", kb, QUERY, "-k", "2", "--where", "topic=animal",
                 "--format", "json", *rerank]) == 0
    assert {h["payload"]["topic"] for h in json.loads(capsys.readouterr().out)["hits"]} == {
        "animal"}
    # settings that would do nothing, or clash, are errors (exit 2) naming the flags
    for argv, message in (
            (["--rerank-top", "5"], "--rerank-top needs --rerank"),
            (["--mmr", "--rerank", str(tiny_reranker)], "--mmr and --rerank"),
            (["--rerank", "siliconflow:BAAI/bge-reranker-v2-m3", "--rerank-top", "0"],
             "rerank_top must be an integer >= 1"),
            (["--context-chars", "100"], "--context-chars")):
        assert main(["index", "search", kb, QUERY, "--device", "cpu", *argv]) == 2
        assert message in capsys.readouterr().err


def test_rerank_command_loads_any_reranker_string(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``smysl rerank`` goes through :func:`smysl.load_reranker` (any model string), prints the
    reranker's usage line, and a remote scheme refuses engine flags by name."""
    import smysl.registry

    class Paid(Reverse):
        def usage_report(self) -> str | None:
            return "spent: 3 requests, $0.0001"

    loaded: list[tuple[str, object]] = []

    def fake_load(model: str, options: object = None, **kwargs: object) -> BaseReranker:
        loaded.append((model, options))
        return Paid()

    monkeypatch.setattr(smysl.registry, "load_reranker", fake_load)
    docs = tmp_path / "docs.txt"
    docs.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert main(["rerank", "--model", "siliconflow:x", "-q", "q", "-i", str(docs)]) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["index"] for x in out.out.splitlines()] == [2, 1, 0]
    assert "spent: 3 requests" in out.err and loaded[0][0] == "siliconflow:x"
    monkeypatch.undo()
    assert main(["rerank", "--model", "siliconflow:BAAI/bge-reranker-v2-m3", "--device", "cpu",
                 "-q", "q", "-i", str(docs)]) == 2
    assert "does not use the option(s) device (--device)" in capsys.readouterr().err
