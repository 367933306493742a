"""Loaders on the real files in ../shared/datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from qwen_tiny import DATASETS

from smysl.eval import data as d


@pytest.fixture(scope="module")
def root() -> Path:
    if not (DATASETS / "stsb").is_dir():
        pytest.skip(f"datasets not found at {DATASETS}")
    return DATASETS


def test_default_data_dir_is_shared_datasets() -> None:
    assert d.DEFAULT_DATA_DIR.resolve() == DATASETS.resolve()


def test_sts_test_split_rescaled_and_row_aligned(root: Path) -> None:
    en, ru = d.load_sts(root, "en"), d.load_sts(root, "ru")
    assert len(en.gold) == len(ru.gold) == 1379
    assert min(en.gold) == 0.0 and max(en.gold) == 1.0  # 0-5 rescaled to 0-1
    assert en.gold == ru.gold  # stsb_multi_mt is row-aligned across languages
    assert en.texts1[0] == "A girl is styling her hair."
    assert ru.texts1[0] == "Девушка укладывает волосы."
    assert len(d.load_sts(root, "en", "dev").gold) == 1500


def test_paraphraser_binarised(root: Path) -> None:
    p = d.load_paraphraser(root)
    assert len(p.gold) == 1924
    assert Counter(p.gold) == {1.0: 778 + 374, 0.0: 772}  # precise + near paraphrases vs -1
    # a review's: the file starts with five negatives, so --limit 5 had no positive (AP 0)
    assert set(d.load_paraphraser(root, limit=5).gold) == {0.0, 1.0}


def test_sentiment(root: Path) -> None:
    s = d.load_sentiment(root)
    assert len(s.train_texts) == len(s.test_texts) == 3000  # multi-line tweets parsed as one row
    assert Counter(s.test_labels) == {"-1": 1000, "0": 1000, "1": 1000}


def test_intents_parallel(root: Path) -> None:
    ru, en = d.load_intents(root, "ru"), d.load_intents(root, "en")
    assert len(ru.train_texts) == len(en.test_texts) == 5000
    assert ru.test_labels == en.test_labels and len(set(ru.test_labels)) == 68
    assert en.train_texts[0] == "what is the stock value of google"
    assert ru.train_texts[0] == "какова балансовая стоимость гугля"
    with pytest.raises(ValueError):
        d.load_intents(root, "de")


def test_limit_keeps_every_class_it_can(root: Path) -> None:
    s = d.load_sentiment(root, limit=9)
    assert len(s.train_texts) == 9 and Counter(s.train_labels) == {"-1": 3, "0": 3, "1": 3}
    assert len(d.load_sts(root, "en", limit=7).gold) == 7


def test_xquad_monolingual_and_cross_lingual(root: Path) -> None:
    ru = d.load_xquad(root, "ru")
    # a question asked twice is one query, as MTEB's XQuADRetrieval keys them by text (its
    # leaderboard's counts): 1,190 ids, 4 (ru) and 3 (en) repeats, each of one paragraph
    assert (len(ru.queries), len(set(ru.queries)), len(ru.docs)) == (1186, 1186, 240)
    assert all(len(rel) == 1 and rel <= set(ru.doc_ids) for rel in ru.qrels.values())
    ru_en = d.load_xquad(root, "ru", "en")
    en = d.load_xquad(root, "en")
    assert (len(en.queries), len(set(en.queries))) == (1187, 1187)
    assert ru_en.queries == ru.queries and ru_en.docs == en.docs
    assert ru_en.qrels == ru.qrels  # parallel ids: same paragraph positions
    assert all(en.qrels[q] == ru.qrels[q] for q in set(en.qrels) & set(ru.qrels))
    # the first question's answer ("308") is in its relevant paragraph, in both languages
    for r in (en, ru):
        doc = dict(zip(r.doc_ids, r.docs, strict=True))
        assert "308" in doc[next(iter(r.qrels[r.query_ids[0]]))]


def test_xquad_limit_keeps_the_articles_of_its_questions(root: Path) -> None:
    r = d.load_xquad(root, "en", limit=30)
    assert len(r.queries) == 30
    assert all(rel <= set(r.doc_ids) for rel in r.qrels.values())
    assert len(r.docs) < 240


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"stsb-en-test\.csv"):
        d.load_sts(tmp_path, "en")


def test_malformed_files_are_named_with_the_row_and_column(tmp_path: Path) -> None:
    """A review's: a header row in the STS file was "could not convert string to float:
    'score'", an intents file without its label column a ``KeyError`` traceback, a cut
    XQuAD file "Expecting value: line 2 column 1": none named the file."""
    (tmp_path / "stsb").mkdir()
    sts = tmp_path / "stsb" / "stsb-en-test.csv"
    sts.write_text("sentence1,sentence2,score\na,b,5.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"stsb-en-test\.csv, row 1: not sentence1,sentence2"):
        d.load_sts(tmp_path, "en")
    (tmp_path / "intents").mkdir()
    for split in ("train", "test"):
        (tmp_path / "intents" / f"intents_{split}.csv").write_text(
            "text,answer,intent\nпривет,hello,greet\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"intents_train\.csv: no column 'label' in its header "
                                         r"\(text, answer, intent\)"):
        d.load_intents(tmp_path, "ru")
    (tmp_path / "intents" / "intents_train.csv").write_text(
        "text,answer,label\nпривет,hello,greet\nпока,bye\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"intents_train\.csv, line 3: the row ends before "
                                         r"its column 'label'"):
        d.load_intents(tmp_path, "en")
    (tmp_path / "xquad").mkdir()
    (tmp_path / "xquad" / "xquad.en.json").write_text('{"data": [\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"xquad\.en\.json: not JSON"):
        d.load_xquad(tmp_path, "en")
    (tmp_path / "xquad" / "xquad.en.json").write_text('{"data": [{"title": "t"}]}',
                                                      encoding="utf-8")
    with pytest.raises(ValueError, match="not in SQuAD's format"):
        d.load_xquad(tmp_path, "en")
    # no articles: every score of its tasks was NaN (and a --compare of that run crashed)
    (tmp_path / "xquad" / "xquad.en.json").write_text('{"data": []}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"xquad\.en\.json: its 'data' list holds no articles"):
        d.load_xquad(tmp_path, "en")
    sts.write_bytes(b"a,b,5.0\n" * 3000 + "кошка,кот,4.0\n".encode("cp1251"))
    with pytest.raises(ValueError, match=r"stsb-en-test\.csv: not UTF-8 text \(byte 0xea "
                                         r"at offset 24000\)"):  # the file's, not a chunk's
        d.load_sts(tmp_path, "en")
