"""Reading a corpus job's input: CSV fields of any length, a UTF-8 BOM, bytes that are not
UTF-8 named by line, files a folder holds that are not read, tokens as embedded, and the Ray
Data rows' one rule for a usable id and text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smysl.cli import main
from smysl.options import ModelOptions
from smysl.scale import BadRowError, JobConfig, run_job

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def tiny32(tiny_dir):
    """The tiny model taking at most 32 tokens an input."""
    from smysl import Embedder

    return Embedder.load(str(tiny_dir), device="cpu", max_tokens=32)


def _table(out) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out).to_pylist()}


def test_csv_field_longer_than_the_csv_default(tiny32, tmp_path) -> None:
    """A text over 131,072 characters crashed with `_csv.Error: field larger than field limit`,
    naming neither file nor row; it is read (and cut under --truncate)."""
    d = tmp_path / "in"
    d.mkdir()
    long = "word " * 40_000  # 200,000 characters
    (d / "big.csv").write_text(f"id,text\nshort,a few words\nlong,{long}\n", encoding="utf-8")
    got = _table(run_job(tiny32, [d], JobConfig(output=str(tmp_path / "o"), truncate=True))
                 .output)
    assert set(got) == {"short", "long"}
    np.testing.assert_allclose(got["long"]["vector"], tiny32.embed([long], truncate=True)[0],
                               atol=1e-5)


def test_utf8_bom_is_not_part_of_the_first_column(tiny, tmp_path) -> None:
    """A BOM broke the CSV header (`no column 'id' (columns: \\ufeffid, text)`) and the first
    JSONL line (invalid JSON)."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_bytes("\ufeffid,text\nc1,from csv\n".encode())
    (d / "b.jsonl").write_bytes(("\ufeff" + json.dumps({"id": "j1", "text": "from jsonl"})
                                 + "\n").encode())
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))
    assert set(_table(report.output)) == {"c1", "j1"} and report.bad_rows == 0


def test_a_json_line_ends_at_newline_only(tiny, tmp_path) -> None:
    """A lone \\r (JSON whitespace) ended a JSONL line: its record became two broken ones, and
    every later record's number (its line, as wc and sed count them) moved by one."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b'{"id": "r1",\r"text": "one"}\n{"id": "r2", "text": "two"}\n'
                                b"not json\n")
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o"), skip_bad_rows=True))
    assert set(_table(report.output)) == {"r1", "r2"} and report.bad_rows == 1
    assert report.bad_examples[0].endswith(
        "a.jsonl, row 3: invalid JSON (Expecting value at column 1)")
    # a message that ends "at" lost its place: "Invalid control character at"
    (d / "a.jsonl").write_bytes(b'{"id": "r3", "text": "o\tne"}\n')
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "p"), skip_bad_rows=True))
    assert report.bad_examples[0].endswith(
        "row 1: invalid JSON (Invalid control character at column 24)"), report.bad_examples
    # a line cut short (a writer killed mid-line) was placed at "column 1", of the next line
    (d / "a.jsonl").write_bytes(b'{"id": "r4", "text": "one"}\n{"id":"g","text":"broken json"\n'
                                b'{"id": "r5", "text": "two"}\n')
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "q"), skip_bad_rows=True))
    assert report.bad_examples[0].endswith(
        "row 2: invalid JSON (Expecting ',' delimiter at column 31)"), report.bad_examples


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv"])
def test_a_byte_that_is_not_utf8_is_named_by_file_and_line(tiny, tmp_path, name) -> None:
    """The error named the file only; it names the line and the byte's offset too."""
    d = tmp_path / "in"
    d.mkdir()
    head = "id,text\nr1,fine\n" if name.endswith(".csv") else '{"id": "r1", "text": "fine"}\n'
    bad = b"r2,caf\xe9\n" if name.endswith(".csv") else b'{"id": "r2", "text": "caf\xe9"}\n'
    (d / name).write_bytes(head.encode() + bad)
    offset = len(head.encode()) + bad.index(b"\xe9")
    line = head.count("\n") + 1
    with pytest.raises(ValueError, match=rf"{name}, line {line} \(byte {offset} of the file, "
                                         r"0xe9\): not valid UTF-8.*convert the file to UTF-8"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))


