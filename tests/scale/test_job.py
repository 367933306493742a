"""The resumable corpus embedding job (issue 16): JSONL/CSV/Parquet in, Parquet shards or an
index out; reruns redo only missing shards; broken rows named, skipped only when asked."""

from __future__ import annotations

import csv
import json
import uuid

import numpy as np
import pytest
from toolkit.helpers import Counting

from smysl.cli import main
from smysl.scale import BadRowError, JobConfig, run_job
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
    with pytest.raises(KeyboardInterrupt):
        run_job(Crashing(tiny, limit=7), [corpus], config)  # dies inside shard 2 (a4..a7)
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
    """Chunking gives ROW-ID#n ids with chunk token counts; an instruction embeds queries."""
    out = tmp_path / "out"
    task = tiny.choose_instruction("retrieval", role="query")
    run_job(tiny, [corpus / "a.jsonl"], JobConfig(output=str(out), instruction=task,
                                                  chunk=ChunkConfig(max_tokens=8, overlap=2)))
    got = _read(out)
    assert all("#" in i for i in got) and len(got) > 10
    first = pq.read_table(out).to_pylist()[0]
    assert first["id"] == "a0#0"
    chunk0 = chunker_for(tiny, ChunkConfig(max_tokens=8, overlap=2)).split(_text(0))[0]
    np.testing.assert_allclose(got["a0#0"], tiny.embed([chunk0.text], instruction=task)[0],
                               atol=1e-5)


@pytest.mark.parametrize("kind", ["lancedb", "postgres"])
def test_index_output_resumes_and_searches(tiny, corpus, tmp_path, kind, request) -> None:
    """The job writes an index (chunks upserted by id, model recorded); a rerun skips every
    committed shard and embeds nothing (issue 16)."""
    if kind == "lancedb":
        pytest.importorskip("lancedb")
        output = f"lancedb:{tmp_path / 'kb'}"
    else:
        output = f"postgres:{request.getfixturevalue('postgres_dsn')}"
    config = JobConfig(output=output, shard_rows=5, table=f"t_{uuid.uuid4().hex[:8]}")
    counting = Counting(tiny)
    report = run_job(counting, [corpus], config)
    assert report.shards_written == 2 + 2 + 2 and counting.embedded == 25
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
