"""The resumable corpus embedding job (issue 16): JSONL/CSV/Parquet in, Parquet shards or an
index out; reruns redo only missing shards; broken rows named, skipped only when asked."""

from __future__ import annotations

import csv
import json
import pickle
import uuid

import numpy as np
import pytest
from toolkit.helpers import Counting

from smysl.cli import main
from smysl.scale import BadRowError, JobConfig, JobInterrupted, run_job
from smysl.toolkit.chunking import ChunkConfig, chunker_for

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def _text(i: int) -> str:
    return f"row {i}: {WORDS[i % 8]} {WORDS[(i * 3) % 8]} and the number {i * 7}"


@pytest.fixture
def corpus(tmp_path):
    """25 rows over three formats: a.jsonl (10), b.csv (8), sub/c.parquet (7)."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "text": _text(i)}) + "\n"
                                       for i in range(10)), encoding="utf-8")
    with open(d / "b.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "extra"])
        w.writeheader()
        w.writerows({"id": f"b{i}", "text": _text(10 + i), "extra": "x"} for i in range(8))
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(7)],
                             "text": [_text(18 + i) for i in range(7)]}), d / "sub" / "c.parquet")
    return d


def _read(out) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    vecs = np.asarray(table.column("vector").to_pylist(), np.float32)
    return dict(zip(ids, vecs, strict=True))


@pytest.fixture(scope="module")
def tiny32(tiny_dir):
    """The tiny model taking at most 32 tokens an input."""
    from smysl import Embedder

    return Embedder.load(str(tiny_dir), device="cpu", max_tokens=32)


class Crashing(Counting):
    """Stops (as Ctrl-C would) once ``limit`` texts have been embedded."""

    def __init__(self, inner, limit: int) -> None:
        super().__init__(inner)
        self.limit = limit

    def _embed(self, texts, *, truncate, progress=None):
        if self.embedded + len(texts) > self.limit:
            raise KeyboardInterrupt
        return super()._embed(texts, truncate=truncate, progress=progress)


def test_parquet_output_matches_embed(tiny, corpus, tmp_path) -> None:
    """Every row once, with the vector `Embedder.embed` gives, its token count, the model
    fingerprint and the dimensions (issue 16)."""
    out = tmp_path / "out"
    report = run_job(tiny, [corpus], JobConfig(output=str(out), dimensions=64, shard_rows=4,
                                               batch_size=3))
    got = _read(out)
    texts = {f"a{i}": _text(i) for i in range(10)} | {f"b{i}": _text(10 + i) for i in range(8)} \
        | {f"c{i}": _text(18 + i) for i in range(7)}
    assert set(got) == set(texts) and report.texts == 25
    ref = tiny.embed(list(texts.values()), dimensions=64)
    for row, i in zip(ref, texts, strict=True):
        np.testing.assert_allclose(got[i], row, atol=1e-5)
    table = pq.read_table(out)
    assert set(table.column("dimensions").to_pylist()) == {64}
    assert set(table.column("model").to_pylist()) == {tiny.fingerprint()}
    assert sum(table.column("tokens").to_pylist()) == sum(tiny.count_tokens(list(texts.values())))
    assert report.shards_written == 3 + 2 + 2 and report.shards_skipped == 0
    assert report.tokens == sum(tiny.count_tokens(list(texts.values())))


def test_interrupted_job_resumes_missing_shards_only(tiny, corpus, tmp_path) -> None:
    """Ctrl-C mid-run, then a rerun: only the shards not committed are computed (counted),
    and the output equals an uninterrupted run's, every id once (issue 16)."""
    config = JobConfig(output=str(tmp_path / "out"), shard_rows=4, batch_size=2)
    with pytest.raises(JobInterrupted) as stopped:  # a KeyboardInterrupt still
        run_job(Crashing(tiny, limit=7), [corpus], config)  # dies inside shard 2 (a4..a7)
    assert isinstance(stopped.value, KeyboardInterrupt)
    assert stopped.value.report.shards_written == 1 and stopped.value.report.seconds > 0
    # whole through pickle (a process pool, Ray), and it says what it kept
    again = pickle.loads(pickle.dumps(stopped.value))
    assert again.report == stopped.value.report and "shards: 1 written" in str(again)
    committed = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert len(committed) == 1  # a0..a3; the partial second shard was not committed
    counting = Counting(tiny)
    report = run_job(counting, [corpus], config)
    assert report.shards_skipped == 1 and report.shards_written == 6
    assert counting.embedded == 25 - 4  # the rows of the committed shard cost nothing
    assert not list((tmp_path / "out").glob(".*.tmp"))
    again = Counting(tiny)
    assert run_job(again, [corpus], config).shards_skipped == 7 and again.embedded == 0
    fresh = tmp_path / "fresh"
    run_job(tiny, [corpus], JobConfig(output=str(fresh), shard_rows=4, batch_size=2))
    resumed, whole = _read(tmp_path / "out"), _read(fresh)
    assert set(resumed) == set(whole)
    for i in whole:
        np.testing.assert_array_equal(resumed[i], whole[i])


