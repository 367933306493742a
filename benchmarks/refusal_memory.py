"""The server's memory while it refuses over-long texts: does it stay flat?

    .venv/bin/python benchmarks/refusal_memory.py [--requests 6] [--mb 2.4]

Starts ``smysl serve`` on loopback with a tiny random Qwen3 embedding model and a tiny
reranker (tests/qwen_tiny.py; memory here is the refusal's, not the weights'), sends
``--requests`` texts of ``--mb`` million characters ("слово " repeated, ~800K tokens at
2.4) to ``/v1/embeddings`` and as one document to ``/v1/rerank``, each refused (400: no
truncation asked), and prints the server's RSS after each; then 300 small requests.
Each refused text was held in an error cycle until a full collection (150-300 MB a request),
and tokenised whole to be counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT  # noqa: F401 - puts tests/ on the path
from qwen_tiny import build_tiny, build_tiny_reranker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--mb", type=float, default=2.4)
    ap.add_argument("--port", type=int, default=18391)
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny(Path(tmp) / "m").path
        reranker = build_tiny_reranker(Path(tmp) / "r").path
        smysl = str(Path(sys.executable).with_name("smysl"))
        server = subprocess.Popen(
            [smysl, "serve", "--model", str(model), "--reranker", str(reranker), "--port",
             str(args.port), "--threads", "1", "--no-access-log"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            assert server.stdout is not None
            for line in server.stdout:
                if "listening" in line:
                    break
            url = f"http://127.0.0.1:{args.port}"

            def rss() -> int:
                with open(f"/proc/{server.pid}/statm") as f:
                    return int(f.read().split()[1]) * 4096 // 2**20

            text = ("слово " * int(args.mb * 1e6 / 6 + 1))[: int(args.mb * 1e6)]
            for route, body in (("/v1/embeddings", {"input": text}),
                                ("/v1/rerank", {"query": "q", "documents": [text]})):
                seen = [rss()]
                for _ in range(args.requests):
                    r = httpx.post(url + route, json=body, timeout=120)
                    assert r.status_code == 400, r.text[:200]
                    seen.append(rss())
                print(f"{route}: server RSS MiB before and after each refusal: {seen}")
            for _ in range(300):
                httpx.post(url + "/v1/embeddings", json={"input": "x"})
            print(f"after 300 small requests: {rss()} MiB")
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)


if __name__ == "__main__":
    main()
