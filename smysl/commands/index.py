"""``smysl index add|search|delete``: a persistent semantic index (LanceDB folder or Qdrant)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import parse_where, progress

if TYPE_CHECKING:
    from smysl.toolkit.store import StoreConfig

HELP = "build, search and prune a semantic index (add | search | delete)"


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="LanceDB folder, lancedb:PATH, or qdrant:URL|PATH|:memory:")
    p.add_argument("--table", default="chunks", help="table / collection name (default: chunks)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = sub.add_parser("add", help="ingest txt/md/csv/jsonl files or folders")
    _store_arguments(a)
    a.add_argument("paths", nargs="+", help="files or folders")
    add_model_arguments(a)
    a.add_argument("--text-field", default="text", help="csv/jsonl text column")
    a.add_argument("--id-field", help="csv/jsonl document id column (default: file:row)")
    a.add_argument("--meta-fields", help="comma-separated columns to keep (default: all)")
    a.add_argument("--chunk-tokens", type=int, default=256, help="tokens per chunk")
    a.add_argument("--overlap", type=int, default=32, help="tokens shared by adjacent chunks")
    a.add_argument("--batch-size", type=int, default=256, help="chunks per embed+write step")
    a.add_argument("--dimensions", type=int, help="Matryoshka size to store")
    a.add_argument("--cache", help="embedding cache file (default: inside a LanceDB folder)")
    a.add_argument("--ann", action="store_true",
                   help="build an approximate (IVF-HNSW) index after ingesting")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("search", help="top-k chunks for queries")
    _store_arguments(s)
    s.add_argument("queries", nargs="*", help="query texts")
    s.add_argument("--queries-file", help="more queries: .txt (one per line), .csv or .jsonl")
    s.add_argument("--query-field", default="query", help="csv/jsonl query column")
    add_model_arguments(s, required=False)
    s.add_argument("-k", type=int, default=10, help="hits per query")
    s.add_argument("--where", action="append", help="filter: key=value, key>=n (repeatable)")
    s.add_argument("--instruction", help="query instruction or preset ('' for none)")
    s.add_argument("--mmr", action="store_true", help="diversify with maximal marginal relevance")
    s.add_argument("--mmr-lambda", type=float, default=0.5, help="1 = relevance, 0 = diversity")
    s.add_argument("--fetch-k", type=int, default=50, help="MMR candidates")
    s.add_argument("--approximate", action="store_true", help="use the ANN index if built")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.add_argument("--output", "-o", help="write hit rows to .csv or .jsonl instead")

    d = sub.add_parser("delete", help="delete documents' chunks by id and/or filter")
    _store_arguments(d)
    d.add_argument("--doc-id", action="append", help="document id (repeatable)")
    d.add_argument("--where", action="append", help="filter: key=value, key>=n (repeatable)")


def run(args: argparse.Namespace) -> int:
    from smysl.toolkit.store import StoreConfig

    store = StoreConfig.parse(args.index, table=args.table)
    return {"add": _add, "search": _search, "delete": _delete}[args.action](args, store)


def _add(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.cache import CacheConfig
    from smysl.toolkit.chunking import ChunkConfig
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.ingest import IngestConfig, ReadConfig

    model = load_model(args.model, args)
    config = IndexConfig(store=store,
                         cache=CacheConfig(Path(args.cache) if args.cache else None),
                         dimensions=args.dimensions)
    read = ReadConfig(text_field=args.text_field, id_field=args.id_field,
                      metadata_fields=tuple(f.strip() for f in args.meta_fields.split(","))
                      if args.meta_fields else None)
    ingest = IngestConfig(chunk=ChunkConfig(max_tokens=args.chunk_tokens, overlap=args.overlap),
                          batch_size=args.batch_size, dimensions=args.dimensions,
                          progress=progress(args))
    with Index.create_or_open(model, config, model_spec=args.model) as index:
        report = index.add_files(args.paths, read, ingest)
        print(report.summary() + f"; index holds {index.count()} chunks", file=sys.stderr)
        if args.ann:
            print("approximate index built" if index.store.build_index() else
                  "no approximate index (too few rows, or the store is exact); searches stay "
                  "exact", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.io import iter_rows, write_rows
    from smysl.toolkit.search import SearchConfig, format_json, format_table, hits_to_rows

    queries = list(args.queries)
    if args.queries_file:
        if args.queries_file.endswith(".txt"):
            queries += [q for q in Path(args.queries_file).read_text(encoding="utf-8")
                        .splitlines() if q.strip()]
        else:
            queries += [str(r[args.query_field]) for r in iter_rows(args.queries_file)]
    if not queries:
        raise ValueError("give queries as arguments or with --queries-file")
    model = load_model(args.model or Index.stored_model(store), args)
    config = SearchConfig(k=args.k, instruction=args.instruction,
                          where=parse_where(args.where), exact=not args.approximate,
                          mmr=args.mmr, mmr_lambda=args.mmr_lambda, fetch_k=args.fetch_k)
    with Index.create_or_open(model, IndexConfig(store=store), create=False) as index:
        results = index.search(queries, config)
    if args.output:
        write_rows(args.output, hits_to_rows(queries, results))
    else:
        print(format_json(queries, results) if args.format == "json"
              else format_table(queries, results))
    return 0


def _delete(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.stores import open_store

    where = parse_where(args.where) or {}
    if not args.doc_id and not where:
        raise ValueError("give --doc-id and/or --where")
    if args.doc_id:
        if "doc_id" in where:
            raise ValueError("give document ids either with --doc-id or in --where")
        where["doc_id"] = list(args.doc_id)
    with open_store(store) as s:
        n = s.delete(where=where)
        print(f"deleted {n} chunks; {s.count()} left", file=sys.stderr)
    return 0
