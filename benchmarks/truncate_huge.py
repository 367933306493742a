"""Truncating one huge line to the model's limit, or refusing it: time, peak memory and the
ids kept (or the count the refusal gives), per kind of text.

A text over ``limit * CUT_CHARS_PER_TOKEN`` characters is cut before it is tokenised and read
further only where no word end proves the kept tokens (``smysl.tokenize.CutProof``); refused
(``--refuse``, no truncation), one over ``COUNT_CHARS`` is counted only as far as proves it too
long. Each text runs in a process of its own (its peak memory its own). Run it from two
checkouts (``PYTHONPATH=OLD``) to compare; the printed hash of the ids must agree.

    python benchmarks/truncate_huge.py [--tokenizer ../shared/qwen3-tokenizer/tokenizer.json]
        [--mb 5] [--limit 32768] [--refuse]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"digits": "1234567890", "CJK, no punctuation": "语义搜索系统", "'word '": "word ",
         "Russian prose": "Москва — столица России. "}


def one(args: argparse.Namespace) -> None:
    from smysl.tokenize import InputTooLongError, Tokenizer

    tok = Tokenizer(args.tokenizer, max_tokens=args.limit)
    n = int(args.mb * 1_000_000)
    unit = UNITS[args.one]
    text = (unit * (n // len(unit) + 1))[:n]
    t = time.perf_counter()
    try:
        ids = tok.encode([text], truncate=not args.refuse)[0]
        said = f"{len(ids)} ids, crc32 " + format(
            zlib.crc32(b"".join(i.to_bytes(4, "little") for i in ids)), "08x")
    except InputTooLongError as e:
        bound = getattr(e, "at_least", False)  # a checkout before the bound: exact
        said = f"refused: {'at least ' if bound else ''}{e.tokens} tokens"
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{args.one}: {seconds:.2f} s, peak {peak:.2f} GiB, {said}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path,
                   default=ROOT.parent / "shared" / "qwen3-tokenizer" / "tokenizer.json")
    p.add_argument("--mb", type=float, default=5.0, help="characters of each text, millions")
    p.add_argument("--limit", type=int, default=32768, help="tokens kept")
    p.add_argument("--refuse", action="store_true", help="no truncation: the refusal")
    p.add_argument("--one", choices=list(UNITS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args)
        return
    for name in UNITS:
        subprocess.run([sys.executable, __file__, "--one", name, "--tokenizer",
                        str(args.tokenizer), "--mb", str(args.mb), "--limit", str(args.limit),
                        *(["--refuse"] if args.refuse else [])], check=True)


if __name__ == "__main__":
    main()
