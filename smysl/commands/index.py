"""``smysl index add|search|delete``: a persistent semantic index (LanceDB folder or Qdrant)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smysl.commands import HelpFormatter, count, examples, given
from smysl.commands._lines import read_lines
from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_rerank_arguments,
    column,
    load_rerank_model,
    parse_where,
    progress,
    rerank_settings,
)
from smysl.tokenize import InputTooLongError

if TYPE_CHECKING:
    from smysl.toolkit.store import StoreConfig

HELP = "build, search, check and prune a semantic index (add | search | verify | delete)"

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl index add kb docs/ --model qwen3-embedding:0.6b",
     "txt/md/csv/jsonl files into the LanceDB folder kb/"),
    ("smysl index add kb docs/ --model qwen3-embedding:0.6b --prune",
     "also delete what docs/ no longer holds"),
    ("smysl index add postgres://me@db/kb docs/ --model qwen3-embedding:0.6b",
     "into PostgreSQL (pgvector)"),
    ("smysl index search kb \"how do I reset my password?\" -k 5",
     "the 5 nearest chunks"),
    ("smysl index search kb \"артикул 4417-БК\" --mode hybrid",
     "meaning and words"),
    ("smysl index search kb \"...\" --rerank Qwen/Qwen3-Reranker-0.6B --format context",
     "a RAG context"),
    ("smysl index verify kb",
     "check every stored vector"),
    ("smysl index delete kb --doc-id /abs/path/faq.csv:12",
     "one document's chunks"),
)



def _table_file(path: str) -> bool:
    """Whether ``path`` names a table the toolkit reads (.csv, .jsonl, .json; ``-``: JSONL)."""
    from smysl.toolkit.io import table_format

    try:
        table_format(path)
    except ValueError:
        return False
    return True


def _lines_file(path: str) -> bool:
    """Whether ``--queries-file`` holds a query per line (a .txt file; ``-`` is JSONL rows on
    stdin, as every toolkit table input reads it)."""
    return path.endswith(".txt")

def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="LanceDB folder, lancedb:PATH, qdrant:URL|PATH|:memory:, "
                                  "or postgres:DSN (HNSW settings as DSN parameters, e.g. "
                                  "?index=binary&m=32&ef_search=100; see docs/scale.md)")
    p.add_argument("--table", default="chunks", help="table / collection name (default: chunks)")


def _examples(action: str) -> str:
    return examples([e for e in EXAMPLES if e[0].startswith(f"smysl index {action} ")])


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = sub.add_parser("add", help="ingest txt/md/csv/jsonl files or folders",
                       epilog=_examples("add"), formatter_class=HelpFormatter)
    _store_arguments(a)
    a.add_argument("paths", nargs="+", help="files or folders")
    add_model_arguments(a)
    a.add_argument("--text-field", default="text", help="csv/jsonl text column")
    a.add_argument("--id-field", help="csv/jsonl document id column (default: FILE-ID:row)")
    a.add_argument("--root", help="ids are file paths relative to this folder (default: "
                                  "absolute paths, so the same file always has the same id)")
    a.add_argument("--strict", action="store_true",
                   help="stop at the first binary or non-UTF-8 file (default: skip and list it)")
    a.add_argument("--rebuild", action="store_true",
                   help="delete everything in the index first (e.g. to switch models)")
    a.add_argument("--prune", action="store_true",
                   help="once every file is in, delete the documents these files and folders "
                        "no longer hold (files removed from a folder, rows from a CSV/JSONL)")
    a.add_argument("--meta-fields", help="comma-separated columns to keep (default: all)")
    a.add_argument("--chunk-tokens", type=int, default=256, help="tokens per chunk")
    a.add_argument("--overlap", type=int, default=32, help="tokens shared by adjacent chunks")
    a.add_argument("--batch-size", type=count, default=256, help="chunks per embed+write step")
    a.add_argument("--dimensions", type=int, help="Matryoshka size to store")
    a.add_argument("--cache", help="embedding cache file (default: inside a LanceDB folder)")
    a.add_argument("--ann", action="store_true",
                   help="build an approximate (IVF-HNSW) index after ingesting")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("search", help="top-k chunks for queries",
                       epilog=_examples("search"), formatter_class=HelpFormatter)
    _store_arguments(s)
    s.add_argument("queries", nargs="*", help="query texts (before or after the options)")
    s.set_defaults(_rest="queries")
    s.add_argument("--queries-file", help="more queries: .txt (one per line), .csv, .jsonl or "
                                           ".json (- : JSONL rows on stdin)")
    s.add_argument("--query-field", help="--queries-file csv/jsonl: query column (default: "
                                          "query)")
    add_model_arguments(s, required=False)
    s.add_argument("-k", type=int, default=10, help="hits per query")
    s.add_argument("--mode", choices=["vector", "hybrid", "text"], default="vector",
                   help="rank by the query's embedding (vector), by its words (text: BM25 "
                        "over Russian/English stems, finds exact names and numbers; loads no "
                        "model unless --model is given), or both fused by reciprocal rank "
                        "(hybrid)")
    s.add_argument("--text-weight", type=float, default=None,
                   help="--mode hybrid: the weight of the word ranking against the vector "
                        "ranking's 1 (more where words matter more, or the model is weak in "
                        "the language; default 1)")
    s.add_argument("--where", action="append", help="filter: key=value, key>=n (repeatable)")
    s.add_argument("--instruction", help="query instruction or preset ('' for none)")
    s.add_argument("--truncate", action="store_true",
                   help="cut a query longer than the model takes (default: refuse it)")
    s.add_argument("--mmr", action="store_true", help="diversify with maximal marginal relevance")
    s.add_argument("--mmr-lambda", type=float, default=None,
                   help="with --mmr: 1 = relevance, 0 = diversity (default 0.5)")
    s.add_argument("--fetch-k", type=int, default=None,
                   help="MMR candidates; --mode hybrid: candidates of each ranking (default 50)")
    s.add_argument("--approximate", action="store_true", help="use the ANN index if built")
    s.add_argument("--per-document", type=int, default=None, metavar="N",
                   help="at most N chunks of one document among the hits (and the "
                        "candidates of --mmr and --rerank), so that one long document does "
                        "not fill them all (looked for among the 20,000 nearest chunks)")
    add_rerank_arguments(s)
    s.add_argument("--format", choices=["table", "json", "context"], default=None,
                   help="table, json (one line per query), or context: the numbered chunk "
                        "texts of a RAG prompt (default table)")
    s.add_argument("--context-chars", type=int, default=None, metavar="N",
                   help="--format context: most characters per query (default 8000)")
    s.add_argument("--output", "-o", help="write hit rows to .csv, .jsonl or .json instead")

    v = sub.add_parser("verify", help="check every stored vector (exit 1 when any is damaged); "
                                      "loads no model unless --model is given",
                       epilog=_examples("verify"), formatter_class=HelpFormatter)
    _store_arguments(v)
    add_model_arguments(v, required=False)

    d = sub.add_parser("delete", help="delete the chunks that meet every condition given: "
                                      "one of the --doc-id ids, and every --where",
                       epilog=_examples("delete"), formatter_class=HelpFormatter)
    _store_arguments(d)
    d.add_argument("--doc-id", action="append",
                   help="document id (repeatable: any of them)")
    d.add_argument("--where", action="append",
                   help="filter: key=value, key>=n (repeatable: all of them, and the --doc-id)")


def run(args: argparse.Namespace) -> int:
    from smysl.toolkit.store import StoreConfig

    store = StoreConfig.parse(args.index, table=args.table)
    return {"add": _add, "search": _search, "verify": _verify,
            "delete": _delete}[args.action](args, store)


def _add(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.cache import CacheConfig
    from smysl.toolkit.chunking import ChunkConfig, chunker_for
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.ingest import (
        IngestConfig,
        ReadConfig,
        SeenIds,
        iter_paths,
        read_documents,
    )

    if store.backend == "memory" or (store.backend == "qdrant" and store.uri == ":memory:"):
        # it said "index holds 2 chunks", exit 0, and they were gone when the command ended
        print(f"smysl index: warning: {args.index} keeps the index in this process's memory: "
              "it is gone when the command ends; give a folder (or a server) to keep it",
              file=sys.stderr)
    if args.chunk_tokens < 2:  # ChunkConfig's message names its field, not the flag
        raise ValueError(f"--chunk-tokens must be >= 2, got {args.chunk_tokens}")
    model = load_model(args.model, args)
    config = IndexConfig(store=store,
                         cache=CacheConfig(Path(args.cache) if args.cache else None),
                         dimensions=args.dimensions)
    read = ReadConfig(text_field=args.text_field, id_field=args.id_field,
                      metadata_fields=tuple(f.strip() for f in args.meta_fields.split(","))
                      if args.meta_fields else None,
                      root=Path(args.root) if args.root else None, strict=args.strict)
    ingest = IngestConfig(chunk=ChunkConfig(max_tokens=args.chunk_tokens, overlap=args.overlap),
                          batch_size=args.batch_size, dimensions=args.dimensions,
                          progress=progress(args))
    with warnings.catch_warnings():  # a capped size is said once, when the files are added
        warnings.simplefilter("ignore")
        # chunk settings the model refuses (an overlap that leaves no room once EOS is
        # counted): before an index is made or emptied
        chunker = chunker_for(model, ingest.chunk)

    def read_all(*, chunk: bool) -> None:
        # every input read once first: a path, field, content error, a repeated id or a
        # --meta-fields name no row has empties nothing, and makes no new index (one left
        # empty was bound to the model it named); with ``chunk`` each text is cut too: a
        # character no chunk of this size holds emptied an index under --rebuild
        seen = SeenIds()
        for n, doc in enumerate(read_documents(args.paths, read, []), 1):
            seen.check(doc, n)
            if chunk:
                try:
                    for _ in chunker.iter_split(doc.text):
                        pass
                except ValueError as e:
                    raise ValueError(f"{doc.origin or doc.id}: {e}") from None

    if args.rebuild:
        read_all(chunk=True)
        opened = Index.create_or_open(model, config, rebuild=True)
    else:
        for _ in iter_paths(args.paths):  # a typo'd path: nothing opened
            pass
        try:  # an index there: a failure part-way keeps what was added; a rerun resumes
            opened = Index.create_or_open(model, config, create=False)
        except FileNotFoundError:
            read_all(chunk=True)  # the --meta-fields check among the rest, in one read
            opened = Index.create_or_open(model, config)
        else:
            if read.metadata_fields is not None:
                # its check comes once every row is read: batches written before it had lost
                # their other fields (an index's existing rows rewritten as {"lnag": null})
                try:
                    read_all(chunk=False)
                except BaseException:
                    with contextlib.suppress(Exception):  # the read's error is the one to see
                        opened.close()
                    raise
    with opened as index:
        for problem in index.problems:
            print(f"warning: {problem}", file=sys.stderr)
        given = index.add_terms()
        if given:
            print(f"gave {given} chunks of an earlier smysl their search terms (once)",
                  file=sys.stderr)
        with warnings.catch_warnings():  # the library's warnings as one plain line each
            warnings.showwarning = lambda message, *_, **__: print(
                f"smysl index: warning: {message}", file=sys.stderr)
            try:
                report = index.add_files(args.paths, read, ingest, prune=args.prune)
            except KeyboardInterrupt:  # exit status 130 (smysl.cli)
                with contextlib.suppress(OSError, ValueError):  # stderr's reader gone too
                    print("smysl index: interrupted; what was added is kept, and the same "
                          "command again adds the rest", file=sys.stderr)
                raise
        first, _, rest = report.summary().partition("\n")
        print(f"{first}; index holds {index.count()} chunks" + (f"\n{rest}" if rest else ""),
              file=sys.stderr)
        if args.ann:
            print("approximate index built" if index.store.build_index() else
                  "no approximate index (too few rows, or the store is exact); searches stay "
                  "exact", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.index import Index, IndexConfig, search_words
    from smysl.toolkit.io import check_output, iter_rows, write_rows
    from smysl.toolkit.search import (
        SearchConfig,
        build_context,
        check_queries,
        format_json,
        format_table,
        hits_to_rows,
    )

    _refuse_unused_search(args)
    if args.output:
        check_output(args.output)
    queries = list(args.queries)
    if args.queries_file:
        lines = _lines_file(args.queries_file)
        if Path(args.queries_file).is_dir() or not (lines or _table_file(args.queries_file)):
            raise ValueError(f"--queries-file {args.queries_file}: give a .txt file (a query "
                             f"per line) or a .csv/.jsonl file")
        if lines:
            queries += [q for q in read_lines(args.queries_file, "--queries-file") if q.strip()]
        else:
            try:
                queries += [str(q) for q in column(iter_rows(args.queries_file),
                                                   args.query_field or "query",
                                                   args.queries_file, "--query-field")]
            except OSError as e:  # named by the flag, as a .txt file's errors are
                raise ValueError(f"--queries-file {args.queries_file}: "
                                 f"{e.strerror or e}") from None
    if not queries:
        raise ValueError(f"--queries-file {args.queries_file}: no query in it" if
                         args.queries_file else "give queries as arguments or with "
                         "--queries-file")
    check_queries(queries)  # before the model loads
    if args.context_chars is not None and (args.format != "context" or args.context_chars < 1):
        raise ValueError("--context-chars takes a positive number and goes with --format "
                         "context")
    if args.per_document is not None and args.per_document < 1:
        raise ValueError(f"--per-document takes a number of chunks >= 1, got "
                         f"{args.per_document}")
    if args.format == "context" and args.output:
        raise ValueError("--format context prints to stdout; drop --output")
    config = SearchConfig(k=args.k, mode=args.mode, instruction=args.instruction,
                          where=parse_where(args.where), exact=not args.approximate,
                          mmr=args.mmr, truncate=args.truncate,
                          **given(args, text_weight="text_weight",
                                                mmr_lambda="mmr_lambda", fetch_k="fetch_k",
                                                per_document="per_document"),
                          **rerank_settings(args))
    with contextlib.ExitStack() as stack:
        reranker = (stack.enter_context(load_rerank_model(args.rerank, args))
                    if args.rerank else None)
        if args.mode == "text" and not args.model:  # by words: no weights to load
            results, damaged = search_words(store, queries, config, reranker=reranker)
        else:
            model = load_model(args.model or Index.stored_model(store), args)
            index = stack.enter_context(
                Index.create_or_open(model, IndexConfig(store=store), create=False))
            for problem in index.problems:
                print(f"warning: {problem}", file=sys.stderr)
            try:
                results = index.search(queries, config, reranker=reranker)
            except InputTooLongError as e:  # named as given: from 1, with its words
                shown = queries[e.index][:40] + ("…" if len(queries[e.index]) > 40 else "")
                raise ValueError(e.describe(f"query {e.index + 1} ({shown!r})",
                                            audience="cli")) from None
            damaged = index.damaged
        spent = reranker.usage_report() if reranker is not None else None
        if spent:
            print(f"reranker: {spent}", file=sys.stderr)
        if damaged:
            shown = ", ".join(f"{i} ({p})" for i, p in list(damaged.items())[:5])
            print(f"warning: {len(damaged)} damaged stored vectors left out of the results: "
                  f"{shown}; run `smysl index add` on the same files to repair them",
                  file=sys.stderr)
    if args.output:
        write_rows(args.output, hits_to_rows(queries, results))
    elif args.format == "context":
        chars = 8000 if args.context_chars is None else args.context_chars
        contexts = [build_context(hits, max_chars=chars) for hits in results]
        print(contexts[0] if len(queries) == 1 else "\n\n".join(
            f"query: {q}\n\n{c}" for q, c in zip(queries, contexts, strict=True)))
    else:
        print(format_json(queries, results) if args.format == "json"
              else format_table(queries, results))
    if config.where and not any(results):  # a misspelt field matched nothing, silently
        for problem in _unmatched(store, config.where):
            print(f"smysl index: warning: {problem}", file=sys.stderr)
    return 0


def _unmatched(store: StoreConfig, where: Mapping[str, Any]) -> list[str]:
    """Why a search with ``--where`` found nothing, where the index can say: empty, or a
    field's conditions that alone match no chunk (a field name misspelt, a value of another
    type)."""
    from smysl.toolkit.stores import open_store

    with open_store(store) as s:
        if not s.count():
            return ["the index holds no chunks"]
        alone = [f"no chunk in the index meets the --where condition on {key!r} (no field of "
                 f"that name, or no such value)"
                 for key, cond in where.items() if not s.count(where={key: cond})]
        if alone or len(where) == 1 or s.count(where=where):
            return alone
        return [f"each --where condition is met by some chunk, but none meets all "
                f"{len(where)} together"]


def _refuse_unused_search(args: argparse.Namespace) -> None:
    """Search flags the other flags make ignored are an error: an option never silently does
    nothing."""
    pairs = [("--mmr-lambda", args.mmr_lambda is not None and not args.mmr, "goes with --mmr"),
             ("--fetch-k", args.fetch_k is not None and not (args.mmr or args.mode == "hybrid"),
              "goes with --mmr or --mode hybrid"),
             ("--text-weight", args.text_weight is not None and args.mode != "hybrid",
              "goes with --mode hybrid"),
             ("--query-field", args.query_field is not None and not (
                 args.queries_file and not _lines_file(args.queries_file)),
              "names the column of a .csv/.jsonl --queries-file"),
             ("--format", args.format is not None and args.format != "context"
              and args.output is not None, "is for stdout; --output writes rows by its suffix"),
             ("--instruction", args.instruction is not None and args.mode == "text",
              "is for the query's embedding; --mode text ranks by its words"),
             ("--approximate", args.approximate and args.mode == "text",
              "is the vector ranking's; --mode text ranks by words"),
             ("--truncate", args.truncate and args.mode == "text",
              "cuts the query's embedding; --mode text ranks by its words")]
    for flag, unused, why in pairs:
        if unused:
            raise ValueError(f"{flag} does nothing here: it {why}")


def _verify(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.index import Index, IndexConfig, verify_store

    if args.model:  # also: was the index built with this model? (refused if not)
        Index.create_or_open(load_model(args.model, args), IndexConfig(store=store),
                             create=False).close()
    found = verify_store(store)  # the records alone: no model loaded
    for record, problem in found.damaged.items():
        print(f"damaged {record}: {problem}")
    for problem in found.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{len(found.damaged)} of {found.total} records damaged"
          + ("; run `smysl index add` on the same files to repair them" if found.damaged
             else ""), file=sys.stderr)
    return 1 if found.damaged or found.problems else 0


def _delete(args: argparse.Namespace, store: StoreConfig) -> int:
    from smysl.toolkit.index import record_count
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
        record_count(s)
        print(f"deleted {n} chunks; {s.count()} left", file=sys.stderr)
        if n == 0 and args.doc_id:
            # an id as the file was named, not as it was added (relative to --root): "deleted
            # 0 chunks" and exit 0 read as done
            sample = next(iter(s.scan(3, with_vectors=False)), [])
            seen = sorted({str(r.payload.get("doc_id")) for r in sample})
            print(f"smysl index delete: warning: no chunk has the document id(s) "
                  f"{', '.join(map(repr, args.doc_id[:3]))}"
                  + (" and matches --where" if args.where else "")
                  + (f"; ids in this index look like {', '.join(map(repr, seen))} (a file "
                     "added with --root is named relative to it)" if seen else ""),
                  file=sys.stderr)
    return 0
