"""Loaders for the evaluation data in ``../shared/datasets`` (read in place, never copied).

Each loader returns plain Python containers; ``limit`` keeps a small subset (fast tests): the
first rows, or for labelled data the first rows of each label in turn.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
#: Where the shared data lives relative to the repository root: ``../shared`` beside the
#: checkout, or a copy inside it (``shared/``, as the GPU machine gets it).
DEFAULT_DATA_DIR = (_ROOT / "shared" if (_ROOT / "shared").is_dir() else _ROOT.parent / "shared"
                    ) / "datasets"


@dataclass(frozen=True)
class Pairs:
    """Sentence pairs with one gold value each (an STS score or a 0/1 pair label)."""

    texts1: list[str]
    texts2: list[str]
    gold: list[float]


@dataclass(frozen=True)
class Labelled:
    """Texts with class labels, split into train and test."""

    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


@dataclass(frozen=True)
class Retrieval:
    """Queries, a corpus and binary relevance judgements (``qrels[query_id] = {doc_id}``)."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, set[str]]


def _path(data_dir: Path, *parts: str) -> Path:
    path = Path(data_dir).joinpath(*parts)
    if not path.is_file():
        readme = Path(data_dir).parent / "README.md"
        # named only where it is there (for --data partial it was a README.md of nowhere)
        where = (f"the README.md beside the datasets folder, {readme}, says what belongs there"
                 if readme.is_file() else "docs/eval.md lists the files each task reads")
        raise FileNotFoundError(f"evaluation data not found: {path} ({where}; pass --data DIR "
                                "for another folder)")
    return path


@contextlib.contextmanager
def _utf8(path: Path) -> Iterator[None]:
    """A file that is not UTF-8 named (it was the codec's words alone)."""
    try:
        yield
    except UnicodeDecodeError:
        try:  # a CSV is decoded in chunks: its error's offset was within one
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                             f"offset {e.start})") from None
        raise


def _records(path: Path, *columns: str) -> list[dict[str, str]]:
    """A CSV file's rows by its header; a header without one of ``columns``, or a row that
    ends before one, is an error naming the file and the line (it was a ``KeyError``)."""
    with _utf8(path), path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} in its header "
                             f"({', '.join(header) or 'none'})")
        rows = []
        for r in reader:
            short = [c for c in columns if r[c] is None]
            if short:
                raise ValueError(f"{path}, line {reader.line_num}: the row ends before its "
                                 f"column {short[0]!r}")
            rows.append(r)
    return rows


def _rows(path: Path) -> list[list[str]]:
    with _utf8(path), path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def load_sts(data_dir: Path, lang: str, split: str = "test", limit: int | None = None) -> Pairs:
    """STS-B (stsb_multi_mt); gold scores 0-5 rescaled to 0-1 as MTEB does (Spearman unchanged)."""
    path = _path(data_dir, "stsb", f"stsb-{lang}-{split}.csv")
    rows = _rows(path)[:limit]
    gold = []
    for i, r in enumerate(rows, 1):
        try:
            gold.append(float(r[2]) / 5.0)
        except (IndexError, ValueError):
            raise ValueError(f"{path}, row {i}: not sentence1,sentence2,score (a score 0-5; "
                             f"the file has no header): {str(r)[:200]}") from None
    return Pairs([r[0] for r in rows], [r[1] for r in rows], gold)


def load_paraphraser(data_dir: Path, limit: int | None = None) -> Pairs:
    """ParaPhraser gold as a binary task: precise (1) and near (0) paraphrases are positives,
    non-paraphrases (-1) negatives — the binary setting of the ParaPhraser shared task. A
    ``limit`` takes the classes in turn (the file starts with five negatives: ``--limit 5``
    scored an average precision of 0 over no positive)."""
    path = _path(data_dir, "paraphraser", "para_gold.csv")
    rows = _interleave(_records(path, "text_1", "text_2", "class"), "class", limit)
    bad = [r["class"] for r in rows if r["class"].strip() not in ("-1", "0", "1")]
    if bad:
        raise ValueError(f"{path}: a class is -1, 0 or 1, not {bad[0]!r}")
    return Pairs([r["text_1"] for r in rows], [r["text_2"] for r in rows],
                 [1.0 if int(r["class"]) >= 0 else 0.0 for r in rows])


def _interleave(rows: list[dict[str, str]], label: str, limit: int | None) -> list[dict[str, str]]:
    """The first ``limit`` rows taking labels in turn, so a small subset still has every class
    it can (a plain head of a sorted file may hold one class only)."""
    if limit is None:
        return rows
    queues: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        queues.setdefault(r[label], []).append(r)
    out: list[dict[str, str]] = []
    for depth in range(max(map(len, queues.values()), default=0)):
        out += [q[depth] for q in queues.values() if depth < len(q)]
        if len(out) >= limit:
            break
    return out[:limit]


