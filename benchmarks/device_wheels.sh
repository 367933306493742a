#!/usr/bin/env bash
# Wheels of the server extra for the GPU machine (Python 3.12, no internet there): into .whl/
# (ignored), carried with `run` and installed there with --target /tmp/site (see gpu_check.py).
# uvloop and httptools matter: without them uvicorn falls back to asyncio's pure-Python loop and
# the h11 parser, and the server measures those instead of itself.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --no-deps -d .whl \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types typing-inspection opentelemetry-api==1.45.2 orjson==3.13.0 uvloop httptools \
  prometheus-client
ls .whl
