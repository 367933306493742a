"""The engine in a child process, behind the same contract as :class:`smysl.qwen3.engine.Engine`.

Why: a forward pass is a few thousand torch calls, and between two calls the Python thread that
issues them must re-take the GIL. In a server the event loop holds the GIL while it parses and
answers requests, so an in-process compute thread waits for it at every call: on a 2-core box
that cost ~15% of compute time under 64 clients (docs/bench-notes/server.md), on a GPU it
would delay every kernel launch. A child process has its own interpreter and GIL; the parent
only sends token ids and receives pooled rows (one pipe round trip per forward pass).

The child runs exactly :meth:`Engine.forward`, so vectors are bit-identical to an in-process
engine with the same device, dtype and thread count.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch

from smysl.qwen3.engine import Engine, EngineConfig
from smysl.qwen3.heap import keep_heap
from smysl.qwen3.hub import Checkpoint

log = logging.getLogger(__name__)

#: Seconds the parent waits for the child to import torch and load the weights.
START_TIMEOUT_S = 600.0
#: A child that dies on its own is restarted at most this many times within this many seconds;
#: then the engine stays down (``alive`` False) and every call raises.
MAX_RESTARTS, RESTART_WINDOW_S = 3, 60.0


class EngineProcessError(RuntimeError):
    """The engine process could not start, or exited while in use."""


def _child(conn: Connection, ckpt: Checkpoint, cfg: EngineConfig) -> None:
    """Child main: load, report the engine's shape, then answer forward requests until the
    parent sends ``None`` or goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when this process stops
    # (after in-flight batches), so the child ignores it.
    # SIGTERM to the process group (systemd, tini -g) likewise: the child exits when the parent
    # sends None or goes away.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    keep_heap()
    try:
        engine = Engine.from_checkpoint(ckpt, cfg)
    except BaseException as e:  # report any load failure to the parent, then exit
        _send(conn, ("error", e))
        return
    _send(conn, ("ready", {"hidden_size": engine.hidden_size, "vocab_rows": engine.vocab_rows,
                           "max_positions": engine.max_positions, "device": str(engine.device),
                           "dtype": str(engine.dtype).removeprefix("torch."),
                           "quantization": engine.quantization, "parameters": engine.parameters,
                           "threads": engine.threads,
                           "cuda_graphs": engine.cuda_graphs, "kernel": engine.kernel,
                           "chunk": engine.chunk, "tuned_at": engine.tuned_at}))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            batch, heads = request
            reply: tuple[str, Any] = ("ok", engine.forward(batch, heads))
        except Exception as e:
            reply = ("error", e)
        _send(conn, reply)


def _send(conn: Connection, reply: tuple[str, Any]) -> None:
    try:
        conn.send(reply)
    except (EOFError, OSError):
        pass
    except Exception as e:  # an exception that does not pickle: send its text
        with contextlib.suppress(Exception):
            conn.send(("error", EngineProcessError(f"{type(reply[1]).__name__}: {reply[1]} "
                                                   f"({e})")))


def _stop(proc: Any, conn: Connection) -> None:
    """Ask the child to exit, then make sure it has."""
    with contextlib.suppress(EOFError, OSError):
        conn.send(None)
    proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    conn.close()


def _watch(ref: weakref.ref[EngineProcess], proc: Any) -> None:
    """Thread body: wait for ``proc`` to exit, then let its engine restart it (holds only a
    weak reference, so an abandoned engine is still collected)."""
    wait([proc.sentinel])
    engine = ref()
    if engine is not None:
        engine._on_exit(proc)


