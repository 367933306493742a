"""Which shards a job may call its own: shards known by the file's name and content, folders
owned by one running job, names Parquet readers do not skip, ids an index would overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from toolkit.helpers import Counting

from smysl.scale import BadRowError, JobConfig, run_job

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _write(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows),
                    encoding="utf-8")


def _ids(out) -> list[str]:
    return sorted(pq.read_table(out).column("id").to_pylist())


class Gated(Counting):
    """Blocks in its first embedding call until ``go`` is set (``started`` says it is there):
    a job caught between opening a shard and committing it."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.started, self.go = threading.Event(), threading.Event()

    def _embed(self, texts, *, truncate, progress=None):
        self.started.set()
        assert self.go.wait(60)
        return super()._embed(texts, truncate=truncate, progress=progress)


def _in_thread(fn):
    """Run ``fn`` in a thread; ``join()`` returns its result or raises its error."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to join()
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()

    def join():
        t.join(60)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]

    return join


def test_files_of_one_name_in_two_folders_both_embedded(tiny, tmp_path) -> None:
    """part1/data.jsonl and part2/data.jsonl into one output (the multi-driver recipe): the
    second job embeds its rows (it reported 'already done' and embedded nothing)."""
    _write(tmp_path / "part1" / "data.jsonl", [(f"p1-{i}", f"first {i}") for i in range(5)])
    _write(tmp_path / "part2" / "data.jsonl", [(f"p2-{i}", f"second {i}") for i in range(5)])
    out = str(tmp_path / "out")
    run_job(tiny, [tmp_path / "part1"], JobConfig(output=out, shard_rows=2))
    report = run_job(tiny, [tmp_path / "part2"], JobConfig(output=out, shard_rows=2))
    assert report.shards_written == 3 and report.texts == 5
    assert _ids(out) == sorted([f"p1-{i}" for i in range(5)] + [f"p2-{i}" for i in range(5)])


def test_two_drivers_of_one_job_share_a_folder(tiny, tmp_path) -> None:
    """A second driver of the same job starting while the first has a shard open leaves the
    first's temporary file alone (it deleted it as stale: the first crashed on its rename)."""
    _write(tmp_path / "a" / "x.jsonl", [(f"a{i}", f"alpha {i}") for i in range(4)])
    _write(tmp_path / "b" / "y.jsonl", [(f"b{i}", f"beta {i}") for i in range(4)])
    out = tmp_path / "out"
    first = Gated(tiny)
    join = _in_thread(lambda: run_job(first, [tmp_path / "a"], JobConfig(output=str(out))))
    assert first.started.wait(60)
    (tmp,) = out.glob(".*.tmp")  # the first driver's open shard
    assert str(os.getpid()) in tmp.name
    run_job(tiny, [tmp_path / "b"], JobConfig(output=str(out)))
    assert tmp.exists()
    first.go.set()
    assert join().texts == 4
    assert _ids(out) == [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    assert not list(out.glob(".*.tmp")) and not list(out.glob("_smysl_run.*"))


def test_two_drivers_of_same_named_files_do_not_both_commit(tiny, tmp_path) -> None:
    """Review: drivers given folders of one name holding files of one name, running at once,
    both passed the start-up check and committed, and a rerun of the first then asked to
    delete the second's shards as 'another version'. The later commit is refused instead."""
    _write(tmp_path / "a" / "data" / "x.jsonl", [(f"a{i}", f"alpha {i}") for i in range(3)])
    _write(tmp_path / "b" / "data" / "x.jsonl", [(f"b{i}", f"beta {i}") for i in range(3)])
    out = tmp_path / "out"
    first = Gated(tiny)
    join = _in_thread(lambda: run_job(first, [tmp_path / "a" / "data"],
                                      JobConfig(output=str(out))))
    assert first.started.wait(60)
    run_job(tiny, [tmp_path / "b" / "data"], JobConfig(output=str(out)))
    first.go.set()
    with pytest.raises(ValueError, match=r"another driver committed .* a shard of another file "
                                         r"named 'data/x.jsonl'"):
        join()
    assert _ids(out) == [f"b{i}" for i in range(3)]  # one file's rows, not two mixed
    assert not list(out.glob(".*.tmp")) and not list(out.glob("_smysl_run.*"))


def test_drivers_of_overlapping_inputs_write_each_row_once(tiny, tmp_path) -> None:
    """One driver given corpus/, another corpus/sub/ at the same time: each reached
    sub/x.jsonl under its own name and committed its shards, so every row of it was in the
    dataset twice. Of the shard files of one content and part, one stays."""
    _write(tmp_path / "corpus" / "sub" / "x.jsonl", [(f"r{i}", f"row {i}") for i in range(5)])
    _write(tmp_path / "corpus" / "y.jsonl", [("y0", "other file")])
    out = tmp_path / "out"
    first = Gated(tiny)
    join = _in_thread(lambda: run_job(first, [tmp_path / "corpus"],
                                      JobConfig(output=str(out), shard_rows=2)))
    assert first.started.wait(60)
    assert run_job(tiny, [tmp_path / "corpus" / "sub"],
                   JobConfig(output=str(out), shard_rows=2)).shards_written == 3
    first.go.set()
    join()
    assert _ids(out) == [f"r{i}" for i in range(5)] + ["y0"]
    assert len(list(out.glob("*.parquet"))) == 4
    again = Counting(tiny)
    for inputs in ([tmp_path / "corpus"], [tmp_path / "corpus" / "sub"]):
        assert run_job(again, inputs, JobConfig(output=str(out), shard_rows=2)
                       ).shards_written == 0
    assert again.embedded == 0


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_and_run_files_of_dead_processes_are_removed(tiny, tmp_path) -> None:
    """A crashed process's temporary shard and run file (this machine, its pid gone) are
    removed by the next run; a live process's are kept."""
    from smysl.files import machine_id as _machine

    _write(tmp_path / "in" / "x.jsonl", [("a", "alpha")])
    out = tmp_path / "out"
    run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out)))
    machine, dead = _machine(), _dead_pid()
    (final,) = out.glob("*.parquet")
    fp = final.name.split(".")[-2]
    crashed = out / f".{final.name}.{machine}.{dead}.0badc0de.tmp"
    live = out / f".{final.name}.{machine}.{os.getpid()}.0badc0de.tmp"
    elsewhere = out / f".{final.name}.0000beef.{dead}.0badc0de.tmp"  # another machine's
    stale_run = out / f"_smysl_run.{fp}.{machine}.{dead}.0badc0de"
    for p in (crashed, live, elsewhere, stale_run):
        p.write_text("{}")
    run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out)))
    assert not crashed.exists() and not stale_run.exists()
    assert live.exists() and elsewhere.exists()


