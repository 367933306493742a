"""Embedding on a local Ray cluster started by the tests, 2 actors (issue 16).

The bars: 20,000 distinct real texts from ../shared/datasets (``shared_texts.py``) with the
tiny model, one torch thread per actor: every id exactly once and every vector bit-identical to
single-process ``embed`` with one thread — on the job path (``smysl embed --ray``:
:class:`RayEmbedder` under :func:`run_job`) also when one actor is SIGKILLed mid-run, and
after Ctrl-C a rerun computes only the missing shards (counted); on the Ray Data path
(:func:`embed_dataset`) also when one pool actor is SIGKILLed. A provider backend on the actors
against a loopback OpenAI-compatible fake with 10% injected 429/500: all vectors, each input
answered once, usage summed over the actors.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import smysl
from smysl.cli import main
from smysl.options import ModelOptions
from smysl.scale import JobConfig, embed_dataset, run_job

from .shared_texts import available, real_texts, write_corpus

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
#: A Ray cluster and its actors take ~10 s to start: the tests on one are slow.
slow = pytest.mark.slow

OPTIONS = ModelOptions(device="cpu", threads=1)
#: The bar's corpus size; shards of 2,000 rows: 11 shards over the three files.
REAL = 20_000
REAL_JOB = {"shard_rows": 2000, "batch_size": 256}
TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "shared" / "qwen3-tokenizer" / \
    "tokenizer.json"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_dir):
    return smysl.load(str(tiny_dir), OPTIONS)


@pytest.fixture
def corpus(tmp_path):
    rows = [{"id": f"r{i}", "text": f"row {i} " + "word " * (i % 7)} for i in range(60)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    return tmp_path / "rows.jsonl", rows


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    """20,000 distinct real texts as intents_en.jsonl, intents_ru.csv, sentirueval.parquet."""
    if not available():
        pytest.skip("../shared/datasets not found")
    rows = real_texts(REAL)
    assert len(rows) == REAL and len({t for _, _, t in rows}) == REAL
    folder = tmp_path_factory.mktemp("real") / "corpus"
    write_corpus(folder, rows)
    return folder, rows


@pytest.fixture(scope="module")
def real_reference(reference, real_corpus) -> dict[str, np.ndarray]:
    """Single-process `embed` of the 20,000 texts, one thread, one call."""
    _, rows = real_corpus
    vectors = reference.embed([t for _, _, t in rows])
    return {rid: v for (_, rid, _), v in zip(rows, vectors, strict=True)}


def test_unreachable_address_is_named() -> None:
    """An address nobody answers fails at once, naming it (ray.init alone retries for
    minutes) (issue 16). First in the file: before the module's cluster starts."""
    import socket

    from smysl.scale.ray_data import RayConfig, connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    with pytest.raises(ValueError, match=f"Ray cluster at 127.0.0.1:{port}: nothing answers"):
        connect(RayConfig(address=f"127.0.0.1:{port}"))


def test_a_dead_ray_address_in_the_environment_is_named(monkeypatch) -> None:
    """$RAY_ADDRESS naming a dead cluster retried for minutes, Ray's spam and no word of
    smysl's; an explicit address already failed at once."""
    import socket

    from smysl.scale.ray_data import RayConfig, connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match=fr"at 127.0.0.1:{port} \(from \$RAY_ADDRESS\): "
                                         r"nothing answers .*; start one \(ray start --head\) "
                                         r"or unset \$RAY_ADDRESS for a local one$"):
        connect(RayConfig())
    monkeypatch.setenv("RAY_ADDRESS", "foo")  # malformed: no "start one"
    with pytest.raises(ValueError, match=r"\(from \$RAY_ADDRESS\): expected HOST:PORT, "
                                         r"ray://HOST:PORT or auto$"):
        connect(RayConfig())
    from smysl.scale.ray_data import _unreachable

    assert _unreachable("local") is None and _unreachable("auto") is None  # Ray's own words


