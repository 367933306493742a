"""Real texts for the scale bars (issue 16): distinct texts from ../shared/datasets, in a fixed
order, with ids naming where each came from, written as a corpus of JSONL, CSV and Parquet.

Order of sources: the English ``answer`` of intents (train, then test), its Russian ``text``,
SentiRuEval-2016 tweets, ParaPhraser headlines, STS-B sentences (en, ru) and XQuAD questions
(en, ru). Texts are stripped; empty ones and repeats of an earlier text are left out. The
first 20,000 come from intents (en 9,994 + ru 9,313) and SentiRuEval (693).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _csv(path: Path, **kw: object) -> Iterator[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, **kw)  # type: ignore[arg-type]


def _candidates() -> Iterator[tuple[str, str, str]]:
    """(source, id, text) in the order above, repeats included."""
    for column, lang in (("answer", "en"), ("text", "ru")):
        for split in ("train", "test"):
            for n, r in enumerate(_csv(DATASETS / "intents" / f"intents_{split}.csv"), 1):
                yield f"intents_{lang}", f"intents-{split}-{n}-{lang}", r[column]
    for split in ("train", "test"):
        path = DATASETS / "sentirueval" / f"SentiRuEval2016_small_{split}.csv"
        for n, r in enumerate(_csv(path), 1):
            yield "sentirueval", f"senti-{split}-{n}", r["text"]
    for r in _csv(DATASETS / "paraphraser" / "para_gold.csv"):
        yield "paraphraser", f"para-{r['id_1']}", r["text_1"]
        yield "paraphraser", f"para-{r['id_2']}", r["text_2"]
    for name in ("en-dev", "en-test", "ru-dev", "ru-test"):
        for n, r in enumerate(_csv(DATASETS / "stsb" / f"stsb-{name}.csv",
                                   fieldnames=["a", "b", "score"]), 1):
            yield "stsb", f"stsb-{name}-{n}a", r["a"]
            yield "stsb", f"stsb-{name}-{n}b", r["b"]
    for lang in ("en", "ru"):
        data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text("utf-8"))
        for article in data["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    yield "xquad", f"xquad-{lang}-{qa['id']}", qa["question"]


def available() -> bool:
    return (DATASETS / "intents" / "intents_train.csv").is_file()


def real_texts(n: int = 20_000) -> list[tuple[str, str, str]]:
    """The first ``n`` distinct texts as (source, id, text); fewer if the datasets run out."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for source, rid, text in _candidates():
        text = (text or "").strip()
        if text and text not in seen:
            seen.add(text)
            out.append((source, rid, text))
            if len(out) == n:
                break
    return out


def write_corpus(folder: Path, rows: list[tuple[str, str, str]]) -> list[Path]:
    """One file per source, in three formats: ``intents_en.jsonl``, ``intents_ru.csv`` and a
    Parquet file for every other source (columns ``id``, ``text``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[tuple[str, str]]] = {}
    for source, rid, text in rows:
        by_source.setdefault(source, []).append((rid, text))
    paths = []
    for source, items in by_source.items():
        if source == "intents_en":
            path = folder / f"{source}.jsonl"
            path.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                                    for i, t in items), encoding="utf-8")
        elif source == "intents_ru":
            path = folder / f"{source}.csv"
            with open(path, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "text"])
                w.writerows(items)
        else:
            path = folder / f"{source}.parquet"
            pq.write_table(pa.table({"id": [i for i, _ in items], "text": [t for _, t in items]}),
                           path)
        paths.append(path)
    return paths