def _versions(tmp_path):
    src = tmp_path / "in" / "data.jsonl"
    rows = [(f"r{i}", f"row number {i}") for i in range(5)]
    _write(src, rows)
    return src, rows


def test_a_changed_file_is_refused_until_its_old_shards_go(tiny, tmp_path) -> None:
    """Rows appended after a run were never embedded (the last, short shard was 'done'), and
    an edited row kept its stale vector. A changed file gets new shards; its old ones in the
    folder are named and refused (both would be read: every row twice); once deleted as the
    message says, the rerun embeds this version, every id once."""
    src, _ = _versions(tmp_path)
    out = tmp_path / "out"
    config = JobConfig(output=str(out), shard_rows=2)
    run_job(tiny, [src.parent], config)
    old = sorted(p.name for p in out.glob("*.parquet"))
    with src.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "r5", "text": "appended later"}) + "\n")
    counting = Counting(tiny)
    with pytest.raises(ValueError, match=r"holds 3 shard file\(s\) of another version of "
                                         r"'in/data\.jsonl'.*rows\s+would be there twice.*"
                                         r"delete them \(rm '.*/data-[0-9a-f]{16}-"
                                         r"[0-9a-f]{12}'-p\*\."):
        run_job(counting, [src.parent], config)
    assert counting.embedded == 0  # refused before embedding anything
    for name in old:
        (out / name).unlink()
    report = run_job(tiny, [src.parent], config)
    assert report.texts == 6 and _ids(out) == [f"r{i}" for i in range(6)]
    # an edit in place, same length: the content changed, so do the shard names
    text = src.read_text(encoding="utf-8").replace("row number 3", "row NUMBER 3")
    src.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="another version"):
        run_job(tiny, [src.parent], config)


