"""The engine in a child process, behind the same contract as :class:`smysl.qwen3.engine.Engine`
(:class:`~smysl.qwen3.contract.EngineLike`).

Why: a forward pass is a few thousand torch calls, and between two calls the Python thread that
issues them must re-take the GIL. In a server the event loop holds the GIL while it parses and
answers requests, so an in-process compute thread waits for it at every call: on a 2-core box
that cost ~15% of compute time under 64 clients (docs/bench-notes/server.md), on a GPU it
would delay every kernel launch. A child process has its own interpreter and GIL; the parent
only sends token ids and receives pooled rows (one pipe round trip per forward pass).

The child runs exactly :meth:`Engine.forward`, so vectors are bit-identical to an in-process
engine with the same device, dtype and thread count. Only the child imports torch: the parent
and the processes it shares the engine with (:mod:`smysl.qwen3.client`) need none.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing as mp
import os
import queue
import secrets
import selectors
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, wait
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from smysl.files import process_temp_dir
from smysl.procname import ENGINE, set_name
from smysl.qwen3.client import (
    EngineClient,
    EngineProcessError,
    PassCancelled,
    Piped,
    Replies,
    reraise,
    send_reply,
    watch_forks,
)
from smysl.qwen3.contract import EngineConfig, batch_tokens, merge, request_tokens
from smysl.qwen3.heap import keep_heap
from smysl.qwen3.hub import Checkpoint

if TYPE_CHECKING:
    from smysl.qwen3.engine import Engine

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Seconds the parent waits for the child to import torch and load the weights.
START_TIMEOUT_S = 600.0
#: A child that dies on its own is restarted at most this many times within this many seconds;
#: then the engine stays down (``alive`` False) and every call raises.
MAX_RESTARTS, RESTART_WINDOW_S = 3, 60.0


def _child(conn: Connection, ckpt: Checkpoint, cfg: EngineConfig) -> None:
    """Child main: load, report the engine's shape, then answer forward requests until the
    parent sends ``None`` or goes away. After a ``("share", address, authkey)`` request it also
    answers the processes that connect there (:class:`EngineClient`)."""
    # Ctrl-C reaches the whole process group; the parent decides when this process stops
    # (after in-flight batches), so the child ignores it.
    # SIGTERM to the process group (systemd, tini -g) likewise: the child exits when the parent
    # sends None or goes away.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_name(ENGINE)
    from smysl.qwen3.engine import Engine  # torch: this process computes

    keep_heap()
    try:
        engine = Engine.from_checkpoint(ckpt, cfg)
    except BaseException as e:  # report any load failure to the parent, then exit
        send_reply(conn, ("error", e))
        return
    info = {"hidden_size": engine.hidden_size, "vocab_rows": engine.vocab_rows,
            "max_positions": engine.max_positions, "device": engine.device,
            "dtype": engine.dtype, "cpu": engine.cpu,
            "quantization": engine.quantization, "parameters": engine.parameters,
            "threads": engine.threads, "cuda_graphs": engine.cuda_graphs, "kernel": engine.kernel,
            "numerics": engine.numerics, "chunk": engine.chunk, "tuned_at": engine.tuned_at,
            "queues": engine.queues, "pid": os.getpid()}
    send_reply(conn, ("ready", info))
    hub: _Hub | None = None
    try:
        hub = _Hub(engine, conn, info, cfg.batch_tokens)
        hub.run()
    finally:
        if hub is not None:
            hub.stop_listening()
        engine.close()  # its lane threads ended before the interpreter finalises (as above)


@dataclass(eq=False)
class _Request:
    """A forward request: from ``conn``, its ``number``-th request there (its reply carries
    the number: a request run between the layers of a long pass is answered before it)."""

    conn: Connection
    number: int
    batch: list[list[int]]
    heads: list[int] | None

    @property
    def longest(self) -> int:
        return max(map(len, self.batch), default=0)

    @property
    def tokens(self) -> int:
        return request_tokens((self.batch, self.heads))


class _Pass:
    """One forward pass launched by the hub: its requests, and once :attr:`done`, its rows or
    the error it raised."""

    def __init__(self, requests: list[_Request], wait: Callable[[], np.ndarray]) -> None:
        self.requests, self.wait = requests, wait
        self.rows: np.ndarray | None = None
        self.error: Exception | None = None
        self.done = False

    def run(self) -> None:
        """Wait for the rows (or the error); then :attr:`done`."""
        try:
            self.rows = self.wait()
        except Exception as e:
            self.error = e
        self.done = True


class _Hub:
    """The child's loop: forward requests from the parent's pipe and from connected clients.

    Requests that arrive together (from several HTTP worker processes) run as one forward
    pass while they fit the engine's batch budget: the engine is batch-invariant, so each
    client's rows are bit-identical to a pass of its own, and the GPU runs one larger batch
    instead of several small ones in turn.

    On CUDA (:meth:`Engine.submit` returns once a pass is queued) a watcher thread waits for
    each pass's rows, so this loop keeps reading requests while the GPU runs. What arrives
    meanwhile waits here and goes in the next pass, launched the moment the running one ends:
    a request waits for the rest of one pass, not for a pass queued behind it (with 64
    single-text clients behind HTTP workers a request spent ~3-5 passes in flight, and each
    pass carried a fraction of them: docs/benchmarks.md). A pass of at least half the budget
    (a bulk request's) is worth queuing behind the running one, as :meth:`Engine.forward_many`
    does: the GPU never waits for the host between large passes. At most two passes are on
    the device, so its memory holds two passes' activations at most. On CPU a pass has run
    when it is submitted, and its rows go out at once; a pass with an input over the budget
    (seconds to minutes) reads what arrives after each of its layers and runs the requests
    within the budget there (:meth:`_between`), so those wait for one layer of it, not all.
    Each reply carries its request's number: such a short request is answered first.
    """

    def __init__(self, engine: Engine, parent: Connection, info: dict[str, Any],
                 budget: int | None = None) -> None:
        self.engine, self.parent, self.info = engine, parent, info
        #: :attr:`~smysl.qwen3.contract.EngineConfig.batch_tokens`.
        self.budget = budget or batch_tokens(engine.device)
        #: CUDA: submit returns once a pass is queued (the watcher waits for its rows).
        self.pipelined = engine.queues
        self.clients: list[Connection] = []
        self._joined: list[Connection] = []  # accepted, not yet polled
        self._listeners: list[Listener] = []  # where other processes connect (share)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        # Replies go out from a thread of their own: a caller with passes in flight reads no
        # reply until its sends are done, and a loop blocked sending it a large reply would
        # stop reading those sends; both ends would wait for ever.
        #: (connection, request number, reply), (connection, 0, None) to close it after its
        #: replies, None: stop.
        self._outbox: queue.SimpleQueue[
            tuple[Connection, int, tuple[str, Any] | None] | None] = queue.SimpleQueue()
        #: Requests each connection has sent so far (the next one's number).
        self._numbers: dict[Connection, int] = {}
        #: Received, not yet launched, in arrival order.
        self._pending: list[_Request] = []
        #: The parent is gone, or sent the stop.
        self._stopped = False
        #: A CPU pass that takes others between its layers is running (they take none): its
        #: requests (:meth:`_between` stops it once none is still wanted).
        self._running: list[_Request] | None = None
        #: (connection, number) of requests cancelled while part of a running pass.
        self._cancelled: set[tuple[Connection, int]] = set()
        #: Launched passes for the watcher, in launch order; None: stop.
        self._launched: queue.SimpleQueue[_Pass | None] = queue.SimpleQueue()
        #: The watcher writes a byte here after each pass it has waited for.
        self._done_r, self._done_w = os.pipe()
        #: What the loop waits on (the parent, the clients, both wake-up pipes), registered
        #: once: ``multiprocessing.connection.wait`` builds a selector per call (~12 us for ten
        #: connections against ~1.5), and the loop now wakes for every request.
        self._selector = selectors.DefaultSelector()

    def run(self) -> None:
        writer = threading.Thread(target=self._write, daemon=True, name="smysl-engine-reply")
        writer.start()
        watcher = threading.Thread(target=self._watch, daemon=True, name="smysl-engine-wait")
        watcher.start()
        try:
            self._serve()
        finally:  # the replies queued so far go out before the process ends
            self._launched.put(None)
            self._outbox.put(None)
            writer.join()
            # and both threads have ended: a thread that ends while the interpreter finalises
            # may drop the last reference to this hub and its engine, whose tensors then
            # free without the GIL to take back; the child aborted ("terminate called
            # without an active exception", exit -6) at 2 of 10 stops of a server
            watcher.join(10)

    def _write(self) -> None:
        while (item := self._outbox.get()) is not None:
            conn, number, reply = item
            if reply is None:
                conn.close()
            else:
                send_reply(conn, reply, number)

    def _watch(self) -> None:
        while (p := self._launched.get()) is not None:
            p.run()
            os.write(self._done_w, b"x")

    def _reply(self, conn: Connection, number: int, reply: tuple[str, Any]) -> None:
        """Queue the reply to ``conn``'s request ``number``."""
        self._outbox.put((conn, number, reply))

    def _serve(self) -> None:
        inflight: deque[_Pass] = deque()  # launched, not yet answered, oldest first
        for source in (self._wake_r, self._done_r):
            self._selector.register(source, selectors.EVENT_READ)
        for c in (self.parent, *self.clients):
            self._selector.register(c, selectors.EVENT_READ)
        while True:
            ready = [key.fileobj for key, _ in self._selector.select()]
            if self._done_r in ready:
                self._answer_done(inflight)
            self._take(ready)
            self._start(inflight)
            if self._stopped:  # the parent is gone, or asked the child to stop: answer the
                while self._pending or inflight:  # clients (two passes on the device at most)
                    wait([self._done_r])
                    self._answer_done(inflight)
                    self._start(inflight)
                return

    def _take(self, ready: list[Any]) -> None:
        """Add what ``ready`` connections sent to :attr:`_pending`, and drop the requests
        nobody will read: a client gone meanwhile needs no pass; nor does the parent once it
        has stopped us (it closed its end)."""
        requests, stop = self._receive(ready)
        self._stopped |= stop
        self._pending = [r for r in self._pending + requests
                         if (r.conn is self.parent and not self._stopped)
                         or r.conn in self.clients]

    def _answer_done(self, inflight: deque[_Pass]) -> None:
        """After the watcher's signal: answer the passes it has waited for, in launch
        order."""
        os.read(self._done_r, 4096)
        while inflight and inflight[0].done:
            self._finish(inflight.popleft())

    def _start(self, inflight: deque[_Pass]) -> None:
        """Launch what may run now of :attr:`_pending` (merged, in arrival order). CUDA: the
        next pass when none runs, or one of at least half the budget behind a single running
        one; CPU: every pass, each answered when it has run (a long input's pass takes the
        short requests that arrive meanwhile between its layers: :meth:`_between`)."""
        while self._pending:
            pending = self._pending
            group = merge([(r.batch, r.heads) for r in pending], self.budget)[0]
            if self.pipelined and inflight and (
                    len(inflight) > 1 or sum(pending[i].tokens for i in group) < self.budget // 2):
                return
            self._pending = pending[len(group):]
            p = self._launch([pending[i] for i in group])
            if self.pipelined:
                inflight.append(p)
                self._launched.put(p)
            else:
                p.run()
                self._finish(p)

    def _between(self) -> None:
        """Between two layers of a CPU pass with an input over the budget (seconds to
        minutes): take what has arrived, and run the requests without such an input now, in
        passes of their own, and answer them. So a short query waits for one layer of a long
        document, not for all of it (the HTTP server sends it while the long pass runs:
        :class:`~smysl.server.batcher.Batcher`)."""
        ready = [key.fileobj for key, _ in self._selector.select(0)]
        if ready:
            try:
                self._take(ready)
            except Exception:  # never the long pass's failure (the loop meets it again)
                log.exception("reading requests between two layers")
        running = self._running
        if running is not None and not any(map(self._wanted, running)):
            raise PassCancelled("the forward pass was stopped: its requests were cancelled, "
                                "or their callers have gone")
        short = [r for r in self._pending if r.longest <= self.budget]
        if not short:
            return
        self._pending = [r for r in self._pending if r.longest > self.budget]
        for group in merge([(r.batch, r.heads) for r in short], self.budget):
            p = self._launch([short[i] for i in group])
            p.run()
            self._finish(p)

    def _receive(self, ready: list[Any]) -> tuple[list[_Request], bool]:
        """The forward requests among ``ready`` connections, all that each has sent (new
        clients joined, a parent's "share" answered), and whether the parent is gone or sent
        the stop (what the clients sent is answered still)."""
        if self._wake_r in ready:
            os.read(self._wake_r, 512)
            with self._lock:
                joined, self._joined = self._joined, []
            for c in joined:
                self._selector.register(c, selectors.EVENT_READ)
            self.clients += joined
        requests: list[_Request] = []
        stop = False
        for c in ready:
            if not isinstance(c, Connection):  # the wake-up pipes
                continue
            while True:
                try:
                    request = c.recv()
                except (EOFError, OSError):
                    if c is self.parent:
                        stop = True
                        break
                    self.clients.remove(c)
                    self._selector.unregister(c)
                    self._numbers.pop(c, None)
                    # closed by the writer, after the replies queued for it: closed here,
                    # its descriptor could be reused by a new client before those were
                    # written
                    self._outbox.put((c, 0, None))
                    break
                if request is None and c is self.parent:
                    stop = True
                    break
                # a message's kind, where its first item is a word (a batch is a list, an
                # array or a tuple of sequences: compared with a word, an array's elementwise
                # answer raised)
                kind = (request[0] if isinstance(request, tuple) and request
                        and isinstance(request[0], str) else None)
                if kind == "cancel" and len(request) == 2 and isinstance(request[1], int):
                    self._cancel(c, request[1], requests)  # no request: no number, no reply
                else:
                    number = self._numbers.get(c, 0)
                    self._numbers[c] = number + 1
                    if kind == "share" and c is self.parent:
                        self._reply(c, number, self._listen(*request[1:]))
                    elif kind is None and isinstance(request, tuple) and len(request) == 2:
                        requests.append(_Request(c, number, *request))
                    else:  # answered as any request is: its caller waits for that reply
                        self._reply(c, number, ("error", ValueError(
                            f"not a forward request: {type(request).__name__}")))
                try:  # what else it has sent, now: one pass can take it all
                    if not c.poll():
                        break
                except (EOFError, OSError):
                    break  # the next wait sees it closed
        return requests, stop

    def _launch(self, requests: list[_Request]) -> _Pass:
        """Queue one forward pass for ``requests``: on CPU, one with an input over the
        budget takes others between its layers (:meth:`_between`), unless it runs between
        another's."""
        if len(requests) == 1:
            batch, heads = requests[0].batch, requests[0].heads
        else:  # merged: none has heads (see merge)
            batch, heads = [s for r in requests for s in r.batch], None
        try:
            if (not self.pipelined and self._running is None
                    and max(r.longest for r in requests) > self.budget):
                self._running = requests
                try:
                    rows = self.engine.submit(batch, heads, between=self._between)
                finally:
                    self._running = None
                    self._cancelled.clear()
                return _Pass(requests, rows)
            return _Pass(requests, self.engine.submit(batch, heads))
        except Exception as e:
            return _Pass(requests, functools.partial(reraise, e))

    def _cancel(self, conn: Connection, number: int, received: list[_Request]) -> None:
        """``conn`` cancelled its request ``number``: dropped (and answered) if it waits
        here or was just ``received``; remembered if it is in the running pass; nothing if
        it was answered."""
        for waiting in (self._pending, received):
            for r in waiting:
                if r.conn is conn and r.number == number:
                    waiting.remove(r)
                    self._reply(conn, number, ("error", PassCancelled(
                        "the forward pass was not started: its caller cancelled it")))
                    return
        if self._running is not None:
            self._cancelled.add((conn, number))

    def _wanted(self, r: _Request) -> bool:
        """Whether someone still waits for ``r``'s rows."""
        if (r.conn, r.number) in self._cancelled:
            return False
        return (not self._stopped) if r.conn is self.parent else r.conn in self.clients

    def _finish(self, p: _Pass) -> None:
        """Send each request of a pass that has run its rows."""
        if isinstance(p.error, PassCancelled):  # each request's answer: none to compute again
            for r in p.requests:
                self._reply(r.conn, r.number, ("error", p.error))
            return
        if p.error is not None:
            if len(p.requests) == 1:
                r = p.requests[0]
                self._reply(r.conn, r.number, ("error", p.error))
            else:  # whose input was it: each alone (here: rare)
                for r in p.requests:
                    self._reply(r.conn, r.number, _forward(self.engine, r.batch, r.heads))
            return
        rows, start = p.rows, 0
        assert rows is not None  # done without an error
        for r in p.requests:
            self._reply(r.conn, r.number, ("ok", rows[start : start + len(r.batch)]))
            start += len(r.batch)

    def _listen(self, address: str, authkey: bytes) -> tuple[str, Any]:
        """Accept clients at ``address`` (a Unix socket path) from now on."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)  # a previous engine process's socket
            listener = Listener(address, family="AF_UNIX", authkey=authkey)
        except Exception as e:
            return ("error", e)
        self._listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name="smysl-engine-accept").start()
        return ("ok", None)

    def stop_listening(self) -> None:
        """Close the sockets of :meth:`_listen` before exit: the parent may have removed their
        files first (an owner dropped without close()), and multiprocessing's own removal at
        exit then printed a FileNotFoundError traceback."""
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                c = listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                continue  # a stranger, or a client that left mid-handshake
            except OSError:
                return
            send_reply(c, ("ready", self.info))
            with self._lock:
                self._joined.append(c)
            os.write(self._wake_w, b"x")


def _forward(engine: Engine, batch: list[list[int]], heads: list[int] | None
             ) -> tuple[str, Any]:
    try:
        return ("ok", engine.forward(batch, heads))
    except Exception as e:
        return ("error", e)


def _exit_why(code: int | None) -> str:
    """What a loading child's exit code suggests: 1 an error (its traceback is above; a
    script without the ``__main__`` guard fails so under spawn), a signal otherwise."""
    if code == 1:
        return ("; its error is above. A script that loads with process=True when it is "
                "imported needs `if __name__ == \"__main__\":` around that code (spawn "
                "imports it again in the child)")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f": killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return ""


def _stop(proc: Any, conn: Connection, stopping: threading.Event | None = None) -> None:
    """Ask the child to exit, then make sure it has (it ignores SIGTERM: a kill).
    ``stopping``: set first, so that the watcher does not take the exit for a crash (the
    finalizer runs at interpreter exit while the engine is still referenced)."""
    if stopping is not None:
        stopping.set()
    with contextlib.suppress(EOFError, OSError):
        conn.send(None)
    # replies nobody will read must not hold the child's writer (and its exit) up
    conn.close()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _watch(ref: weakref.ref[EngineProcess], proc: Any) -> None:
    """Thread body: wait for ``proc`` to exit, then let its engine restart it (holds only a
    weak reference, so an abandoned engine is still collected)."""
    wait([proc.sentinel])
    engine = ref()
    if engine is not None:
        engine._on_exit(proc)


class EngineProcess(Piped):
    """The :class:`~smysl.qwen3.contract.EngineLike` contract, served by a child process, which
    runs passes in the order they were sent (several may be in flight: :meth:`submit`);
    ``close()`` (or garbage collection, or interpreter exit) stops the child.

    A call interrupted between sending a batch and reading its rows (Ctrl-C) kills the child,
    which also stops its work; the next call starts a fresh one. A child that dies on its own
    (the OOM killer, a crash) is restarted at once in the background, at most ``max_restarts``
    times within ``restart_window_s`` seconds (each logged); while it is down ``alive`` is
    False and calls raise :class:`EngineProcessError` at once; past the limit it stays down.
    """

    _replies: Replies  # always one: a dead child's, until it is replaced

    def __init__(self, ckpt: Checkpoint, cfg: EngineConfig, *, max_restarts: int = MAX_RESTARTS,
                 restart_window_s: float = RESTART_WINDOW_S) -> None:
        self._ckpt, self._cfg = ckpt, cfg
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._lock = threading.Lock()
        self._init_reading()
        self._closed = self._dead = self._stale = self._down = False
        #: The process that started the child: only it may talk to it (``multiprocessing``).
        self._owner = os.getpid()
        watch_forks(self)
        #: When recent restarts began (``time.monotonic``), to bound them.
        self._restarts: deque[float] = deque()
        #: Restarts after the child died on its own, over the engine's life.
        self.restarts = 0
        #: Where the child accepts other processes (:meth:`share`), once asked.
        self._shared: EngineClient | None = None
        self._start()

    def _start(self) -> None:
        self._install(*self._spawn())

    def _spawn(self) -> tuple[Any, Replies, dict[str, Any]]:
        """Start a child and wait until it has loaded the model: (process, pipe, its shape)."""
        ctx = mp.get_context("spawn")  # fork would copy a parent's threads and CUDA state
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child_conn, self._ckpt, self._cfg),
                           name="smysl-engine", daemon=True)
        proc.start()
        child_conn.close()
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise EngineProcessError(f"the engine process did not start within "
                                         f"{START_TIMEOUT_S:.0f} s")
            try:
                kind, info = conn.recv()
            except (EOFError, OSError):
                proc.join(5)
                raise EngineProcessError(
                    f"the engine process exited while loading (exit code {proc.exitcode})"
                    + _exit_why(proc.exitcode)) from None
            if kind == "error":
                raise info
            replies = Replies(conn)
            if self._shared is not None:  # a restarted child serves the same clients
                kind, err = replies.ask(("share", self._shared.address, self._shared.authkey))
                if kind == "error":
                    raise err
        except BaseException as e:
            if isinstance(e, Exception):
                _stop(proc, conn)
            else:  # Ctrl-C: not a 10 s wait for a child that reads no pipe while it loads
                conn.close()
                proc.kill()
                proc.join(5)
            raise
        return proc, replies, info

    def _install(self, proc: Any, replies: Replies, info: dict[str, Any]) -> None:
        """Make a started child the engine's (under the lock, or before any other thread)."""
        self._proc, self._info = proc, info
        self._replies, conn = replies, replies.conn
        self._stopping = threading.Event()
        self._closer = weakref.finalize(self, _stop, proc, conn, self._stopping)
        threading.Thread(target=_watch, args=(weakref.ref(self), proc), daemon=True,
                         name="smysl-engine-watch").start()
        self._describe(info)
        self._stale = self._down = False

    def _on_exit(self, proc: Any) -> None:
        """The watcher saw ``proc`` exit: restart it unless that was on purpose."""
        with self._lock:
            if self._closed or proc is not self._proc or self._stale or self._stopping.is_set():
                return  # closed, replaced, killed after an interrupted call, or stopped at exit
            self._down = True
        # the dead child's pipe and zombie (the finalizer would only close them at exit)
        self._closer()
        code: object = proc.exitcode
        while True:
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > self.restart_window_s:
                self._restarts.popleft()
            if len(self._restarts) >= self.max_restarts:
                log.error("the engine process exited (exit code %s) after %d restart(s) in "
                          "%.0f s; not restarting it again", code, len(self._restarts),
                          self.restart_window_s)
                with self._lock:
                    self._dead = True
                return
            self._restarts.append(now)
            self.restarts += 1
            log.warning("the engine process exited (exit code %s); restarting it (restart %d "
                        "of at most %d in %.0f s)", code, len(self._restarts), self.max_restarts,
                        self.restart_window_s)
            try:
                child = self._spawn()  # seconds: without the lock, so calls fail fast meanwhile
            except Exception as e:
                log.error("the engine process did not restart: %s", e)
                code = "none: the restart failed"
                continue
            with self._lock:
                if self._closed:
                    _stop(child[0], child[1].conn)
                    return
                self._install(*child)
            log.warning("the engine process is back (pid %s) after %.1f s", self.pid,
                        time.monotonic() - now)
            return

    def _forked(self) -> None:
        super()._forked()
        # the parent's child and socket are the parent's to stop: the finalizers (run at this
        # process's exit, or by close()) stopped its engine and removed its share() socket
        self._closer.detach()
        if self._shared is not None:
            self._unshare.detach()

    def _kill(self) -> None:
        """Stop the child now (it may be mid-batch); its reply must never reach a later call."""
        self._closer.detach()
        self._proc.kill()
        self._proc.join(5)
        self._replies.conn.close()
        self._stale = True

    @property
    def alive(self) -> bool:
        if os.getpid() != self._owner:  # a forked child (is_alive asserts the parent)
            return False
        return (not (self._closed or self._dead or self._down)
                and (self._stale or self._proc.is_alive()))

    def _channel(self) -> Replies:
        """The pipe to a running child (under the lock): a new child after an interrupted
        call; EngineProcessError while it is closed, restarting or dead."""
        if os.getpid() != self._owner:
            raise EngineProcessError(f"this engine process was started by process {self._owner}"
                                     "; a forked child cannot use its pipe: pass it "
                                     "model.share() (picklable), or load the model in it")
        if self._closed:
            raise EngineProcessError("the engine process was closed")
        if self._dead:
            raise EngineProcessError(f"the engine process exited (exit code "
                                     f"{self._proc.exitcode}) and was restarted "
                                     f"{len(self._restarts)} time(s) within "
                                     f"{self.restart_window_s:.0f} s; restart the program")
        if self._down or not (self._stale or self._proc.is_alive()):
            raise EngineProcessError(f"the engine process exited (exit code "
                                     f"{self._proc.exitcode}); it is restarting")
        if self._stale:
            log.warning("starting a new engine process after an interrupted call")
            self._start()
        return self._replies

    def _io(self, step: Callable[[], _T]) -> _T:
        """One send or receive on the child's pipe (under the lock): a broken pipe is a dead
        child (the watcher restarts it); an interrupted one (Ctrl-C), or a reply that does
        not unpickle, kills the child, so that no reply reaches a later call."""
        try:
            return step()
        except (EOFError, OSError):
            del step  # may hold the exception (reraise): a cycle through its traceback
            if self._closed:
                raise EngineProcessError("the engine process was closed") from None
            if self._stale:  # killed by another call (interrupted, or an unreadable reply)
                raise EngineProcessError("the engine process was stopped (a call was "
                                         "interrupted, or a reply unreadable) before this "
                                         "batch's rows came back; the next call starts a new "
                                         "one") from None
            self._down = True  # the watcher restarts it
            self._proc.join(1)
            raise EngineProcessError(f"the engine process exited (exit code "
                                     f"{self._proc.exitcode}) during this batch; it is "
                                     "restarting") from None
        except BaseException as e:
            # may hold ``e`` (reraise): a cycle through the traceback kept the call's token ids
            # and pipe until a collection, whose Connection.__del__ swallowed a later Ctrl-C
            del step
            self._kill()
            if isinstance(e, Exception):
                raise EngineProcessError(f"unreadable reply from the engine process: "
                                         f"{e!r}") from e
            raise

    def __reduce__(self) -> Any:
        raise TypeError("an engine process cannot be pickled (a worker pool, a deep copy): "
                        "pickle model.share(), a handle that computes on it")

    def share(self) -> EngineClient:
        """A handle other processes can compute with on this engine (picklable; it connects
        on first use): the child accepts them on a Unix socket from now on, a restarted child
        at the same address. Their requests and this process's run in one queue, and
        requests that arrive together share a forward pass."""
        if os.name != "posix":
            raise NotImplementedError("sharing an engine process needs Unix sockets "
                                      "(Linux, macOS)")
        with self._lock:
            if self._shared is None:
                folder = process_temp_dir("smysl-engine-")  # 0700: this user only
                shared = EngineClient(os.path.join(folder, "engine.sock"),
                                      secrets.token_bytes(32), self._info)
                replies = self._channel()
                kind, err = self._io(lambda: replies.ask(
                    ("share", shared.address, shared.authkey)))
                if kind == "error":
                    raise EngineProcessError(f"the engine process cannot accept other "
                                             f"processes: {err}")
                self._shared = shared
                self._unshare = weakref.finalize(self, _remove_socket, shared.address)
            return self._shared

    def close(self) -> None:
        """Stop the child process (idempotent). Passes still in flight are abandoned: the
        child is killed, not waited for (a server's forced stop waited 15 s for its batch). In a
        forked child it only closes this process's handle: the engine is the parent's."""
        with self._lock:
            self._closed = True
            if os.getpid() != self._owner:
                return
            if self._replies.waiting and not self._stale and self._proc.is_alive():
                self._kill()
            else:
                self._closer()
            if self._shared is not None:
                self._unshare()


def _remove_socket(address: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(address)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(address))
