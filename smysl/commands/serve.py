"""``smysl serve``: an OpenAI-, Ollama- and TEI-compatible embedding server."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import TYPE_CHECKING, Literal

from smysl.commands import given
from smysl.commands._model import add_model_arguments, model_options
from smysl.options import ENGINE_PROCESSES, FLAGS

if TYPE_CHECKING:
    from smysl.base import ModelInfo
    from smysl.server import ServerConfig

HELP = "serve a model over OpenAI-, Ollama- and TEI-compatible HTTP APIs"

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl serve --model qwen3-embedding:0.6b",
     "http://127.0.0.1:8000: /v1/embeddings, /api/embed, /embed"),
    ("smysl serve --model Qwen/Qwen3-Embedding-4B --host 0.0.0.0 --api-key-file key.txt",
     "on the network, with a key"),
    ("smysl serve --model qwen3-embedding:0.6b --index kb/",
     "search in a browser at /ui"),
    ("smysl serve --model qwen3-embedding:0.6b --reranker Qwen/Qwen3-Reranker-0.6B",
     "and /rerank"),
    ("smysl serve --model openrouter:qwen/qwen3-embedding-8b",
     "a paid API behind one local endpoint"),
)

#: The model to serve when ``--model`` is not given (as TEI's ``MODEL_ID``).
MODEL_ENV = "SMYSL_MODEL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from smysl.server.config import ServerConfig
    add_model_arguments(p, required=False)  # else $SMYSL_MODEL
    p.add_argument("--host", default=None,
                   help="interface to bind (default: $SMYSL_HOST, else loopback 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="TCP port (default: $SMYSL_PORT, else 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $SMYSL_API_KEY, else "
                        "none; a key on the command line is visible to the machine's users: "
                        "prefer $SMYSL_API_KEY or --api-key-file)")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="read the key from FILE (its first line)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name clients reach the server by (the Host header); repeat "
                        "for more, '*' for any (default: on a loopback address localhost, "
                        "127.0.0.1 and [::1] only; elsewhere any)")
    p.add_argument("--served-name", "--served-model-name", dest="served_name", default=None,
                   help="extra model name clients may send (--served-model-name: TEI's and "
                        "vLLM's spelling)")
    p.add_argument("--cors-allow-origin", action="append", metavar="ORIGIN",
                   help="let pages of this origin (https://app.example; '*' for any) call the "
                        "server from a browser; repeat for more (default: none)")
    p.add_argument("--dimensions", type=int, default=None,
                   help="default output size when a request names none (Matryoshka)")
    d = ServerConfig()  # its defaults, named in the help: one home for each
    p.add_argument("--max-batch-requests", type=int, default=None,
                   help=f"requests one batch may serve (default {d.max_batch_requests})")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long an idle-time request waits for companions (default 2 ms; "
                        "0 for a model on a GPU)")
    p.add_argument("--max-queue", type=int, default=None,
                   help=f"requests waiting for compute before 429 (default {d.max_queue})")
    p.add_argument("--max-inputs", type=int, default=None,
                   help=f"inputs per request (default {d.max_inputs}, OpenAI's)")
    p.add_argument("--max-request-mb", type=float, default=None,
                   help=f"request body limit (default {d.max_request_bytes / 2**20:g})")
    p.add_argument("--max-request-tokens", type=int, default=None,
                   help=f"tokens one request may embed or tokenise, after truncation "
                        f"(default {d.max_request_tokens}, OpenAI's)")
    p.add_argument("--request-timeout-s", type=float, default=None,
                   help=f"time budget of one embedding request, then 504 (0 = none; default "
                        f"{d.request_timeout_s:g})")
    p.add_argument("--unhealthy-exit-s", type=float, default=None,
                   help="exit with status 3 once a model backend (the model's or the "
                        "reranker's) has been down this long, so a supervisor restarts the "
                        "server (0 = never; default 60 for a local model, never for a "
                        "remote API, whose outage a restart cannot fix)")
    p.add_argument("--allow-empty-input", action="store_true",
                   help="embed empty strings (EOS alone) instead of answering 400")
    p.add_argument("--token-ids", action="store_true",
                   help="accept token-id input on /v1/embeddings and TEI /embed as the "
                        "model's own token ids (default: refused, since an OpenAI client's ids "
                        "are tiktoken's, e.g. LangChain's OpenAIEmbeddings)")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="GIL switch interval while serving (0 = Python's default 5 ms; "
                        "default: 1 where a model computes in the server process "
                        "(--in-process), else Python's)")
    p.add_argument("--index", default=None,
                   help="a 'smysl index' location built with this model: POST /search and the "
                        "search box of /ui query it")
    p.add_argument("--index-table", default=None,
                   help="the table (collection) of --index to serve, as 'smysl index add "
                        "--table' named it (default: chunks)")
    p.add_argument("--index-threads", type=int, default=None,
                   help="threads per HTTP worker running --index searches at once, where the "
                        "store allows it (LanceDB, a Qdrant server; PostgreSQL: one "
                        "connection each; a local Qdrant folder and the memory store run one "
                        "search at a time; default 4)")
    p.add_argument("--reranker", default=None,
                   help="a reranker to serve at TEI /rerank, Cohere/Jina /v1/rerank and "
                        "Cohere /v2/rerank, with or without --model: a local Qwen3-Reranker "
                        "(directory or Hub id, e.g. Qwen/Qwen3-Reranker-0.6B; it takes "
                        "--device, --dtype and --threads, while --quantize and --revision stay "
                        "the embedding model's) or a remote one (cohere:, jina:, tei:URL, "
                        "smysl:URL ...; docs/reranker.md)")
    p.add_argument("--workers", type=workers_arg, default="auto",
                   help="HTTP worker processes sharing the one engine process (one answers "
                        "~1,000-2,000 short requests/s; a GPU embeds several times that). "
                        "Local models only (the model, the reranker or both), not with "
                        "--in-process. auto (the default): on CUDA half the CPUs, at most 8; "
                        "else 1")
    p.add_argument("--worker-stall-s", type=float, default=None,
                   help=f"with --workers: a worker whose event loop has not run for this long "
                        f"has its stacks logged and is restarted, since its share of the "
                        f"port's new connections would wait on it (at least 1; 0 = never; default "
                        f"{d.worker_stall_s:g})")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="no log line per request on stdout; start-up, warnings and "
                        "errors are still logged")
    p.add_argument(FLAGS["process"], action="store_true",
                   help="run a local model's engine in the server process instead of a child "
                        "process (the child has its own GIL: the event loop does not slow "
                        "the forward passes)")


def workers_arg(value: str) -> int | str:
    """``--workers``: a count >= 1, or ``auto``."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or auto, got {value!r}")
    return n