class EngineProcess:
    """The :class:`~smysl.qwen3.engine.EngineLike` contract, served by a child process. One
    forward pass at a time; ``close()`` (or garbage collection, or
    interpreter exit) stops the child.

    A call interrupted between sending a batch and reading its rows (Ctrl-C) kills the child,
    which also stops its work; the next call starts a fresh one. A child that dies on its own
    (the OOM killer, a crash) is restarted at once in the background, at most ``max_restarts``
    times within ``restart_window_s`` seconds (each logged); while it is down ``alive`` is
    False and calls raise :class:`EngineProcessError` at once; past the limit it stays down.
    """

    def __init__(self, ckpt: Checkpoint, cfg: EngineConfig, *, max_restarts: int = MAX_RESTARTS,
                 restart_window_s: float = RESTART_WINDOW_S) -> None:
        self._ckpt, self._cfg = ckpt, cfg
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._lock = threading.Lock()
        self._closed = self._dead = self._stale = self._down = False
        #: When recent restarts began (``time.monotonic``), to bound them.
        self._restarts: deque[float] = deque()
        #: Restarts after the child died on its own, over the engine's life.
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        self._install(*self._spawn())

    def _spawn(self) -> tuple[Any, Connection, dict[str, Any]]:
        """Start a child and wait until it has loaded the model: (process, pipe, its shape)."""
        ctx = mp.get_context("spawn")  # fork would copy a parent's threads and CUDA state
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child_conn, self._ckpt, self._cfg),
                           name="smysl-engine", daemon=True)
        proc.start()
        child_conn.close()
        if not conn.poll(START_TIMEOUT_S):
            _stop(proc, conn)
            raise EngineProcessError(f"the engine process did not start within "
                                     f"{START_TIMEOUT_S:.0f} s")
        try:
            kind, info = conn.recv()
        except (EOFError, OSError):
            _stop(proc, conn)
            raise EngineProcessError(f"the engine process exited while loading (exit code "
                                     f"{proc.exitcode})") from None
        if kind == "error":
            _stop(proc, conn)
            raise info
        return proc, conn, info

    def _install(self, proc: Any, conn: Connection, info: dict[str, Any]) -> None:
        """Make a started child the engine's (under the lock, or before any other thread)."""
        self._proc, self._conn = proc, conn
        self._closer = weakref.finalize(self, _stop, proc, conn)
        threading.Thread(target=_watch, args=(weakref.ref(self), proc), daemon=True,
                         name="smysl-engine-watch").start()
        self.hidden_size: int = info["hidden_size"]
        self.vocab_rows: int = info["vocab_rows"]
        self.max_positions: int = info["max_positions"]
        self.device = torch.device(info["device"])
        self.dtype: torch.dtype = getattr(torch, info["dtype"])
        self.threads: int | None = info["threads"]
        self.quantization: str | None = info["quantization"]
        self.parameters: int = info["parameters"]
        self.cuda_graphs: list[int] = info["cuda_graphs"]
        self.kernel: str = info["kernel"]
        self.chunk: int = info["chunk"]
        #: Bulk calls through the child go one batch at a time (lanes run in-process only).
        self.lanes = 1
        self.tuned_at: str | None = info["tuned_at"]
        self.pid: int | None = self._proc.pid
        self._stale = self._down = False

    def _on_exit(self, proc: Any) -> None:
        """The watcher saw ``proc`` exit: restart it unless that was on purpose."""
        with self._lock:
            if self._closed or proc is not self._proc or self._stale:
                return  # closed, replaced, or killed after an interrupted call
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
                    _stop(child[0], child[1])
                    return
                self._install(*child)
            log.warning("the engine process is back (pid %s) after %.1f s", self.pid,
                        time.monotonic() - now)
            return

    def _kill(self) -> None:
        """Stop the child now (it may be mid-batch); its reply must never reach a later call."""
        self._closer.detach()
        self._proc.kill()
        self._proc.join(5)
        self._conn.close()
        self._stale = True

    @property
    def alive(self) -> bool:
        return (not (self._closed or self._dead or self._down)
                and (self._stale or self._proc.is_alive()))

    def forward_many(self, batches: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
        """:meth:`forward` of each batch in turn (the child pipelines nothing)."""
        for batch in batches:
            yield self.forward(batch)

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        """Same as :meth:`Engine.forward`: ``[len(batch), hidden]`` float32 pooled rows."""
        with self._lock:
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
            try:
                self._conn.send((batch, heads))
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                self._down = True  # the watcher restarts it
                self._proc.join(1)
                raise EngineProcessError(f"the engine process exited (exit code "
                                         f"{self._proc.exitcode}) during this batch; it is "
                                         "restarting") from None
            except BaseException as e:  # interrupted, or a reply that does not unpickle
                self._kill()
                if isinstance(e, Exception):
                    raise EngineProcessError(f"unreadable reply from the engine process: "
                                             f"{e!r}") from e
                raise
        if kind == "error":
            raise payload
        return np.asarray(payload)

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        with self._lock:
            self._closed = True
            self._closer()
