"""The engine in a child process: same vectors as in process, clear errors, clean shutdown."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS

from qwen3.layered import LayeredCpuEngine, RecordingEngine
from smysl import Embedder
from smysl.qwen3.contract import EngineConfig
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
    # named for ps and top
    assert Path(f"/proc/{remote.engine.pid}/comm").read_text().strip() == "smysl-engine"
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


def test_close_with_a_pass_in_flight_kills_the_child_at_once(tiny_dir: Path) -> None:
    """A close while a pass computes (a server's forced stop) abandons it: the child is
    killed, not given 10 s to finish and then 5 more for a SIGTERM it ignores."""
    engine = EngineProcess(read_checkpoint(tiny_dir), EngineConfig(device="cpu"))
    rows = engine.submit([[1, 2, 3]])
    os.kill(engine.pid, signal.SIGSTOP)  # a pass that takes long
    t = time.monotonic()
    engine.close()
    took = time.monotonic() - t
    assert took < 3 and not engine.alive, took
    with pytest.raises(EngineProcessError, match="closed"):
        rows()


def test_an_interrupted_call_never_hands_its_rows_to_the_next(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    try:
        first = engine.pid
        a, b = tiny.tokenize(["first batch"]), tiny.tokenize(["second batch", "and more"])

        def interrupted() -> object:  # Ctrl-C while the child computes
            raise KeyboardInterrupt

        engine._replies.conn.recv = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.forward(a)
        # the next call, a share, starts a fresh child; the next pass gets its own rows from
        # it, never the interrupted batch's
        client = engine.share().connect()
        assert np.array_equal(engine.forward(b), tiny.engine.forward(b))
        assert np.array_equal(client.forward(a), tiny.engine.forward(a))
        assert engine.pid != first and engine.alive
        client.close()
    finally:
        engine.close()
    assert not engine.alive


def wait_alive(engine: EngineProcess, dead_pid: int, timeout: float = 60) -> None:
    """Wait until a child other than ``dead_pid`` serves ``engine``: for a moment after a
    SIGKILL the dead child's sockets are closed but it is not yet a zombie, and ``alive``
    still reads True with the old pid."""
    import time

    deadline = time.monotonic() + timeout
    while not (engine.alive and engine.pid != dead_pid):
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
        wait_alive(engine, first)
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


# ---------------------------------------------------------------------------- shared engines
def _embed_in_child(twin: Embedder, texts: list[str], out: Any) -> None:
    out.put((twin.info().process, twin.embed(texts)))
    twin.close()


def test_a_shared_engine_serves_other_processes_bit_identically(remote, tiny) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing as mp
    import pickle

    twin = remote.share()
    assert twin.share().engine.address == twin.engine.address  # one address per engine
    assert pickle.loads(pickle.dumps(twin.engine)).info == twin.engine.info
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_embed_in_child, args=(twin, TEXTS, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for pid, vectors in got:
        assert pid == remote.engine.pid  # they reported the engine process, not themselves
        assert np.array_equal(vectors, tiny.embed(TEXTS))
    assert np.array_equal(remote.embed(TEXTS[:2]), tiny.embed(TEXTS[:2]))  # the owner too


def test_concurrent_clients_get_their_own_rows(remote, tiny) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    clients = [remote.engine.share() for _ in range(4)]
    batches = [tiny.tokenize(TEXTS[i : i + 3]) for i in range(8)]
    try:
        with ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(lambda i: clients[i % 4].forward(batches[i]), range(8)))
        for batch, r in zip(batches, rows, strict=True):
            assert np.array_equal(r, tiny.engine.forward(batch))
        with pytest.raises(IndexError):  # a client's bad input is its own error
            clients[0].forward([[5, 10**7]])
        assert np.array_equal(clients[1].forward(batches[0]), tiny.engine.forward(batches[0]))
    finally:
        for c in clients:
            c.close()


def test_merge_groups_requests_within_the_budget() -> None:
    from smysl.qwen3.contract import merge

    def req(*lengths: int, heads: bool = False) -> Any:
        return [[1] * n for n in lengths], ([0] * len(lengths) if heads else None)

    assert merge([req(10), req(20, 5), req(30)], 100) == [[0, 1, 2]]
    assert merge([req(60), req(50), req(40)], 100) == [[0], [1, 2]]
    assert merge([req(150), req(10)], 100) == [[0], [1]]  # over the budget: alone
    assert merge([req(10), req(10, heads=True), req(10)], 100) == [[0], [1], [2]]
    assert merge([], 100) == []


def test_clients_reconnect_to_a_restarted_engine(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    ids = tiny.tokenize(["again"])
    try:
        client = engine.share()
        assert np.array_equal(client.forward(ids), tiny.engine.forward(ids))
        first = engine.pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(EngineProcessError):
            client.forward(ids)
        wait_alive(engine, first)
        import time

        deadline = time.monotonic() + 60
        while not client.alive:
            assert time.monotonic() < deadline, "the client did not reconnect"
            time.sleep(0.05)
        assert client.pid == engine.pid != first
        assert np.array_equal(client.forward(ids), tiny.engine.forward(ids))
    finally:
        engine.close()
    import time

    time.sleep(0.2)
    assert not client.alive  # the engine is gone for good


def test_an_in_process_engine_cannot_be_shared(tiny) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotImplementedError, match="process=True"):
        tiny.share()


def test_alive_never_waits_for_a_call_in_flight(remote) -> None:  # type: ignore[no-untyped-def]
    """A server's event loop polls ``alive``: it must not block behind a forward pass."""
    import time

    client = remote.engine.share().connect()
    try:
        with client._lock:  # as during a call
            t = time.monotonic()
            assert client.alive
            assert time.monotonic() - t < 0.1
    finally:
        client.close()


class _FakeCudaEngine(RecordingEngine):
    """Records when passes are queued and when their rows are waited for, as a CUDA engine
    whose ``submit`` returns before the pass has run; with ``gated``, a pass's rows come only
    once the test opens its gate (:meth:`open`): the pass "runs" until then."""

    def __init__(self, fail_merged: bool = False, device: str = "cuda",
                 gated: bool = False) -> None:
        import threading

        super().__init__()
        self.fail_merged = fail_merged
        self.device = device
        self.queues = device == "cuda"
        self.gated = gated
        self.gates: dict[tuple[int, ...], threading.Event] = {}

    def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> Any:
        import threading

        key = tuple(s[0] for s in batch)
        gate = self.gates.setdefault(key, threading.Event())
        self._record(("launch", key))

        def rows() -> np.ndarray:
            if self.gated:
                gate.wait(10)
            self._record(("wait", key))
            if self.fail_merged and len(batch) > 1:
                raise ValueError("bad input somewhere in the batch")
            return np.array([[s[0], len(s)] for s in batch], dtype=np.float32)

        return rows

    def open(self, *keys: int) -> None:
        import threading

        self.gates.setdefault(keys, threading.Event()).set()


def _hub(engine: _FakeCudaEngine, clients: int, budget: int | None = None
         ) -> tuple[Any, list[Any], Any]:
    """The child's loop in a thread, with ``clients`` client connections -> (the thread,
    the clients' ends, the parent's end: send None to stop)."""
    import multiprocessing as mp
    import threading

    from smysl.qwen3.worker import _Hub

    parent, child_end = mp.Pipe()
    hub = _Hub(engine, child_end, {}, budget)  # type: ignore[arg-type]
    ends = []
    for _ in range(clients):
        mine, theirs = mp.Pipe()
        hub.clients.append(theirs)
        ends.append(mine)
    thread = threading.Thread(target=hub.run, daemon=True)
    return thread, ends, parent


def _answer(conn: Any) -> Any:
    """The next reply on a client's end, without its request number."""
    return conn.recv()[1]


def _stop(thread: Any, parent: Any) -> None:
    parent.send(None)
    thread.join(10)
    assert not thread.is_alive()


def _run_hub(engine: _FakeCudaEngine, requests: list[Any]) -> list[Any]:
    """The child's loop in a thread, with one client connection per request (all sent before
    it starts); -> each client's reply."""
    thread, ends, parent = _hub(engine, len(requests))
    for c, r in zip(ends, requests, strict=True):
        c.send(r)
    thread.start()
    replies = [_answer(c) if c.poll(10) else None for c in ends]
    _stop(thread, parent)
    return replies


def test_the_hub_merges_what_arrives_while_a_small_pass_runs_into_the_next() -> None:
    """CUDA: requests that come while a pass runs wait in the child and go, merged, in one
    pass launched when it ends (queued behind it, each would wait a whole pass more); a
    client's requests sent together are read together."""
    engine = _FakeCudaEngine(gated=True)
    thread, (a, b, c), parent = _hub(engine, 3)
    thread.start()
    a.send(([[1, 2, 3]], None))
    engine.until(("launch", (1,)))
    b.send(([[7, 8]], None))
    c.send(([[9]], None))
    c.send(([[11, 12]], None))  # one client, two requests in flight
    assert not a.poll(0.3) and engine.events == [("launch", (1,))]  # they wait for the pass
    engine.open(1)
    assert _answer(a)[1].tolist() == [[1, 3]]
    engine.until(("launch", (7, 9, 11)))
    engine.open(7, 9, 11)
    assert _answer(b)[1].tolist() == [[7, 2]]
    assert [_answer(c)[1].tolist(), _answer(c)[1].tolist()] == [[[9, 1]], [[11, 2]]]
    assert engine.events == [("launch", (1,)), ("wait", (1,)), ("launch", (7, 9, 11)),
                             ("wait", (7, 9, 11))]
    _stop(thread, parent)


def test_the_hub_queues_a_large_pass_behind_a_running_one_two_at_most() -> None:
    """A pass of half the budget or more is launched behind the running one at once (the GPU
    never waits for the host between bulk passes); a third waits until one has ended."""
    engine = _FakeCudaEngine(gated=True)
    thread, (a, b, c), parent = _hub(engine, 3)
    thread.start()
    big = [2] * 16_384  # half of CUDA's budget of 32,768 tokens
    a.send(([[1, 2]], None))
    engine.until(("launch", (1,)))
    b.send(([big], None))
    engine.until(("launch", (2,)))  # behind the running pass, before its rows
    c.send(([[3] * 16_384], None))
    assert not c.poll(0.3) and engine.events == [("launch", (1,)), ("launch", (2,))]
    engine.open(1)
    engine.until(("launch", (3,)))
    engine.open(2)
    engine.open(3)
    assert [_answer(x)[0] for x in (a, b, c)] == ["ok", "ok", "ok"]
    assert engine.events == [("launch", (1,)), ("launch", (2,)), ("wait", (1,)),
                             ("launch", (3,)), ("wait", (2,)), ("wait", (3,))]
    _stop(thread, parent)


def test_the_hub_computes_nothing_for_a_client_gone_while_it_waited() -> None:
    engine = _FakeCudaEngine(gated=True)
    thread, (a, b), parent = _hub(engine, 2)
    thread.start()
    a.send(([[1, 2]], None))
    engine.until(("launch", (1,)))
    b.send(([[7]], None))  # waits for the running pass
    time.sleep(0.2)
    b.close()  # and its client goes away meanwhile
    time.sleep(0.2)
    engine.open(1)
    assert _answer(a)[0] == "ok"
    a.send(([[3]], None))
    engine.until(("launch", (3,)))
    engine.open(3)
    assert _answer(a)[1].tolist() == [[3, 1]]
    assert ("launch", (7,)) not in engine.events
    _stop(thread, parent)


def test_the_hub_keeps_two_passes_at_most_on_the_device_while_it_stops() -> None:
    """At the parent's stop the hub answers every request it has, launching them as ever
    (all at once, three bulk passes would hold three passes' activations)."""
    engine = _FakeCudaEngine(gated=True)
    thread, (a, b, c), parent = _hub(engine, 3)
    thread.start()
    a.send(([[1] * 16_384], None))
    engine.until(("launch", (1,)))
    b.send(([[2] * 16_384], [1]))  # a shared prefix: a pass of its own
    engine.until(("launch", (2,)))
    c.send(([[3] * 16_384], [1]))
    time.sleep(0.2)
    parent.send(None)
    time.sleep(0.3)
    assert ("launch", (3,)) not in engine.events
    engine.open(1)
    engine.until(("launch", (3,)))
    engine.open(2)
    engine.open(3)
    assert [_answer(x)[0] for x in (a, b, c)] == ["ok", "ok", "ok"]
    thread.join(10)
    assert not thread.is_alive()


def test_the_hub_answers_what_a_client_sent_with_the_stop() -> None:
    """Requests read in the same wake-up as the parent's stop are answered too."""
    engine = _FakeCudaEngine()
    thread, (a, b), parent = _hub(engine, 2)
    parent.send(None)  # the parent's end is the first the hub reads
    a.send(([[1, 2]], None))
    b.send(([[7]], None))
    thread.start()
    assert [_answer(x)[1].tolist() if x.poll(10) else None for x in (a, b)] == [[[1, 2]], [[7, 1]]]
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_hub_computes_nothing_for_the_parent_once_it_has_stopped(device: str) -> None:
    """The parent closes its end right after the stop (``_stop``): passes for its requests
    still waiting would be rows nobody reads (40 CPU passes held a close for 10 s)."""
    engine = _FakeCudaEngine(device=device)
    thread, (a,), parent = _hub(engine, 1)
    for key in (1, 2, 3):
        parent.send(([[key, 9]], [1]))  # a shared prefix each: three passes
    parent.send(None)
    a.send(([[7]], None))
    thread.start()
    assert a.poll(10) and _answer(a)[1].tolist() == [[7, 1]]  # the client's, answered
    thread.join(10)
    assert not thread.is_alive()
    assert [e for e in engine.events if e[0] == "launch"] == [("launch", (7,))]


def test_the_hub_answers_what_it_received_before_it_stops() -> None:
    engine = _FakeCudaEngine()
    replies = _run_hub(engine, [([[1, 2, 3]], [1]), ([[7, 8]], [1])])
    assert [r[0] for r in replies] == ["ok", "ok"]
    assert replies[0][1].tolist() == [[1, 3]] and replies[1][1].tolist() == [[7, 2]]


def test_on_cpu_the_hub_answers_each_pass_before_the_next() -> None:
    """A CPU pass has run when it is submitted: its rows go out before the next pass starts
    (held back, they would wait a whole pass for nothing)."""
    engine = _FakeCudaEngine(device="cpu")
    _run_hub(engine, [([[1, 2, 3]], [1]), ([[7, 8]], [1])])
    assert engine.events == [("launch", (1,)), ("wait", (1,)), ("launch", (7,)),
                             ("wait", (7,))]


def test_the_hub_answers_merged_requests_alone_after_a_failed_pass() -> None:
    engine = _FakeCudaEngine(fail_merged=True)
    replies = _run_hub(engine, [([[1, 2]], None), ([[5]], None)])  # merged into one pass
    assert engine.events[:2] == [("launch", (1, 5)), ("wait", (1, 5))]
    assert [r[0] for r in replies] == ["ok", "ok"]  # each alone passed
    assert replies[0][1].tolist() == [[1, 2]] and replies[1][1].tolist() == [[5, 1]]


def test_passes_in_flight_each_get_their_own_rows(remote, tiny) -> None:  # type: ignore[no-untyped-def]
    """Several passes sent before any rows are read (a CUDA caller keeps one ahead): each
    wait returns its own pass's rows whatever the order of the waits, across a ``share``
    asked in between, and on a shared client too."""
    engine = remote.engine
    batches = [tiny.tokenize([f"batch {i}", "слово " * i]) for i in range(1, 5)]
    want = [tiny.engine.forward(b) for b in batches]
    waits = [engine.submit(b) for b in batches]
    client = engine.share()  # answered out of turn by the child, while replies are due
    try:
        for i in (2, 0, 3, 1):
            assert np.array_equal(waits[i](), want[i])
        with pytest.raises(RuntimeError, match="read already"):
            waits[0]()
        assert engine.alive and np.array_equal(engine.forward(batches[0]), want[0])
        client.connect()
        waits = [client.submit(b) for b in batches]
        assert client.alive  # a reply waiting to be read is not the engine's EOF
        for i in (3, 1, 0, 2):
            assert np.array_equal(waits[i](), want[i])
    finally:
        client.close()


def test_forward_many_sends_ahead_when_passes_queue(remote, tiny) -> None:  # type: ignore[no-untyped-def]
    """With ``queues`` (as on CUDA) the parent sends batch n + 1 before reading batch n's rows;
    the rows still come back in order, equal to the in-process engine's."""
    engine = remote.engine
    batches = [tiny.tokenize([f"text {i}"] * (i % 3 + 1)) for i in range(6)]
    sent: list[int] = []
    submit = engine.submit

    def spy(batch: list[list[int]], heads: list[int] | None = None) -> Any:
        sent.append(len(sent))
        wait = submit(batch, heads)

        def rows() -> np.ndarray:
            read.append(len(sent))
            return wait()

        return rows

    read: list[int] = []
    engine.queues = True
    engine.submit = spy  # type: ignore[method-assign]
    try:
        got = list(engine.forward_many(iter(batches)))
    finally:
        engine.queues = False
        del engine.submit
    assert all(np.array_equal(g, tiny.engine.forward(b)) for g, b in zip(got, batches, strict=True))
    assert read == [2, 3, 4, 5, 6, 6]  # each read with the next batch sent already


def test_a_pass_sent_before_an_interrupted_call_never_gets_wrong_rows(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    try:
        a, b = tiny.tokenize(["first"]), tiny.tokenize(["second", "third"])
        first = engine.submit(a)
        second = engine.submit(b)

        def interrupted() -> object:
            raise KeyboardInterrupt

        engine._replies.conn.recv = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            second()  # reading its rows means reading the first pass's: interrupted there
        with pytest.raises(EngineProcessError, match="before this batch's rows came back"):
            first()  # the child that computed it is gone
        assert np.array_equal(engine.forward(b), tiny.engine.forward(b))
    finally:
        engine.close()


def test_passes_in_flight_beyond_the_pipe_buffers_never_deadlock(tiny_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """Requests and replies far beyond the pipe's buffers both ways (40 passes of 6,000 tokens
    and 300 rows each), none read until all are sent: the child must keep reading requests
    while its replies wait to go out, or both ends block on their sends for ever."""
    import threading
    import time

    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    stuck = False
    try:
        batch = [[(7 * i + j) % 5000 + 300 for j in range(19)] + [151643] for i in range(300)]
        waits: list[Any] = []

        def send() -> None:
            for _ in range(40):
                waits.append(engine.submit(batch))

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(60)
        stuck = sender.is_alive()
        assert not stuck, f"the parent's sends blocked after {len(waits)} passes"
        want = tiny.engine.forward(batch)
        assert all(np.array_equal(w(), want) for w in waits)
        # closed with replies nobody will read: the child still exits when asked (before,
        # its writer waited on them, and the parent killed it 15 s later)
        for _ in range(40):
            engine.submit(batch)
        t = time.monotonic()
        engine.close()
        assert time.monotonic() - t < 8 and not engine._proc.is_alive()
    finally:
        if stuck:
            engine._proc.kill()
        engine.close()


_PARENT = """
import pickle, sys
import numpy as np
from smysl import Embedder
from smysl.qwen3.reranker import Reranker
m = Embedder.load(sys.argv[1], device="cpu", process=True)
r = Reranker.load(sys.argv[2], device="cpu", process=True)
np.save(sys.argv[3] + "/vectors.npy", m.embed(["один", "two words"]))
np.save(sys.argv[3] + "/scores.npy", r.score([("q", "один"), ("q", "two words")]))
with open(sys.argv[3] + "/twins.pickle", "wb") as f:
    pickle.dump((m.share(), r.share()), f)
print(m.info().device, m.info().dtype, m.info().cpu is not None, r.info().dtype, flush=True)
assert "torch" not in sys.modules, "the engines' parent imported torch"
sys.stdin.read()  # the engines live until the test is done
m.close()
r.close()
"""

_OTHER = """
import pickle, sys
import numpy as np
m, r = pickle.load(open(sys.argv[1] + "/twins.pickle", "rb"))
assert np.array_equal(m.embed(["один", "two words"]), np.load(sys.argv[1] + "/vectors.npy"))
assert np.array_equal(r.score([("q", "один"), ("q", "two words")]),
                      np.load(sys.argv[1] + "/scores.npy"))
print(m.info().device, m.info().dtype, m.info().cpu is not None, r.info().dtype)
assert "torch" not in sys.modules, "the shared engines' clients imported torch"
"""


def test_only_the_engine_process_imports_torch(tiny_dir: Path, tmp_path: Path) -> None:
    """The process that starts engine processes (a model's, a reranker's), and the processes
    it shares them with (the HTTP workers of ``smysl serve --workers``), compute nothing: they
    run without torch (docs/benchmarks.md: 161 instead of 343 MiB a worker). Both run in
    fresh interpreters (this one has torch already)."""
    from qwen_tiny import build_tiny_reranker

    ranker = build_tiny_reranker(tmp_path / "reranker", seed=3).path
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tiny_dir), str(ranker), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        first = parent.stdout.readline()
        assert first.split() == ["cpu", "float32", "True", "float32"], \
            parent.communicate()[1][-2000:]
        other = subprocess.run([sys.executable, "-c", _OTHER, str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr[-2000:]
        assert other.stdout.split() == ["cpu", "float32", "True", "float32"]
    finally:
        _, err = parent.communicate("", timeout=60)
    assert parent.returncode == 0, err[-2000:]


def test_torch_errors_reach_other_processes_as_runtime_errors() -> None:
    """Unpickled, a torch exception would import torch where the engine's clients run
    without it: the engine process sends its text as a RuntimeError (what torch's derive
    from); other errors go as they are."""
    import multiprocessing as mp

    from smysl.qwen3.client import send_reply

    mine, theirs = mp.Pipe()
    send_reply(theirs, ("error", torch.cuda.OutOfMemoryError("CUDA out of memory")))
    send_reply(theirs, ("error", ValueError("bad ids")))
    kind, e = mine.recv()
    assert kind == "error" and type(e) is RuntimeError
    assert str(e) == "OutOfMemoryError: CUDA out of memory"
    kind, e = mine.recv()
    assert type(e) is ValueError and str(e) == "bad ids"


def _direct(conn: Any, queues: int) -> Any:
    """A :class:`Piped` caller on one end of a pipe (the test holds the child's end)."""
    import threading

    from smysl.qwen3.client import Piped, Replies

    class Direct(Piped):
        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._init_reading()
            self._replies = Replies(conn)
            self.queues = queues

        def _channel(self) -> Replies:
            assert self._replies is not None
            return self._replies

        def _io(self, step):  # type: ignore[no-untyped-def]
            return step()

    return Direct()


def test_a_caller_sends_while_another_thread_waits_for_rows() -> None:
    """A server's batcher sends its next batch to an engine process that merges passes while
    its finisher thread waits for the rows of one in flight: the wait must not hold the
    connection (under its lock, the batch went out only once the rows had come back)."""
    import multiprocessing as mp
    import threading
    import time

    mine, child = mp.Pipe()
    engine = _direct(mine, queues=8)
    first = engine.submit([[1]])
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(first()), daemon=True)
    waiter.start()
    time.sleep(0.2)  # the waiter is blocked: the child has not answered
    sent = threading.Thread(target=lambda: got.append(engine.submit([[2]])), daemon=True)
    sent.start()
    sent.join(5)
    assert not sent.is_alive(), "the send waited for the rows of the pass in flight"
    assert [child.recv(), child.recv()] == [([[1]], None), ([[2]], None)]
    child.send((0, ("ok", np.array([[1.0]], np.float32))))
    child.send((1, ("ok", np.array([[2.0]], np.float32))))
    waiter.join(5)
    assert got[1].tolist() == [[1.0]] and got[0]().tolist() == [[2.0]]
    # callers waiting at once: whoever reads the connection hands the others their rows
    waits = [engine.submit([[i]]) for i in range(3, 7)]
    out: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, waits[i]()), daemon=True)
               for i in (3, 1, 0, 2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    for i in range(3, 7):
        assert child.recv() == ([[i]], None)
        child.send((i - 1, ("ok", np.array([[float(i)]], np.float32))))
    for t in threads:
        t.join(5)
    assert {i: r.tolist() for i, r in out.items()} == {i: [[i + 3.0]] for i in range(4)}


class _Unreadable:
    """Pickles, but does not unpickle (a TypeError on the reading side)."""

    def __reduce__(self) -> Any:
        return (_Unreadable, (1, 2))


def test_a_waiter_behind_a_killed_child_leaves_the_engine_restartable() -> None:
    """Two callers wait for rows; the reply the reader gets does not unpickle, so the child is
    killed (no reply may reach a later call). The other caller gets a clear error, and the
    engine is not left "restarting" for ever: the next call starts a fresh child."""
    import multiprocessing as mp
    import threading
    import time
    import weakref
    from collections import deque

    from smysl.qwen3.client import Replies

    class Proc:  # the child: alive until killed
        exitcode = None

        def is_alive(self) -> bool:
            return True

        def kill(self) -> None:
            pass

        def join(self, timeout: float | None = None) -> None:
            pass

    engine = object.__new__(EngineProcess)  # its pipe and process stand-ins, no real child
    engine._lock = threading.Lock()
    engine._init_reading()
    engine._closed = engine._dead = engine._stale = engine._down = False
    engine._restarts, engine.restarts, engine._shared = deque(), 0, None
    engine._owner, engine._stopping = os.getpid(), threading.Event()
    mine, child = mp.Pipe()
    engine._proc, engine._replies = Proc(), Replies(mine)
    engine._closer = weakref.finalize(engine, lambda: None)
    engine.queues = 8
    waits = [engine.submit([[1]]), engine.submit([[2]])]
    assert child.recv() and child.recv()
    errors: dict[int, str] = {}

    def call(i: int) -> None:
        try:
            waits[i]()
        except Exception as e:
            errors[i] = str(e)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in (1, 0)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # the first waits on the pipe, the second behind it
    child.send((0, ("ok", _Unreadable())))
    for t in threads:
        t.join(5)
    assert "unreadable reply" in errors[1]  # its reader: the reply was pass 0's
    assert "was stopped" in errors[0] and engine._stale and not engine._down
    started: list[bool] = []
    engine._start = lambda: started.append(True)  # type: ignore[method-assign]
    engine._channel()
    assert started == [True]  # a fresh child, not "restarting" for ever


def test_a_pipelined_hub_gives_every_client_its_own_rows(tiny) -> None:  # type: ignore[no-untyped-def]
    """The engine process's loop with CUDA's timing (a CPU engine whose pass runs when its
    rows are waited for, in the watcher thread): requests of six clients, three each in a
    row, are merged into passes as they come; every reply is its own request's rows, bit for
    bit, in the order each client sent them."""

    class Lazy:
        device, queues = "cuda", 1
        passes = 0

        def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> Any:
            self.passes += 1
            return lambda: tiny.engine.forward(batch, heads)

        def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> Any:
            return tiny.engine.forward(batch, heads)

    engine = Lazy()
    thread, ends, parent = _hub(engine, 6)  # type: ignore[arg-type]
    batches = [tiny.tokenize([TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 3)])
               for i in range(18)]
    for i, b in enumerate(batches):
        ends[i % 6].send((b, None))
    thread.start()
    for i, b in enumerate(batches):
        kind, rows = _answer(ends[i % 6])
        assert kind == "ok" and np.array_equal(rows, tiny.engine.forward(b)), i
    assert engine.passes == 1  # all sent before the loop started: one merged pass
    _stop(thread, parent)


def test_an_interrupted_call_leaves_no_reference_cycle(tiny_dir: Path, tiny,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The interrupted call's exception held itself through its traceback (``partial(reraise,
    e)`` in ``_io``'s frame): its token ids and pipe stayed until a collection, whose
    ``Connection.__del__`` then swallowed the user's next Ctrl-C."""
    import gc

    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    try:
        from smysl.qwen3 import client

        def interrupted(*_: object) -> object:  # Ctrl-C while waiting for the rows
            raise KeyboardInterrupt

        engine._replies.conn.poll = lambda *_: False  # type: ignore[method-assign]
        monkeypatch.setattr(client, "wait", interrupted)
        gc.collect()
        gc.disable()
        try:
            interrupted_ = False
            try:
                engine.forward(tiny.tokenize(["first batch"]))
            except KeyboardInterrupt:  # not kept (pytest.raises would hold it)
                interrupted_ = True
            assert interrupted_ and gc.collect() == 0  # nothing left for the collector
        finally:
            gc.enable()
    finally:
        engine.close()


def test_a_stop_by_the_finalizer_is_no_crash(tiny_dir: Path) -> None:
    """At interpreter exit the finalizer stops the child while the engine is still referenced:
    the watcher took that for a crash, logged a restart and spawned a child during shutdown
    (an EOFError traceback from a script that ended without close())."""
    engine = EngineProcess(read_checkpoint(tiny_dir),
                           EngineConfig(device="cpu", threads=torch.get_num_threads()))
    try:
        proc = engine._proc
        engine._closer()  # what interpreter exit runs
        proc.join(10)
        time.sleep(1.0)  # the watcher's turn
        assert engine.restarts == 0 and engine._proc is proc
    finally:
        engine.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_gets_a_clear_error(remote) -> None:  # type: ignore[no-untyped-def]
    """After os.fork(), the child's calls and even `healthy` raised multiprocessing's
    AssertionError ("can only test a child process"); its close() or exit stopped the parent's
    engine (a restart logged); a share() twin connected before the fork mixed replies."""
    twin = remote.share()
    want = remote.embed(["x", "y"])
    assert np.array_equal(twin.embed(["x", "y"]), want)  # connected before the fork
    engine, started, restarts = remote.engine, remote.engine.pid, remote.engine.restarts
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        code = 1
        try:
            alive = engine.alive
            try:
                remote.embed(["x"])
            except EngineProcessError as e:
                code = 0 if (not alive and "model.share()" in str(e)) else 2
            # a twin connects anew (it shared the parent's socket: replies got mixed)
            if code == 0 and not np.array_equal(twin.embed(["x", "y"]), want):
                code = 3
            # closing (or the finalizers at exit) must not stop the parent's engine
            remote.close()
            engine._closer()
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    time.sleep(0.5)  # a watcher that took a stop for a crash would have restarted it by now
    assert (engine.pid, engine.restarts) == (started, restarts)
    assert engine.alive and np.array_equal(remote.embed(["x", "y"]), want)
    assert np.array_equal(twin.embed(["x", "y"]), want)


_SHARED_DROPPED = """
import gc, sys, time
import smysl
if __name__ == "__main__":
    emb = smysl.load(sys.argv[1], device="cpu", process=True)
    twin = emb.share()
    assert (twin.embed(["a"]) == emb.embed(["a"])).all()
    del emb
    gc.collect()
    time.sleep(1)
    print("end")
"""


def test_an_owner_dropped_after_share_stops_quietly(tiny_dir: Path, tmp_path: Path) -> None:
    """The owner's finalizer removed the socket file before the child's multiprocessing
    finalizer did: the child printed a FileNotFoundError traceback as it exited."""
    script = tmp_path / "dropped.py"
    script.write_text(_SHARED_DROPPED)
    done = subprocess.run([sys.executable, str(script), str(tiny_dir)], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "end" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_twin_of_a_closed_owner_says_so(tiny_dir: Path) -> None:
    """After the owner closed, its share() twin said "does not answer ...; it may be
    restarting": it was closed on purpose."""
    owner = Embedder.load(str(tiny_dir), device="cpu", process=True)
    twin = owner.share()
    owner.close()
    with pytest.raises(EngineProcessError, match="was closed by its owner"):
        twin.embed(["a"])


def test_on_cpu_short_requests_run_between_the_layers_of_a_long_input() -> None:
    """A CPU pass with an input over the budget (1,024 tokens) takes the requests that arrive
    meanwhile between its layers, when none of their inputs is over the budget: a query waits
    for one layer of a 16K document, not for its whole pass. Their replies go out at once,
    numbered (the parent's short request is answered before its long one); a second long
    input waits for the first to end, and nothing nests deeper."""
    engine = LayeredCpuEngine()
    thread, (a, b), parent = _hub(engine, 2)  # type: ignore[arg-type]
    thread.start()
    parent.send(([[1] * 2000], None))
    engine.until(("launch", (1,)))
    parent.send(([[2, 2]], None))
    a.send(([[3], [4] * 1000], None))
    b.send(([[5] * 1025], None))  # long: waits
    time.sleep(0.2)
    engine.step()  # the first layer ends: the short ones run now, merged into one pass
    assert parent.poll(10)
    number, (kind, rows) = parent.recv()
    assert (number, kind, rows.tolist()) == (1, "ok", [[2, 2]])
    assert _answer(a)[1].tolist() == [[3, 1], [4, 1000]]
    assert ("launch", (5,)) not in engine.events and not parent.poll(0.1)
    engine.step()
    engine.step()
    number, (kind, rows) = parent.recv()
    assert (number, kind, rows.tolist()) == (0, "ok", [[1, 2000]])
    engine.until(("launch", (5,)))  # the second long one, after the first
    for _ in range(engine.layers):
        engine.step()
    assert _answer(b)[1].tolist() == [[5, 1025]]
    assert engine.events == [("launch", (1,)), ("launch", (2, 3, 4)), ("done", (2, 3, 4)),
                             ("done", (1,)), ("launch", (5,)), ("done", (5,))]
    _stop(thread, parent)


def test_a_short_request_run_between_layers_gets_the_same_rows(tiny) -> None:  # type: ignore[no-untyped-def]
    """A pass run inside another's ``between`` (on the threads that pass holds) gives each
    its own rows, bit for bit: the long pass's too."""
    engine = tiny.engine
    long = tiny.tokenize(["слово " * 120 + "word " * 80, "short one"])
    short = tiny.tokenize(["a query", "и ещё одна"])
    nested: list[np.ndarray] = []
    rows = engine.submit(long, between=lambda: nested.append(engine.forward(short)))()
    assert len(nested) >= 2  # after each layer
    assert all(np.array_equal(n, engine.forward(short)) for n in nested)
    assert np.array_equal(rows, engine.forward(long))


def test_a_cancelled_long_pass_stops_at_its_next_layer_and_a_waiting_one_never_starts() -> None:
    """Nobody reads the rows of a cancelled request (its HTTP client has gone, its time budget
    ran out): a CPU pass of a long input stops after the layer it is in, instead of minutes
    more; one still waiting is answered at once and never computed. A pass stops only once
    none of its requests is wanted, and a client gone mid-pass counts as not wanting it."""
    from smysl.qwen3.client import PassCancelled

    engine = LayeredCpuEngine()
    thread, (a, b), parent = _hub(engine, 2)  # type: ignore[arg-type]
    thread.start()
    parent.send(([[1] * 2000], None))
    engine.until(("launch", (1,)))
    a.send(([[2] * 1500], None))  # long: waits behind the running one
    time.sleep(0.1)
    a.send(("cancel", 0))
    parent.send(("cancel", 0))
    engine.step()
    number, (kind, error) = parent.recv()
    assert (number, kind, type(error)) == (0, "error", PassCancelled)
    assert a.poll(10)
    number, (kind, error) = a.recv()
    assert (number, kind, type(error)) == (0, "error", PassCancelled)
    # the client's next request is numbered on (a cancel is no request), and runs
    a.send(([[3, 3]], None))
    assert _answer(a)[1].tolist() == [[3, 2]]
    # a client that leaves while its long pass runs stops it too
    b.send(([[4] * 1100], None))
    engine.until(("launch", (4,)))
    b.close()
    time.sleep(0.2)
    engine.step()
    parent.send(([[5]], None))
    assert _answer(parent)[1].tolist() == [[5, 1]]
    assert [e for e in engine.events if e[0] == "done"] == [("done", (3,)), ("done", (5,))]
    assert ("launch", (2,)) not in engine.events
    _stop(thread, parent)


def test_cancel_tells_the_engine_process_unless_the_rows_came() -> None:
    """``Pending.cancel()`` of a pass on an engine process sends ("cancel", number), no
    request of its own; once the rows have come it sends nothing."""
    import multiprocessing as mp

    mine, child = mp.Pipe()
    engine = _direct(mine, queues=0)
    first, second = engine.submit([[1]]), engine.submit([[2]])
    assert [child.recv(), child.recv()] == [([[1]], None), ([[2]], None)]
    first.cancel()
    assert child.recv() == ("cancel", 0)
    child.send((1, ("ok", np.array([[2.0]], np.float32))))
    assert second().tolist() == [[2.0]]
    second.cancel()  # answered: nothing to send
    assert not child.poll(0.1)
    child.send((0, ("error", RuntimeError("cancelled"))))
    with pytest.raises(RuntimeError, match="cancelled"):
        first()


def test_a_malformed_message_is_answered_and_fails_nothing_else() -> None:
    """A message that is no request, read between the layers of a long pass, was raised
    through the pass: the long request got its error, and requests read with it were never
    answered (their callers waited for ever). Now it is answered as a request, with an
    error, and nothing else changes."""
    engine = LayeredCpuEngine()
    thread, (a, b), parent = _hub(engine, 2)  # type: ignore[arg-type]
    thread.start()
    parent.send(([[1] * 2000], None))
    engine.until(("launch", (1,)))
    a.send(([[3]], None))
    b.send(5)
    b.send(("cancel",))
    a.send((np.array([[7, 7]]), None))  # an array batch: its first item is no word
    time.sleep(0.2)
    engine.step()
    assert _answer(a)[1].tolist() == [[3, 1]]
    number, (kind, rows) = a.recv()
    assert (number, kind, rows.tolist()) == (1, "ok", [[7, 2]])
    kind, error = _answer(b)
    assert kind == "error" and "not a forward request" in str(error)
    kind, error = _answer(b)
    assert kind == "error" and "not a forward request" in str(error)
    engine.step()
    engine.step()
    assert _answer(parent)[1].tolist() == [[1, 2000]]
    _stop(thread, parent)


def test_the_engine_process_draws_the_servers_line_between_long_and_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--max-batch-tokens`` (the model's ``max_batch_tokens``) reaches the engine process:
    with 4,096, a 2,000-token input is no long one there (the server's batcher sends nothing
    beside it either), and short requests wait for it, merged up to that budget."""
    import smysl.qwen3.worker as worker
    from smysl.options import ModelOptions
    from smysl.qwen3.contract import start_engine

    made: list[EngineConfig] = []
    monkeypatch.setattr(worker, "EngineProcess", lambda ckpt, cfg: made.append(cfg))
    start_engine(None, ModelOptions(process=True, max_batch_tokens=4096))  # type: ignore[arg-type]
    assert made[0].batch_tokens == 4096
    engine = LayeredCpuEngine()
    thread, (a,), parent = _hub(engine, 1, budget=4096)  # type: ignore[arg-type]
    thread.start()
    parent.send(([[1] * 2000], None))
    engine.until(("done", (1,)))  # run at once: no layers to step through
    a.send(([[2] * 3000], None))
    assert _answer(a)[1].tolist() == [[2, 3000]]
    assert _answer(parent)[1].tolist() == [[1, 2000]]
    _stop(thread, parent)
