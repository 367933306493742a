"""Embedding on a local Ray cluster with 2 actors and the tiny model (issue 16): the job's output
is bit-identical to single-process `embed` with the same thread count; an actor killed mid-run
is replaced and its batch redone; `embed_dataset` over a Ray Data dataset."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import smysl
from smysl.cli import main
from smysl.options import ModelOptions
from smysl.scale import JobConfig, embed_dataset, run_job

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
#: A Ray cluster and its actors take ~10 s to start: the tests on one are slow.
slow = pytest.mark.slow

OPTIONS = ModelOptions(device="cpu", threads=1)


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


def _read(out) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.asarray(table.column("vector").to_pylist(), np.float32),
                    strict=True))


@slow
def test_job_on_two_actors_survives_a_killed_actor(cluster, tiny_dir, reference, corpus,
                                                   tmp_path) -> None:
    """Every id once, every vector bit-identical to `embed` in one process; SIGKILL of an
    actor mid-run changes nothing (issue 16)."""
    from smysl.scale.ray_data import RayConfig, RayEmbedder

    class KillingOnce(RayEmbedder):
        """SIGKILLs actor 0 as the fifth batch is sent to it (mid-run, mid-shard)."""

        calls = 0

        def embed(self, texts, **kw):
            self.calls += 1
            if self.calls == 5:
                os.kill(pids[0], signal.SIGKILL)
            return super().embed(texts, **kw)

    path, rows = corpus
    with KillingOnce(str(tiny_dir), OPTIONS, RayConfig(actors=2)) as model:
        assert model.fingerprint() == reference.fingerprint()
        pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in model.actors])
        report = run_job(model, [path], JobConfig(output=str(tmp_path / "out"), shard_rows=10,
                                                  batch_size=4))
        after = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in model.actors])
    assert after[0] != pids[0] and after[1] == pids[1]  # actor 0 was replaced
    assert report.texts == 60 and report.shards_written == 6
    got = _read(tmp_path / "out")
    ref = reference.embed([r["text"] for r in rows])
    assert list(got) == [r["id"] for r in rows]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[r["id"]], ref[i])


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
def test_cli_ray_flag(cluster, tiny_dir, reference, corpus, tmp_path, capsys) -> None:
    """`smysl embed --input FILE --output DIR --ray --actors 2` (issue 16)."""
    path, rows = corpus
    assert main(["embed", "--input", str(path), "--output", str(tmp_path / "out"),
                 "--model", str(tiny_dir), "--device", "cpu", "--threads", "1", "--ray",
                 "--actors", "2", "--no-progress"]) == 0
    assert "embedded 60 texts" in capsys.readouterr().err
    assert set(_read(tmp_path / "out")) == {r["id"] for r in rows}


def test_unreachable_address_is_named() -> None:
    """An address nobody answers fails at once, naming it (ray.init alone retries for
    minutes) (issue 16)."""
    import socket

    from smysl.scale.ray_data import RayConfig, connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    with pytest.raises(ValueError, match=f"Ray cluster at 127.0.0.1:{port}: nothing answers"):
        connect(RayConfig(address=f"127.0.0.1:{port}"))