def test_cli_says_what_an_interrupted_job_kept(tiny, corpus, tmp_path, capsys,
                                                monkeypatch) -> None:
    """Ctrl-C of `smysl embed` on a corpus: exit status 130 and one line saying what was
    committed and that the same command resumes (it exited without a word)."""
    from smysl.commands import embed as embed_command

    monkeypatch.setattr(embed_command, "load_model", lambda *_: Crashing(tiny, limit=7))
    out = tmp_path / "out"
    assert main(["embed", "--input", str(corpus), "--output", str(out), "--model", "tiny",
                 "--shard-rows", "4", "--batch-size", "2", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "smysl embed: interrupted after" in err, err
    assert f"shards: 1 written, 0 already done -> {out}; the same command again resumes" in err


def test_bad_rows_are_named_or_skipped_when_asked(tiny, tmp_path) -> None:
    """A broken row stops the job with file and row; --skip-bad-rows reports and skips it
    (issue 16)."""
    d = tmp_path / "in"
    d.mkdir()
    lines = [json.dumps({"id": "x0", "text": "fine"}), "{not json",
             json.dumps({"id": "x2"}), json.dumps({"id": "x3", "text": "also fine"}),
             json.dumps({"id": "x0", "text": "same id again"})]
    (d / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"rows\.jsonl, row 2: invalid JSON.*--skip-bad-rows"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o1")))
    seen: list[str] = []
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o2"), skip_bad_rows=True),
                     on_bad_row=seen.append)
    assert report.bad_rows == 3 and len(seen) == 3
    assert "row 3: no text field 'text'" in seen[1] and "row 5: duplicate id 'x0'" in seen[2]
    assert set(_read(tmp_path / "o2")) == {"x0", "x3"}
    with pytest.raises(ValueError, match="no column 'body'"):
        pq.write_table(pa.table({"id": ["1"], "text": ["t"]}), d / "p.parquet")
        run_job(tiny, [d / "p.parquet"], JobConfig(output=str(tmp_path / "o3"),
                                                   text_field="body"))


def test_other_job_in_same_folder_is_refused(tiny, corpus, tmp_path) -> None:
    """Shards of two jobs (other dimensions) never mix in one dataset (issue 16)."""
    out = str(tmp_path / "out")
    run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=out))
    with pytest.raises(ValueError, match=r"another job.*dimensions"):
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=out, dimensions=32))


def test_chunked_parquet_and_query_instruction(tiny, corpus, tmp_path) -> None:
    """Chunking gives ROW-ID#n ids; an instruction embeds queries, and its template counts
    against the chunk size: each chunk's `tokens` is what it cost as embedded."""
    out = tmp_path / "out"
    task = tiny.choose_instruction("retrieval", role="query")
    template = tiny.count_tokens(tiny.format_texts([""], task))[0]  # instruction + EOS
    config = ChunkConfig(max_tokens=template + 6, overlap=2)
    run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out), instruction=task,
                                                  chunk=config))
    got = _read(out)
    assert all("#" in i for i in got) and len(got) > 10
    table = pq.read_table(out).to_pylist()
    assert table[0]["id"] == "a0#0"
    chunker = chunker_for(tiny, config, instruction=task)
    chunk0 = chunker.split(_text(0))[0]
    np.testing.assert_allclose(got["a0#0"], tiny.embed([chunk0.text], instruction=task)[0],
                               atol=1e-5)
    texts = {f"a{i}#{c.index}": c.text for i in range(10) for c in chunker.split(_text(i))}
    assert set(texts) == set(got)
    for row in table:
        as_embedded = tiny.count_tokens(tiny.format_texts([texts[row["id"]]], task))[0]
        assert row["tokens"] == as_embedded <= template + 6


