"""``smysl serve --workers N``: N HTTP worker processes on one port, feeding one engine.

One Python process answers a short embedding request in ~0.5-1 ms of CPU (HTTP parsing,
validation, tokenising, JSON; docs/benchmarks.md), so it tops out near 1,000-2,000 requests a
second, while one GPU embeds ~8,000 short texts a second. Here the process ``smysl serve``
started becomes a supervisor: it binds the port, shares its model's engine process
(:meth:`~smysl.base.BaseEmbedder.share`; a reranker's too) and spawns N workers that each run
the whole server (:func:`smysl.server.app.serve`: validation, batchers, metrics). On Linux
each worker listens on a socket of its own, all bound to the port with ``SO_REUSEPORT``, and
the kernel spreads new connections over them by a hash of their addresses
(:func:`worker_sockets`); elsewhere they share one socket. Every worker's
batcher sends its batches to the one engine process, which runs batches that arrive together as
one forward pass, so the vectors (and a reranker's scores) are those of a single-process
server. ``--workers auto`` (the default) picks the count: :func:`auto_workers`.

``/metrics`` uses Prometheus' multiprocess mode: each worker writes its values to files in one
temporary folder and whichever worker answers sums them (gauges: the live workers' sum, and
``smysl_backend_up`` their minimum).

Lifecycle: SIGINT or SIGTERM to the supervisor is passed to each worker once (uvicorn's
graceful shutdown; a second one cuts in-flight requests off); then the engine stops. A worker
that exits with :data:`~smysl.server.app.EXIT_BACKEND_DOWN` stops the server with that
status; one that dies otherwise is restarted, at most :data:`MAX_RESTARTS` times a minute.
So is one whose event loop stalls (``ServerConfig.worker_stall_s``): each worker's loop
writes the time to a shared heartbeat about every 0.1 s, and a worker silent for that long
has its threads' stacks written to the server's output (:mod:`faulthandler`, on
``SIGUSR1``) and is killed. Its own socket's share of the new connections would otherwise
wait on it for ever, where on one shared socket the others would have taken them.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import Any

from smysl.base import BaseEmbedder
from smysl.cpus import usable_cpus
from smysl.files import process_temp_dir
from smysl.procname import HTTP_WORKER, set_name
from smysl.rerank import BaseReranker
from smysl.server.config import ServerConfig

log = logging.getLogger("smysl.server")

#: Where prometheus_client keeps the values of a multiprocess server.
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A worker that dies on its own is restarted at most this many times a minute.
MAX_RESTARTS = 3
#: The most workers ``--workers auto`` starts: eight carry ~8,000-13,000 short requests a
#: second at ~0.6-1 ms of CPU each, more than the 0.6B's short-text rate on an H200.
MAX_AUTO_WORKERS = 8
_STOP = {signal.SIGINT, signal.SIGTERM}
#: Asks a worker for its threads' stacks (on its output), before a stalled one is killed.
#: (Workers are POSIX only: pthread_sigmask, Unix sockets; the module is imported everywhere,
#: for METRICS_ENV: None on Windows, which has no SIGUSR1.)
_STACKS: int | None = getattr(signal, "SIGUSR1", None)
#: Seconds the supervisor gives a stalled worker to write its stacks before the kill.
STACKS_WAIT_S = 0.5
#: A worker that has not begun serving this many seconds after its start (or a stall limit
#: past it) counts as stalled too: its socket's share of connections waits on it meanwhile.
START_LIMIT_S = 120.0
#: A pause of the supervisor's own loop longer than this (the whole container frozen, the
#: host suspended) restarts every stall clock: the workers were paused with it.
SELF_PAUSE_S = 2.0


def auto_workers(models: list[tuple[str | None, int | None]], cpus: int | None = None) -> int:
    """``smysl serve --workers auto``: how many HTTP workers to run in front of the served
    ``models`` ((device, engine process id) each, as their ``info()`` reports them), on
    ``cpus`` usable CPUs (default: this process's). One unless every model's engine runs in
    a child process (the workers share it) and one of them on CUDA.

    On a GPU one process's ~1,000-1,600 short requests a second leave it mostly idle (64
    single-text clients reached 0.11-0.12 of offline on an H200, docs/benchmarks.md): half
    the CPUs, at most :data:`MAX_AUTO_WORKERS`, the other half left to the engine process and
    the tokenizer threads. On CPU the cores are the engine's: one. A worker without torch
    costs ~160 MiB and ~2 s of start. Workers share engines over Unix sockets: one elsewhere."""
    if os.name != "posix" or not models or any(pid is None for _, pid in models) or not any(
            (device or "").startswith("cuda") for device, _ in models):
        return 1
    return max(1, min(MAX_AUTO_WORKERS, (cpus or usable_cpus()) // 2))


def one_process_index(config: ServerConfig) -> bool:
    """Whether ``config.index`` is a local Qdrant folder, which one process at a time may
    open (its workers each opened it: the second was refused, restarted three times, and the
    server stopped)."""
    if not config.index:
        return False
    from smysl.toolkit.store import StoreConfig, local_path

    store = StoreConfig.parse(config.index, table=config.index_table)
    return store.backend == "qdrant" and local_path(store.uri) is not None


def check_index_workers(config: ServerConfig) -> None:
    """ValueError for more than one worker on an index only one process may open."""
    if config.workers > 1 and one_process_index(config):
        raise ValueError(f"--workers {config.workers}: the index {config.index} is a local "
                         "Qdrant folder, which one process at a time may open; serve it with "
                         "one worker, or from a Qdrant server (qdrant:http://HOST:6333)")


def check_settings(embedder: BaseEmbedder, config: ServerConfig) -> None:
    """What each worker's server checks before it listens (the default ``--dimensions``, the
    ``--index``: :class:`~smysl.server.service.Service`, :func:`smysl.server.ui.router`),
    checked once here first: a bad one stops the supervisor with one clear error, before the
    port is bound, instead of every worker exiting with a traceback and being restarted."""
    if config.default_dimensions is not None:
        embedder.check_dimensions(config.default_dimensions)
    check_index_workers(config)
    if config.index:
        from smysl.server.ui import open_index

        store, _ = open_index(config.index, config.index_table, embedder)
        store.close()


def serve_workers(embedder: BaseEmbedder | None, config: ServerConfig, *,
                  ready: Any = None, reranker: BaseReranker | None = None) -> int:
    """Run ``config.workers`` worker processes until interrupted; ``ready(host, port)`` once
    every worker accepts connections on the bound port. The embedding model, the
    reranker or both are shared with every worker (each its own engine process). Returns the
    exit status, as :func:`smysl.server.app.serve` does."""
    from smysl.server.app import EXIT_BACKEND_DOWN

    if embedder is None and reranker is None:
        raise ValueError("nothing to serve: give an embedding model, a reranker or both")
    if embedder is not None:
        check_settings(embedder, config)
    twin = ranker = None
    try:
        twin = embedder.share() if embedder is not None else None
        ranker = reranker.share() if reranker is not None else None
        groups = worker_sockets(config.host, config.port, config.workers)
    except BaseException as e:  # what was shared already is closed again
        _close(twin, ranker)
        if isinstance(e, NotImplementedError):
            raise ValueError(f"--workers {config.workers} needs models the workers can share: "
                             f"{e}") from None
        raise
    socks = list({id(x): x for g in groups for x in g}.values())  # every one, once
    host, port = socks[0].getsockname()[:2]
    folder = process_temp_dir("smysl-metrics-")
    ctx = mp.get_context("spawn")  # a fork would copy this process's threads and torch state
    # each set by its worker once its server runs: until then connections wait in the
    # backlog (seconds of imports), and "listening" is said when every worker serves (each
    # has its own socket: a connection the kernel hands one that has not started waits)
    ups = [ctx.Event() for _ in range(config.workers)]
    #: each worker's last heartbeat (time.monotonic(): one clock for every process)
    beats = [ctx.Value("d", 0.0, lock=False) for _ in range(config.workers)]

    started: dict[int, float] = {}  # worker i's start (time.monotonic())
    stalled: set[int] = set()  # pids the watch killed: restarted outside the crash count

    def start(i: int) -> Any:
        """Worker ``i`` started (None once a stop has begun: its sockets are closed)."""
        ups[i].clear()  # watched by its heartbeat once this one serves (a restart's too)
        started[i] = time.monotonic()
        p = ctx.Process(target=_worker, args=(twin, ranker, config, groups[i], folder, ups[i],
                                              beats[i], i == 0),
                        name=f"smysl-http-{i}", daemon=False)
        # blocked until the worker runs: a stop signal sent while it starts is not lost
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
        try:
            if stopping:  # handled just before the block
                return None
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return p

    stopping: list[int] = []
    told: set[int] = set()  # workers sent SIGTERM for the current stop

    def tell() -> None:
        """Pass a stop on, once per stop, to workers not yet told (some start meanwhile): a
        SIGTERM, then a SIGINT, which a worker busy meanwhile cannot take for a repeat of the
        first (two pending SIGTERMs are one); its server forces the stop at a second
        signal of either kind (:func:`smysl.server.app.serve`)."""
        sig = signal.SIGTERM if len(stopping) <= 1 else signal.SIGINT
        for p in list(workers.values()):
            if p.pid not in told:
                told.add(p.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    def on_signal(signum: int, _frame: Any) -> None:
        if len(stopping) == 1:  # a second stop cuts in-flight requests off
            told.clear()
        stopping.append(signum)
        # no worker starts while stopping, and the workers close theirs: with this process's
        # copies open the kernel went on accepting connections that nobody served (a client
        # hung until the drain ended, then was reset, where it should be refused at once)
        for sock in socks:
            sock.close()
        tell()

    workers: dict[int, Any] = {}
    previous = {s: signal.signal(s, on_signal) for s in _STOP}
    for i in range(config.workers):
        if (p := start(i)) is not None:
            workers[i] = p
    restarts: deque[float] = deque()
    code = 0
    last = resumed = time.monotonic()  # this loop's last turn; its return from a pause
    try:
        while workers:
            if ready is not None and all(u.is_set() for u in ups):
                ready(str(host), int(port))
                ready = None
            wait([p.sentinel for p in workers.values()], timeout=0.5 if ready is None else 0.05)
            if stopping:
                tell()
            now = time.monotonic()
            if now - last > SELF_PAUSE_S:  # paused with the workers: none is judged on that
                resumed = now
            if not stopping and config.worker_stall_s is not None:
                for i, p in workers.items():
                    if not p.is_alive():
                        continue
                    if ups[i].is_set():
                        silent = now - max(beats[i].value, resumed)
                        limit = config.worker_stall_s
                    else:  # not serving yet: its connections wait in its backlog meanwhile
                        silent = now - max(started[i], resumed)
                        limit = START_LIMIT_S + config.worker_stall_s
                    if silent > limit:
                        stalled.add(p.pid)
                        _kill_stalled(i, p, silent, serving=ups[i].is_set())
            last = time.monotonic()  # after the kills: their waits are no pause
            for i, p in list(workers.items()):
                if p.is_alive():
                    continue
                p.join()
                _mark_dead(p.pid, folder)
                del workers[i]
                if stopping:
                    continue
                if p.exitcode == EXIT_BACKEND_DOWN:
                    code = EXIT_BACKEND_DOWN
                    on_signal(signal.SIGTERM, None)
                    continue
                if p.pid in stalled:  # the watch's own kill, not a crash (several may stall
                    # at once from one cause, a blocked output): not counted as a death
                    stalled.discard(p.pid)
                    if (p := start(i)) is not None:
                        workers[i] = p
                    continue
                now = time.monotonic()
                while restarts and now - restarts[0] > 60:
                    restarts.popleft()
                if len(restarts) >= MAX_RESTARTS:
                    log.error("HTTP worker %d exited (exit code %s) after %d restarts in a "
                              "minute; stopping the server", i, p.exitcode, len(restarts))
                    code = 1
                    on_signal(signal.SIGTERM, None)
                    continue
                restarts.append(now)
                log.warning("HTTP worker %d exited (exit code %s); restarting it", i,
                            p.exitcode)
                if (p := start(i)) is not None:
                    workers[i] = p
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        deadline = time.monotonic() + config.graceful_timeout_s + 10
        for p in workers.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for sock in socks:
            sock.close()
        _close(twin, ranker)
        shutil.rmtree(folder, ignore_errors=True)
    return code


#: Linux spreads the connections of one port over the sockets bound to it with SO_REUSEPORT;
#: elsewhere (BSD, macOS) the option lets them bind and one of them gets them all.
SPREADS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def worker_sockets(host: str, port: int, workers: int) -> list[list[socket.socket]]:
    """Each worker's listening sockets (:func:`listening_sockets`). On Linux a set per
    worker, all with ``SO_REUSEPORT``, so that the kernel hands each new connection to one
    worker by a hash of its addresses: on one shared socket the first worker to wake took
    every connection waiting (asyncio accepts until none is left), so 64 clients connecting at
    once were all one worker's, the others idle (measured with 4 and 8 workers). The
    supervisor keeps every set open: the connections the kernel hands a worker that is being
    restarted wait for it in its socket's backlog. Elsewhere, or where the option is refused,
    one set shared by all.

    The port is claimed first without the option: taken by anyone, it fails as one process's
    bind does. ``SO_REUSEPORT`` alone would join the sockets of another server of the same
    user on that port (another smysl's workers), and the two would split each other's
    clients without a word. Between the claim and the binds another one could still bind it
    so: the listeners on the port are checked after the binds (two servers starting at that
    instant both refuse)."""
    if workers <= 1 or not SPREADS:
        return [listening_sockets(host, port)] * max(workers, 1)
    for _ in range(8 if port == 0 else 1):
        probe = listening_sockets(host, port, listen=False)  # ValueError when taken
        addresses = [(x.family, x.getsockname()) for x in probe]
        taken = probe[0].getsockname()[1]
        for x in probe:
            x.close()
        groups: list[list[socket.socket]] = []
        try:
            for _ in range(workers):
                groups.append(_bind_all(addresses, taken, reuse_port=True))
            if _foreign_listeners([x for g in groups for x in g]):
                # another server claimed the port between our claim and our binds
                raise OSError(errno.EADDRINUSE, "another server took it at the same time")
            return groups
        except OSError as e:
            for x in (x for g in groups for x in g):
                x.close()
            if e.errno != errno.EADDRINUSE:
                log.warning("one listening socket shared by the workers (SO_REUSEPORT: %s)", e)
                return [listening_sockets(host, port)] * workers
            error = e  # taken between the claim and the bind: port 0 tries another
    raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _foreign_listeners(ours: list[socket.socket]) -> list[str]:
    """Linux: listening TCP sockets on ``ours``' port, at one of their addresses or a
    wildcard one, that are not ``ours`` (``/proc/net/tcp``, ``tcp6``) -> their addresses."""
    port = ours[0].getsockname()[1]
    mine = {os.fstat(x.fileno()).st_ino for x in ours}

    def hexed(x: socket.socket) -> str:  # /proc's form: 32-bit words, each little-endian
        b = socket.inet_pton(x.family, x.getsockname()[0].split("%")[0])  # no IPv6 scope
        return "".join(b[i : i + 4][::-1].hex().upper() for i in range(0, len(b), 4))

    where = {hexed(x) for x in ours} | {"0" * 8, "0" * 32}
    found = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                col = line.split()  # sl, local, remote, state (0A: listening), ..., inode
                addr, _, hex_port = col[1].rpartition(":")
                if (col[3] == "0A" and int(hex_port, 16) == port and addr in where
                        and int(col[9]) not in mine):
                    found.append(col[1])
    return found


def claim_port(host: str, port: int) -> None:
    """ValueError now where ``host:port`` cannot be listened on (taken, no such address):
    ``smysl serve`` asks before loading its models (a port in use was said once an 8B had
    loaded). The claim is let go at once; serving binds the port again."""
    if port:
        for claim in listening_sockets(host, port, listen=False):
            claim.close()


def listening_sockets(host: str, port: int, *, listen: bool = True) -> list[socket.socket]:
    """Listening sockets on ``port``: one per address ``host`` resolves to,
    as one uvicorn process binds them (``localhost``: 127.0.0.1 and ::1 where the system
    lists both; a client that tries ::1 first must not find nothing there), all on one port
    (``port`` 0: the one the first address got; tried again should another address have it
    taken). An address the system cannot bind (IPv6 switched off) is skipped while another
    one binds. ``listen``: False to bind only (a claim of the port)."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # the whole address: an IPv6 one keeps its scope (fe80::1%eth0)
    addresses = list(dict.fromkeys((family, addr) for family, _, _, _, addr in found))
    for _ in range(8 if port == 0 else 1):
        try:
            return _bind_all(addresses, port, listen=listen)
        except OSError as e:
            error = e
            if e.errno != errno.EADDRINUSE:
                break
    raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _bind_all(addresses: Sequence[tuple[int, Any]], port: int, *, reuse_port: bool = False,
              listen: bool = True) -> list[socket.socket]:
    """:func:`listening_sockets` once: every address on one port, or none (all closed again);
    ``reuse_port``: with ``SO_REUSEPORT`` (:func:`worker_sockets`); ``listen``: False to
    bind only (a claim of the port)."""
    socks: list[socket.socket] = []
    error: OSError | None = None
    try:
        for family, addr in addresses:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:
                if e.errno != errno.EAFNOSUPPORT:
                    raise
                error = error or e
                continue
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # its own address only, as asyncio binds it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            taken = socks[0].getsockname()[1] if len(socks) > 1 else port
            try:
                sock.bind((addr[0], taken, *addr[2:]))
            except OSError as e:
                socks.pop().close()
                if e.errno != errno.EADDRNOTAVAIL:
                    raise
                error = error or e
                continue
            if listen:
                sock.listen(2048)
            sock.set_inheritable(True)
        if not socks:
            raise error or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _kill_stalled(i: int, p: Any, silent: float, *, serving: bool = True) -> None:
    """Kill worker ``i`` (process ``p``), its event loop silent for ``silent`` seconds (or,
    not ``serving``, not serving ``silent`` seconds after its start), once it has had a
    moment to write its threads' stacks (what it was stuck on)."""
    what = ("its event loop has not run for" if serving
            else "it has not begun serving (worker_stall_s past start-up) for")
    log.error("HTTP worker %d (pid %s): %s %.1f s (worker_stall_s); its threads' stacks "
              "follow, then it is killed and restarted", i, p.pid, what, silent)
    with contextlib.suppress(ProcessLookupError):
        if _STACKS is not None:
            os.kill(p.pid, _STACKS)
    p.join(STACKS_WAIT_S)  # (a stopped process writes nothing: it is killed all the same)
    p.kill()
    p.join(5)


def _mark_dead(pid: int | None, folder: str) -> None:
    """Drop a gone worker's live gauges (its counters keep counting in the totals)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, folder)


def _worker(embedder: BaseEmbedder | None, reranker: BaseReranker | None,
            config: ServerConfig, socks: list[socket.socket], folder: str, up: Any,
            beat: Any, first: bool) -> None:
    """A worker's main: the whole server on its sockets; sets ``up`` once it serves, and
    ``beat`` (a shared double) to the time while its event loop runs. The ``first`` worker
    logs and counts the shared engine's outages, for all of them."""
    # Signals come from the supervisor alone (once each), not from the terminal's Ctrl-C to
    # the whole process group: uvicorn cuts requests off at a second one.
    os.setpgrp()
    _last_words()  # first: SIGUSR1 would end a worker stuck in its imports without a word
    set_name(HTTP_WORKER)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)  # one that came meanwhile ends it here
    os.environ[METRICS_ENV] = folder  # before prometheus_client is imported
    from smysl.server.app import serve

    threading.Thread(target=_orphaned, args=(os.getppid(),), daemon=True).start()

    def heartbeat() -> None:
        beat.value = time.monotonic()

    try:
        code = serve(embedder, config, sockets=socks, reranker=reranker,
                     ready=lambda _host, _port: up.set(), heartbeat=heartbeat,
                     announces_outages=first)
    finally:
        _close(embedder, reranker)
    sys.exit(code)


def _last_words() -> None:
    """Write this process's threads' stacks to stderr when the supervisor sends
    :data:`_STACKS` to a stalled worker (at C level: needs neither the GIL nor the loop)."""
    if _STACKS is not None:
        faulthandler.register(_STACKS, all_threads=True)


def _close(*models: BaseEmbedder | BaseReranker | None) -> None:
    for model in models:
        if model is not None:
            model.close()


def _orphaned(parent: int) -> None:
    """Shut this worker down gracefully once its supervisor is gone (killed outright)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
