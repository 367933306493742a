"""Single-machine scaling of the corpus job (issue 16): the same texts embedded in one process,
then on a local Ray cluster with 1 and 2 actors (one torch thread each), by the job
(``smysl embed --ray``: :class:`RayEmbedder` under ``run_job``) and by Ray Data
(``embed_dataset`` over ``read_parquet``), with a random Qwen3 model (hidden 512 by default);
every run's vectors must equal the single-process ones bit for bit.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--texts 20000] [--out r.json]``. The texts
are the first N distinct texts of ../shared/datasets (tests/scale/shared_texts.py: intents
answers in English, their Russian versions, SentiRuEval tweets), as a JSONL, a CSV and a
Parquet file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qwen_tiny import build_tiny
from scale.shared_texts import real_texts, write_corpus


def cpu_name() -> str:
    """``/proc/cpuinfo``'s model name, family (26: AMD Zen 5) and whether it has AVX-512."""
    try:
        info = dict(line.split(":", 1) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    info = {k.strip(): v.strip() for k, v in info.items()}
    avx512 = "avx512f" in info.get("flags", "").split()
    return (f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}), "
            f"AVX-512 {'yes' if avx512 else 'no'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--hidden", type=int, default=512,
                    help="hidden size of the random model (64: the tests' tiny one, where "
                         "Ray's per-batch overhead dominates)")
    ap.add_argument("--no-ray-data", action="store_true", help="skip the Ray Data runs")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import smysl
    from smysl.options import ModelOptions
    from smysl.scale import JobConfig, embed_dataset, run_job
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="smysl-scale-"))
    model_dir = build_tiny(tmp / "tiny", hidden=args.hidden, heads=8, kv_heads=4).path
    rows = real_texts(args.texts)
    write_corpus(tmp / "in", rows)
    options = ModelOptions(device="cpu", threads=1)
    res: dict = {"texts": len(rows), "machine": f"{cpu_name()}, {os.cpu_count()} vCPUs",
                 "model": f"random Qwen3, hidden {args.hidden} (tests/qwen_tiny.py)"}
    config = dict(shard_rows=2000, batch_size=256)

    def record(name: str, seconds: float, tokens: int | None) -> None:
        res[name] = {"seconds": round(seconds, 2), "texts_per_s": round(len(rows) / seconds),
                     "tokens_per_s": round(tokens / seconds) if tokens else None}
        print(f"{name}: {seconds:.1f} s, {len(rows) / seconds:,.0f} texts/s", flush=True)

    def job(name: str, model) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        report = run_job(model, [tmp / "in"], JobConfig(output=str(tmp / name), **config))
        record(name, time.perf_counter() - t, report.tokens)
        res["tokens"] = report.tokens
        table = pq.read_table(tmp / name)
        return dict(zip(table.column("id").to_pylist(),
                        np.asarray(table.column("vector").to_pylist(), np.float32), strict=True))

    def same(got: dict[str, np.ndarray]) -> bool:
        return got.keys() == single.keys() and all(np.array_equal(got[i], single[i])
                                                   for i in single)

    # the machine may be shared: the 1-minute load average before and after the runs
    res["load_average_start"] = round(os.getloadavg()[0], 2)
    single = job("one_process", smysl.load(str(model_dir), options))
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    for actors in (1, 2):
        t = time.perf_counter()
        with RayEmbedder(str(model_dir), options, RayConfig(actors=actors)) as model:
            res[f"ray_{actors}_actors_start_s"] = round(time.perf_counter() - t, 2)
            got = job(f"ray_{actors}_actors", model)
        res[f"ray_{actors}_actors"]["bit_identical"] = same(got)
    if not args.no_ray_data:
        (tmp / "all").mkdir()
        pq.write_table(pa.table({"id": [r for _, r, _ in rows], "text": [t for _, _, t in rows]}),
                       tmp / "all" / "rows.parquet")
        for actors in (1, 2):
            t = time.perf_counter()
            ds = ray.data.read_parquet(str(tmp / "all")).repartition(40)
            # the pool must leave a CPU for Ray Data's read tasks (else it stalls)
            share = min(1.0, (cpus - 1) / actors)
            out = embed_dataset(ds, str(model_dir), options, batch_size=256,
                                config=RayConfig(actors=actors, num_cpus=share))
            got = {}
            for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                got.update(zip(map(str, batch["id"]), np.asarray(batch["vector"], np.float32),
                               strict=True))
            name = f"ray_data_{actors}_actors"
            # actor start and dataset planning included: Ray Data starts its pool per run
            record(name, time.perf_counter() - t, res.get("tokens"))
            res[name]["bit_identical"] = same(got)
    ray.shutdown()
    res["load_average_end"] = round(os.getloadavg()[0], 2)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
