"""Truncating one huge line to the model's limit: time and the ids kept, per kind of text.

A text over ``limit * CUT_CHARS_PER_TOKEN`` characters is cut before it is tokenised and read
further only where no word end proves the kept tokens (``smysl.tokenize.CutProof``). Run it
from two checkouts (``PYTHONPATH=OLD``) to compare; the printed hash of the ids must agree.

    python benchmarks/truncate_huge.py [--tokenizer ../shared/qwen3-tokenizer/tokenizer.json]
        [--mb 5] [--limit 32768]
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

from smysl.tokenize import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path,
                   default=ROOT.parent / "shared" / "qwen3-tokenizer" / "tokenizer.json")
    p.add_argument("--mb", type=float, default=5.0, help="characters of each text, millions")
    p.add_argument("--limit", type=int, default=32768, help="tokens kept")
    args = p.parse_args()
    tok = Tokenizer(args.tokenizer, max_tokens=args.limit)
    n = int(args.mb * 1_000_000)
    units = {"digits": "1234567890", "CJK, no punctuation": "语义搜索系统", "'word '": "word ",
             "Russian prose": "Москва — столица России. "}
    for name, unit in units.items():
        text = (unit * (n // len(unit) + 1))[:n]
        t = time.perf_counter()
        ids = tok.encode([text], truncate=True)[0]
        seconds = time.perf_counter() - t
        digest = zlib.crc32(b"".join(i.to_bytes(4, "little") for i in ids))
        print(f"{name}: {seconds:.2f} s, {len(ids)} ids, crc32 {digest:08x}")


if __name__ == "__main__":
    main()