def test_a_dashboard_address_is_named_as_the_wrong_kind() -> None:
    """A review's: `--ray http://127.0.0.1:8265` (the dashboard's, which `ray job submit`
    takes) said "nothing answers (Name or service not known)": it was looked up as a host."""
    from smysl.scale.ray_data import RayConfig, _malformed, connect

    assert "an http:// address is the dashboard's" in (_malformed("http://127.0.0.1:8265")
                                                         or "")
    assert _malformed("ray://127.0.0.1:10001") is None and _malformed("10.0.0.1:6379") is None
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    with pytest.raises(ValueError, match=r"at http://127.0.0.1:8265: expected HOST:PORT"):
        connect(RayConfig(address="http://127.0.0.1:8265"))


@slow
@pytest.mark.parametrize("address", [[], ["local"]])
def test_a_pool_the_local_cluster_started_for_it_cannot_hold_fails(tiny_dir, tmp_path,
                                                                   address) -> None:
    """A review's: `--ray --actors 3` on a 2-CPU machine, with no cluster running, started a
    local one of 2 CPUs and waited "for it to grow" for ever: one smysl started never grows
    (`--ray local` always starts one: a diff review's)."""
    import subprocess
    import sys

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "a"}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "smysl", "embed", "--model", str(tiny_dir),
                           "--device", "cpu", "--threads", "1", "-i", str(src), "-o",
                           str(tmp_path / "out"), "--ray", *address, "--actors", "512"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert re.search(r"the local Ray cluster started for this run \(this machine's CPUs and "
                     r"GPUs; it does not grow\) cannot hold the actor pool: it needs 512 CPUs "
                     r"\(512 actors x 1\) and it has \d+; use fewer actors \(--actors\)",
                     done.stderr), done.stderr


def test_a_pool_the_cluster_cannot_hold_is_said() -> None:
    """--gpus-per-actor 1 on a CPU cluster, or more actors than CPUs: the run waited for
    resources without a word, for ever on a cluster that does not grow."""
    from smysl.scale.ray_data import RayConfig, unplaceable

    cpus = {"CPU": 2.0, "memory": 1e9}
    assert unplaceable(RayConfig(actors=2), cpus) is None
    assert unplaceable(RayConfig(actors=3), cpus) == "3 CPUs (3 actors x 1) and it has 2"
    assert unplaceable(RayConfig(actors=2, num_gpus=1), cpus) == \
        "2 GPUs (2 actors x 1) and it has 0"
    assert unplaceable(RayConfig(actors=4, num_cpus=0.5, num_gpus=0.5),
                       {"CPU": 2.0, "GPU": 2.0}) is None


def _read(out) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.asarray(table.column("vector").to_pylist(), np.float32),
                    strict=True))


def _assert_bit_identical(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert got.keys() == ref.keys()  # every id exactly once (_read refuses repeats)
    differ = [i for i in ref if not np.array_equal(got[i], ref[i])]
    assert not differ, f"{len(differ)} vectors differ from single-process embed, e.g. {differ[0]}"


def _pids(model) -> list[int]:
    return ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in model.actors])


def _ray_embedder():
    from smysl.scale.ray_data import RayEmbedder

    class Counted(RayEmbedder):
        """Counts the texts sent to the actors; at call ``kill_at`` SIGKILLs actor 0 while
        that call runs; at call ``interrupt_at`` delivers SIGINT (Ctrl-C) to this process."""

        kill_at = interrupt_at = 0
        calls = sent = 0
        victim = 0

        def embed(self, texts, **kw):
            self.calls += 1
            if self.calls == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
            if self.calls == self.kill_at:
                threading.Timer(0.005, os.kill, (self.victim, signal.SIGKILL)).start()
            self.sent += len(texts)
            return super().embed(texts, **kw)

    return Counted