def test_an_unchanged_file_keeps_its_shards_wherever_it_lies(tiny, tmp_path) -> None:
    """Shards are known by content: the same file reached from another folder (or moved)
    resumes, nothing embedded twice."""
    src, _ = _versions(tmp_path)
    out = str(tmp_path / "out")
    run_job(tiny, [src.parent], JobConfig(output=out, shard_rows=2))
    moved = tmp_path / "elsewhere" / "data.jsonl"
    moved.parent.mkdir()
    os.replace(src, moved)
    counting = Counting(tiny)
    report = run_job(counting, [moved], JobConfig(output=out, shard_rows=2))
    assert report.shards_skipped == 3 and counting.embedded == 0
    assert _ids(out) == [f"r{i}" for i in range(5)]


def test_a_changed_file_reached_from_the_folder_above_is_refused(tiny, tmp_path) -> None:
    """A review's: embedded from its own folder (``-i kb/faq``), then edited and embedded
    from the folder above (``-i kb``), a file's name was new to the output and both versions'
    rows stayed (131 rows, 50 ids twice). Each shard records its input's real path and name;
    the rerun is refused as any changed file's is. Another file of the same stem elsewhere
    (a daily dump's ``2026-12-02/data.jsonl`` after ``2026-12-01/data.jsonl``) is no
    version of it."""
    faq = tmp_path / "kb" / "faq" / "faq.jsonl"
    _write(faq, [(f"f{i}", f"question {i}") for i in range(4)])
    _write(tmp_path / "kb" / "tickets" / "t.jsonl", [("t0", "a ticket")])
    out = tmp_path / "out"
    config = JobConfig(output=str(out), shard_rows=2)
    run_job(tiny, [faq.parent], config)
    meta = pq.read_schema(next(out.glob("faq-*.parquet"))).metadata
    assert meta[b"smysl.source"] == b"faq/faq.jsonl"
    unchanged = run_job(tiny, [tmp_path / "kb"], config)  # the same bytes: its shards stand
    assert unchanged.shards_skipped == 2 and unchanged.shards_written == 1
    with faq.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "new1", "text": "a new question"}) + "\n")
    counting = Counting(tiny)
    with pytest.raises(ValueError, match=r"holds 2 shard file\(s\) of another version of "
                                         r"'kb/faq/faq\.jsonl'"):
        run_job(counting, [tmp_path / "kb"], config)
    assert counting.embedded == 0
    # moved under another folder (its recorded path gone): known by the name it ends
    moved = tmp_path / "moved" / "faq" / "faq.jsonl"
    moved.parent.mkdir(parents=True)
    os.replace(faq, moved)
    with pytest.raises(ValueError, match="another version"):
        run_job(tiny, [tmp_path / "moved"], config)
    # a file whose name ends the recorded one's, but is another file that is still there
    # (a review's: ``-i exports/2026-12-01``, then ``-i exports/2026-12-02/items``)
    first, second = (tmp_path / "exports" / day / "items" / "part.jsonl"
                     for day in ("2026-12-01", "2026-12-02"))
    _write(first, [("p1", "day one")])
    _write(second, [("p2", "day two")])
    parts = JobConfig(output=str(tmp_path / "parts"))
    run_job(tiny, [first.parent.parent], parts)
    assert run_job(tiny, [second.parent], parts).shards_written == 1
    # a different file of the same stem, named otherwise: no version of it
    day1, day2 = tmp_path / "2026-12-01" / "data.jsonl", tmp_path / "2026-12-02" / "data.jsonl"
    _write(day1, [("d1", "first day")])
    _write(day2, [("d2", "second day")])
    dumps = JobConfig(output=str(tmp_path / "dumps"))
    run_job(tiny, [day1.parent], dumps)
    assert run_job(tiny, [day2.parent], dumps).shards_written == 1
    assert _ids(tmp_path / "dumps") == ["d1", "d2"]


