"""Reports of a run: JSON per task, ``results.json``, a Markdown summary and PNG plots.

Layout of ``out_dir``::

    results.json                 every model of the run, all metrics (input of --compare)
    summary.md                   tables: main score per task and dimension, throughput
    <model>/<task>.json          one task of one model, all metrics per dimension
    quality_vs_dimensions.png    main score per task against Matryoshka size
    quality_vs_throughput.png    mean main score against texts/s, one point per model
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smysl.eval.config import EvalConfig
from smysl.eval.results import ModelResult, model_slug

Run = dict[str, Any]  # one model's results as stored in results.json


def write_reports(results: Sequence[ModelResult], cfg: EvalConfig) -> list[Path]:
    """Write every report for ``results`` to ``cfg.out_dir``; returns the files written."""
    if cfg.out_dir is None:
        raise ValueError("write_reports needs cfg.out_dir")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [r.to_json() for r in results]
    written = []
    for run in runs:
        folder = out / model_slug(run["model"])
        folder.mkdir(exist_ok=True)
        for task in run["tasks"]:
            path = folder / f"{task['task']}.json"
            path.write_text(json.dumps({"model": run["model"], **task}, indent=1,
                                       ensure_ascii=False), encoding="utf-8")
            written.append(path)
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data_dir": str(cfg.data_dir), "limit": cfg.limit, "seed": cfg.seed,
            "n_experiments": cfg.n_experiments, "samples_per_label": cfg.samples_per_label}
    path = out / "results.json"
    path.write_text(json.dumps({"meta": meta, "models": runs}, indent=1, ensure_ascii=False),
                    encoding="utf-8")
    written.append(path)
    compared = [run for p in cfg.compare for run in load_runs(p)]
    path = out / "summary.md"
    path.write_text(summary_markdown(runs, compared, limit=cfg.limit), encoding="utf-8")
    written.append(path)
    if cfg.plots:
        written += [p for p in (plot_dimensions(runs + compared, out / "quality_vs_dimensions.png"),
                                plot_throughput(runs + compared, out / "quality_vs_throughput.png"))
                    if p is not None]
    return written


def load_runs(path: Path) -> list[Run]:
    """Models stored in an earlier run's ``results.json`` (a folder or the file itself)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no results.json in {path}")
    return list(json.loads(file.read_text(encoding="utf-8"))["models"])


# --------------------------------------------------------------------------- helpers on JSON runs
def _main(task: dict[str, Any], dims: int) -> float | None:
    scores = task["scores"].get(dims, task["scores"].get(str(dims)))
    return None if scores is None else float(scores[task["main_metric"]])


def _dims(run: Run) -> list[int]:
    return [int(x) for x in run["evaluated_dimensions"]]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rate(x: float | None) -> str:
    return "cached" if x is None else f"{x:,.0f}"


# --------------------------------------------------------------------------- markdown
def summary_markdown(runs: Sequence[Run], compared: Sequence[Run] = (), *,
                     limit: int | None = None) -> str:
    """Main score per task at the native size for every model, then per dimension."""
    everyone = list(runs) + list(compared)
    lines = ["# smysl eval summary", ""]
    if limit is not None:
        lines += [f"**Subset run (limit={limit}): not comparable with published scores.**", ""]
    tasks: dict[str, dict[str, Any]] = {}
    for run in everyone:
        for t in run["tasks"]:
            tasks.setdefault(t["task"], t)
    header = "| task | metric | " + " | ".join(r["model"] for r in everyone) + " |"
    lines += ["## Main score at native size", "", header,
              "|" + "---|" * (2 + len(everyone))]
    for name, t in tasks.items():
        cells = []
        for run in everyone:
            hit = next((x for x in run["tasks"] if x["task"] == name), None)
            cells.append(_fmt(_main(hit, int(run["dimensions"])) if hit else None))
        lines.append(f"| {name} | {t['metric_label']} | " + " | ".join(cells) + " |")
    lines += ["| **throughput** | texts/s | "
              + " | ".join(_rate(r.get("texts_per_s")) for r in everyone) + " |",
              "| | tokens/s | " + " | ".join(_rate(r.get("tokens_per_s")) for r in everyone)
              + " |", ""]
    for run in everyone:
        dims = _dims(run)
        lines += [f"## {run['model']}", "",
                  f"native size {run['dimensions']}, instruction-aware: "
                  f"{'yes' if run['instruction_aware'] else 'no'}; embedded "
                  f"{run['texts_embedded']:,} texts ({run['tokens_embedded']:,} tokens) in "
                  f"{run['embed_seconds']:.1f} s; whole evaluation {run['eval_seconds']:.1f} s.",
                  ""]
        if int(run["min_dimensions"]) >= int(run["dimensions"]) and len(dims) > 1:
            lines += ["This model was not trained for Matryoshka truncation; smaller sizes show "
                      "what naive truncation costs.", ""]
        lines += ["| task | metric | " + " | ".join(f"{d} d" for d in dims) + " | instruction |",
                  "|" + "---|" * (3 + len(dims))]
        for t in run["tasks"]:
            instr = t["instruction"] or "–"
            lines.append(f"| {t['task']} | {t['metric_label']} | "
                         + " | ".join(_fmt(_main(t, d)) for d in dims) + f" | {instr} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    from smysl.eval._deps import require

    mpl = require("matplotlib")
    mpl.use("Agg")  # files only; never needs a display
    return require("matplotlib.pyplot", "matplotlib")


def _ticker() -> Any:
    from smysl.eval._deps import require

    return require("matplotlib.ticker", "matplotlib")


def plot_dimensions(runs: Sequence[Run], path: Path) -> Path | None:
    """One panel per task: main score against Matryoshka size, one line per model."""
    runs = [r for r in runs if len(_dims(r)) > 1]
    if not runs:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(t["task"] for r in runs for t in r["tasks"]))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        label = ""
        for run in runs:
            task = next((t for t in run["tasks"] if t["task"] == name), None)
            if task is None:
                continue
            label = task["metric_label"]
            dims = _dims(run)
            ax.plot(dims, [_main(task, d) for d in dims], marker="o", label=run["model"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({d for r in runs for d in _dims(r)}))
        ax.get_xaxis().set_major_formatter(_ticker().ScalarFormatter())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("embedding size (dimensions)")
        ax.set_ylabel(f"{label} (0-1)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    fig.suptitle("Quality vs Matryoshka dimension (truncate + re-normalise)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(runs: Sequence[Run], path: Path) -> Path | None:
    """Mean main score over the tasks every model ran, against embedding throughput."""
    runs = [r for r in runs if r.get("texts_per_s")]
    if not runs:
        return None
    common = set.intersection(*({t["task"] for t in r["tasks"]} for r in runs))
    if not common:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for run in runs:
        dims = int(run["dimensions"])
        scores = [_main(t, dims) for t in run["tasks"] if t["task"] in common]
        mean = sum(s for s in scores if s is not None) / len(scores)
        ax.scatter([run["texts_per_s"]], [mean], s=70, zorder=3,
                   label=f"{run['model']} ({dims} d, {run.get('machine', '').strip()})")
        ax.annotate(run["model"], (run["texts_per_s"], mean), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    plain = _ticker().FuncFormatter(lambda v, _: f"{v:g}")  # 20, 50, 100 rather than 2x10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("throughput (texts/s, log scale; this run's embedding work)")
    ax.set_ylabel(f"mean main score over {len(common)} tasks (0-1)")
    ax.set_title("Quality vs throughput across models and backends")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