@slow
def test_20000_real_texts_on_two_actors_bit_identical(cluster, tiny_dir, reference,
                                                      real_corpus, real_reference,
                                                      tmp_path) -> None:
    """Issue 16 bar: 20,000 real texts, 2 actors: every id once, every vector bit-identical
    to single-process `embed` with the same thread count."""
    from smysl.scale.ray_data import RayConfig

    folder, _ = real_corpus
    with _ray_embedder()(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        assert model.fingerprint() == reference.fingerprint()
        report = run_job(model, [folder], JobConfig(output=str(tmp_path / "out"), **REAL_JOB))
    assert report.texts == REAL and report.shards_written == 11 and model.sent == REAL
    _assert_bit_identical(_read(tmp_path / "out"), real_reference)


@slow
def test_20000_real_texts_survive_a_sigkilled_actor(cluster, tiny_dir, real_corpus,
                                                    real_reference, tmp_path) -> None:
    """Issue 16 bar: SIGKILL of one actor mid-run (call 30 of 81, inside the 4th shard): it
    is replaced, its part of the batch redone, and the output is the same."""
    from smysl.scale.ray_data import RayConfig

    folder, _ = real_corpus
    with _ray_embedder()(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        pids = _pids(model)
        model.victim, model.kill_at = pids[0], 30
        report = run_job(model, [folder], JobConfig(output=str(tmp_path / "out"), **REAL_JOB))
        after = _pids(model)
    assert after[0] != pids[0] and after[1] == pids[1]  # actor 0 was replaced
    assert report.texts == REAL and report.shards_written == 11
    _assert_bit_identical(_read(tmp_path / "out"), real_reference)


@slow
def test_20000_real_texts_ctrl_c_then_rerun_computes_missing_shards(
        cluster, tiny_dir, real_corpus, real_reference, tmp_path) -> None:
    """Issue 16 bar: Ctrl-C (SIGINT to the driver) mid-run, then a rerun: only the shards not
    committed are computed (counted texts), and the output is identical."""
    from smysl.scale.ray_data import RayConfig

    folder, _ = real_corpus
    out = tmp_path / "out"
    config = JobConfig(output=str(out), **REAL_JOB)
    counted = _ray_embedder()
    with counted(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        model.interrupt_at = 30  # the 30th batch: inside the 4th shard
        with pytest.raises(KeyboardInterrupt):
            run_job(model, [folder], config)
    committed = sorted(out.glob("*.parquet"))
    done_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in committed)
    assert len(committed) == 3 and done_rows == 3 * 2000  # the 4th shard was not committed
    with counted(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        report = run_job(model, [folder], config)
    assert report.shards_skipped == 3 and report.shards_written == 8
    assert model.sent == report.texts == REAL - done_rows  # only the missing shards' rows
    assert not list(out.glob(".*.tmp"))
    _assert_bit_identical(_read(out), real_reference)


def _map_worker_pids() -> list[int]:
    """Processes of Ray Data's pool actors running `_DatasetWorker` (by process title)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                title = (d / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::MapWorker(MapBatches(_DatasetWorker))"):
                pids.append(int(d.name))
    return pids


@slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds actor processes in /proc")
def test_20000_real_texts_on_ray_data_survive_a_sigkilled_pool_actor(
        cluster, tiny_dir, real_corpus, real_reference, tmp_path) -> None:
    """Issue 16 bar on the Ray Data path: `embed_dataset` over `read_parquet` (20 files),
    a pool of 2 actors, one SIGKILLed after the first results arrive: every id once, every
    vector bit-identical to single-process `embed`."""
    from smysl.scale.ray_data import RayConfig

    _, rows = real_corpus
    (tmp_path / "in").mkdir()
    for k in range(0, REAL, 1000):
        part = rows[k : k + 1000]
        pq.write_table(pa.table({"id": [r for _, r, _ in part], "text": [t for _, _, t in part]}),
                       tmp_path / "in" / f"part-{k // 1000:02d}.parquet")
    # Ray Data bundles small files into one read task: 20 blocks for the pool to share
    ds = ray.data.read_parquet(str(tmp_path / "in")).repartition(20)
    out = embed_dataset(ds, str(tiny_dir), OPTIONS, config=RayConfig(actors=2), batch_size=256)
    got: dict[str, np.ndarray] = {}
    killed = None
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for rid, vec in zip(batch["id"], batch["vector"], strict=True):
            assert rid not in got, f"{rid} twice"
            got[str(rid)] = np.asarray(vec, np.float32)
        if killed is None:
            deadline = time.monotonic() + 30
            while len(pids := _map_worker_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(pids) == 2, f"expected 2 pool actors, found {pids}"
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)  # its task is retried on a replacement actor
    assert killed is not None and killed not in _map_worker_pids()
    _assert_bit_identical(got, real_reference)


@slow
def test_job_on_two_actors_survives_a_killed_actor(cluster, tiny_dir, reference, corpus,
                                                   tmp_path) -> None:
    """Every id once, every vector bit-identical to `embed` in one process; SIGKILL of an
    actor mid-run changes nothing (issue 16; small batches: many kill points per shard)."""
    from smysl.scale.ray_data import RayConfig

    path, rows = corpus
    with _ray_embedder()(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        assert model.fingerprint() == reference.fingerprint()
        pids = _pids(model)
        model.victim, model.kill_at = pids[0], 5
        report = run_job(model, [path], JobConfig(output=str(tmp_path / "out"), shard_rows=10,
                                                  batch_size=4))
        after = _pids(model)
    assert after[0] != pids[0] and after[1] == pids[1]  # actor 0 was replaced
    assert report.texts == 60 and report.shards_written == 6
    got = _read(tmp_path / "out")
    ref = reference.embed([r["text"] for r in rows])
    assert list(got) == [r["id"] for r in rows]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[r["id"]], ref[i])


@slow
def test_too_long_row_on_two_actors_is_named(cluster, tiny_dir, tmp_path) -> None:
    """A row too long for the model, in the second actor's part of a batch, is named by its
    file and row (the driver got an unreadable error naming its index in that part); with
    --skip-bad-rows that row alone is left out."""
    from smysl.scale import BadRowError
    from smysl.scale.ray_data import RayConfig

    rows = [{"id": i, "text": "word " * (60 if i == 7 else 3)} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options = ModelOptions(device="cpu", threads=1, max_tokens=32)
    with _ray_embedder()(str(tiny_dir), options, RayConfig(actors=2)) as model:
        # called directly (no token counts first): its index in the whole call, not 2 + 7
        from smysl.tokenize import InputTooLongError

        with pytest.raises(InputTooLongError) as too_long:
            model.embed([r["text"] for r in rows])
        assert too_long.value.index == 7
        with pytest.raises(BadRowError, match=r"rows\.jsonl, row 8: the text of id '7' has"):
            run_job(model, [path], JobConfig(output=str(tmp_path / "o1"), batch_size=4))
        report = run_job(model, [path], JobConfig(output=str(tmp_path / "o2"), batch_size=4,
                                                  skip_bad_rows=True))
    assert report.bad_rows == 1 and "row 8" in report.bad_examples[0]
    assert set(_read(tmp_path / "o2")) == {str(i) for i in range(10) if i != 7}


@slow
@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_a_row_a_provider_refuses_on_an_actor_is_named(cluster, tmp_path) -> None:
    """A review's: a text a provider refused (400) on an actor reached the driver as Ray's
    wrapper of an error that did not unpickle; it is the row's problem there too, named by
    its place in the whole batch (the second actor's part here)."""
    from smysl.scale import BadRowError
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
    from provider_fakes import FakeServer

    rows = [{"id": i, "text": f"text {i}" + (" POISON" if i == 7 else "")} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with FakeServer(dims=32, refuse=lambda t: "POISON" in t) as srv, \
            RayEmbedder(f"openai:{srv.url}/v1#m", ModelOptions(), RayConfig(actors=2),
                        dimensions=32, backoff_base=0.001, max_retries=0) as model:
        with pytest.raises(BadRowError, match=r"rows\.jsonl, row 8: openai:m refused the text "
                                              r"of id '7': HTTP 400"):
            run_job(model, [path], JobConfig(output=str(tmp_path / "o1"), batch_size=10))
        report = run_job(model, [path], JobConfig(output=str(tmp_path / "o2"), batch_size=10,
                                                  skip_bad_rows=True))
    assert report.bad_rows == 1 and "row 8" in report.bad_examples[0]
    assert set(_read(tmp_path / "o2")) == {str(i) for i in range(10) if i != 7}


@slow
@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
@pytest.mark.parametrize("bad", [7, 5])
def test_a_refusal_on_an_actor_bills_no_other_text_twice(cluster, tmp_path, bad) -> None:
    """What a call refused on one actor did embed (the other actor's part, the refused part's
    texts before the refusal) was dropped: the job's call without the refused row, split anew
    over the actors, paid for those texts again. They are held, and only the rest is sent;
    the vectors are those of a run without the bad row. Row 5 is the first of its part: the
    refusing actor embedded nothing, so the job probes its settings, and the probe left the
    held vectors alone (it cleared them, a review found)."""
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
    from provider_fakes import FakeServer

    rows = [{"id": i, "text": f"text {i}" + (" POISON" if i == bad else "")} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with FakeServer(dims=64, refuse=lambda t: "POISON" in t) as srv, \
            RayEmbedder(f"openai:{srv.url}/v1#m", ModelOptions(), RayConfig(actors=2),
                        dimensions=64, backoff_base=0.001, max_retries=0) as model:
        report = run_job(model, [path], JobConfig(output=str(tmp_path / "o"), batch_size=10,
                                                  dimensions=32, skip_bad_rows=True))
        billed = collections.Counter(srv.billed_texts)
        one = smysl.load(f"openai:{srv.url}/v1#m", ModelOptions(), dimensions=64)
        alone = one.embed([r["text"] for r in rows if r["id"] != bad], dimensions=32)
    assert report.bad_rows == 1
    assert {t: n for t, n in billed.items() if n != 1 and t != "probe"} == {}, billed
    assert set(billed) - {"probe"} == {f"text {i}" for i in range(10) if i != bad}
    got = _read(tmp_path / "o")
    assert np.array_equal(np.stack([got[str(i)] for i in range(10) if i != bad]), alone)


@slow
def test_chunks_on_actors_cut_by_the_models_tokenizer(cluster, tiny_dir, reference,
                                                      tmp_path) -> None:
    """A chunking job on a Ray pool cuts and counts chunks with the model's own tokenizer, as
    in one process. Before, the pool offered no tokenizer: chunks were cut on a word count
    (rare words cost several tokens: over-long chunks failed as too long) and the guesses were
    written as the chunks' token counts."""
    from smysl.scale.ray_data import RayConfig, RayEmbedder
    from smysl.toolkit.chunking import ChunkConfig, chunker_for

    text = ("Смысл жизни — в поиске смысла 𝔘𝔫 👨‍👩‍👧. Embeddings map text to "
            "vectors.\n") * 8
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "a", "text": text}) + "\n", encoding="utf-8")
    config = ChunkConfig(max_tokens=24, overlap=4)
    with RayEmbedder(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        chunker = chunker_for(model, config)
        run_job(model, [path], JobConfig(output=str(tmp_path / "out"), chunk=config))
    want = chunker_for(reference, config).split(text)
    assert chunker.exact and chunker.split(text) == want
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"a#{c.index}" for c in want]
    assert table.column("tokens").to_pylist() == [c.tokens for c in want]
    assert max(c.tokens for c in want) <= 24  # type: ignore[type-var]


@slow
def test_an_empty_call_checks_the_size_as_any_call(cluster, tiny_dir) -> None:
    """``embed([], dimensions=7)`` returned a [0, 7] array, so an adapter made on a pool took a
    size that its first document then failed on (the adapters check it with an empty call)."""
    from smysl.integrations.langchain import SmyslEmbeddings
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    with RayEmbedder(str(tiny_dir), OPTIONS, RayConfig(actors=1)) as model:
        assert model.embed([], dimensions=32).shape == (0, 32)
        assert model.embed([]).shape == (0, model.dimensions)
        for bad in (7, model.dimensions + 1):
            with pytest.raises(ValueError, match="dimensions must be in 32"):
                model.embed([], dimensions=bad)
            with pytest.raises(ValueError, match="dimensions must be in 32"):
                SmyslEmbeddings(model, dimensions=bad)


def test_ctrl_c_while_the_actors_load_kills_them(cluster, tiny_dir, monkeypatch) -> None:
    """A review's: Ctrl-C while the pool's actors loaded left them (and two Ray agents of a
    cluster started for the run) running, at times with a segmentation fault. The actors
    made are killed, and the interrupt still stops the caller."""
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    killed: list[object] = []
    real_kill = ray.kill

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "get", interrupted)
    monkeypatch.setattr(ray, "kill", lambda actor, **k: (killed.append(actor),
                                                         real_kill(actor, **k)))
    with pytest.raises(KeyboardInterrupt):
        RayEmbedder(str(tiny_dir), OPTIONS, RayConfig(actors=2))
    assert len(killed) == 2


@slow
def test_a_pool_s_embed_checks_its_arguments_before_the_actors(cluster, tiny_dir,
                                                                reference) -> None:
    """A review's: ``truncate="no"`` was ``bool()``-ed to True (a long text cut without a
    word), ``progress=3`` taken and any progress ignored, and a bad size on texts was a Ray
    traceback (on no texts it was smysl's message)."""
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    texts = [f"text {i} " + "word " * i for i in range(9)]
    with RayEmbedder(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        with pytest.raises(ValueError, match="truncate must be True or False, got 'no'"):
            model.embed(texts, truncate="no")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="progress must be True, False or an object"):
            model.embed(texts, progress=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^dimensions must be in 32\.\.64"):
            model.embed(texts, dimensions=16)

        class Bar:
            n = 0

            def update(self, n: int = 1) -> None:
                self.n += n

        bar = Bar()
        got = model.embed(texts, dimensions=32, progress=bar)
        assert bar.n == len(texts)
        np.testing.assert_array_equal(got, reference.embed(texts, dimensions=32))


@slow
def test_embed_dataset_says_a_missing_column_and_a_null_text_as_such(cluster, tiny_dir) -> None:
    """A review's: a missing text column was a KeyError in the pool's first batch, after the
    actors had loaded the model; a pandas None text was named ``text=nan``."""
    import pandas as pd

    from smysl.scale.ray_data import RayConfig

    ds = ray.data.from_pandas(pd.DataFrame({"id": [1, 2], "body": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"the dataset has no column 'text' \(its columns: "
                                         r"id, body\); pass id_column= / text_column="):
        embed_dataset(ds, str(tiny_dir), OPTIONS, config=RayConfig(actors=1, num_cpus=0.5))
    ds = ray.data.from_pandas(pd.DataFrame({"id": [1, 2], "text": ["a", None]}))
    with pytest.raises(Exception, match=r"Ray Data row \(id=2, text=None\)"):
        embed_dataset(ds, str(tiny_dir), OPTIONS,
                      config=RayConfig(actors=1, num_cpus=0.5)).take_all()


def test_a_pandas_na_text_is_named_null(tiny_dir) -> None:
    """A review's: a pd.NA text (a pandas string column's null) was named ``text=<NA>``."""
    import pandas as pd

    from smysl.scale.job import BadRowError
    from smysl.scale.ray_data import _DatasetWorker

    worker = _DatasetWorker(str(tiny_dir), OPTIONS, "id", "text", None, None, False)
    texts = pd.array(["a", pd.NA], dtype="string").to_numpy()
    with pytest.raises(BadRowError, match=r"Ray Data row \(id=2, text=None\): no text field "
                                          r"'text'"):
        worker({"id": np.array([1, 2]), "text": texts})
    # a pd.NA id: "== ''" is NA, whose truth raised a TypeError in the row rule
    ids = pd.array(["x", pd.NA], dtype="string").to_numpy()
    with pytest.raises(BadRowError, match=r"Ray Data row \(id=None, text='b'\)"):
        worker({"id": ids, "text": np.array(["a", "b"], dtype=object)})


@slow
def test_embed_dataset_on_an_actor_pool(cluster, tiny_dir, reference, corpus) -> None:
    """`smysl.scale.embed_dataset` maps a Ray Data dataset with 2 actors (issue 16)."""
    from smysl.scale.ray_data import RayConfig

    _, rows = corpus
    ds = ray.data.from_items(rows)
    out = embed_dataset(ds, str(tiny_dir), OPTIONS, dimensions=32, config=RayConfig(actors=2),
                        batch_size=8).take_all()
    got = {o["id"]: o for o in out}
    assert len(out) == len(got) == 60
    ref = reference.embed([r["text"] for r in rows], dimensions=32)
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[r["id"]]["vector"], ref[i])
        assert got[r["id"]]["tokens"] == reference.count_tokens([r["text"]])[0]


@slow
def test_provider_on_two_actors_with_injected_429_and_500(cluster, real_corpus,
                                                          tmp_path) -> None:
    """Issue 16 bar: a provider backend on the actors against a loopback OpenAI-compatible
    server answering 5% 429 and 5% 500: all vectors; each input answered (billed) exactly
    once, retries aside; tokens, requests, retries and cost summed over the actors."""
    if not TOKENIZER_JSON.is_file():
        pytest.skip(f"Qwen3 tokenizer not found at {TOKENIZER_JSON}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
    from provider_fakes import FakeServer, expected

    from smysl.scale.ray_data import RayConfig, RayEmbedder
    from smysl.tokenize import Tokenizer

    _, real = real_corpus
    rows = real[::10]  # 2,000 texts: English, Russian and tweets
    texts = [t for _, _, t in rows]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": r, "text": t}) + "\n"
                                               for _, r, t in rows), encoding="utf-8")
    tok = Tokenizer(TOKENIZER_JSON, max_tokens=1 << 30)
    price = 0.02  # $ per 1M tokens (a bare OpenAI-compatible URL is free by default)
    with FakeServer(dims=64, tokenizer=tok, p429=0.05, p500=0.05, seed=16) as srv, \
            RayEmbedder(f"openai:{srv.url}/v1#fake-embedding", ModelOptions(max_batch_size=16),
                        RayConfig(actors=2), dimensions=64, tokenizer=str(TOKENIZER_JSON),
                        price_per_mtok=price, backoff_base=0.001, api_key="sk-test") as model:
        report = run_job(model, [tmp_path / "in.jsonl"],
                         JobConfig(output=str(tmp_path / "out"), shard_rows=500, batch_size=128))
        usage = model.usage.snapshot()
    got = _read(tmp_path / "out")
    assert list(got) == [r for _, r, _ in rows]
    np.testing.assert_allclose(np.stack(list(got.values())), expected(texts, 64, 64),
                               atol=1e-6)
    assert collections.Counter(srv.billed_texts) == collections.Counter(texts)
    assert srv.faults >= 10  # ~10% of ~140 requests were refused and retried
    assert usage["texts"] == len(texts) and usage["requests"] == srv.ok_requests
    assert usage["tokens"] == usage["reported_tokens"] == srv.billed_tokens == report.tokens
    assert usage["retries"] == srv.faults and usage["failed_requests"] == 0
    assert usage["cost"] == pytest.approx(srv.billed_tokens * price / 1e6)
    summary = report.summary()
    assert (f"openai:fake-embedding: {srv.billed_tokens:,} tokens (provider-reported), "
            f"{len(texts):,} texts, {srv.ok_requests} requests, {srv.faults} retries, "
            f"${usage['cost']:.6f} at $0.02/1M tokens (summed over 2 actors)") in summary


@slow
def test_actors_load_the_drivers_folder_or_say_why_not(cluster, tiny_dir, monkeypatch
                                                        ) -> None:
    """A relative --model is the driver's folder (the actors' working directory held another
    model of that name, loaded without a word), and a model that fails to load in the actors
    is one line naming it (a Ray traceback of ~130 lines, exit 1)."""
    from smysl.scale.ray_data import RayEmbedder

    monkeypatch.chdir(tiny_dir.parent)
    with RayEmbedder(tiny_dir.name, OPTIONS, actors_config(1)) as m:
        assert m.source == str(tiny_dir.resolve())
    with pytest.raises(ValueError, match=r"^'\./no-such-model' is not a model directory.* "
                                         r"\(in a Ray actor\)$"):
        RayEmbedder("./no-such-model", OPTIONS, actors_config(1))
    with (pytest.warns(RuntimeWarning, match="cannot hold the actor pool now: it needs 8 CPUs"),
          pytest.raises(ValueError, match="no-such-model")):
        RayEmbedder("./no-such-model", OPTIONS, actors_config(8))


def actors_config(n: int):  # type: ignore[no-untyped-def]
    from smysl.scale.ray_data import RayConfig

    return RayConfig(actors=n)


@slow
def test_cli_ray_flag(cluster, tiny_dir, reference, corpus, tmp_path, capsys) -> None:
    """`smysl embed --input FILE --output DIR --ray --actors 2` (issue 16)."""
    path, rows = corpus
    assert main(["embed", "--input", str(path), "--output", str(tmp_path / "out"),
                 "--model", str(tiny_dir), "--device", "cpu", "--threads", "1", "--ray",
                 "--actors", "2", "--no-progress"]) == 0
    assert "embedded 60 texts" in capsys.readouterr().err
    assert set(_read(tmp_path / "out")) == {r["id"] for r in rows}


def test_a_part_that_kills_every_actor_fails_naming_it(cluster, tiny_dir, corpus,
                                                      tmp_path) -> None:
    """A review's: actors were retried without end (``max_task_retries=-1``), so one batch
    that killed every actor it reached (out of memory on its texts) hung the job for good. It
    is redone TASK_RETRIES times, then the job stops naming the part; the shards before it
    stay, and the pool still embeds."""
    from smysl.scale.ray_data import TASK_RETRIES, RayConfig, RayEmbedder, Worker

    def poisoned() -> type[Worker]:
        class Dies(Worker):  # defined here: Ray sends it to the actors by value
            def metered(self, method, texts, *args):  # type: ignore[no-untyped-def]
                if any("POISON" in t for t in texts):
                    os._exit(1)  # as the kernel's OOM killer ends a process
                return super().metered(method, texts, *args)

        return Dies

    path, rows = corpus
    rows[25]["text"] = "POISON " + rows[25]["text"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    class Pool(RayEmbedder):
        worker = poisoned()

    with Pool(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"rows\.jsonl, rows 25\.\.26 \(ids 'r24'\.\."
                                               rf"'r25'\): a Ray actor died {TASK_RETRIES + 1} "
                                               r"times embedding texts 0\.\.1 of this call"):
            run_job(model, [path], JobConfig(output=str(tmp_path / "out"), shard_rows=10,
                                             batch_size=4))
        assert time.monotonic() - t0 < 120
        assert model.embed(["still here"]).shape == (1, model.dimensions)
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 2  # rows 0..19 stay
