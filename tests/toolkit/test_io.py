"""Row tables in and out: CSV, JSONL and JSON arrays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smysl.toolkit.io import iter_rows, read_column, table_format, write_rows

ROWS = [{"id": "a", "text": "Кошка мурлычет."}, {"id": "b", "text": "Dogs bark.", "n": 2}]


def test_a_json_array_is_read_as_rows_and_written_as_one(tmp_path: Path) -> None:
    """A ``.json`` array of objects (an export, ``json.dump``) was read line by line as JSON
    Lines and failed on its first line; a ``.json`` output was JSON Lines, no JSON at all."""
    src = tmp_path / "in.json"
    src.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    assert table_format(src) == "json"
    assert list(iter_rows(src)) == ROWS
    assert read_column(src, "text")[0] == [r["text"] for r in ROWS]
    out = tmp_path / "out.json"
    write_rows(out, ROWS)
    assert json.loads(out.read_text(encoding="utf-8")) == ROWS
    assert list(iter_rows(out)) == ROWS
    write_rows(out, [])
    assert json.loads(out.read_text(encoding="utf-8")) == []


def test_json_lines_under_json_are_still_read(tmp_path: Path) -> None:
    src = tmp_path / "lines.json"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert list(iter_rows(src)) == ROWS


@pytest.mark.parametrize(("content", "words"), [
    ('[{"text": "x"}, "y"]', "item 2 of the array is a str"),
    ('[{"text": "x"},', "invalid JSON"),
    ('{\n  "rows": [{"text": "x"}]\n}\n', "one JSON object, not a table"),  # said: line 1
    ('{"text": "x"}\n{"text": \n', ":2: invalid JSON"),  # JSON Lines: by its line
])
def test_a_bad_json_array_is_named(tmp_path: Path, content: str, words: str) -> None:
    src = tmp_path / "bad.json"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=words) as e:
        list(iter_rows(src))
    assert str(src) in str(e.value)


def test_a_json_file_named_alone_is_indexed_and_one_in_a_folder_is_not(tmp_path: Path) -> None:
    """A review's: ``index add x.json`` said "unsupported file type"; a .json file in a folder
    is left alone (a config as often as a table)."""
    from smysl.toolkit.ingest import ReadConfig, iter_paths, read_documents

    (tmp_path / "rows.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.md").write_text("Привет.", encoding="utf-8")
    docs = list(read_documents([tmp_path / "rows.json"], ReadConfig(id_field="id")))
    assert [d.text for d in docs] == [r["text"] for r in ROWS]
    assert [p.name for p in iter_paths([tmp_path])] == ["a.md"]


def test_a_csv_quote_never_closed_is_named_not_read_to_the_end(tmp_path: Path) -> None:
    """A review's (the corpus job's, the same reader rule here): the rows after a quote that
    never closes were read into its field without a word. Closed quotes over several lines,
    and doubled quotes, read as before."""
    bad = tmp_path / "bad.csv"
    bad.write_text('id,text\nz,fine\na,"unclosed\nb,second\nc,third\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: a quoted field opens in this "
                                         r"record and the file ends before it closes"):
        list(iter_rows(bad))
    good = tmp_path / "good.csv"
    good.write_text('id,text\na,"two\nlines"\nb,"say ""hi"""\n', encoding="utf-8")
    assert [r["text"] for r in iter_rows(good)] == ["two\nlines", 'say "hi"']
    last = tmp_path / "last.csv"  # the last record over two lines, closed: no error
    last.write_text('id,text\na,"x\ny"', encoding="utf-8")
    assert [r["text"] for r in iter_rows(last)] == ["x\ny"]
    # the first record, and one after a blank line, named by the line its quote opens on
    # (a review's: the header counted as the first record's, the blank line as the next's)
    for text, line, count in (('id,text\n1,"open\n2,b\n3,c\n', 2, 3),
                              ('id,text\n1,a\n\n2,"open\n3,b\n', 4, 2),
                              ('id,text\n1,"abc\n', 2, 1), ('id,text\n0,x\n1,"abc', 3, 1)):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=rf"bad\.csv, line {line}: .* its {count} line"):
            list(iter_rows(bad))


def test_one_rule_for_ids() -> None:
    """``smysl index add --id-field`` took ``true`` as id "True" and ``1.0`` as "1.0", where
    the corpus job refused the one and read "1": one rule (``row_id``) for both."""
    import numpy as np

    from smysl.rows import row_id

    assert [row_id(v, "id") for v in ("a", 7, 1.0, 2.5, "тест".encode(), np.float32(3.0),
                                      np.int64(4))] == ["a", "7", "1", "2.5", "тест", "3", "4"]
    for bad, words in ((None, "no usable id"), ("", "no usable id"), (float("nan"), "no usable"),
                       (True, "not a string or number"), ([1], "not a string or number"),
                       (float("inf"), "not an id"), (b"\xff", "not UTF-8"),
                       (b"", "no usable id"), (np.bool_(True), "not a string or number")):
        with pytest.raises(ValueError, match=words):
            row_id(bad, "id")


def test_a_csv_keeps_the_rows_column_order_before_the_named_columns(tmp_path: Path) -> None:
    """A review's: JSONL in, CSV out put the columns a command adds first
    (``predicted,score,text,метка``): the named columns came before the rows' own. A table
    without rows still names them."""
    out = tmp_path / "out.csv"
    rows = [{"text": "привет", "метка": "a", "predicted": "a", "score": 0.5}]
    write_rows(out, rows, ["predicted", "score"])
    assert out.read_text(encoding="utf-8").splitlines()[0] == "text,метка,predicted,score"
    write_rows(out, [], ["text", "predicted"])
    assert out.read_text(encoding="utf-8").splitlines() == ["text,predicted"]