def _labelled(train: list[dict[str, str]], test: list[dict[str, str]], text: str, label: str,
              limit: int | None) -> Labelled:
    train, test = _interleave(train, label, limit), _interleave(test, label, limit)
    return Labelled([r[text] for r in train], [str(r[label]) for r in train],
                    [r[text] for r in test], [str(r[label]) for r in test])


def load_sentiment(data_dir: Path, limit: int | None = None) -> Labelled:
    """SentiRuEval-2016 (small): Russian tweets about telecom companies and banks, -1/0/1."""
    d = Path(data_dir, "sentirueval")
    return _labelled(_records(_path(d, "SentiRuEval2016_small_train.csv"), "text", "answer"),
                     _records(_path(d, "SentiRuEval2016_small_test.csv"), "text", "answer"),
                     "text", "answer", limit)


def load_intents(data_dir: Path, lang: str, limit: int | None = None) -> Labelled:
    """NLU-Evaluation-Data intents (68 labels): ``answer`` is the English original, ``text`` its
    Russian translation."""
    if lang not in ("ru", "en"):
        raise ValueError(f"intents exist in ru and en, not {lang!r}")
    d = Path(data_dir, "intents")
    column = "text" if lang == "ru" else "answer"
    return _labelled(_records(_path(d, "intents_train.csv"), column, "label"),
                     _records(_path(d, "intents_test.csv"), column, "label"), column, "label",
                     limit)


def _xquad(data_dir: Path, lang: str) -> list[dict]:
    path = _path(data_dir, "xquad", f"xquad.{lang}.json")
    try:
        with _utf8(path):
            data = json.loads(path.read_text(encoding="utf-8"))
        articles = list(data["data"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no 'data' list of articles (SQuAD's format)") from None
    if not articles:  # every score of its tasks was NaN, and a --compare of them crashed
        raise ValueError(f"{path}: its 'data' list holds no articles")
    return articles


def load_xquad(data_dir: Path, query_lang: str, doc_lang: str | None = None,
               limit: int | None = None) -> Retrieval:
    """XQuAD as retrieval: queries are the questions, the corpus the unique paragraphs.

    The languages are parallel (same articles, paragraphs and question ids in the same order), so a
    paragraph's id is its position ``article-paragraph``; with ``doc_lang`` different from
    ``query_lang`` this gives cross-lingual retrieval. ``limit`` keeps the first questions and the
    paragraphs of the articles they come from.

    A question asked twice (its text, in ``query_lang``) is one query, under its first id, with
    the paragraphs of both: as MTEB's XQuADRetrieval reads the data (it keys questions by their
    text), so scores compare with the leaderboard's (ru 1,186 queries, en 1,187, of 1,190 ids).
    """
    doc_lang = doc_lang or query_lang
    try:
        return _retrieval(_xquad(data_dir, query_lang), _xquad(data_dir, doc_lang), query_lang,
                          doc_lang, limit)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"xquad.{query_lang}.json or xquad.{doc_lang}.json under {data_dir}: "
                         f"an article is not in SQuAD's format (data[].paragraphs[] with "
                         f"'context' and 'qas' of 'question' and 'id'): {e!r}") from None


def _retrieval(q_articles: list[dict], d_articles: list[dict], query_lang: str, doc_lang: str,
               limit: int | None) -> Retrieval:
    """:func:`load_xquad` of the articles read."""
    if len(q_articles) != len(d_articles):
        raise ValueError(f"xquad.{query_lang} and xquad.{doc_lang} are not parallel")
    query_ids: list[str] = []
    queries: list[str] = []
    qrels: dict[str, set[str]] = {}
    doc_ids: list[str] = []
    docs: list[str] = []
    asked: dict[str, str] = {}  # question text -> the id of its query
    for a, (qa, da) in enumerate(zip(q_articles, d_articles, strict=True)):
        if limit is not None and len(query_ids) >= limit:
            break
        seen: dict[str, str] = {}  # paragraph text -> id: a repeated paragraph is one document
        for p, para in enumerate(da["paragraphs"]):
            doc_id = seen.setdefault(para["context"], f"{a}-{p}")
            if doc_id == f"{a}-{p}":
                doc_ids.append(doc_id)
                docs.append(para["context"])
        d_keys = [seen[para["context"]] for para in da["paragraphs"]]
        for p, para in enumerate(qa["paragraphs"]):
            for q in para["qas"]:
                if limit is not None and len(query_ids) >= limit:
                    break
                qid = asked.setdefault(q["question"], q["id"])
                if qid == q["id"]:
                    query_ids.append(qid)
                    queries.append(q["question"])
                qrels.setdefault(qid, set()).add(d_keys[p])
    return Retrieval(query_ids, queries, doc_ids, docs, qrels)
