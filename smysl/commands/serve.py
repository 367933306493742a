"""``smysl serve``: an OpenAI-, Ollama- and TEI-compatible embedding server."""

from __future__ import annotations

import argparse
import sys

from smysl.commands._model import add_model_arguments, model_options
from smysl.options import FLAGS

HELP = "serve a model over OpenAI-, Ollama- and TEI-compatible HTTP APIs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $SMYSL_API_KEY, else none)")
    p.add_argument("--served-name", default=None, help="extra model name clients may send")
    p.add_argument("--dimensions", type=int, default=None,
                   help="default output size when a request names none (Matryoshka)")
    p.add_argument("--max-batch-requests", type=int, default=256)
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long an idle-time request waits for companions")
    p.add_argument("--max-queue", type=int, default=512,
                   help="requests waiting for compute before 429")
    p.add_argument("--max-inputs", type=int, default=2048, help="inputs per request")
    p.add_argument("--max-request-mb", type=float, default=16.0, help="request body limit")
    p.add_argument("--allow-empty-input", action="store_true",
                   help="embed empty strings (EOS alone) instead of answering 400")
    p.add_argument("--switch-interval-ms", type=float, default=1.0,
                   help="GIL switch interval while serving (0 = Python's default 5 ms)")
    p.add_argument(FLAGS["process"], action="store_true",
                   help="run a local model's engine in the server process instead of a child "
                        "process (the child has its own GIL: the event loop does not slow "
                        "the forward passes)")


def run(args: argparse.Namespace) -> int:
    from smysl.server import ServerConfig, serve

    config = ServerConfig.from_env(
        host=args.host, port=args.port, api_key=args.api_key, served_name=args.served_name,
        max_batch_tokens=args.max_batch_tokens, max_batch_requests=args.max_batch_requests,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        default_dimensions=args.dimensions, allow_empty=args.allow_empty_input,
        switch_interval_s=args.switch_interval_ms / 1000 if args.switch_interval_ms else None)

    from smysl.registry import load, scheme_of

    options = model_options(args)
    if args.in_process or "process" in scheme_of(args.model).options:
        # a local engine runs in a child process unless asked not to: the event loop would
        # otherwise compete with the forward passes for the GIL (docs/bench-notes/server.md);
        # a remote model rejects --in-process
        options = options.replace(process=not args.in_process)
    model = load(args.model, options)
    name = config.served_name or model.name
    info = model.info()
    print(f"smysl serve: loaded {model.name!r} ({info.backend}, {info.dimensions} dims, "
          f"max {info.max_tokens} tokens) as {name!r}"
          + (f"; engine in child process {info.process}" if info.process else ""),
          file=sys.stderr)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"smysl serve: listening on http://{host}:{config.port} — OpenAI /v1/embeddings, "
          "Ollama /api/embed, TEI /embed, metrics /metrics"
          + ("; API key required" if config.api_key else ""), file=sys.stderr)
    try:
        serve(model, config)
    finally:
        model.close()
    return 0