def unhealthy_exit_s(given: float | None) -> float | Literal["auto"] | None:
    """``--unhealthy-exit-s`` as :attr:`ServerConfig.unhealthy_exit_s`: 0 = never, not given =
    ``"auto"`` (each backend's own default: :func:`smysl.server.health.exit_after`)."""
    if given is None:
        return "auto"
    return given or None


def _refuse_unused(args: argparse.Namespace, model_name: str) -> None:
    """Flags of an embedding model given without one (a reranker-only server started, said
    it served --index's /search, and answered 404), and --index-* without --index: errors,
    as an option never silently does nothing."""
    from smysl.registry import RERANK_SHARED, rerank_scheme_of

    if args.index is None:
        named = [f for f, v in (("--index-table", args.index_table),
                                ("--index-threads", args.index_threads)) if v is not None]
        if named:
            raise ValueError(f"{' and '.join(named)} go(es) with --index")
    if model_name:
        return
    usable = rerank_scheme_of(args.reranker).options & RERANK_SHARED
    named = [f for f, v in (("--index", args.index is not None),
                            ("--dimensions", args.dimensions is not None),
                            ("--served-name", args.served_name is not None),
                            ("--token-ids", args.token_ids),
                            ("--allow-empty-input", args.allow_empty_input)) if v]
    named += [FLAGS[k] for k in model_options(args).given() if k not in usable]
    if named:
        raise ValueError(f"{', '.join(named)}: embedding-model flag(s), and no --model is "
                         f"served (the reranker keeps its own limits; it takes "
                         f"{', '.join(sorted(FLAGS[k] for k in usable)) or 'none of them'})")


