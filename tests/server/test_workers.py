"""``smysl serve --workers N`` on loopback: one port, N HTTP processes, one engine process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS as ALL

from smysl.cli import main
from smysl.server import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [t for t in ALL if t]  # the server refuses empty ones


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


QUERY = "Какая столица у России?"
DOCS = ["Москва — столица России.", "Paris is the capital of France.", "a",
        "Embeddings map text to vectors; similar texts land close together."]


class Workers:
    """``smysl serve --workers 2`` of ``model`` in a subprocess on a free port, its output kept."""

    def __init__(self, model: Path, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - read while the server runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smysl.cli", "serve", "--model", str(model), "--port",
             self.url.rsplit(":", 1)[1], "--device", "cpu", "--workers", "2", *extra],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        # pread: the server writes through the same open file (one offset): a seek to 0
        # here while it runs made its next lines overwrite the start of the log
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def wait_healthy(self, deadline: float) -> None:
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def started(self, n: int, deadline: float) -> None:
        """Wait until ``n`` worker processes have started (restarts count)."""
        while len(re.findall(r"Started server process \[\d+\]", self.output())) < n:
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)


def test_two_workers_one_engine(tiny_dir: Path, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two HTTP workers share the model's engine process and the reranker's: vectors and
    scores of the in-process models, metrics summed, a killed worker replaced."""
    from qwen_tiny import build_tiny_reranker

    from smysl import Reranker

    ranker_dir = build_tiny_reranker(tmp_path / "rr", seed=7).path
    server = Workers(tiny_dir, "--threads", str(torch.get_num_threads()), "--reranker",
                     str(ranker_dir))
    proc, url, output = server.proc, server.url, server.output
    wait_healthy, started = server.wait_healthy, server.started

    try:
        deadline = time.monotonic() + 120
        wait_healthy(deadline)
        started(2, deadline)
        want = tiny.embed(TEXTS)

        def one(i: int) -> np.ndarray:
            with httpx.Client(base_url=url, timeout=60) as c:  # a connection per client
                r = c.post("/embed", json={"inputs": [TEXTS[i % len(TEXTS)]]})
                assert r.status_code == 200, r.text
                return np.asarray(r.json()[0], np.float32)

        def rank(i: int) -> list[tuple[int, float]]:
            with httpx.Client(base_url=url, timeout=60) as c:
                r = c.post("/rerank", json={"query": QUERY, "texts": DOCS[i % 2:]})
                assert r.status_code == 200, r.text
                return [(x["index"], x["score"]) for x in r.json()]

        n = 48
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, range(n)))
            ranked = list(pool.map(rank, range(16)))
        for i, v in enumerate(got):
            assert np.array_equal(v, want[i % len(TEXTS)])
        with Reranker.load(str(ranker_dir), device="cpu") as reranker:
            scores = [reranker.rerank(QUERY, DOCS[i:]) for i in range(2)]
        assert all(r == scores[i % 2] for i, r in enumerate(ranked))
        text = httpx.get(f"{url}/metrics").text  # either worker: the sum of both
        assert re.search(r'^smysl_requests_total\{api="tei",route="/embed",status="200"\} '
                         rf"{n}\.0$", text, re.M), text
        assert re.search(r'^smysl_requests_total\{api="tei",route="/rerank",status="200"\} '
                         r"16\.0$", text, re.M), text
        assert re.search(r"^smysl_backend_up 1\.0$", text, re.M)
        assert "2 HTTP workers" in output()
        # "listening" is said once a worker serves, not while connections wait in the backlog
        while "listening on" not in output():
            assert time.monotonic() < deadline, output()
            time.sleep(0.05)
        assert output().index("Application startup complete") < output().index("listening on")
        info = httpx.get(f"{url}/info").json()  # the server's limits, not one worker's
        assert (info["max_concurrent_requests"], info["tokenization_workers"]) == (2 * 512, 2)

        # a worker killed outright is replaced; the server answers throughout
        workers = [p for p in children(proc.pid)
                   if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) >= 4  # the two engine processes and two HTTP workers
        http = [p for p in workers if Path(f"/proc/{p}/stat").read_text().split()[4] == str(p)]
        assert len(http) == 2  # the workers lead their own process groups
        # ps and top tell them apart by name
        names = {p: Path(f"/proc/{p}/comm").read_text().strip() for p in workers}
        assert sorted(n for n in names.values() if n.startswith("smysl-")) == [
            "smysl-engine", "smysl-engine", "smysl-http", "smysl-http"]
        assert {names[p] for p in http} == {"smysl-http"}
        os.kill(http[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "restarting it" not in output():
            assert time.monotonic() < deadline, output()
            time.sleep(0.1)
        assert np.array_equal(one(0), want[0])
        started(3, deadline)
        wait_healthy(deadline)

        # an engine process killed: its outage counted and logged once, not once per worker
        # (each worker watched the shared engine, and /metrics sums them)
        os.kill(next(p for p in workers if names[p] == "smysl-engine"), signal.SIGKILL)
        while "is back after" not in output():
            assert time.monotonic() < deadline, output()
            time.sleep(0.1)
        wait_healthy(deadline)
        time.sleep(0.5)  # a second worker's line would come within its poll (0.25 s)
        text = httpx.get(f"{url}/metrics").text
        counts = re.findall(r"^smysl_(?:rerank_)?backend_(down|recovered)_total (\S+)$", text,
                            re.M)
        assert sorted((k, float(v)) for k, v in counts if float(v)) == [
            ("down", 1.0), ("recovered", 1.0)], counts
        assert output().count("is down;") == 1 and output().count("is back after") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, output()
    assert "Shutting down" in output()


def long_request(url: str) -> int | str:
    """One request of seconds of work (with batches of 64 tokens: a thousand passes), under
    the request limits -> its status, or the name of the error that ended it."""
    texts = [f"{t} {i}" for i in range(250) for t in TEXTS]
    try:
        return httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=120).status_code
    except httpx.HTTPError as e:
        return type(e).__name__


def _stop_while_busy(server: Workers, pool: ThreadPoolExecutor, n: int) -> Iterator[Any]:
    """Both workers up, ``n`` long requests in flight, a SIGTERM, and back once a worker
    waits for its requests (or the server is gone): the requests' answers, to come."""
    deadline = time.monotonic() + 120
    server.wait_healthy(deadline)
    server.started(2, deadline)
    answers = pool.map(long_request, [server.url] * n)
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    while ("Waiting for connections to close" not in server.output()
           and server.proc.poll() is None):
        time.sleep(0.05)
    return answers


def test_a_second_stop_cuts_the_workers_requests_off(tiny_dir: Path) -> None:
    """The first SIGTERM waits for requests in flight; a second one forces the workers' stop
    and cuts them off: each gets the JSON 503 of a request cut off at shutdown (retry
    elsewhere), or, where its connection went first, no answer. Before, the server waited them
    out (uvicorn forces only on a SIGINT after a first stop)."""
    # batches of 64 tokens: each request is a thousand passes, seconds of work
    server = Workers(tiny_dir, "--threads", "1", "--max-batch-tokens", "64", "--no-access-log")
    proc, output = server.proc, server.output
    try:
        with ThreadPoolExecutor(4) as pool:
            # the second once a worker waits for its requests: two signals of one kind that
            # arrive before a process handles the first are one
            answers = _stop_while_busy(server, pool, 4)
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            took = time.monotonic() - t
            got = list(answers)
    finally:
        if proc.poll() is None:
            proc.kill()
    if all(a == 200 for a in got) and "Waiting for connections to close" not in output():
        pytest.skip("the requests ended before the stop: nothing to cut off")
    assert code == 0 and took < 10, (code, took, got, output()[-3000:])
    assert all(a == 503 or isinstance(a, str) for a in got), (got, output()[-3000:])


def test_a_stopping_server_refuses_new_connections_at_once(tiny_dir: Path) -> None:
    """While the workers drain their requests after a SIGTERM, a new client is refused at
    once, as by one process: the supervisor's copies of the listening sockets kept the
    kernel accepting connections nobody served (a client hung until the drain ended, then
    was reset; a load balancer would wait instead of failing over)."""
    server = Workers(tiny_dir, "--threads", "1", "--max-batch-tokens", "64", "--no-access-log")
    proc, url, output = server.proc, server.url, server.output
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = _stop_while_busy(server, pool, 2)
            draining = proc.poll() is None
            t = time.monotonic()
            try:
                late: int | str = httpx.get(f"{url}/health", timeout=10).status_code
            except httpx.HTTPError as e:
                late = type(e).__name__
            took = time.monotonic() - t
            list(answers)
    finally:
        if proc.poll() is None:
            proc.kill()
    if not draining:
        pytest.skip("the requests ended before the stop: nothing was draining")
    assert late == "ConnectError" and took < 1, (late, took, output()[-2000:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_workers_sockets_are_one_port_each_and_refuse_a_taken_one() -> None:
    """A socket set per worker on one port; a second server's workers on that port are
    refused as a single process would be (SO_REUSEPORT alone would have joined them to the
    first server's, splitting its clients without a word); so is a port another program
    holds."""
    import socket

    from smysl.server.workers import worker_sockets

    groups = worker_sockets("127.0.0.1", 0, 3)
    try:
        assert len(groups) == 3 and len({id(g[0]) for g in groups}) == 3
        port = groups[0][0].getsockname()[1]
        assert {g[0].getsockname()[1] for g in groups} == {port}
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            worker_sockets("127.0.0.1", port, 2)
    finally:
        for g in groups:
            for x in g:
                x.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(ValueError, match="cannot listen"):
            worker_sockets("127.0.0.1", other.getsockname()[1], 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_a_server_binding_the_port_between_the_claim_and_the_binds_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server (same user, SO_REUSEPORT) that binds the port in the instant between
    the claim and the workers' binds would split the clients: the listeners are checked after
    the binds."""
    import socket

    from smysl.server import workers

    real = workers._bind_all
    foreign: list[socket.socket] = []

    def racing(addresses: Any, port: int, **kw: Any) -> list[socket.socket]:
        if kw.get("reuse_port") and not foreign:  # the other server, just after our claim
            other = socket.socket()
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
            foreign.append(other)
        return real(addresses, port, **kw)

    monkeypatch.setattr(workers, "_bind_all", racing)
    port = free_port()
    try:
        with pytest.raises(ValueError, match=f"127.0.0.1:{port}: another server took it"):
            workers.worker_sockets("127.0.0.1", port, 2)
    finally:
        for x in foreign:
            x.close()
    monkeypatch.setattr(workers, "_bind_all", real)
    groups = workers.worker_sockets("127.0.0.1", port, 2)  # the port free again: ours
    assert workers._foreign_listeners([x for g in groups for x in g]) == []
    for g in groups:
        g[0].close()


def _connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """Linux: established connections on ``port`` held by each of ``pids`` (/proc)."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                col = line.split()
                if int(col[1].rsplit(":", 1)[1], 16) == port and col[3] == "01":
                    inodes.add(col[9])
    held = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        held[pid] = sum(os.readlink(fds / fd).removeprefix("socket:[").rstrip("]") in inodes
                        for fd in os.listdir(fds) if os.readlink(fds / fd).startswith("socket:"))
    return held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_clients_that_connect_at_once_are_spread_over_the_workers(tiny_dir: Path) -> None:
    """48 connections opened together, one request each, kept open: every worker holds some
    and none half of them. On one shared socket the first worker to wake took every waiting
    connection (asyncio accepts until none is left): all 64 of a load test's on one of 4 or
    8 workers."""
    import socket

    server = Workers(tiny_dir, "--threads", "1", "--workers", "4", "--no-access-log")
    conns: list[socket.socket] = []
    try:
        server.wait_healthy(time.monotonic() + 120)
        server.started(4, time.monotonic() + 60)
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conns = [socket.create_connection((host, int(port)), timeout=10) for _ in range(48)]
        for c in conns:
            c.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        for c in conns:
            assert c.recv(4096).startswith(b"HTTP/1.1 200"), server.output()[-2000:]
        workers = [p for p in children(server.proc.pid)
                   if Path(f"/proc/{p}/comm").read_text().strip() == "smysl-http"]
        held = _connections_by_process(workers, int(port))
        assert len(held) == 4 and sum(held.values()) == 48, held
        assert min(held.values()) >= 1 and max(held.values()) <= 24, held
    finally:
        for c in conns:
            c.close()
        _stop_server(server)


def test_workers_setting_is_checked(tiny_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="workers"):
        ServerConfig(workers=0)
    rc = main(["serve", "--model", str(tiny_dir), "--workers", "2", "--in-process"])
    assert rc == 2 and "drop --in-process" in capsys.readouterr().err


def test_a_bad_default_dimensions_stops_the_supervisor(tiny_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--workers", "2",
               "--port", "0", "--dimensions", "4096"])
    err = capsys.readouterr().err
    assert rc == 2 and "4096" in err and "listening" not in err


def test_auto_workers_count_a_containers_quota(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """Half the usable CPUs (a container's quota, not the host's cores), at most 8."""
    from smysl import cpus
    from smysl.server import workers

    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "none")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert workers.auto_workers([("cuda", 7)]) == 8
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # --cpus 2.5
    assert workers.auto_workers([("cuda", 7)]) == 1
    (tmp_path / "cpu.max").write_text("1000000 100000\n")
    assert workers.auto_workers([("cuda", 7)]) == 5
    assert workers.auto_workers([("cpu", 7)]) == workers.auto_workers([("cuda", None)]) == 1


def test_an_in_process_model_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    from smysl.server import serve

    with pytest.raises(ValueError, match="process=True"):
        serve(tiny, ServerConfig(port=0, workers=2))


def test_a_reranker_that_cannot_be_shared_is_refused(tiny, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An in-process or remote reranker has no engine process to share: refused before any
    worker starts, and the model's handle, shared already, is closed again."""
    from qwen_tiny import build_tiny_reranker

    from smysl import Reranker
    from smysl.server import serve

    closed: list[bool] = []

    class Twin:
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(tiny, "share", Twin)  # as an engine process's model would share
    ranker = Reranker.load(str(build_tiny_reranker(tmp_path / "rr").path), device="cpu")
    with ranker, pytest.raises(ValueError, match=r"share.*process=True"):
        serve(tiny, ServerConfig(port=0, workers=2), reranker=ranker)
    assert closed == [True]
    with pytest.raises(ValueError, match="nothing to serve"):
        serve(None, ServerConfig(port=0, workers=2))
    # the CLI refuses a remote one before loading anything
    rc = main(["serve", "--reranker", "siliconflow:BAAI/bge-reranker-v2-m3", "--workers", "2"])
    assert rc == 2 and "remote API" in capsys.readouterr().err


def _resolving(monkeypatch: pytest.MonkeyPatch, *ips: str) -> None:
    """``socket.getaddrinfo`` of any host gives ``ips`` (as a system that lists ::1 beside
    127.0.0.1 for localhost does; this machine's /etc/hosts may list one)."""
    import socket

    def fake(host, port, *a, **k):  # type: ignore[no-untyped-def]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_workers_listen_on_every_address_of_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--host localhost`` with workers listens where one uvicorn process would: on each
    address the name resolves to, one port for all; one the system cannot bind is skipped."""
    import socket

    from smysl.server import workers

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    _resolving(monkeypatch, "127.0.0.1", "::1", "127.0.0.1")
    try:
        socks = workers.listening_sockets("localhost", 0)
    except ValueError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_INET6]
        assert len({s.getsockname()[1] for s in socks}) == 1
        assert socks[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for s in socks:
            with socket.create_connection(s.getsockname()[:2], timeout=5):
                pass
    finally:
        for s in socks:
            s.close()
    _resolving(monkeypatch, "2001:db8::1", "127.0.0.1")  # not this host's: skipped
    socks = workers.listening_sockets("somewhere", 0)
    assert [s.getsockname()[0] for s in socks] == ["127.0.0.1"]
    with pytest.raises(ValueError, match="cannot listen on somewhere:"):
        workers.listening_sockets("somewhere", socks[0].getsockname()[1])  # the port is taken
    socks[0].close()
    _resolving(monkeypatch, "2001:db8::1")
    with pytest.raises(ValueError, match="cannot listen on somewhere:0"):
        workers.listening_sockets("somewhere", 0)


def test_port_0_is_tried_again_when_another_address_has_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--port 0`` on two addresses: the port the first got may be taken on the second; then
    all are bound again, not refused."""
    import errno
    import socket

    from smysl.server import workers

    _resolving(monkeypatch, "127.0.0.1", "::1")
    real, taken = socket.socket.bind, []

    def bind(self: socket.socket, addr: tuple) -> None:  # type: ignore[type-arg]
        if self.family == socket.AF_INET6 and not taken:
            taken.append(addr[1])
            raise OSError(errno.EADDRINUSE, "Address already in use")
        real(self, addr)

    monkeypatch.setattr(socket.socket, "bind", bind)
    try:
        socks = workers.listening_sockets("localhost", 0)
    except ValueError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert taken and len(socks) == 2 and len({s.getsockname()[1] for s in socks}) == 1
    finally:
        for s in socks:
            s.close()


_DUAL = """
import socket, sys
real = socket.getaddrinfo
def both(host, port, *a, **k):
    if host != "localhost":
        return real(host, port, *a, **k)
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]
socket.getaddrinfo = both
from smysl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_workers_answer_on_ipv4_and_ipv6_loopback(tiny_dir: Path) -> None:
    """End to end: ``smysl serve --host localhost --workers 2`` where localhost is both
    127.0.0.1 and ::1 answers on both (before, on 127.0.0.1 alone)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DUAL, "serve", "--model", str(tiny_dir), "--host",
             "localhost", "--port", str(port), "--device", "cpu", "--workers", "2"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            got = []
            for url in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
                while True:
                    assert proc.poll() is None
                    try:
                        r = httpx.post(f"{url}/embed", json={"inputs": "один"}, timeout=10)
                        break
                    except httpx.HTTPError:
                        assert time.monotonic() < deadline
                        time.sleep(0.2)
                assert r.status_code == 200
                got.append(r.json()[0])
            assert got[0] == got[1]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            finally:
                log.seek(0)
                out = log.read().decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]


def _http_workers(pid: int) -> list[int]:
    return [p for p in children(pid) if Path(f"/proc/{p}/comm").read_text().strip() == "smysl-http"]


def _serving(server: Workers) -> None:
    """Wait until every worker serves ("listening" is said then): from then on each one is
    watched by its heartbeat."""
    server.wait_healthy(time.monotonic() + 120)
    deadline = time.monotonic() + 60
    while "listening on" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)


def _stop_server(server: Workers, *pids: int) -> None:
    for pid in pids:  # a test that failed may leave some stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(30)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_stalled_workers_are_restarted_and_their_share_of_clients_answered(tiny_dir: Path
                                                                          ) -> None:
    """Workers whose event loops stop running (here: all four, SIGSTOP, as one cause such as
    a blocked output would stall them together) are killed after ``--worker-stall-s`` and
    restarted, and every new connection is answered: the ones the kernel handed their
    sockets meanwhile wait in those sockets' backlogs (the supervisor keeps them open) for
    the new workers. Without the watch they waited for ever (each worker has a socket of its
    own, SO_REUSEPORT, and its share of the port's connections); the watch's kills are not
    counted as crashes (four at once would have stopped the server: 3 a minute)."""
    server = Workers(tiny_dir, "--threads", "1", "--no-access-log", "--worker-stall-s", "1",
                     "--workers", "4")
    stopped: list[int] = []
    try:
        _serving(server)
        stopped = _http_workers(server.proc.pid)
        assert len(stopped) == 4
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)

        def fresh(_: int) -> int | str:  # a new connection each (no client: no pool)
            try:
                return httpx.get(f"{server.url}/health", timeout=30).status_code
            except httpx.HTTPError as e:
                return type(e).__name__

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(fresh, range(32)))
        assert got == [200] * 32, (got, server.output()[-3000:])
        server.started(8, time.monotonic() + 30)
        out = server.output()
        for pid in stopped:
            assert re.search(rf"HTTP worker \d \(pid {pid}\): its event loop has not run",
                             out), out
        assert server.proc.poll() is None and not set(stopped) & set(
            _http_workers(server.proc.pid))
    finally:
        _stop_server(server, *stopped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_workers_paused_with_their_supervisor_are_not_taken_for_stalled(tiny_dir: Path
                                                                        ) -> None:
    """The whole server paused (a frozen container, a suspended host) for longer than
    ``--worker-stall-s``, its supervisor thawed first: the workers had no chance to beat, and
    none is killed (before, each was, as stalled)."""
    server = Workers(tiny_dir, "--threads", "1", "--no-access-log", "--worker-stall-s", "1")
    workers: list[int] = []
    try:
        _serving(server)
        workers = _http_workers(server.proc.pid)
        for pid in (server.proc.pid, *workers):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(0.5)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        time.sleep(3)
        out = server.output()
        assert "has not run" not in out, out
        assert sorted(_http_workers(server.proc.pid)) == sorted(workers)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        _stop_server(server, server.proc.pid, *workers)


def _blocked_for_ever(ready: Any) -> None:
    from smysl.server import workers

    workers._last_words()  # as a worker does
    ready.set()
    while True:
        time.sleep(1)


def test_a_stalled_worker_writes_its_stacks_before_it_is_killed(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """What the stalled worker was stuck on reaches the server's output: its threads' stacks
    (faulthandler, at C level: the stuck thread may hold the GIL)."""
    import multiprocessing as mp

    from smysl.server import workers

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_blocked_for_ever, args=(ready,))
    p.start()
    try:
        assert ready.wait(60)
        with caplog.at_level("ERROR", logger="smysl.server"):
            workers._kill_stalled(1, p, 31.5)
        assert not p.is_alive() and p.exitcode == -signal.SIGKILL
        assert "_blocked_for_ever" in capfd.readouterr().err
        assert f"HTTP worker 1 (pid {p.pid}): its event loop has not run for 31.5 s" in caplog.text
    finally:
        if p.is_alive():
            p.kill()