def test_copies_of_one_file_in_a_run_are_named_not_called_done(tiny, tmp_path) -> None:
    """Two inputs with the same bytes share their shards (named by content): the copy's were
    reported "already done" on a first run, as if an earlier run had embedded them; the
    report names the copy and says its rows are written once."""
    rows = [(f"r{i}", f"text {i}") for i in range(5)]
    _write(tmp_path / "in" / "a.jsonl", rows)
    _write(tmp_path / "in" / "b.jsonl", rows)
    out = str(tmp_path / "out")
    report = run_job(tiny, [tmp_path / "in"], JobConfig(output=out, shard_rows=2))
    assert report.copies == ["in/b.jsonl = in/a.jsonl"]
    assert "1 input file(s) with the same bytes as another, their rows written once: " \
           "in/b.jsonl = in/a.jsonl" in report.summary()
    assert report.shards_written == 3 and _ids(out) == [r for r, _ in rows]
    again = run_job(tiny, [tmp_path / "in" / "b.jsonl"], JobConfig(output=out, shard_rows=2))
    assert again.copies == [] and again.shards_skipped == 3  # done by an earlier run: true


def test_a_changed_file_updates_an_index(tiny, tmp_path) -> None:
    """An index upserts by id: the changed file's shards are ingested again, the appended row
    is embedded and the edited row's vector replaced."""
    pytest.importorskip("lancedb")
    from smysl.toolkit.index import Index, IndexConfig
    from smysl.toolkit.store import StoreConfig

    src, rows = _versions(tmp_path)
    output = f"lancedb:{tmp_path / 'kb'}"
    run_job(tiny, [src.parent], JobConfig(output=output, shard_rows=2))
    _write(src, [*rows[:3], ("r3", "an edited row"), rows[4], ("r5", "appended later")])
    report = run_job(tiny, [src.parent], JobConfig(output=output, shard_rows=2))
    assert report.shards_written == 3 and report.shards_skipped == 0
    store = StoreConfig.parse(output, table="chunks")
    with Index.create_or_open(tiny, IndexConfig(store=store), create=False) as index:
        assert index.count() == 6
        (r3,) = index.store.get(["r3#0"])
        np.testing.assert_allclose(r3.vector, tiny.embed(["an edited row"])[0], atol=1e-5)
        prefix = f"embed_shard:{report.fingerprint}:"
        shards = [k for k in index.store.read_meta() if k.startswith(prefix)]
    assert len(shards) == 3  # the earlier version's shard names are forgotten
    again = Counting(tiny)
    assert run_job(again, [src.parent], JobConfig(output=output, shard_rows=2)
                   ).shards_skipped == 3 and again.embedded == 0


