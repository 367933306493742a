"""The model flags every command shares, turned into one :class:`~smysl.options.ModelOptions`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from smysl.options import FLAGS, ModelOptions

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder

MODEL_HELP = ("checkpoint dir, Hub id, alias (qwen3-embedding:0.6b) or scheme:model "
              "(st:..., openrouter:..., tei:URL, ...)")


def add_model_arguments(p: argparse.ArgumentParser, *, model: bool = True,
                        required: bool = True) -> None:
    """``--model`` (unless ``model=False``) and the loading options (``smysl --help`` lists
    which backends use which; a backend rejects an option it cannot use)."""
    if model:
        p.add_argument("--model", required=required, help=MODEL_HELP)
    g = p.add_argument_group("model options (local engine unless noted)")
    g.add_argument(FLAGS["device"], default=None, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument(FLAGS["dtype"], default=None,
                   help="auto (default: on CPU bfloat16 for a bf16 checkpoint where the CPU "
                        "computes bf16 natively, else float32; bfloat16 on CUDA), float32, "
                        "bfloat16, float16")
    g.add_argument(FLAGS["quantize"], choices=["int8", "int4"], default=None,
                   help="int8: int8 layers, activations quantised per token on x86 (8 "
                        "bits on VNNI/AMX CPUs, 7 elsewhere; CPU, float32); int4: weights kept as "
                        "4-bit planes, a GGUF's blocks without re-quantising (CPU or CUDA, "
                        "bfloat16)")
    g.add_argument(FLAGS["threads"], type=int, default=None,
                   help="torch CPU threads (default: what smysl tune measured for this "
                        "path, else one per core)")
    g.add_argument(FLAGS["lanes"], type=int, default=None,
                   help="CPU: batches of a bulk call computed at once, each on threads/lanes "
                        "threads (default: what smysl tune measured, else 2 for an even "
                        "thread count, 1 for int4)")
    g.add_argument(FLAGS["max_tokens"], type=int, default=None,
                   help="most tokens per input, EOS included (local, st:, providers)")
    g.add_argument(FLAGS["max_batch_tokens"], type=int, default=None,
                   help="token budget of a forward pass or API request (default: the backend's)")
    g.add_argument(FLAGS["max_batch_size"], type=int, default=None,
                   help="most inputs per forward pass or API request")
    g.add_argument(FLAGS["revision"], default=None, help="Hub revision of a downloaded model")
    g.add_argument(FLAGS["cuda_graphs"], type=int, default=None, metavar="TOKENS",
                   help="CUDA: capture graphs for batches up to TOKENS tokens at load "
                        "(default 2048; 0: off)")
    g.add_argument(FLAGS["cuda_kernels"], dest="cuda_kernels", action="store_const", const=False,
                   default=None, help="CUDA: run the eager pass, not the fused Triton kernels")


def model_options(args: argparse.Namespace, **changes: object) -> ModelOptions:
    """The :class:`ModelOptions` of parsed flags (``changes`` override fields)."""
    fields = ("device", "dtype", "quantize", "threads", "lanes", "max_tokens", "max_batch_tokens",
              "max_batch_size", "revision", "cuda_graphs", "cuda_kernels")
    given = vars(args)
    values = {f: given[f] for f in fields}
    return ModelOptions(**values).replace(**changes)


def load_model(model: str, args: argparse.Namespace) -> BaseEmbedder:
    """Load ``model`` with the flags' options (through :func:`smysl.load`)."""
    from smysl.registry import load

    return load(model, model_options(args))
