"""Reports of a run: JSON per task, ``results.json``, a Markdown summary and PNG plots.

Layout of ``out_dir``::

    results.json                 every model of the run, all metrics (input of --compare)
    summary.md                   tables: main score per task and dimension, throughput
    <model>/<task>.json          one task of one model, all metrics per dimension
                                 (reranking tasks: before/after metrics, the reranker's work)
    quality_vs_dimensions.png    main score per task against Matryoshka size
    quality_vs_throughput.png    mean main score against texts/s, one point per model
    reranking.png                nDCG@10 and MRR@10 before/after reranking, per task and model
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smysl.eval.config import PROTOCOL, EvalConfig
from smysl.eval.results import ModelResult, model_slug
from smysl.eval.tasks import split_instructions
from smysl.files import replace_file
from smysl.registry import ALIASES
from smysl.shown import nan_as_null

Run = dict[str, Any]  # one model's results as stored in results.json

log = logging.getLogger(__name__)


def check_out_dir(out_dir: Path, compare: Sequence[Path] = ()) -> None:
    """Refuse, before any work, a report folder that cannot be one: a file, or under one (a
    FileExistsError traceback once every task was scored); or one of the ``compare`` folders,
    whose report this run's would replace (it was compared with itself)."""
    path = Path(out_dir)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"--out {out_dir}: {p} is a file, not a folder")
            break
    for other in compare:
        folder = Path(other).parent if Path(other).is_file() else Path(other)
        if folder.resolve() == path.resolve():
            raise ValueError(f"--out {out_dir} is also a --compare folder: this run's report "
                             "would replace the one it compares with; write it to another "
                             "folder")


def write_reports(results: Sequence[ModelResult], cfg: EvalConfig,
                  compared: Sequence[Run] | None = None, *, stopped: str | None = None
                  ) -> list[Path]:
    """Write every report for ``results`` to ``cfg.out_dir``; returns the files written.
    ``compared``: the runs of ``cfg.compare``, read before (an ``--out`` that is also a
    ``--compare`` folder had its results.json replaced first: the run compared with itself).
    ``stopped``: why a run has no results of some of its models (``meta.stopped``, and under
    the summary's title).
    A report of an earlier run in the folder goes first: its per-task files and plots were
    left beside the new ones."""
    if cfg.out_dir is None:
        raise ValueError("write_reports needs cfg.out_dir")
    if compared is None:
        compared = [run for p in cfg.compare for run in load_runs(p)]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_report(out)
    runs = [r.to_json() for r in results]
    written = []
    for run, name, label in zip(runs, run_folders(runs), run_labels(runs), strict=True):
        folder = out / name
        folder.mkdir(exist_ok=True)
        for task in [*run["tasks"], *run.get("reranking", [])]:
            path = folder / f"{task['task']}.json"
            replace_file(path, json.dumps(nan_as_null({"model": run["model"], "run": label,
                                                       **task}),
                                          indent=1, ensure_ascii=False))
            written.append(path)
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data_dir": str(cfg.data_dir), **cfg.protocol(), "reranker": cfg.reranker,
            **({"stopped": stopped} if stopped else {})}
    path = out / "results.json"
    replace_file(path, json.dumps(nan_as_null({"meta": meta, "models": runs}), indent=1,
                                  ensure_ascii=False))
    written.append(path)
    for line in comparability(runs + list(compared)):
        log.warning("%s", line)
    path = out / "summary.md"
    replace_file(path, summary_markdown(runs, list(compared), stopped=stopped))
    written.append(path)
    if cfg.plots:
        both = runs + list(compared)
        written += [p for p in (plot_dimensions(both, out / "quality_vs_dimensions.png"),
                                plot_throughput(both, out / "quality_vs_throughput.png"),
                                plot_reranking(both, out / "reranking.png"))
                    if p is not None]
    return written


#: The files of a report (see the module's docs), besides ``<model>/<task>.json``.
REPORT_FILES = ("results.json", "summary.md", "quality_vs_dimensions.png",
                "quality_vs_throughput.png", "reranking.png")