def _server_config(args: argparse.Namespace, model_name: str,
                   index_settings: dict[str, object]) -> ServerConfig:
    from smysl.server import ServerConfig

    # flags in other units than their fields, converted where given (0: none)
    converted: dict[str, object] = {}
    if args.max_request_mb is not None:  # inf or nan: refused by the config's check
        mb = args.max_request_mb
        converted["max_request_bytes"] = int(mb * 1024 * 1024) if math.isfinite(mb) else mb
    if args.request_timeout_s is not None:
        converted["request_timeout_s"] = args.request_timeout_s or None
    if args.switch_interval_ms is not None:
        converted["switch_interval_s"] = args.switch_interval_ms / 1000 or None
    if args.worker_stall_s is not None:
        converted["worker_stall_s"] = args.worker_stall_s or None
    return ServerConfig.from_env(
        host=args.host, port=args.port, api_key=_api_key(args), served_name=args.served_name,
        max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
        **given(args, max_batch_requests="max_batch_requests", max_queue="max_queue",
                max_inputs="max_inputs", max_request_tokens="max_request_tokens"),
        **converted,
        unhealthy_exit_s=unhealthy_exit_s(args.unhealthy_exit_s),
        default_dimensions=args.dimensions, allow_empty=args.allow_empty_input,
        token_ids=args.token_ids,
        index=args.index, **index_settings,
        workers=1 if args.workers == "auto" else args.workers,
        access_log=args.access_log, cors_origins=tuple(args.cors_allow_origin or ()),
        allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None)


