"""Single-machine scaling of the corpus job (issue 16): the same texts embedded in one process,
then on a local Ray cluster with 1 and 2 actors (one torch thread each), with a tiny random
Qwen3 model (hidden 512); every run's vectors must equal the single-process ones bit for bit.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--texts 10000] [--out r.json]``. The texts
are the ``answer`` column of ../shared/datasets/intents (train, then test).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qwen_tiny import build_tiny

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def texts(n: int) -> list[str]:
    out: list[str] = []
    for split in ("train", "test"):
        with open(DATASETS / "intents" / f"intents_{split}.csv", encoding="utf-8",
                  newline="") as f:
            out += [r["answer"] for r in csv.DictReader(f) if r["answer"]]
    return out[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=10_000)
    ap.add_argument("--hidden", type=int, default=512,
                    help="hidden size of the random model (64: the tests' tiny one, where "
                         "Ray's per-batch overhead dominates)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import ray

    import smysl
    from smysl.options import ModelOptions
    from smysl.scale import JobConfig, run_job
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="smysl-scale-"))
    model_dir = build_tiny(tmp / "tiny", hidden=args.hidden, heads=8, kv_heads=4).path
    rows = texts(args.texts)
    (tmp / "in.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n"
                                          for i, t in enumerate(rows)), encoding="utf-8")
    options = ModelOptions(device="cpu", threads=1)
    res: dict = {"texts": len(rows),
                 "model": f"random Qwen3, hidden {args.hidden} (tests/qwen_tiny.py)"}
    config = dict(shard_rows=2000, batch_size=256)

    def timed(name: str, model) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        report = run_job(model, [tmp / "in.jsonl"], JobConfig(output=str(tmp / name), **config))
        seconds = time.perf_counter() - t
        res[name] = {"seconds": round(seconds, 2), "texts_per_s": round(len(rows) / seconds),
                     "tokens_per_s": round(report.tokens / seconds) if report.tokens else None}
        print(f"{name}: {seconds:.1f} s, {len(rows) / seconds:,.0f} texts/s", flush=True)
        table = pq.read_table(tmp / name)
        return dict(zip(table.column("id").to_pylist(),
                        np.asarray(table.column("vector").to_pylist(), np.float32), strict=True))

    single = timed("one_process", smysl.load(str(model_dir), options))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for actors in (1, 2):
        with RayEmbedder(str(model_dir), options, RayConfig(actors=actors)) as model:
            got = timed(f"ray_{actors}_actors", model)
        res[f"ray_{actors}_actors"]["bit_identical"] = got.keys() == single.keys() and all(
            np.array_equal(got[i], single[i]) for i in single)
    ray.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