def test_unparseable_csv_is_named_by_file_and_line(tiny, tmp_path, monkeypatch) -> None:
    """An error of the csv module names the file and the line (a field over a limit lowered
    for the test: the only error its lenient default dialect raises)."""
    import csv

    import smysl.files

    d = tmp_path / "in"
    d.mkdir()
    (d / "rows.csv").write_text("id,text\nr1,fine\nr2,a text longer than 20\n")
    before = csv.field_size_limit(20)
    monkeypatch.setattr(smysl.files, "CSV_FIELD_LIMIT", 20)
    try:
        with pytest.raises(ValueError, match=r"rows\.csv, line 3: not readable as CSV \(field "
                                             r"larger than field limit \(20\)\)"):
            run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))
    finally:
        csv.field_size_limit(before)


def test_truncated_tokens_are_counted_as_embedded(tiny32, tmp_path) -> None:
    """Under --truncate the `tokens` column and the summary said the untruncated count; they
    say what was embedded: at most the model's 32, EOS included."""
    d = tmp_path / "in"
    d.mkdir()
    texts = {"short": "a few words", "long": "word " * 100}
    (d / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                                       for i, t in texts.items()), encoding="utf-8")
    report = run_job(tiny32, [d], JobConfig(output=str(tmp_path / "o"), truncate=True))
    got = _table(report.output)
    short = tiny32.count_tokens([texts["short"]])[0]
    assert tiny32.count_tokens([texts["long"]])[0] > 32
    assert got["long"]["tokens"] == 32 and got["short"]["tokens"] == short
    assert report.tokens == 32 + short


