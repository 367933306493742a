"""The engine in a child process: same vectors as in process, clear errors, clean shutdown."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS

from smysl import Embedder
from smysl.qwen3.engine import EngineConfig
from smysl.qwen3.hub import read_checkpoint
from smysl.qwen3.worker import EngineProcess, EngineProcessError


@pytest.fixture(scope="module")
def remote(tiny_dir: Path):  # type: ignore[no-untyped-def]
    # the child must use the parent's thread count: vectors depend on it (last bit)
    emb = Embedder.load(str(tiny_dir), device="cpu", threads=torch.get_num_threads(),
                        process=True)
    yield emb
    emb.close()


def test_vectors_are_bit_identical_to_the_in_process_engine(remote, tiny) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(remote.engine, EngineProcess)
    assert remote.engine.pid != os.getpid() and remote.engine.alive
    assert (remote.dimensions, remote.max_tokens) == (tiny.dimensions, tiny.max_tokens)
    assert remote.engine.vocab_rows == tiny.engine.vocab_rows
    # what the child reports is what an in-process engine says, plus its pid; its bulk calls
    # go one batch at a time (lanes run in-process only)
    assert remote.info() == dataclasses.replace(tiny.info(), process=remote.engine.pid,
                                                lanes=1)
    assert np.array_equal(remote.embed(TEXTS), tiny.embed(TEXTS))
    assert np.array_equal(remote.embed_queries(TEXTS[:3], dimensions=32),
                          tiny.embed_queries(TEXTS[:3], dimensions=32))
    ids = tiny.tokenize(TEXTS[:4])
    assert np.array_equal(remote.embed_token_ids(ids, normalize=False),
                          tiny.embed_token_ids(ids, normalize=False))


def test_errors_in_the_child_reach_the_caller(remote) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IndexError):  # an id past the embedding table, sent past validation
        remote.engine.forward([[5, 10**7]])
    # the process survives a failed batch
    assert remote.embed(["still here"]).shape == (1, remote.dimensions)


def test_a_bad_checkpoint_fails_at_start(tiny_dir: Path) -> None:
    ckpt = read_checkpoint(tiny_dir)
    with pytest.raises(ValueError, match="quantize"):
        EngineProcess(ckpt, EngineConfig(device="cpu", quantize="int2"))


def test_a_dead_child_is_a_clear_error_and_close_is_idempotent(tiny_dir: Path) -> None:
    engine = EngineProcess(read_checkpoint(tiny_dir), EngineConfig(device="cpu"))
    assert engine.forward([[1, 2, 3]]).shape == (1, engine.hidden_size)
    os.kill(engine.pid, signal.SIGKILL)  # e.g. the OOM killer
    with pytest.raises(EngineProcessError, match="exited"):
        engine.forward([[1, 2, 3]])
    engine.close()
    engine.close()
    with pytest.raises(EngineProcessError, match="closed"):
        engine.forward([[1, 2, 3]])


def test_close_stops_the_child(tiny_dir: Path) -> None:
    emb = Embedder.load(str(tiny_dir), device="cpu", process=True)
    engine = emb.engine
    assert isinstance(engine, EngineProcess) and engine.alive
    emb.close()
    assert not engine.alive


def test_an_interrupted_call_never_hands_its_rows_to_the_next(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    try:
        first = engine.pid
        a, b = tiny.tokenize(["first batch"]), tiny.tokenize(["second batch", "and more"])

        def interrupted() -> object:  # Ctrl-C while the child computes
            raise KeyboardInterrupt

        engine._conn.recv = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.forward(a)
        # the next call gets its own rows from a fresh child, never the interrupted batch's
        assert np.array_equal(engine.forward(b), tiny.engine.forward(b))
        assert engine.pid != first and engine.alive
    finally:
        engine.close()
    assert not engine.alive


def wait_alive(engine: EngineProcess, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not engine.alive:
        assert time.monotonic() < deadline, "the engine process did not come back"
        time.sleep(0.05)


def test_a_dead_child_is_restarted_a_bounded_number_of_times(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 8: a child killed from outside used to leave the engine dead for good;
    now it restarts in the background (same vectors), and past ``max_restarts`` within the
    window it stays down with a clear error."""
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()),
                           max_restarts=1)
    ids = tiny.tokenize(["restart me"])
    try:
        first = engine.pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(EngineProcessError, match="restarting"):
            engine.forward(ids)  # the dead window fails fast
        assert not engine.alive
        wait_alive(engine)
        assert engine.pid != first and engine.restarts == 1
        assert np.array_equal(engine.forward(ids), tiny.engine.forward(ids))
        os.kill(engine.pid, signal.SIGKILL)  # a second death within the window: no restart
        with pytest.raises(EngineProcessError):
            engine.forward(ids)
        import time

        time.sleep(0.5)
        assert not engine.alive and engine.restarts == 1
        with pytest.raises(EngineProcessError, match="restart the program"):
            engine.forward(ids)
    finally:
        engine.close()
    assert not engine.alive