def _api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, or the first line of ``--api-key-file`` (not both)."""
    if args.api_key_file is None:
        return args.api_key
    if args.api_key is not None:
        raise ValueError("--api-key and --api-key-file both give the key: use one")
    try:
        with open(args.api_key_file, encoding="utf-8-sig") as f:  # a BOM is no part of it
            key = f.readline().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"--api-key-file {args.api_key_file}: no such file") from None
    except (IsADirectoryError, PermissionError) as e:
        raise type(e)(f"--api-key-file {args.api_key_file}: {e.strerror}") from None
    if not key:
        raise ValueError(f"--api-key-file {args.api_key_file}: its first line is empty")
    return key


#: The flag of each :class:`~smysl.server.ServerConfig` field, for its errors.
FIELD_FLAGS = {
    "port": "--port ($SMYSL_PORT)", "max_batch_tokens": "--max-batch-tokens",
    "max_batch_requests": "--max-batch-requests", "max_wait_ms": "--max-wait-ms",
    "max_queue": "--max-queue", "max_inputs": "--max-inputs",
    "max_request_bytes": "--max-request-mb", "max_request_tokens": "--max-request-tokens",
    "request_timeout_s": "--request-timeout-s", "unhealthy_exit_s": "--unhealthy-exit-s",
    "switch_interval_s": "--switch-interval-ms", "index": "--index",
    "index_table": "--index-table", "workers": "--workers", "worker_stall_s": "--worker-stall-s",
    "index_threads": "--index-threads", "served_name": "--served-name",
    "cors_origins": "--cors-allow-origin", "allowed_hosts": "--allowed-host",
}


def run(args: argparse.Namespace) -> int:
    from smysl.server import serve
    from smysl.server.config import API_KEY_ENV, InvalidServerSettings
    from smysl.server.ui import index_label

    model_name = args.model or os.environ.get(MODEL_ENV, "").strip()
    if not model_name and not args.reranker:
        raise ValueError(f"no model to serve: pass --model (or set ${MODEL_ENV}), --reranker, "
                         "or both")
    _refuse_unused(args, model_name)
    index_settings = given(args, index_table="index_table", index_threads="index_threads")
    try:
        config = _server_config(args, model_name, index_settings)
    except InvalidServerSettings as e:  # worded with the flags, not the Python fields
        raise InvalidServerSettings(e.fields, FIELD_FLAGS) from None
    if config.api_key is not None and args.api_key is None and args.api_key_file is None:
        # the server's own key, from $SMYSL_API_KEY: a smysl: model or reranker upstream read
        # the same variable and sent it there (a relay handed its credential on); that one
        # takes $SMYSL_REMOTE_API_KEY. Children get the key with the config, not the variable.
        os.environ.pop(API_KEY_ENV, None)
    if config.workers > 1 and (args.in_process or not ENGINE_PROCESSES):
        raise ValueError(f"--workers {config.workers} shares one engine process between the "
                         "workers: " + ("drop --in-process" if ENGINE_PROCESSES else
                                        "engine processes need Linux or macOS"))
    if config.workers > 1:  # refused before anything loads (checked again by the workers)
        from smysl.server.workers import check_index_workers

        check_index_workers(config)
    from smysl.server.workers import claim_port

    claim_port(config.host, config.port)  # before anything loads

    from smysl.registry import (
        load,
        load_reranker,
        rerank_scheme_of,
        reranker_options,
        scheme_of,
    )

    # each name by its own table: cohere: and jina: are reranker schemes only
    remote = [n for n, of in ((model_name, scheme_of), (args.reranker, rerank_scheme_of))
              if n and of(n).remote]
    if config.workers > 1 and remote:  # refused before anything loads
        raise ValueError(f"--workers {config.workers} shares local engine processes between the "
                         f"workers; {remote[0]!r} is a remote API: serve it with one worker")
    options = model_options(args)
    # a local engine runs in a child process unless asked not to (or it cannot: Windows): the
    # event loop would otherwise compete with the forward passes for the GIL
    # (docs/bench-notes/server.md); a remote model rejects --in-process
    child = not args.in_process and ENGINE_PROCESSES
    reranker = None
    if args.reranker:
        # placement flags only: the size flags are the embedding model's, the reranker keeps
        # its own limits (8,192 tokens); a local one runs in a child process like the model
        reranker = load_reranker(args.reranker, reranker_options(
            args.reranker, options.replace(process=child)))
        limit = (f"max {reranker.max_tokens} tokens" if reranker.max_tokens is not None
                 else "its API's own token limit")  # a remote one's is not known here
        print(f"smysl serve: loaded reranker {reranker.name!r} ({limit})", file=sys.stderr)
    model = None
    try:
        if model_name:
            if args.in_process or "process" in scheme_of(model_name).options:
                options = options.replace(process=child)
            model = load(model_name, options)
            name = config.served_name or model.name
            info = model.info()
            print(f"smysl serve: loaded {model.name!r} ({info.backend}, {info.dimensions} "
                  f"dims, max {info.max_tokens} tokens) as {name!r}"
                  + (f"; engine in child process {info.process}" if info.process else "")
                  + (f"; {facts}" if (facts := _engine_facts(info)) else ""),
                  file=sys.stderr)

        def listening(host: str, port: int) -> None:  # once it serves, not before
            where = f"[{host}]" if ":" in host else host
            routes = ("OpenAI /v1/embeddings, Ollama /api/embed, TEI /embed, metrics /metrics, "
                      "page /ui" if model else "metrics /metrics")
            print(f"smysl serve: listening on http://{where}:{port} — {routes}"
                  + (f", search /search over {index_label(config.index, config.index_table)}"
                     if config.index else "")
                  + (", rerank TEI /rerank, Cohere/Jina /v1/rerank, Cohere /v2/rerank"
                     if reranker else "")
                  + ("; API key required" if config.api_key else "")
                  + (f"; {config.workers} HTTP workers" if config.workers > 1 else ""),
                  file=sys.stderr,
                  flush=True)

        if args.workers == "auto":  # known once the models are loaded
            from smysl.server.workers import auto_workers, one_process_index

            served = [m.info() for m in (model, reranker) if m is not None]
            config = dataclasses.replace(config, workers=1 if one_process_index(config) else
                                         auto_workers([(i.device, i.process) for i in served]))
        if args.worker_stall_s and config.workers == 1:  # it would do nothing (0: "never")
            print("smysl serve: --worker-stall-s is not used with one HTTP worker (it restarts "
                  "a stalled one of several; see --workers)", file=sys.stderr)
        extra = {"reranker": reranker} if reranker is not None else {}
        return serve(model, config, ready=listening, **extra)
    finally:
        try:
            if model is not None:
                model.close()
        finally:  # the reranker's lanes too, whatever the model's close raised
            if reranker is not None:
                reranker.close()


def _engine_facts(info: ModelInfo) -> str:
    """How a local engine computes, and whether ``smysl tune``'s measurements apply: the
    engine logs them at INFO, which ``smysl serve`` does not show (docs/engine.md says they
    are said at load); empty for a remote model."""
    parts = [p for p in (info.device, info.dtype, info.quantization, info.kernel) if p]
    parts = list(dict.fromkeys(parts))  # int4 is both the quantization and the kernel
    if info.threads is not None:
        lanes = f" in {info.lanes} lanes" if info.lanes and info.lanes > 1 else ""
        parts.append(f"{info.threads} thread{'s' * (info.threads != 1)}{lanes}")
    if info.slice_tokens is not None:
        parts.append(f"slices of {info.slice_tokens} tokens "
                     + (f"(smysl tune, {info.tuned_at})" if info.tuned_at
                        else "(default: smysl tune measures them)"))
    return ", ".join(parts)