def test_files_a_folder_holds_but_the_job_does_not_read_are_named(tiny, tiny_dir, tmp_path,
                                                                  capsys) -> None:
    """.json, .jsonl.gz and .tsv files in an input folder were skipped silently."""
    d = tmp_path / "in"
    (d / ".git").mkdir(parents=True)
    (d / "a.jsonl").write_text(json.dumps({"id": "a", "text": "read"}) + "\n")
    for name in ("b.json", "c.jsonl.gz", "d.tsv", "_SUCCESS", ".hidden.json", ".git/config"):
        (d / name).write_text("x")
    with pytest.warns(UserWarning, match=r"3 files not read \(not \.jsonl/\.csv/\.parquet\): "
                                         r".*b\.json, .*c\.jsonl\.gz, .*d\.tsv$"):
        report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))
    assert len(report.unread_files) == 3 and "3 files not read" in report.summary()
    assert main(["embed", "--input", str(d), "--output", str(tmp_path / "o2"), "--model",
                 str(tiny_dir), "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "smysl embed: warning: 3 files not read" in err and "UserWarning" not in err


def test_a_row_without_the_field_names_the_fields_it_has(tiny, tmp_path) -> None:
    """A review's: `--text-field body` on JSONL rows of `text` said "row 1: no text field
    'body'" and advised --skip-bad-rows, which skipped every row; a CSV said its columns. A
    row without the field (or the id's) names the fields it has."""
    from smysl.scale import JobConfig, run_job

    d = tmp_path / "c"
    d.mkdir()
    (d / "a.jsonl").write_text('{"id": "1", "text": "a"}\n{"id": "2", "text": "b"}\n')
    with pytest.raises(ValueError, match=r"row 1: no text field 'body' \(its fields: id, "
                                         r"text\)"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o"), text_field="body"))
    with pytest.raises(ValueError, match=r"no usable id field 'key' \(its fields: id, text\)"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o2"), id_field="key"))


@pytest.mark.parametrize("name", ["rows.json", "rows.jsonl.gz", "rows.tsv", "vectors.npy"])
def test_a_data_file_is_not_embedded_as_lines(tiny_dir, tmp_path, capsys, name) -> None:
    """`--input x.json` embedded each raw JSON line as a text; such files are refused (a
    .npy: "not valid UTF-8")."""
    (tmp_path / name).write_text(json.dumps({"id": "a", "text": "t"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["embed", "--input", str(tmp_path / name), "--output", str(out), "--model",
                 str(tiny_dir), "--device", "cpu"]) == 2
    assert f"{name}: a {name[name.rindex('.'):]} file is not read" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("output", "shown"), [
    ("folder", "folder"), ("lancedb:kb", "lancedb:kb"), ("missing/out.jsonl", "missing/out.jsonl"),
    ("postgresql://u:s3cret@127.0.0.1:9/db", "postgres:127.0.0.1:9/db"),
    ("qdrant:http://u:s3cret@127.0.0.1:9", "qdrant:http://127.0.0.1:9")])
def test_lines_mode_refuses_an_output_it_cannot_write_before_embedding(
        tiny_dir, tmp_path, capsys, monkeypatch, output, shown) -> None:
    """Lines of text with a folder --output failed only after embedding everything
    ([Errno 21] Is a directory). An index's password is not repeated."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "lines.txt").write_text("one\ntwo\n")
    import smysl.commands.embed as command

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "load_model", no_model)
    assert main(["embed", "--input", "lines.txt", "--output", output, "--model",
                 str(tiny_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--output {shown}:" in err and "s3cret" not in err
    assert not (tmp_path / "kb").exists()


def _dataset_worker(tiny_dir, **settings):
    from smysl.scale.ray_data import _DatasetWorker

    kwargs = {"instruction": None, "dimensions": None, "truncate": False, **settings}
    return _DatasetWorker(str(tiny_dir), ModelOptions(device="cpu", **(
        {"max_tokens": 32} if settings.get("truncate") else {})), "id", "text", **kwargs)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"instruction": "query"}, "names a role, not a task"),
    ({"instruction": "retreival"}, "looks like the preset 'retrieval' misspelt"),
    ({"truncate": "no"}, "truncate"),
])
def test_ray_data_settings_are_refused_before_the_pool_starts(settings, problem) -> None:
    """A review's: embed_dataset(instruction='query') was refused by every batch, after the
    actors had loaded the model; now before Ray is even reached (no dataset needed)."""
    from smysl.scale import embed_dataset

    with pytest.raises(ValueError, match=problem):
        embed_dataset(None, "unused", **settings)


@pytest.mark.parametrize(("ids", "texts", "problem"), [
    (["a", None], ["alpha", "beta"], r"\(id=None, text='beta'\): no usable id field 'id'"),
    (["a", "c"], ["alpha", None], r"\(id='c', text=None\): no text field 'text'"),
    ([1.0, float("nan")], ["alpha", "beta"], r"\(id=None, text='beta'\): no usable id field"),
    (["a", ""], ["alpha", "beta"], r"\(id='', text='beta'\): no usable id field 'id'"),
])
def test_ray_data_rows_without_id_or_text_are_refused(tiny_dir, ids, texts, problem) -> None:
    """A null id or text became the string "None"/"nan" and was embedded; the batch is refused
    naming the row, as the job's rule says (no Ray cluster needed: the map_batches callable)."""
    worker = _dataset_worker(tiny_dir)
    batch = {"id": np.asarray(ids, dtype=object if isinstance(ids[0], str) else float),
             "text": np.asarray(texts, dtype=object)}
    with pytest.raises(BadRowError, match=rf"Ray Data row {problem}"):
        worker(batch)


def test_ray_data_tokens_are_counted_as_embedded(tiny_dir, tiny32) -> None:
    """The Ray Data callable's `tokens`: the query template counted, and at most the model's
    limit under truncation (it counted the bare, untruncated text)."""
    worker = _dataset_worker(tiny_dir, truncate=True, instruction="find")
    texts = ["a few words", "word " * 100]
    out = worker({"id": np.asarray(["s", "l"], dtype=object),
                  "text": np.asarray(texts, dtype=object)})
    expected = [min(n, 32) for n in tiny32.count_tokens(tiny32.format_texts(texts, "find"))]
    assert out["tokens"].tolist() == expected and expected[1] == 32
    assert list(out["id"]) == ["s", "l"]
    np.testing.assert_allclose(out["vector"],
                               tiny32.embed(texts, instruction="find", truncate=True),
                               atol=1e-5)


def test_progress_totals_count_records_not_lines(tmp_path) -> None:
    """The progress bar's total: 30 CSV records of 10 lines each were 300 (the bar ended at
    10% and the ETA was ten times too long); blank JSONL lines counted, a last line without
    a newline not. Each total now equals the rows the reader gives."""
    import csv as csvmod

    from smysl.scale.sources import Source, count_records, read_rows

    multi = tmp_path / "multi.csv"
    with open(multi, "w", encoding="utf-8", newline="") as f:
        w = csvmod.writer(f)
        w.writerow(["id", "text"])
        w.writerows([f"r{i}", "\n".join(f"line {j}" for j in range(10))] for i in range(30))
    plain = tmp_path / "plain.csv"
    plain.write_text("id,text\na,one\n\nb,two", encoding="utf-8")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('\n{"id": "a", "text": "x"}\n\n  \n{"id": "b", "text": "y"}', encoding="utf-8")
    for path in (multi, plain, blank):
        src = Source(path, path.name)
        assert count_records(src) == len(list(read_rows(src, "id", "text"))), path.name
    assert count_records(Source(multi, multi.name)) == 30


def test_a_csv_row_with_more_fields_than_its_header_is_a_bad_row() -> None:
    """`hello, world` unquoted: the text was "hello" and " world" went unseen."""
    from smysl.scale.sources import to_row

    row = to_row(2, {"id": "a", "text": "hello", None: [" world"]}, "id", "text")
    assert row.problem is not None and "more fields than the header" in row.problem
    assert to_row(2, {"id": "a", "text": "hello, world"}, "id", "text").problem is None


def test_an_index_job_counts_the_tokens_of_its_chunks(tiny, tmp_path) -> None:
    """An index job counted its rows' tokens (892), not the chunks' it embedded (1,279 with
    their overlaps and EOS, as the Parquet output of the same chunking says)."""
    pytest.importorskip("lancedb")
    from smysl.toolkit.chunking import ChunkConfig

    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": "long", "text": " ".join(f"слово{i}" for i in range(200))},
            {"id": "empty", "text": ""}]
    (d / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                               encoding="utf-8")
    chunk = ChunkConfig(max_tokens=64, overlap=16)
    parquet = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o"), chunk=chunk))
    index = run_job(tiny, [d], JobConfig(output=f"lancedb:{tmp_path / 'kb'}", chunk=chunk))
    column = sum(r["tokens"] for r in _table(parquet.output).values())
    assert index.texts == parquet.texts > 1
    assert index.tokens == parquet.tokens == column > tiny.count_tokens([rows[0]["text"]])[0]
    # a row appended: the file's old rows are in the index already, the new row's chunks
    # are what this run embedded (it said "tokens not counted")
    extra = {"id": "more", "text": " ".join(f"ещё{i}" for i in range(90))}
    with (d / "a.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(extra, ensure_ascii=False) + "\n")
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "b.jsonl").write_text(json.dumps(extra, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    more = run_job(tiny, [d], JobConfig(output=f"lancedb:{tmp_path / 'kb'}", chunk=chunk))
    alone = run_job(tiny, [tmp_path / "alone"], JobConfig(output=str(tmp_path / "o2"),
                                                          chunk=chunk))
    assert more.unchanged == index.texts and more.texts == alone.texts > 1
    assert more.tokens == alone.tokens and "tokens not counted" not in more.summary()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("truncate", "no", "truncate must be True or False, got 'no'"),
    ("skip_bad_rows", 1, "skip_bad_rows must be True or False"),
    ("shard_rows", 2.5, "shard_rows must be an integer >= 1, got 2.5"),
    ("batch_size", "256", "batch_size must be an integer >= 1"),
    ("batch_size", 0, "batch_size must be an integer >= 1"),
    ("dimensions", "32", "dimensions must be a positive integer")])
def test_a_job_setting_of_the_wrong_type_is_refused_before_anything_is_written(
        tmp_path, field, value, message) -> None:
    """truncate="no" truncated silently; a float shard size failed mid-job with a format
    error, the output folder made."""
    with pytest.raises(ValueError, match=message):
        JobConfig(output=str(tmp_path / "o"), **{field: value})
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("inputs", ["corpus", "/"])
def test_one_path_string_is_refused_not_read_character_by_character(tiny, tmp_path,
                                                                   inputs) -> None:
    """`run_job(m, "corpus", ...)` read "c", "o", ... as paths; "/data" walked the whole
    file system from "/"."""
    with pytest.raises(TypeError, match="a list of files or folders, not one path"):
        run_job(tiny, inputs, JobConfig(output=str(tmp_path / "o")))  # type: ignore[arg-type]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--chunk-tokens", "0"], ["--output", "x.csv"],
                                   ["--output", "x.ndjson"]])
def test_cli_corpus_job_refuses_a_chunk_size_of_zero_and_a_file_output(
        tiny_dir, tmp_path, capsys, monkeypatch, flags) -> None:
    """--chunk-tokens 0 embedded rows whole (0 read as not given); --output x.csv made a
    folder of Parquet shards named x.csv."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "a", "text": "t"}) + "\n")
    args = ["embed", "--input", "a.jsonl", "--output", "o", "--model", str(tiny_dir),
            "--device", "cpu", "--no-progress"]
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert "max_tokens must be >= 2, got 0" in err or "not a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_a_preset_name_and_its_text_are_one_job(tiny, tmp_path) -> None:
    """The Python API's JobConfig(instruction="qa") and the CLI's resolved text of "qa" were
    two jobs (another fingerprint: a rerun from the other refused the folder); "" and None
    (no instruction) too, and an index refused instruction="" as a query instruction."""
    from smysl.prompts import TASK_PRESETS
    from smysl.scale.job import job_fingerprint

    out = str(tmp_path / "o")
    fp = {i: job_fingerprint(tiny, JobConfig(output=out, instruction=i))
          for i in ("qa", TASK_PRESETS["qa"], "", None)}
    assert fp["qa"] == fp[TASK_PRESETS["qa"]] != fp[""] == fp[None]
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"id": "a", "text": "t"}) + "\n")
    report = run_job(tiny, [d], JobConfig(output=f"lancedb:{tmp_path / 'kb'}", instruction=""))
    assert report.texts == 1


def test_an_input_without_rows_is_said(tiny, tmp_path) -> None:
    """An empty file was "embedded 0 texts" and exit 0, a folder made: a job done, to read."""
    (tmp_path / "empty.jsonl").write_bytes(b"")
    report = run_job(tiny, [tmp_path / "empty.jsonl"], JobConfig(output=str(tmp_path / "o")))
    assert report.summary().count("the input held no rows") == 1
    (tmp_path / "one.jsonl").write_bytes(b'{"id": "a", "text": "one"}\n')
    report = run_job(tiny, [tmp_path / "one.jsonl"], JobConfig(output=str(tmp_path / "p")))
    assert "no rows" not in report.summary()
    again = run_job(tiny, [tmp_path / "one.jsonl"], JobConfig(output=str(tmp_path / "p")))
    assert again.shards_skipped == 1 and "no rows" not in again.summary()
    # a review's: rows an index already held as they are were "the input held no rows"
    kb = f"lancedb:{tmp_path / 'kb'}"
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig

    with Index.create_or_open(tiny, IndexConfig(store=StoreConfig.parse(kb))) as ix:
        ix.add_texts(["one"], ids=["a"])
    kept = run_job(tiny, [tmp_path / "one.jsonl"], JobConfig(output=kb))
    assert kept.texts == 0 and kept.unchanged == 1, kept
    assert "no rows" not in kept.summary() and "1 chunk(s) already in the index" in kept.summary()
    # an empty CSV is a file without rows, as an empty JSONL file is (it stopped the job:
    # "no column 'id' (columns: )", after the other files' shards were written)
    (tmp_path / "z.csv").write_bytes(b"")
    report = run_job(tiny, [tmp_path / "z.csv"], JobConfig(output=str(tmp_path / "q")))
    assert report.summary().count("the input held no rows") == 1


def test_a_csv_quote_never_closed_is_an_error_naming_its_line(tiny, tmp_path) -> None:
    """A review's: the csv module read the rest of the file into the field a quote opened,
    and the rows after it were gone without a word (pandas refuses the file). A quote that a
    later line closes is a text of several lines, as before."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "rows.csv").write_text('id,text\nz,fine\na,"unclosed quote\nb,second\nc,third\n')
    with pytest.raises(ValueError, match=r"rows\.csv, line 3: a quoted field opens in this "
                                         r"record and the file ends before it closes: its 3 "
                                         r"line"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))
    assert not list((tmp_path / "o").glob("*.parquet"))  # nothing committed
    (d / "rows.csv").write_text('id,text\na,"two\nlines"\nb,"x ""quoted"" y"\n')
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o2")))
    assert _table(report.output)["a"]["tokens"] > 0 and report.texts == 2
    (d / "rows.csv").write_text("id;text\na;b\n")  # a spreadsheet's export in some locales
    with pytest.raises(ValueError, match=r"no column 'id' \(columns: id;text\); its fields "
                                         r"are separated by ';'"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o3")))


def test_a_writers_underscore_folder_is_left_out_and_named(tiny, tmp_path) -> None:
    """A review's: Spark's ``_temporary`` (a failed attempt's partial files) was read with the
    dataset, its rows embedded beside the committed ones (ids twice); Parquet readers leave
    ``_`` folders out. So does the job, naming their data files."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    d = tmp_path / "spark"
    (d / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), d / "part-0.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two (partial)"]}),
                   d / "_temporary" / "0" / "part-0.parquet")
    (d / "_SUCCESS").write_text("")
    assert pq.read_table(d).num_rows == 2  # what pyarrow reads of the folder
    with pytest.warns(UserWarning, match=r"1 files not read \(not \.jsonl/\.csv/\.parquet, or "
                                         r"in a folder whose name starts with _.*_temporary"):
        report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o")))
    assert report.texts == 2 and sorted(_table(report.output)) == ["a", "b"]


def test_ids_of_a_nullable_integer_column_and_binary_texts(tiny, tmp_path) -> None:
    """A review's: one null made pandas' integer id column float64, and ids came out "1.0",
    "2.0" (a CSV of the same rows gave "1", "2"); a binary text column (older Spark/Hive)
    was refused row by row as "not a string"."""
    from smysl.scale.sources import to_row

    assert to_row(1, {"id": 1.0, "text": "t"}, "id", "text").id == "1"
    assert to_row(1, {"id": 1.5, "text": "t"}, "id", "text").id == "1.5"
    assert to_row(1, {"id": 1e20, "text": "t"}, "id", "text").id == "100000000000000000000"
    for bad in (float("inf"), float("-inf")):
        assert "not an id" in (to_row(1, {"id": bad, "text": "t"}, "id", "text").problem or "")
    assert to_row(1, {"id": "a", "text": "тест".encode()}, "id", "text").text == "тест"
    assert "not UTF-8" in (to_row(1, {"id": "a", "text": b"\xff"}, "id", "text").problem or "")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    d = tmp_path / "in"
    d.mkdir()
    pd.DataFrame({"id": [1, 2, None, 4], "text": ["a", "b", "c", None]}).to_parquet(
        d / "nullable.parquet")
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o"), skip_bad_rows=True))
    assert sorted(_table(report.output)) == ["1", "2"]


def test_cli_counts_are_checked_by_argparse_naming_the_flag(tmp_path, capsys) -> None:
    """A review's: ``--shard-rows 0`` was refused as ``shard_rows`` after the model loaded."""
    for flag in ("--shard-rows", "--batch-size"):
        with pytest.raises(SystemExit) as e:
            main(["embed", "--input", "x", "--output", str(tmp_path / "o"), "--model", "m",
                  flag, "0"])
        assert e.value.code == 2
        assert f"argument {flag}: expected a whole number >= 1, got '0'" in \
            capsys.readouterr().err
