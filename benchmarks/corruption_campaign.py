"""Corruption campaign (issue 11): random byte flips in an index's files, and what gets served.

A tiny random Qwen3 checkpoint embeds a small corpus into a LanceDB index with its embedding
cache. Each trial copies that known-good index to a fresh folder, flips one random byte (XOR
with a random non-zero mask) in one randomly chosen file — the SQLite cache, a Lance data file,
manifest or transaction file, or the ``.smysl.json`` metadata — then:

1. embeds the corpus through the cache and compares every row with the known-good vector;
2. opens the index and runs searches, comparing every hit (id, text, score) with the
   known-good vectors, and the hits with the known-good top k: a good hit may be missing only
   when damage was found — by the search, by the index at opening (fewer records than it wrote:
   a damaged manifest drops fragments silently), or by :meth:`Index.verify` (a full scan,
   ``smysl index verify``: a damaged vector whose score fell out of the top k is never a hit);
3. when damage was reported, ingests the corpus again and checks that the index is whole.

Outcomes: ``wrong served`` (a row or hit that differs from the known-good one: must be 0),
``recomputed`` (damaged cache entries re-embedded), ``reported`` (damaged records left out of
results and named, or an unreadable cache reported), ``repaired`` (the rerun made it whole),
``clear error`` (one line naming the file or folder), ``unclear error`` (anything else: must be
0), ``lost unreported`` (a good hit missing and no damage found: must be 0), ``no effect``
(the byte was not read, or the change did not matter).

    .venv/bin/python benchmarks/corruption_campaign.py            # 1,000 flips, a few minutes
    .venv/bin/python benchmarks/corruption_campaign.py --flips 100 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qwen_tiny import build_tiny

from smysl import Embedder
from smysl.toolkit.cache import CachedEmbedder, EmbeddingCache
from smysl.toolkit.chunking import ChunkConfig
from smysl.toolkit.index import CACHE_FILE, Index, IndexConfig
from smysl.toolkit.ingest import IngestConfig
from smysl.toolkit.search import SearchConfig
from smysl.toolkit.store import StoreConfig

WORDS = ["river", "stone", "light", "paper", "garden", "window", "engine", "music", "winter",
         "harbor", "signal", "forest", "copper", "thread", "orbit", "lantern", "meadow"]
# One batch: the golden index has one live data file (no stale pre-compaction copies).
INGEST = IngestConfig(chunk=ChunkConfig(max_tokens=64, overlap=8), batch_size=1024)
OUTCOMES = ["no effect", "recomputed", "reported", "repaired", "clear error", "unclear error",
            "lost unreported", "wrong served"]


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(10)) + "." for i in range(n)]


def index_ids(texts: list[str]) -> list[str]:
    """Document ids that are the texts' indexes (hits are mapped back to rows by them)."""
    return [str(i) for i in range(len(texts))]


def kind(path: Path) -> str:
    if path.name.startswith(CACHE_FILE):
        return "cache (sqlite)"
    if path.suffix == ".json":
        return "meta/hint (json)"
    return {".lance": "lance data", ".manifest": "lance manifest", ".txn": "lance txn"}.get(
        path.suffix, "lance other")