def _clear_report(out: Path) -> None:
    """Remove an earlier report from ``out``: the files it lists (its ``results.json``'s
    models' task files) and :data:`REPORT_FILES`; nothing else of the folder's."""
    if not (out / "results.json").is_file():
        return
    try:
        earlier = load_runs(out)
    except (ValueError, KeyError, TypeError):  # not ours, or damaged: every file stays
        return
    try:
        folders = run_folders(earlier)
    except (KeyError, TypeError, AttributeError):  # damaged: its files stay
        return
    log.warning("replacing the earlier report in %s", out)
    # where a report of one name per folder (before run_folders) kept them, too
    own = [out / model_slug(str(run.get("model", ""))) for run in earlier]
    for run, folder in [*zip(earlier, (out / f for f in folders), strict=True),
                        *zip(earlier, own, strict=True)]:
        for task in [*run.get("tasks", []), *run.get("reranking", [])]:
            (folder / f"{task.get('task')}.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when something else is in it
            folder.rmdir()
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def load_runs(path: Path) -> list[Run]:
    """Models stored in an earlier run's ``results.json`` (a folder or the file itself). Each
    keeps its run's ``protocol`` (limit, seed...; from the file's ``meta`` where results older
    than the per-model record lack it, without the settings it did not record)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no results.json in {path}")
    stored = json.loads(file.read_text(encoding="utf-8"))
    meta = stored.get("meta") or {}
    runs = list(stored["models"])
    for run in runs:
        if not run.get("protocol"):
            run["protocol"] = {k: meta[k] for k in PROTOCOL if k in meta}
    return runs


def run_folders(runs: Sequence[Run]) -> list[str]:
    """The folder of each run's per-task files: the model's name, or its label where runs
    share a name (`-m DIR -m st:DIR` wrote both into one folder, the second run's files over
    the first's)."""
    names = [model_slug(str(r.get("model", ""))) for r in runs]
    count = Counter(names)
    return [name if count[name] == 1 else model_slug(label)
            for name, label in zip(names, run_labels(runs), strict=True)]


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A column, section and legend label per run: the model name, with the settings that tell
    apart runs of one name (quantization or dtype, then dtype, device, max tokens, backend;
    as recorded in their ``info``), and a number where even those agree."""
    labels = [str(r["model"]) for r in runs]
    # one checkpoint under two names (the docs' `-m Qwen/Qwen3-Embedding-0.6B`, then
    # `-m qwen3-embedding:0.6b --quantize int8 --compare`) is one group: its columns said
    # nothing of which was int8
    same = [ALIASES.get(label.lower(), label).lower() for label in labels]
    for key in set(same):
        group = [i for i, k in enumerate(same) if k == key]
        if len(group) < 2:
            continue
        settings = [_settings(runs[i]) for i in group]
        keys: list[str] = []  # the settings that differ, in order, until they tell all apart
        for key in settings[0]:
            if len({s[key] for s in settings}) > 1:
                keys.append(key)
            if len({tuple(s[k] for k in keys) for s in settings}) == len(settings):
                break
        for i, own in zip(group, settings, strict=True):
            parts = [v for k in keys if (v := own[k]) is not None]
            if parts:
                labels[i] = f"{labels[i]} ({', '.join(parts)})"
    count, seen = Counter(labels), Counter[str]()
    for i, label in enumerate(labels):
        if count[label] > 1:
            seen[label] += 1
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _settings(run: Run) -> dict[str, str | None]:
    info = run.get("info") or {}
    weights = info.get("quantization") or info.get("dtype")
    return {"weights": str(weights) if weights else None,
            # a quantised model computing in two dtypes (a Q8_0 GGUF in float32 and bfloat16)
            "dtype": str(info["dtype"]) if info.get("dtype") else None,
            "device": str(info["device"]) if info.get("device") else None,
            "max_tokens": f"max {info['max_tokens']} tokens" if info.get("max_tokens") else None,
            # one checkpoint through the native engine and through st: (a documented
            # comparison), where nothing above tells them apart
            "backend": str(info["backend"]) if info.get("backend") else None}


#: Sizes of a task that its sampling decides (seed, samples_per_label), not its data.
SAMPLED = frozenset({"train_used"})
#: :data:`PROTOCOL` settings that decide only a reranked run's scores.
RERANK_KEYS = ("rerank_top", "rerank_queries")


def _instructions_differ(runs: Sequence[Run], protocols: Sequence[dict[str, Any]]) -> bool:
    """Whether the instruction overrides differ where they decide scores: an embedding task's
    between models that read instructions (one that takes none read none: a run of it said
    the runs beside it differ), a reranking task's (its reranker's) between all runs."""
    embedding, reranking = set(), set()
    for run, p in zip(runs, protocols, strict=True):
        if "instructions" not in p:
            continue
        tasks, rerankers = split_instructions(p["instructions"] or {})
        if run.get("instruction_aware", True):
            embedding.add(json.dumps(tasks, sort_keys=True))
        reranking.add(json.dumps(rerankers, sort_keys=True))
    return len(embedding) > 1 or len(reranking) > 1


def comparability(runs: Sequence[Run]) -> list[str]:
    """Why the scores of ``runs`` do not compare: a subset run (``limit``), runs that differ
    in a setting that decides the scores (their ``protocol``) and runs stopped before their
    last task; no lines when they compare."""
    labels = run_labels(runs)
    protocols = [r.get("protocol") or {} for r in runs]
    limits = {p.get("limit") for p in protocols}  # an older file without one: a full run
    lines = []
    if limits == {None}:
        pass
    elif len(limits) == 1:
        lines.append(f"Subset run (limit={limits.pop()}): not comparable with published scores.")
    else:
        lines.append("Not comparable: runs on different data (--limit): " + ", ".join(
            f"{label} {'all of it' if p.get('limit') is None else 'limit=' + str(p['limit'])}"
            for label, p in zip(labels, protocols, strict=True)) + ".")
    # the data itself: a run on another --data folder (a subset, another version) had
    # the same protocol and was set side by side without a word
    if len(limits) == 1:
        for name in dict.fromkeys(t["task"] for run in runs for t in run.get("tasks", [])):
            sizes = [(label, {k: v for k, v in hit["size"].items() if k not in SAMPLED})
                     for label, run in zip(labels, runs, strict=True)
                     for hit in run.get("tasks", []) if hit["task"] == name and "size" in hit]
            if len({json.dumps(size, sort_keys=True) for _, size in sizes}) > 1:
                lines.append(f"Not comparable: {name} was scored on different data: " + ", ".join(
                    f"{label} " + " ".join(f"{v:,} {k}" for k, v in size.items())
                    for label, size in sizes) + ".")
    # --rerank-queries: the reranking scores are over a sample of the queries (the retrieval
    # scores are not), which the summary did not say where --limit's subset was said; a
    # number at or above a task's queries reranks them all (older results: no "of_queries")
    sampled = sorted({p["rerank_queries"] for p, run in zip(protocols, runs, strict=True)
                      if p.get("rerank_queries") is not None and any(
                          r["size"]["queries"] < r["size"].get("of_queries", math.inf)
                          for r in run.get("reranking", []))})
    if sampled:
        lines.append("Reranking on a subset of the queries (rerank_queries="
                     + ", ".join(map(str, sampled)) + "): its scores are not comparable with "
                     "scores over every query.")
    for key in PROTOCOL:
        # a reranking setting decides only the reranked scores: recorded by every run, it
        # said two runs differ where neither reranked (rerank_top 50 against 5)
        known = [(label, p[key]) for label, p, run in zip(labels, protocols, runs, strict=True)
                 if key in p and (key not in RERANK_KEYS or run.get("reranking"))]
        if key == "instructions":
            if _instructions_differ(runs, protocols):
                lines.append("Runs differ in instructions: "
                             + ", ".join(f"{label} {v}" for label, v in known) + ".")
            continue
        # sort_keys: the instruction overrides, a mapping in any order
        if key != "limit" and len({json.dumps(v, sort_keys=True) for _, v in known}) > 1:
            lines.append(f"Runs differ in {key}: "
                         + ", ".join(f"{label} {v}" for label, v in known) + ".")
    for label, run in zip(labels, runs, strict=True):
        if run.get("stopped"):
            lines.append(f"{label} {run['stopped']}: the tasks it did not reach have no score.")
    for label, p, run in zip(labels, protocols, runs, strict=True):
        missing = [k for k in PROTOCOL if k not in p
                   and (k not in RERANK_KEYS or run.get("reranking"))]
        if missing and len(runs) > 1:
            lines.append(f"{label} did not record {', '.join(missing)} (older results): they "
                         "may differ.")
    return lines


# --------------------------------------------------------------------------- helpers on JSON runs
def _main(task: dict[str, Any], dims: int) -> float | None:
    scores = task["scores"].get(dims, task["scores"].get(str(dims)))
    value = None if scores is None else scores[task["main_metric"]]
    # null: a NaN score as written; NaN itself in a run not yet written (write_reports')
    return None if value is None or value != value else float(value)


def _dims(run: Run) -> list[int]:
    return [int(x) for x in run["evaluated_dimensions"]]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rate(x: float | None) -> str:
    return "cached" if x is None else f"{x:,.0f}"


# --------------------------------------------------------------------------- markdown
#: What the scores are, under the main table (docs/eval.md has each in full).
METRIC_DEFINITIONS = (
    "Scores are MTEB's main scores, computed as MTEB computes them: retrieval nDCG@10 as "
    "pytrec_eval (binary relevance, equal scores by document id, descending); STS the Spearman "
    "correlation of cosine (1 - sklearn's paired cosine distance) with the gold scores; pair "
    "classification the best average precision of cosine, dot, euclidean and manhattan "
    "similarity; classification the accuracy of a logistic regression on the embeddings, mean "
    "over the experiments; clustering the V-measure of MiniBatchKMeans, mean over bootstrap "
    "samples. Definitions in full: docs/eval.md.")


def summary_markdown(runs: Sequence[Run], compared: Sequence[Run] = (), *,
                     stopped: str | None = None) -> str:
    """Main score per task at the native size for every model, then per dimension; first
    why the run stopped (``stopped``: models with no results), the reasons the scores do not
    compare (:func:`comparability`) and the tasks' warnings."""
    everyone = list(runs) + list(compared)
    labels = run_labels(everyone)
    lines = ["# smysl eval summary", ""]
    if stopped:
        lines += [f"**This run {stopped}.**", ""]
    for line in comparability(everyone):  # a paragraph each (Markdown joins adjacent lines)
        lines += [f"**{line}**", ""]
    warnings = [f"- {label} {t['task']}: {w}" for run, label in zip(everyone, labels, strict=True)
                for t in run["tasks"] for w in t.get("warnings", [])]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    if lines[-1]:
        lines.append("")
    tasks: dict[str, dict[str, Any]] = {}
    for run in everyone:
        for t in run["tasks"]:
            tasks.setdefault(t["task"], t)
    header = "| task | metric | " + " | ".join(map(_cell, labels)) + " |"
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
              + " |", "", METRIC_DEFINITIONS, ""]
    for run, label in zip(everyone, labels, strict=True):
        dims = _dims(run)
        lines += [f"## {label}", "",
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
            instr = _cell(t["instruction"] or "–")
            lines.append(f"| {t['task']} | {t['metric_label']} | "
                         + " | ".join(_fmt(_main(t, d)) for d in dims) + f" | {instr} |")
        lines.append("")
    lines += reranking_markdown(everyone, labels)
    return "\n".join(lines)


def reranking_markdown(runs: Sequence[Run], labels: Sequence[str] | None = None) -> list[str]:
    """The reranking section: before -> after per reranking task, embedder and reranker, the
    ceiling the candidates set (recall@N) and the reranker's work; no lines without any.
    ``labels``: the embedders' labels (default :func:`run_labels`)."""
    names = dict(zip(map(id, runs), labels or run_labels(runs), strict=True))
    rows = [(run, r) for run in runs for r in run.get("reranking", [])]
    if not rows:
        return []
    tops = sorted({int(r["candidates"]) for _, r in rows})
    recall = f"recall@{tops[0]}" if len(tops) == 1 else "recall@candidates"
    lines = ["## Reranking", "",
             "Each query's candidates are the embedder's top N (exact cosine search, native size); "
             "the reranker reorders them. A relevant paragraph outside the candidates stays "
             f"missing, so {recall} is the ceiling of every score after reranking.", "",
             "| task | embedder | reranker | queries | nDCG@10 before → after "
             f"| MRR@10 before → after | {recall} | pairs scored | seconds | pairs/s |",
             "|" + "---|" * 10]
    for run, r in rows:
        b, a = r["before"], r["after"]
        ceiling = _fmt(r["recall_at_candidates"]) + (
            "" if len(tops) == 1 else f" (@{r['candidates']})")
        lines.append(
            f"| {r['task']} | {_cell(names[id(run)])} | {_cell(r['reranker'])} | "
            f"{r['size']['queries']:,} | "
            f"{_arrow(b['ndcg_at_10'], a['ndcg_at_10'])} | "
            f"{_arrow(b['mrr_at_10'], a['mrr_at_10'])} | {ceiling} | {r['pairs_scored']:,} | "
            f"{r['rerank_seconds']:.1f} | {_rate(r.get('pairs_per_s'))} |")
    lines.append("")
    seen = set()
    for run, r in rows:
        info = run.get("reranker") or {}
        key = (r["reranker"], r["backend"], r["instruction"])
        if key in seen:
            continue
        seen.add(key)
        where = ", ".join(str(info[k]) for k in ("device", "dtype", "quantization")
                          if info.get(k))
        lines.append(f"- reranker `{r['reranker']}`: backend {r['backend']}"
                     + (f" ({where})" if where else "")
                     + (f", loaded from `{info['source']}`" if info.get("source") else "")
                     + f"; instruction: {r['instruction'] or 'the reranker default'}")
    lines.append("")
    return lines


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: a ``|`` in an instruction or a model string ended
    the cell early and shifted the row's scores under the wrong columns; a newline ended the
    row."""
    return " ".join(text.replace("|", "\\|").split())


def _short(name: str) -> str:
    """A model name for a plot label: a path's or a Hub id's last part."""
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or name


def _arrow(before: float | None, after: float | None) -> str:
    """``before → after (+change)``; a score missing (NaN, written to JSON as null: a run with
    nothing to score) is "–", as in the other tables."""
    if _fmt(before) == "–" or _fmt(after) == "–":
        return f"{_fmt(before)} → {_fmt(after)}"
    assert before is not None and after is not None
    return f"{before:.4f} → {after:.4f} ({after - before:+.4f})"


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
    labelled = [(r, label) for r, label in zip(runs, run_labels(runs), strict=True)
                if len(_dims(r)) > 1]
    runs = [r for r, _ in labelled]
    names = list(dict.fromkeys(t["task"] for r in runs for t in r["tasks"]))
    if not names:  # no sweep, or reranking tasks only (-t rerank)
        return None
    plt = _pyplot()
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    legend: dict[str, Any] = {}  # run label -> its line: every run, whichever panel it is in
    for ax, name in zip(axes.flat, names, strict=False):
        label = ""
        # each run keeps one colour in every panel (a panel's own colour cycle gave a run
        # that skipped a task another's colour there)
        for i, (run, run_label) in enumerate(labelled):
            task = next((t for t in run["tasks"] if t["task"] == name), None)
            if task is None:
                continue
            label = task["metric_label"]
            dims = _dims(run)
            (line,) = ax.plot(dims, [_main(task, d) for d in dims], marker="o",
                              label=run_label, color=f"C{i % 10}")
            legend.setdefault(run_label, line)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({d for r in runs for d in _dims(r)}))
        ax.get_xaxis().set_major_formatter(_ticker().ScalarFormatter())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("embedding size (dimensions)")
        ax.set_ylabel(label)  # a Spearman correlation may be negative
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(list(legend.values()), list(legend), loc="lower center",
               ncol=min(len(legend), 4), frameon=False)
    fig.suptitle("Quality vs Matryoshka dimension (truncate + re-normalise)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(runs: Sequence[Run], path: Path) -> Path | None:
    """Mean main score over the tasks every model ran, against embedding throughput."""
    labels = run_labels(runs)
    labelled = [(r, label) for r, label in zip(runs, labels, strict=True)
                if r.get("texts_per_s")]
    # a run whose vectors all came from --cache measured no embedding: said, not dropped
    # from the plot (or the plot from the report) without a word
    unmeasured = [label for r, label in zip(runs, labels, strict=True) if not r.get("texts_per_s")]
    if unmeasured:
        log.warning("%s: no throughput (every vector from the cache), left out of %s",
                    ", ".join(unmeasured), path.name)
    runs = [r for r, _ in labelled]
    if not runs:
        return None
    # the tasks every model ran and scored: a NaN score counted as 0 in one model's mean (it
    # said "mean over 2 tasks" of one score), and a task left out of one model's mean alone
    # would compare means over different tasks
    common = set.intersection(*({t["task"] for t in r["tasks"]
                                 if _main(t, int(r["dimensions"])) is not None} for r in runs))
    if not common:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for run, label in labelled:
        dims = int(run["dimensions"])
        scores = [s for t in run["tasks"] if t["task"] in common
                  and (s := _main(t, dims)) is not None]
        mean = sum(scores) / len(scores)
        ax.scatter([run["texts_per_s"]], [mean], s=70, zorder=3,
                   label=f"{label} ({dims} d, {run.get('machine', '').strip()})")
        ax.annotate(label, (run["texts_per_s"], mean), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ticker = _ticker()
    # 20, 50, 100 rather than 2x10^1. Over a range of 3x or more only the 2x and 5x minor
    # ticks are labelled (every one ran together: "90100", "800900", at 8x and at 85-650
    # texts/s); over a narrower one, all of them (240-476 texts/s had none, 80-130 one)
    rates = [float(r["texts_per_s"]) for r in runs]
    wide = max(rates) >= 3 * min(rates)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and (not wide or f"{v:e}"[0] in "25") else ""))
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("throughput (texts/s, log scale; this run's embedding work)")
    ax.set_ylabel(f"mean main score over {len(common)} tasks")
    ax.set_title("Quality vs throughput across models and backends")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reranking(runs: Sequence[Run], path: Path) -> Path | None:
    """nDCG@10 and MRR@10 before and after reranking: a pair of bars per reranking task (per
    language) and embedder, with the candidates' recall as the ceiling mark."""
    names = dict(zip(map(id, runs), run_labels(runs), strict=True))
    rows = [(run, r) for run in runs for r in run.get("reranking", [])]
    if not rows:
        return None
    plt = _pyplot()
    models = len({names[id(run)] for run, _ in rows}) > 1
    rerankers = list(dict.fromkeys(r["reranker"] for _, r in rows))
    labels = [r["task"].removesuffix("-rerank")
              + (f"\n{_short(names[id(run)])}" if models else "")
              + (f"\n+ {_short(r['reranker'])}" if len(rerankers) > 1 else "")
              for run, r in rows]
    tops = sorted({int(r["candidates"]) for _, r in rows})
    top = f"top {tops[0]}" if len(tops) == 1 else "top N"
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.0 * len(rows) + 3), 4.8), squeeze=False)
    width = 0.38
    for ax, (metric, title) in zip(axes.flat, (("ndcg_at_10", "nDCG@10"),
                                               ("mrr_at_10", "MRR@10")), strict=True):
        for i, (_, r) in enumerate(rows):
            pair = ((r["before"][metric], f"embedder {top}", "#9aa5b1", -width / 2),
                    (r["after"][metric], "reranked", "#d9480f", width / 2))
            for value, name, colour, dx in pair:
                ax.bar(i + dx, value, width, color=colour, label=name if i == 0 else None)
                ax.annotate(f"{value:.3f}", (i + dx, value), textcoords="offset points",
                            xytext=(0, 2), ha="center", fontsize=8)
            ceiling = r["recall_at_candidates"]
            ax.hlines(ceiling, i - width, i + width, colors="black", linestyles="dashed",
                      label=f"recall@{r['candidates']} (ceiling)" if i == 0 else None)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel(f"{title} (0-1)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, frameon=False)
    fig.suptitle("Reranking the embedder's candidates"
                 + (f" with {_short(rerankers[0])}" if len(rerankers) == 1 else ""))
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