def test_drivers_of_one_index_keep_each_others_shards(tiny, tmp_path, monkeypatch) -> None:
    """Two drivers of one job writing into one index: each read the store's metadata, added
    its shard and wrote it all back, so a shard the other committed in between was forgotten
    and embedded again by the next run. Here the second driver commits one shard each time
    the first reads the metadata (the moment that lost it); a rerun finds every shard done."""
    pytest.importorskip("lancedb")
    from smysl.toolkit.lancedb import LanceStore

    _write(tmp_path / "a" / "a.jsonl", [(f"a{i}", f"first driver {i}") for i in range(6)])
    for k in range(6):
        _write(tmp_path / "b" / f"b{k}.jsonl", [(f"b{k}", f"second driver {k}")])
    todo = sorted((tmp_path / "b").iterdir())
    output = f"lancedb:{tmp_path / 'kb'}"
    config = JobConfig(output=output, shard_rows=2)
    read, busy = LanceStore.read_meta, [False]

    def read_meta(store):
        meta = read(store)
        if todo and not busy[0]:
            busy[0] = True
            try:
                assert run_job(tiny, [todo.pop(0)], config).shards_written == 1
            finally:
                busy[0] = False
        return meta

    monkeypatch.setattr(LanceStore, "read_meta", read_meta)
    assert run_job(tiny, [tmp_path / "a" / "a.jsonl"], config).shards_written == 3
    monkeypatch.undo()
    assert not todo  # the second driver committed all six while the first ran
    again = Counting(tiny)
    report = run_job(again, [tmp_path / "a" / "a.jsonl", *sorted((tmp_path / "b").iterdir())],
                     config)
    assert (report.shards_written, report.shards_skipped, again.embedded) == (0, 9, 0)


def test_an_index_of_an_earlier_smysl_keeps_its_shards(tiny, tmp_path) -> None:
    """An index whose shards were recorded under one key (earlier smysl) is read in that
    layout: a rerun embeds nothing, and the records move to one key per shard."""
    pytest.importorskip("lancedb")
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    src, _ = _versions(tmp_path)
    output = f"lancedb:{tmp_path / 'kb'}"
    first = run_job(tiny, [src.parent], JobConfig(output=output, shard_rows=2))
    cfg = StoreConfig.parse(output, table="chunks")
    with open_store(cfg) as store:
        prefix = f"embed_shard:{first.fingerprint}:"
        names = [k[len(prefix):] for k in store.read_meta() if k.startswith(prefix)]
        assert len(names) == 3
        store.update_meta({**{prefix + n: None for n in names},
                           "embed_shards": {first.fingerprint: names, "other-job": ["x"]}})
    again = Counting(tiny)
    report = run_job(again, [src.parent], JobConfig(output=output, shard_rows=2))
    assert (report.shards_skipped, again.embedded) == (3, 0)
    with open_store(cfg) as store:
        meta = store.read_meta()
    assert "embed_shards" not in meta and meta["embed_shard:other-job:x"] is True
    assert sorted(k for k in meta if k.startswith(prefix)) == sorted(prefix + n for n in names)


def test_a_folder_of_an_earlier_smysl_is_refused(tiny, tmp_path) -> None:
    """Shards named by file name alone (earlier smysl) cannot be told current or stale: a
    rerun refuses the folder instead of writing every row a second time."""
    src, _ = _versions(tmp_path)
    out = tmp_path / "out"
    run_job(tiny, [src.parent], JobConfig(output=str(out)))
    (shard,) = out.glob("*.parquet")
    fp = shard.name.split(".")[-2]
    os.replace(shard, out / f"data-5fd19e74-00000.{fp}.parquet")  # the earlier naming
    with pytest.raises(ValueError, match="shards written by an earlier smysl"):
        run_job(tiny, [src.parent], JobConfig(output=str(out)))
    # 8-digit name keys (two of ~77,000 file names shared one as often as not)
    os.replace(out / f"data-5fd19e74-00000.{fp}.parquet",
               out / f"data-5fd19e74-0123456789ab-p00000.{fp}.parquet")
    with pytest.raises(ValueError, match="shards written by an earlier smysl"):
        run_job(tiny, [src.parent], JobConfig(output=str(out)))