def test_too_long_row_is_named_by_file_and_row(tiny32, tmp_path) -> None:
    """A row the model refuses as too long is named by file, row and id, not by its place in
    the batch; --skip-bad-rows leaves out that row only, counted and reported."""
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": i, "text": "word " * (60 if i == 7 else 3)} for i in range(10)]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(BadRowError, match=r"rows\.jsonl, row 8: the text of id '7' has \d+ "
                                          r"tokens .* at most 32; .*--skip-bad-rows"):
        run_job(tiny32, [d], JobConfig(output=str(tmp_path / "o1"), batch_size=4))
    seen: list[str] = []
    out = tmp_path / "o2"
    report = run_job(tiny32, [d], JobConfig(output=str(out), batch_size=4, skip_bad_rows=True),
                     on_bad_row=seen.append)
    assert report.bad_rows == 1 and len(seen) == 1 and "rows.jsonl, row 8:" in seen[0]
    assert "1 bad row skipped" in report.summary()
    got = _read(out)
    assert sorted(got, key=int) == [str(i) for i in range(10) if i != 7]
    np.testing.assert_allclose(got["8"], tiny32.embed([rows[8]["text"]])[0], atol=1e-5)
    assert report.texts == 9


def test_a_too_long_row_never_reaches_the_model(tiny32, tmp_path, monkeypatch) -> None:
    """A review's: the too-long row went to the model with its batch, which refused it; the
    batch was then embedded again without it. On Ray each actor had embedded its part (a paid
    provider billed 9 texts for 6). The counts the job has decide before the model is asked."""
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": i, "text": "word " * (60 if i in (2, 7) else 3)} for i in range(10)]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    calls: list[list[str]] = []
    real = type(tiny32).embed

    def spy(self, texts, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(texts))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(type(tiny32), "embed", spy)
    report = run_job(tiny32, [d], JobConfig(output=str(tmp_path / "o"), batch_size=4,
                                            skip_bad_rows=True))
    assert report.bad_rows == 2 and report.texts == 8
    assert [len(c) for c in calls] == [3, 3, 2]  # each text embedded once, the long ones never
    assert sorted(_read(tmp_path / "o"), key=int) == [str(i) for i in range(10) if i not in (2, 7)]


