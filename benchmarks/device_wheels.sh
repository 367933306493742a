#!/usr/bin/env bash
# Wheels of the server extra for the GPU machine (Python 3.12, no internet there): into .whl/
# (ignored), carried with `run` and installed there with --target /tmp/site (see gpu_check.py).
# uvloop and httptools matter: without them uvicorn falls back to asyncio's pure-Python loop and
# the h11 parser, and the server measures those instead of itself. annotated-doc: fastapi imports
# it; typing-extensions: pydantic-core 2.50 needs >= 4.16; gguf: tests/qwen3/test_gpu.py writes
# GGUF fixtures with it. gpu_check.py logs what it can and cannot import before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --no-deps -d .whl \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types typing-inspection opentelemetry-api==1.45.3 orjson==3.13.0 uvloop httptools \
  prometheus-client annotated-doc 'typing-extensions>=4.16' gguf==0.19.0
ls .whl