def test_shard_names_never_start_with_dot_or_underscore(tiny, tmp_path) -> None:
    """A file named `_part.jsonl` gave the shard `_part-...parquet`, which pyarrow and Spark
    skip when they read the folder: its rows were missing from the dataset."""
    _write(tmp_path / "in" / "_part.jsonl", [("u1", "underscore"), ("u2", "more")])
    _write(tmp_path / "in" / "-dash.jsonl", [("d1", "dash")])
    out = tmp_path / "out"
    run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out)))
    assert all(p.name[0] not in "._-" for p in out.glob("*.parquet"))
    assert _ids(out) == ["d1", "u1", "u2"]


def test_another_job_is_refused_while_the_first_runs(tiny, tmp_path) -> None:
    """A job with other settings starting before the first committed a shard took the folder
    over (no *.parquet yet) and the two jobs' shards mixed; now it is refused while the first
    runs, and the folder holds the first job's shards only."""
    _write(tmp_path / "in" / "x.jsonl", [(f"a{i}", f"alpha {i}") for i in range(4)])
    out = tmp_path / "out"
    first = Gated(tiny)
    join = _in_thread(lambda: run_job(first, [tmp_path / "in"], JobConfig(output=str(out))))
    assert first.started.wait(60)
    try:
        with pytest.raises(ValueError, match=r"is being written by another job \(it differs "
                                             rf"in: dimensions\): pid {os.getpid()} on "):
            run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out), dimensions=32))
    finally:
        first.go.set()
    assert join().texts == 4
    assert set(pq.read_table(out).column("dimensions").to_pylist()) == {tiny.dimensions}


def test_a_killed_jobs_folder_is_taken_over(tiny, tmp_path) -> None:
    """A job killed before committing a shard leaves its run file; its process is gone, so the
    corrected job takes the folder over (as after a job that failed)."""
    from smysl.files import machine_id as _machine

    _write(tmp_path / "in" / "x.jsonl", [("a", "alpha")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "_smysl_job.json").write_text(json.dumps({"fingerprint": "f" * 64}))
    (out / f"_smysl_run.{'f' * 16}.{_machine()}.{_dead_pid()}.0badc0de").write_text("{}")
    assert run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out))).texts == 1
    alive = out / f"_smysl_run.{'e' * 16}.0000beef.1.0badc0de"  # another machine: may run
    alive.write_text(json.dumps({"host": "node7", "started": "today"}))
    (out / "_smysl_job.json").write_text(json.dumps({"fingerprint": "e" * 64}))
    for p in out.glob("*.parquet"):
        p.unlink()
    with pytest.raises(ValueError, match=r"being written by another job.*pid 1 on node7.*"
                                         r"if that job is gone, delete its file"):
        run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out)))


def test_an_index_refuses_an_id_another_shard_has(tiny, tmp_path) -> None:
    """An id in two files (or two shards) of an index job: the second row silently replaced
    the first's chunks while the summary counted both; it is a bad row naming the first."""
    pytest.importorskip("lancedb")
    _write(tmp_path / "in" / "a.jsonl", [("x", "first x"), ("y", "a y")])
    _write(tmp_path / "in" / "b.jsonl", [("z", "a z"), ("x", "second x")])
    output = f"lancedb:{tmp_path / 'kb'}"
    with pytest.raises(BadRowError, match=r"b\.jsonl, row 2: duplicate id 'x' \(first at "
                                          r".*a\.jsonl, row 1\)"):
        run_job(tiny, [tmp_path / "in"], JobConfig(output=output))
    seen: list[str] = []
    report = run_job(tiny, [tmp_path / "in"], JobConfig(output=output, skip_bad_rows=True),
                     on_bad_row=seen.append)
    assert report.bad_rows == 1 and "duplicate id 'x'" in seen[0]
    # a rerun reads the committed shards past and still knows their ids
    (tmp_path / "in" / "c.jsonl").write_text(json.dumps({"id": "y", "text": "y again"}) + "\n")
    with pytest.raises(BadRowError, match=r"c\.jsonl, row 1: duplicate id 'y' \(first at "
                                          r".*a\.jsonl, row 2\)"):
        run_job(tiny, [tmp_path / "in"], JobConfig(output=output, skip_bad_rows=False))