def test_chunks_of_multi_token_characters_fit_the_model(tiny32, tmp_path) -> None:
    """A character that is several tokens (𝔘: two byte-level tokens at the same offsets)
    never straddles a chunk's end: every chunk of a chunking job fits the model's 32 tokens
    and its `tokens` is its exact count (the job failed with 'input 0 has 33 tokens')."""
    d = tmp_path / "in"
    d.mkdir()
    texts = ["𝔘𝔫 " * 10 + "𝔘𝔫" * 60, "🙂👨‍👩‍👧 x" * 40]
    (d / "u.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                                       for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "out"
    run_job(tiny32, [d], JobConfig(output=str(out), chunk=ChunkConfig(max_tokens=32, overlap=0)))
    table = pq.read_table(out).to_pylist()
    chunks = {f"{i}#{c.index}": c.text for i, t in enumerate(texts)
              for c in chunker_for(tiny32, ChunkConfig(max_tokens=32, overlap=0)).split(t)}
    assert len(table) == len(chunks) > 4
    for row in table:
        assert row["tokens"] == tiny32.count_tokens([chunks[row["id"]]])[0] <= 32


def test_chunk_counts_of_a_backend_without_tokenizer_are_left_out(tiny, tmp_path) -> None:
    """A backend with no tokenizer (a remote API of another family) gets chunks cut on an
    approximate count: the job writes no count for them (null), not the guess as if the model
    had counted it, and reports no token total."""

    class NoTokenizer(Counting):
        def text_tokens(self):
            return None

        def count_tokens(self, texts):
            raise NotImplementedError

    d = tmp_path / "in"
    d.mkdir()
    (d / "r.jsonl").write_text(json.dumps({"id": 1, "text": "Смысл жизни. " * 40}) + "\n",
                               encoding="utf-8")
    report = run_job(NoTokenizer(tiny), [d], JobConfig(output=str(tmp_path / "out"),
                                                       chunk=ChunkConfig(max_tokens=16,
                                                                         overlap=2)))
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows > 3 and set(table.column("tokens").to_pylist()) == {None}
    assert report.texts == table.num_rows and report.tokens is None


def test_bad_settings_leave_no_output_in_the_way(tiny, corpus, tmp_path) -> None:
    """Dimensions the model cannot give fail before the output folder exists, and a job that
    fails before its first shard commits leaves nothing in the way: the corrected rerun takes
    the folder over (it was refused: 'holds the output of another job (it differs in:
    dimensions)'). A running job claims its folder at the start."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"dimensions must be in 32\.\.64"):
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out), dimensions=4096))
    assert not out.exists()
    task = tiny.choose_instruction("retrieval", role="query")  # 20 tokens with EOS
    with pytest.raises(ValueError, match="exceed the overlap"):  # no room for the text
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out), instruction=task,
                                                      chunk=ChunkConfig(max_tokens=16, overlap=2)))
    assert not out.exists()
    (corpus / "z.jsonl").write_text('{"id": "z"}\n', encoding="utf-8")  # no text: a bad row
    with pytest.raises(BadRowError):
        run_job(tiny, [corpus / "z.jsonl"], JobConfig(output=str(out), dimensions=32))
    assert not list(out.glob("*.parquet"))  # claimed, but nothing committed
    assert json.loads((out / "_smysl_job.json").read_text())["dimensions"] == 32
    report = run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out)))
    assert report.texts == 10 and len(_read(out)) == 10
    with pytest.raises(ValueError, match=r"another job.*dimensions"):  # now it is claimed
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out), dimensions=32))


def _empty_rows_corpus(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": "a", "text": "some text"}, {"id": "b", "text": ""},
            {"id": "c", "text": "   "}, {"id": "d", "text": "more text"}]
    (d / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return d


def test_empty_rows_of_a_chunking_job_are_counted(tiny, tmp_path) -> None:
    """Rows with nothing but whitespace give no chunk: the report counts them and says so
    (they vanished silently); embedded whole, every row gets its vector."""
    d = _empty_rows_corpus(tmp_path)
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o1"),
                                          chunk=ChunkConfig(max_tokens=16, overlap=2)))
    assert set(_read(tmp_path / "o1")) == {"a#0", "d#0"}
    assert report.empty_rows == 2 and report.texts == 2
    assert "2 empty rows gave no chunks" in report.summary()
    # what it embedded were chunks, and the summary names them so (it said "2 texts")
    assert report.summary().startswith("embedded 2 chunks (")
    whole = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o2")))
    assert set(_read(tmp_path / "o2")) == {"a", "b", "c", "d"} and whole.empty_rows == 0
    assert "empty rows" not in whole.summary()
    assert whole.summary().startswith("embedded 4 texts (")
    pytest.importorskip("lancedb")
    index = run_job(tiny, [d], JobConfig(output=f"lancedb:{tmp_path / 'kb'}",
                                         chunk=ChunkConfig(max_tokens=16, overlap=2)))
    assert index.empty_rows == 2 and index.texts == 2
    assert index.summary().startswith("embedded 2 chunks (")


@pytest.mark.parametrize("kind", ["lancedb", "postgres"])
def test_index_output_resumes_and_searches(tiny, corpus, tmp_path, kind, request) -> None:
    """The job writes an index (chunks upserted by id, model recorded); a rerun skips every
    committed shard and embeds nothing (issue 16)."""
    if kind == "lancedb":
        pytest.importorskip("lancedb")
        output = f"lancedb:{tmp_path / 'kb'}"
    else:
        # a password (trust auth ignores it) that the summary must not repeat
        dsn = request.getfixturevalue("postgres_dsn").replace("postgres@", "postgres:s3cret@")
        output = f"postgres:{dsn}"
    config = JobConfig(output=output, shard_rows=5, table=f"t_{uuid.uuid4().hex[:8]}")
    counting = Counting(tiny)
    report = run_job(counting, [corpus], config)
    assert report.shards_written == 2 + 2 + 2 and counting.embedded == 25
    assert "s3cret" not in report.summary() and "-> " in report.summary()
    again = Counting(tiny)
    report = run_job(again, [corpus], config)
    assert report.shards_skipped == 6 and report.shards_written == 0 and again.embedded == 0
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig

    store = StoreConfig.parse(output, table=config.table)
    with Index.create_or_open(tiny, IndexConfig(store=store), create=False) as index:
        assert index.count() == 25
        (record,) = index.store.get(["a3#0"])
        np.testing.assert_allclose(record.vector, tiny.embed([_text(3)])[0], atol=1e-5)
        assert index.verify() == {}  # checksums and payloads as `smysl index add` writes them
    # one row appended: its file's shards are new, but only that row is embedded (the summary
    # said "embedded 11 texts" and counted the tokens of all 11)
    with open(corpus / "a.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "a10", "text": "an appended row"}) + "\n")
    appended = Counting(tiny)
    report = run_job(appended, [corpus], config)
    assert appended.embedded == 1 and report.texts == 1
    assert report.tokens == tiny.count_tokens(["an appended row"])[0]  # that row's alone
    with pytest.raises(ValueError, match="an index stores documents"):
        run_job(tiny, [corpus], JobConfig(output=output, instruction="find", table=config.table))


def test_cli_corpus_job_and_lines_mode(tiny_dir, corpus, tmp_path, capsys) -> None:
    """`smysl embed --input FOLDER --output DIR` runs the job and prints a summary; a bad row
    without --skip-bad-rows exits 2 naming it (issue 16)."""
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    out = tmp_path / "out"
    assert main(["embed", "--input", str(corpus), "--output", str(out), *model,
                 "--shard-rows", "5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "embedded 25 texts" in err and "6 written, 0 already done" in err
    assert main(["embed", "--input", str(corpus), "--output", str(out), *model,
                 "--shard-rows", "5", "--no-progress"]) == 0
    assert "0 written, 6 already done" in capsys.readouterr().err
    (corpus / "bad.jsonl").write_text('{"id": "z", "txt": "oops"}\n', encoding="utf-8")
    assert main(["embed", "--input", str(corpus), "--output", str(tmp_path / "o2"),
                 *model, "--no-progress"]) == 2
    assert "bad.jsonl, row 1: no text field 'text'" in capsys.readouterr().err


def test_a_folder_holding_other_parquet_files_is_refused(tiny, corpus, tmp_path) -> None:
    """Shards were written beside someone else's Parquet files: a reader of the folder then
    got their rows too (all-null vectors)."""
    import pyarrow as pa

    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), out / "theirs.parquet")
    with pytest.raises(ValueError, match=r"holds Parquet files no smysl job wrote \(theirs"):
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["theirs.parquet"]
    again = tmp_path / "again"
    run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(again)))
    run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(again)))  # its own: a rerun


def test_a_resume_with_another_token_limit_is_refused(tiny, tiny32, corpus, tmp_path) -> None:
    """--max-tokens decides where --truncate cuts (and chunk sizes, and which rows are too
    long): a resume under another limit mixed 16- and 64-token vectors in one output with
    one fingerprint. Now it is another job."""
    out = str(tmp_path / "out")
    run_job(tiny32, [corpus / "a.jsonl"], JobConfig(output=out, truncate=True))
    with pytest.raises(ValueError, match=r"another job.*max_tokens"):
        run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=out, truncate=True))


def test_chunks_cut_by_an_earlier_chunker_are_not_resumed(tiny, corpus, tmp_path) -> None:
    """Shards hold chunks by number (ROW#n), not their text. A chunked job written before the
    chunker cut at words (2026-12-04) resumed without a word, and one dataset held chunks of
    two cuttings under one chunk id. A job records the chunker's version now; a folder whose
    record lacks it is refused, named as an earlier smysl's, not as a setting the user
    changed. A job without chunking keeps its identity (and its folders)."""
    from smysl.scale.job import MANIFEST, _identity, job_fingerprint

    out = tmp_path / "out"
    chunked = JobConfig(output=str(out), chunk=ChunkConfig(max_tokens=12, overlap=2))
    run_job(tiny, [corpus / "a.jsonl"], chunked)
    record = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert record["chunker"] >= 1
    del record["chunker"]  # as an earlier smysl wrote it
    record["fingerprint"] = "0" * 32
    (out / MANIFEST).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds the output of a job of an earlier smysl, "
                                         r"which did not record chunker"):
        run_job(tiny, [corpus / "a.jsonl"], chunked)
    record["chunker"] = 1  # a smysl whose chunker cut elsewhere
    (out / MANIFEST).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match=r"a job of a smysl that cut chunks elsewhere \(chunker "
                                         r"version 1, this one's \d+\)"):
        run_job(tiny, [corpus / "a.jsonl"], chunked)
    # an index's chunks carry their text (ingestion re-cuts what changed): no version there
    assert "chunker" not in _identity(tiny, JobConfig(output=f"lancedb:{tmp_path / 'kb'}"))
    plain = JobConfig(output=str(tmp_path / "plain"))
    run_job(tiny, [corpus / "a.jsonl"], plain)
    assert "chunker" not in json.loads((tmp_path / "plain" / MANIFEST).read_text("utf-8"))
    assert job_fingerprint(tiny, plain) == json.loads(
        (tmp_path / "plain" / MANIFEST).read_text("utf-8"))["fingerprint"]


def test_rows_that_are_not_unicode_or_bytes_ids(tiny, tmp_path) -> None:
    """JSON's lone surrogates ("\\ud800") in a text or an id ended the whole job, with
    --skip-bad-rows too, naming neither file nor row; a Parquet binary id column came out
    as "b'doc1'"."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "rows.jsonl").write_text(
        '{"id": "t1", "text": "fine"}\n{"id": "t2", "text": "lone \\udc80 surrogate"}\n'
        '{"id": "s\\ud800", "text": "fine too"}\n{"id": "t4", "text": "also fine"}\n',
        encoding="utf-8")
    with pytest.raises(BadRowError, match=r"rows\.jsonl, row 2: field 'text' is not valid "
                                          r"Unicode: a lone surrogate"):
        run_job(tiny, [d], JobConfig(output=str(tmp_path / "o1")))
    seen: list[str] = []
    report = run_job(tiny, [d], JobConfig(output=str(tmp_path / "o2"), skip_bad_rows=True),
                     on_bad_row=seen.append)
    assert report.bad_rows == 2 and "row 3: field 'id'" in seen[1]
    assert set(_read(tmp_path / "o2")) == {"t1", "t4"}
    b = tmp_path / "bin"
    b.mkdir()
    pq.write_table(pa.table({"id": pa.array([b"doc1", b"\xd0\xb4\xd0\xbe\xd0\xba"], pa.binary()),
                             "text": ["one", "two"]}), b / "p.parquet")
    run_job(tiny, [b], JobConfig(output=str(tmp_path / "o3")))
    assert set(_read(tmp_path / "o3")) == {"doc1", "док"}


def test_an_output_folder_inside_the_input_folder(tiny, corpus, tmp_path) -> None:
    """``-i corpus -o corpus/vectors``: the rerun read the first run's shards as input (no
    column 'text'). A job's output folder is no input."""
    out = corpus / "vectors"
    first = run_job(tiny, [corpus], JobConfig(output=str(out)))
    again = run_job(tiny, [corpus], JobConfig(output=str(out)))
    assert first.shards_written > 0 and again.shards_written == 0
    assert len(_read(out)) == 25


def test_index_output_back_to_earlier_settings_embeds_again(tiny, corpus, tmp_path) -> None:
    """Job A, then job B (other chunks) over the same rows, then A again: A's shard records
    said "already done" (0 written) while the index held B's 8-token chunks. B's commit now
    drops other jobs' records of that file version, and A writes its chunks back."""
    pytest.importorskip("lancedb")
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig

    output = f"lancedb:{tmp_path / 'kb'}"
    a = JobConfig(output=output, shard_rows=5)
    b = JobConfig(output=output, shard_rows=5, chunk=ChunkConfig(max_tokens=8, overlap=2))
    run_job(tiny, [corpus / "a.jsonl"], a)

    def count() -> int:
        with Index.create_or_open(tiny, IndexConfig(store=StoreConfig.parse(output)),
                                  create=False) as index:
            return index.count()

    whole = count()
    assert run_job(tiny, [corpus / "a.jsonl"], b).shards_written == 2 and count() > whole
    again = run_job(tiny, [corpus / "a.jsonl"], a)
    assert again.shards_written == 2 and count() == whole


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_a_row_a_provider_refuses_is_named_by_file_and_row_and_skippable(tmp_path) -> None:
    """A review's: a text an API refused (its 400) stopped the job with the text's place in a
    batch of the provider's ("input #234"), and --skip-bad-rows did not skip it. It is now the
    row's problem, named by file, row and id, or with skip_bad_rows reported and left out,
    however the provider splits the batch into requests (sent at once, or in turn) and
    wherever the row is in it (first: a short probe tells a refused text from a refused
    request); no text is billed twice. An API that refuses every request (here: every text)
    stops the job at once, with no row reported bad, whatever the batch size."""
    import collections
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
    from provider_fakes import FakeServer, expected

    from smysl.providers.presets import connect

    texts = [f"text {i}" for i in range(40)]
    bad = {0, 16, 17, 18, 23}  # the first row; three at the head of the second batch of 16
    for i in bad:
        texts[i] = f"text POISON {i}"
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                       for i, t in enumerate(texts)), encoding="utf-8")
    keep = [i for i in range(40) if i not in bad]
    fast = {"backoff_base": 0.001, "max_retries": 0}
    for split in ({}, {"max_batch_texts": 4, "max_concurrency": 4}):
        with FakeServer(dims=32, refuse=lambda t: "POISON" in t) as srv:
            model = connect("openai", f"{srv.url}/v1#m", dimensions=32, **fast, **split)
            with pytest.raises(BadRowError, match=r"a\.jsonl, row 1: openai:m refused the text "
                                                  r"of id 'r0': HTTP 400"):
                run_job(model, [d], JobConfig(output=str(tmp_path / "o1"), batch_size=16))
            out = tmp_path / f"o2-{len(split)}"
            report = run_job(model, [d], JobConfig(output=str(out), batch_size=16,
                                                   skip_bad_rows=True))
            assert report.bad_rows == len(bad), report.bad_examples
            # sub-requests sent at once: a batch's refusals are found in the order they end
            assert sorted(int(e.split(", row ")[1].split(":")[0])
                          for e in report.bad_examples) == [i + 1 for i in sorted(bad)]
            got = _read(report.output)
            assert list(got) == [f"r{i}" for i in keep]
            np.testing.assert_allclose(np.stack(list(got.values())),
                                       expected([texts[i] for i in keep], 32, 32), atol=1e-6)
            billed = collections.Counter(srv.billed_texts)
            assert all(billed[texts[i]] == 1 for i in keep), billed  # the second run's
    for batch_size in (2, 16):
        with FakeServer(dims=32, refuse=lambda t: True) as srv:
            model = connect("openai", f"{srv.url}/v1#m", dimensions=32, **fast)
            reported: list[str] = []
            with pytest.raises(RuntimeError, match=r"a\.jsonl, rows 1\.\.\d+: openai:m refused "
                                                   r"a text of them .*and the text 'probe' as "
                                                   r"well .*: it refuses this job's requests"):
                run_job(model, [d], JobConfig(output=str(tmp_path / f"o3-{batch_size}"),
                                              batch_size=batch_size, skip_bad_rows=True),
                        on_bad_row=reported.append)
            assert reported == []
