"""Schema-driven fuzzing of a live ``smysl serve`` (loopback only) with the schemathesis CLI.

Every operation in ``/openapi.json`` gets ``--max-examples`` generated requests, valid and
invalid (``--mode all``), plus schemathesis' coverage and stateful phases; the one check that
matters here is ``not_a_server_error``: no input may produce a 5xx. The server runs with an API
key that schemathesis sends, so the routes behind auth are exercised too.

    .venv/bin/python benchmarks/fuzz_server.py --random tiny --max-examples 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import SHAPES, Server, build_random


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model")
    src.add_argument("--random", choices=sorted(SHAPES))
    p.add_argument("--random-dir", default=os.path.join(tempfile.gettempdir(), "smysl-bench"))
    p.add_argument("--max-examples", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=300, help="seconds for the whole run")
    args = p.parse_args(argv)

    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    model = args.model or str(build_random(args.random, Path(args.random_dir)))
    server = Server(model, "--api-key", "fuzz-key", "--max-inputs", "64", "--max-request-mb", "1",
                    "--threads", "1")
    try:
        server.wait_ready()
        cmd = [st, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
               "--mode", "all", "--max-examples", str(args.max_examples), "--seed",
               str(args.seed), "--header", "Authorization: Bearer fuzz-key", "--workers", "1",
               # a path parameter that may hold "/" makes hypothesis discard many candidates
               "--suppress-health-check", "filter_too_much"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, timeout=args.time_limit).returncode
        print(f"schemathesis exit code {rc} after {time.perf_counter() - t0:.0f} s; "
              f"server alive: {server.proc.poll() is None}")
    finally:
        server.stop()
        log = server.output()
        print(f"server 5xx lines in its log: {log.count(' 500 ') + log.count(' 503 ')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