def test_two_jobs_starting_at_once_do_not_both_claim_a_new_folder(tiny, tmp_path) -> None:
    """A new folder (no job record yet) with another job's run file: that job is between
    starting and writing its record, so this one gives way instead of claiming the folder
    too (both would write their shards into it)."""
    from smysl.files import machine_id as _machine

    _write(tmp_path / "in" / "x.jsonl", [("a", "alpha")])
    out = tmp_path / "out"
    out.mkdir()
    starting = out / f"_smysl_run.{'e' * 16}.{_machine()}.{os.getpid()}.0badc0de"
    starting.write_text(json.dumps({"host": "here", "started": "now"}))
    with pytest.raises(ValueError, match=r"being written by another job: pid \d+ on here"):
        run_job(tiny, [tmp_path / "in"], JobConfig(output=str(out)))
    assert not (out / "_smysl_job.json").exists() and starting.exists()
    assert [p.name for p in out.iterdir()] == [starting.name]  # its own run file is gone


def test_a_file_changed_while_the_job_reads_it_commits_no_shard_of_it(tiny, tmp_path) -> None:
    """A review's: rows appended while a job read the file went into shards named by the
    bytes hashed before: a rerun of the same file was refused as "changed", and a copy of
    the original file counted as done (its shards held rows it does not have). The shard
    being written when the change is seen is left out, and the job says why."""
    src, rows = _versions(tmp_path)
    out = tmp_path / "out"

    class Appending(Counting):
        def _embed(self, texts, *, truncate, progress=None):  # type: ignore[no-untyped-def]
            if self.embedded == 2:  # the second shard's first call: the file grows
                with src.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"id": "late", "text": "appended meanwhile"}) + "\n")
            return super()._embed(texts, truncate=truncate, progress=progress)

    with pytest.raises(ValueError, match=r"data\.jsonl changed while this job read it .* "
                                         r"the shard being written is not committed"):
        run_job(Appending(tiny), [src.parent], JobConfig(output=str(out), shard_rows=2))
    assert _ids(out) == ["r0", "r1"]  # the first shard, read before the change
    # the file as it was: its copy embeds every row, and no row of the appended version
    copy = tmp_path / "copy" / "data.jsonl"
    _write(copy, rows)
    report = run_job(tiny, [copy.parent], JobConfig(output=str(tmp_path / "c"), shard_rows=2))
    assert report.texts == 5 and _ids(tmp_path / "c") == [r for r, _ in rows]
    # a file rewritten before its turn is hashed as it is then: no false alarm (a diff
    # review's: the stamps were all taken at the start)
    later = tmp_path / "two" / "b.jsonl"
    _write(tmp_path / "two" / "a.jsonl", [("a1", "first file")])
    _write(later, [("b1", "second file")])

    class Rewriting(Counting):
        def _embed(self, texts, *, truncate, progress=None):  # type: ignore[no-untyped-def]
            if not self.calls:  # while a.jsonl is embedded
                _write(later, [("b1", "second file"), ("b2", "written before its turn")])
            return super()._embed(texts, truncate=truncate, progress=progress)

    report = run_job(Rewriting(tiny), [later.parent], JobConfig(output=str(tmp_path / "t")))
    assert _ids(tmp_path / "t") == ["a1", "b1", "b2"]


def test_a_repeated_id_within_a_shard_names_its_first_row(tiny, tmp_path) -> None:
    src = tmp_path / "in" / "d.jsonl"
    _write(src, [("a", "x"), ("b", "y"), ("a", "z")])
    with pytest.raises(BadRowError, match=r"row 3: duplicate id 'a' \(first at .*d\.jsonl, "
                                          r"row 1\)"):
        run_job(tiny, [src.parent], JobConfig(output=str(tmp_path / "out"), shard_rows=10))