class Campaign:
    def __init__(self, work: Path, texts: list[str], queries: list[str], k: int) -> None:
        self.work = work
        self.texts = texts
        self.queries = queries
        self.k = k
        self.model = Embedder.load(str(build_tiny(work / "tiny").path), device="cpu")
        self.golden = work / "golden"
        with Index.create_or_open(self.model, self.config(self.golden)) as ix:
            ix.add_texts(texts, index_ids(texts), config=INGEST)  # ids: the texts' indexes
            assert ix.count() == len(texts), "one chunk per text"
            self.good_q = ix.embed_queries(queries)
        self.good = self.model.embed(texts, truncate=True)  # known-good rows, by text index
        scores = self.good_q @ self.good.T
        self.good_rank = [list(np.argsort(-s, kind="stable")) for s in scores]
        # the metadata's lock file is empty: nothing in it to flip
        self.files = sorted(p.relative_to(self.golden) for p in self.golden.rglob("*")
                            if p.is_file() and p.stat().st_size > 0)
        self.by_kind: dict[str, list[Path]] = collections.defaultdict(list)
        for f in self.files:
            self.by_kind[kind(f)].append(f)

    @staticmethod
    def config(folder: Path) -> IndexConfig:
        return IndexConfig(StoreConfig(uri=str(folder)))

    def trial(self, n: int, rng: random.Random) -> tuple[str, str, str]:
        folder = self.work / f"t{n}"
        shutil.copytree(self.golden, folder)  # a fresh path: no reader caches the old bytes
        # A kind of file, then a file of that kind: every kind gets its share of flips.
        rel = rng.choice(self.by_kind[rng.choice(sorted(self.by_kind))])
        path = folder / rel
        data = bytearray(path.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        try:
            outcome, note = self.check(folder)
            return kind(rel), outcome, note
        except ValueError as e:  # the errors the CLI prints as one line
            text = str(e)
            clear = "\n" not in text and (str(folder) in text or "fingerprint" in text)
            return kind(rel), "clear error" if clear else "unclear error", text
        except Exception as e:  # counting every failure is the point
            return kind(rel), "unclear error", f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def check(self, folder: Path) -> tuple[str, str]:
        outcome = "no effect"
        cache = EmbeddingCache(folder / CACHE_FILE)
        try:
            ce = CachedEmbedder(self.model, cache)
            rows = ce.embed(self.texts)
            if np.abs(rows - self.good).max() > 1e-5:
                return "wrong served", "cached embed returned a wrong row"
            if ce.recomputed:
                outcome = "recomputed"
            if ce.problems:
                outcome = "reported"
        finally:
            cache.close()
        with Index.create_or_open(self.model, self.config(folder), create=False) as ix:
            results = ix.search(self.queries, SearchConfig(k=self.k))
            for q, hits in enumerate(results):
                for h in hits:
                    doc = int(h.id.split("#")[0]) if h.id.split("#")[0].isdigit() else -1
                    if not 0 <= doc < len(self.texts) or h.payload.get("text") != self.texts[
                            doc] or abs(h.score - float(self.good_q[q] @ self.good[doc])) > 1e-4:
                        return "wrong served", f"hit {h.id!r} score {h.score}"
                # The good top-k; a hit missing from it is fine only when damage was found:
                # damaged records, or records lost (fewer than the index wrote).
                got = [int(h.id.split("#")[0]) for h in hits]
                expect = [int(d) for d in self.good_rank[q]][:self.k]
                if got != expect and not _ties(self.good_q[q] @ self.good.T, got, expect) and \
                        not (ix.damaged or ix.problems or ix.verify()):
                    return "lost unreported", f"got {got}, expected {expect}"
            if ix.damaged or ix.problems:
                outcome = "reported"
                ix.add_texts(self.texts, index_ids(self.texts), config=INGEST)  # the rerun repairs
                ix.damaged.clear()
                again = ix.search(self.queries, SearchConfig(k=self.k))
                whole = (not ix.damaged and not ix.verify() and ix.count() == len(self.texts)
                         and all(
                    [int(h.id.split("#")[0]) for h in hits] == [int(d) for d in rank[:self.k]]
                    for hits, rank in zip(again, self.good_rank, strict=True)))
                outcome = "repaired" if whole else "reported"
        return outcome, ""


def _ties(scores: np.ndarray, got: list[int], expect: list[int]) -> bool:
    """Same hits up to the order of equal scores."""
    return sorted(got) == sorted(expect) and np.allclose(np.sort(scores[got]),
                                                         np.sort(scores[expect]), atol=1e-6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flips", type=int, default=1000, help="trials, one flipped byte each")
    p.add_argument("--texts", type=int, default=120, help="corpus size (one chunk each)")
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[tuple[str, str], str] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        camp = Campaign(Path(tmp), corpus(args.texts, args.seed),
                        [" ".join(rng.choice(WORDS) for _ in range(4))
                         for _ in range(args.queries)], args.k)
        print(f"index: {args.texts} chunks in {len(camp.files)} files; {args.flips} flips",
              file=sys.stderr)
        for n in range(args.flips):
            target, outcome, note = camp.trial(n, rng)
            table[target][outcome] += 1
            if note:
                examples.setdefault((outcome, target), note)
            if outcome in ("wrong served", "unclear error", "lost unreported"):
                print(f"trial {n} ({target}): {outcome}: {note}", file=sys.stderr)
    total: collections.Counter[str] = sum(table.values(), collections.Counter())
    width = max(len(o) for o in OUTCOMES)
    print(f"{'file hit':<18}{'flips':>7}" + "".join(f"{o:>{width + 2}}" for o in OUTCOMES))
    for target in [*sorted(table), "total"]:
        row = total if target == "total" else table[target]
        print(f"{target:<18}{sum(row.values()):>7}"
              + "".join(f"{row[o]:>{width + 2}}" for o in OUTCOMES))
    for (outcome, target), note in sorted(examples.items()):
        print(f"e.g. {outcome} ({target}): {note[:300]}")
    print(f"{args.flips} flips in {time.perf_counter() - start:.0f} s; wrong vectors served: "
          f"{total['wrong served']}, unclear errors: {total['unclear error']}")


if __name__ == "__main__":
    main()
