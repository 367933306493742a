"""Forward passes on an engine process, from any process: the pipe protocol, and
:class:`EngineClient`, the :class:`~smysl.qwen3.contract.EngineLike` contract for a process that
did not start the engine (an HTTP worker of ``smysl serve --workers``).

No torch here: a request is token ids, a reply float32 rows as numpy arrays, so the worker
processes of a server (and the process that started the engine, :mod:`smysl.qwen3.worker`)
run without it (on the tiny test model, 161 instead of 343 MiB a worker and ~1.5 s less CPU
to start: docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, wait
from typing import Any, TypeVar

import numpy as np

from smysl.base import Pending
from smysl.qwen3.contract import run_ahead

_T = TypeVar("_T")

#: Passes a caller may send to an engine process on CUDA ahead of the one whose rows it waits
#: for (:attr:`~smysl.qwen3.contract.EngineLike.queues`). The child holds what arrives while
#: its pass runs and merges it into the next one (:class:`~smysl.qwen3.worker._Hub`), so a
#: request sent at once waits for the rest of one pass; held back in the caller behind its
#: own pass in flight, it waited for one more (docs/benchmarks.md). The child puts two passes
#: on the device at most; the rest wait there as token ids.
MERGED_AHEAD = 8
#: Seconds a caller waits on the connection before it looks again whether it was closed.
WAIT_S = 0.5


class EngineProcessError(RuntimeError):
    """The engine process could not start, or exited while in use."""


class PassCancelled(RuntimeError):
    """The engine process dropped a pass, or stopped it early, after its caller cancelled it
    (:meth:`Piped.submit`): nobody was going to read its rows."""


class Replies:
    """One connection to the child, with several requests in flight: each reply carries its
    request's number (the n-th request sent on this connection), and mostly comes in order;
    a short request the child ran between the layers of a long one's pass comes before it.
    Whichever caller reads first keeps the replies that are not its own for theirs. The
    owner's lock guards it; a connection that failed is replaced, never reused."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sent = self.read = 0
        #: Replies read for requests whose callers have not asked yet, by request number.
        self.early: dict[int, tuple[str, Any]] = {}
        #: Requests sent whose replies no caller has taken yet.
        self.unanswered: set[int] = set()

    @property
    def waiting(self) -> bool:
        """Replies still to come."""
        return self.read < self.sent

    def send(self, request: Any) -> int:
        """Send ``request`` -> its number, to ask :meth:`reply` for."""
        self.conn.send(request)
        self.sent += 1
        self.unanswered.add(self.sent - 1)
        return self.sent - 1

    def check(self, number: int) -> None:
        """Raise if request ``number``'s reply was handed out already (before any I/O: a
        caller's mistake must not cost the connection)."""
        if number not in self.unanswered:
            raise RuntimeError(f"the rows of pass {number} were read already")

    def reply(self, number: int) -> tuple[str, Any]:
        """Request ``number``'s reply (reads, and keeps, the ones that come before it)."""
        while number not in self.early:
            self._read_one()
        self.unanswered.discard(number)
        return self.early.pop(number)

    def arrived(self, number: int) -> tuple[str, Any] | None:
        """Request ``number``'s reply if it has come, else None: reads (and keeps) the replies
        that have begun to arrive, never waits for one that has not."""
        while number not in self.early and self.conn.poll():
            self._read_one()
        if number not in self.early:
            return None
        self.unanswered.discard(number)
        return self.early.pop(number)

    def ask(self, request: Any) -> tuple[str, Any]:
        """Send a request the child answers at once, out of turn (``share``), and read its
        reply (keeping the others that come first)."""
        return self.reply(self.send(request))

    def _read_one(self) -> None:
        number, reply = self.conn.recv()
        self.early[number] = reply
        self.read += 1


def reraise(e: BaseException) -> Any:
    """Raise ``e`` (a call that fails as a read or pass would: ``partial(reraise, e)``)."""
    try:
        raise e
    finally:  # this frame is in e's traceback: holding e there made a reference cycle
        del e


def _rows(kind: str, payload: Any) -> np.ndarray:
    """A pass's reply -> its rows, or the error the pass raised."""
    if kind == "error":
        raise payload
    return np.asarray(payload)


def send_reply(conn: Connection, reply: tuple[str, Any], number: int | None = None) -> None:
    """Send a reply (the engine process's side), as ``(number, reply)`` when it answers
    request ``number`` (:class:`Replies`); one that cannot reach the other end is dropped:
    that end is gone."""
    kind, payload = reply
    if kind == "error" and type(payload).__module__.partition(".")[0] == "torch":
        # unpickled, torch's exceptions (a CUDA out-of-memory) would import torch in processes
        # that run without it; RuntimeError is what they derive from
        reply = ("error", RuntimeError(f"{type(payload).__name__}: {payload}"))
    try:
        conn.send(reply if number is None else (number, reply))
    except (EOFError, OSError):
        pass
    except Exception as e:  # an exception that does not pickle: send its text
        failed = ("error", EngineProcessError(f"{type(reply[1]).__name__}: {reply[1]} ({e})"))
        with contextlib.suppress(Exception):
            conn.send(failed if number is None else (number, failed))


class _Described:
    """The engine's shape attributes, from the info dict the child reports when ready."""

    def _describe(self, info: dict[str, Any]) -> None:
        self.hidden_size: int = info["hidden_size"]
        self.vocab_rows: int = info["vocab_rows"]
        self.max_positions: int = info["max_positions"]
        self.device: str = info["device"]
        self.dtype: str = info["dtype"]
        self.cpu: str | None = info["cpu"]
        self.threads: int | None = info["threads"]
        self.quantization: str | None = info["quantization"]
        self.parameters: int = info["parameters"]
        self.cuda_graphs: list[int] = info["cuda_graphs"]
        self.kernel: str = info["kernel"]
        self.numerics: str = info["numerics"]
        self.chunk: int = info["chunk"]
        self.tuned_at: str | None = info["tuned_at"]
        self.pid: int | None = info["pid"]
        #: Bulk calls through the child use no lanes (they run in-process only).
        self.lanes = 1
        #: Passes to send ahead (:attr:`EngineLike.queues`): on CUDA the child merges them.
        self.queues: int = MERGED_AHEAD if info["queues"] else 0


class Piped(_Described):
    """Forward passes over a connection to the engine process
    (:class:`~smysl.qwen3.worker.EngineProcess` through its pipe, :class:`EngineClient` through
    its socket), several in flight at a time."""

    _lock: threading.Lock
    #: The current connection (None: none yet, or dropped).
    _replies: Replies | None
    #: On ``_lock``: a caller waiting on the connection read something (:meth:`_reply`).
    _arrived: threading.Condition
    #: A caller waits on the connection (:meth:`_reply`; under the lock).
    _reading: bool

    def _init_reading(self) -> None:
        """The lock's condition for callers waiting for rows (after ``_lock`` is made)."""
        self._arrived = threading.Condition(self._lock)
        self._reading = False

    def _forked(self) -> None:
        """In a forked child (:func:`watch_forks`): fresh locks (one held by another thread
        at the fork would never be released here)."""
        self._lock = threading.Lock()
        self._init_reading()

    def _channel(self) -> Replies:
        """The connection to send on (under the lock), made or restored when it must be."""
        raise NotImplementedError

    def _io(self, step: Callable[[], _T]) -> _T:
        """One send or receive on the connection (under the lock), its failures handled."""
        raise NotImplementedError

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        """Same as :meth:`smysl.qwen3.engine.Engine.forward`: ``[len(batch), hidden]``
        float32 pooled rows."""
        return self.submit(batch, heads)()

    def forward_many(self, batches: Iterable[list[list[int]]]) -> Iterator[np.ndarray]:
        """:meth:`forward` of each batch in order; on CUDA up to :data:`MERGED_AHEAD` batches
        are sent before the oldest one's rows come back, and the child runs them in turn (a
        large one queued behind the running pass)."""
        return run_ahead(self.submit, batches, self.queues)

    def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """Send one forward pass to the child; the returned call waits for its rows, and its
        ``cancel()`` asks the child to drop the pass (:meth:`_cancel`)."""
        with self._lock:
            replies = self._channel()
            number = self._io(lambda: replies.send((batch, heads)))
        return Pending(functools.partial(self._reply, replies, number),
                       functools.partial(self._cancel, replies, number))

    def start(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """:meth:`submit`: it returns once the pass is sent, and can be cancelled."""
        return self.submit(batch, heads)

    def _cancel(self, replies: Replies, number: int) -> None:
        """Tell the child that nobody will read pass ``number``'s rows: one not started yet is
        dropped, a CPU pass running stops at its next layer when no request in it is still
        wanted; either is answered with :class:`PassCancelled`. Not counted as a request (it
        gets no reply of its own); a connection lost or replaced meanwhile has nothing to
        cancel."""
        with self._lock:
            if replies is not self._replies or replies.conn.closed:
                return
            if number not in replies.unanswered or number in replies.early:
                return  # answered already
            with contextlib.suppress(EngineProcessError):  # the pass is lost anyway
                self._io(lambda: replies.conn.send(("cancel", number)))

    def _reply(self, replies: Replies, number: int) -> np.ndarray:
        """Wait for pass ``number``'s rows. The lock is held to read, not to wait: a caller
        with passes in flight (a server's batcher on an engine that merges them) sends more
        while another thread waits for rows (waiting under the lock, a batch sent while a
        pass ran went out only after its rows had come back). One caller at a time waits on
        the connection; the others wait until it has read something (their rows, maybe)."""
        waited = False
        with self._arrived:
            while True:
                # rows read already (by a call before a failure) are still this pass's
                lost = replies is not self._replies or replies.conn.closed
                if number not in replies.early and lost:
                    if waited and replies is self._replies:
                        # closed while this call waited (the engine process died and its
                        # watcher closed the pipe): the engine's account, as a failed read's
                        self._io(functools.partial(reraise, EOFError()))
                    raise EngineProcessError("the engine process was closed, or is restarting, "
                                             "or the connection to it was lost, before this "
                                             "batch's rows came back")
                replies.check(number)
                read = replies.read
                reply = self._io(lambda: replies.arrived(number))
                if replies.read != read:
                    self._arrived.notify_all()
                if reply is not None:
                    return _rows(*reply)
                waited = True
                try:
                    self._await(replies)
                except BaseException as e:  # interrupted (Ctrl-C) while the engine computes:
                    self._io(functools.partial(reraise, e))  # as an interrupted read

    def _await(self, replies: Replies) -> None:
        """Wait (under the lock, :data:`WAIT_S` at most) until something may have arrived:
        on the connection when no other caller waits there (the lock released meanwhile),
        else for that caller to say it has read."""
        if self._reading:
            self._arrived.wait(WAIT_S)
            return
        self._reading = True
        self._arrived.release()
        try:
            # readable, or closed by the other end. Bounded: the connection closed here
            # meanwhile (an engine process's watcher closes a dead child's pipe) may have had
            # its descriptor reused before the wait began, by a restarted child's pipe that
            # never speaks to this call
            wait([replies.conn], WAIT_S)
        except (OSError, ValueError):
            pass  # closed here meanwhile: the caller's checks say how
        finally:
            self._reading = False
            self._arrived.acquire()
            self._arrived.notify_all()


#: The handles of this process (:func:`watch_forks`), by id (an EngineClient, a dataclass,
#: is not hashable).
_HANDLES: weakref.WeakValueDictionary[int, Piped] = weakref.WeakValueDictionary()


def watch_forks(handle: Piped) -> None:
    """Call ``handle._forked()`` in a process forked from this one."""
    _HANDLES[id(handle)] = handle


def _after_fork_in_child() -> None:
    for handle in list(_HANDLES.values()):
        handle._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class EngineClient(Piped):
    """The :class:`~smysl.qwen3.contract.EngineLike` contract for a process that did not start
    the engine: forward passes on the engine process of
    :meth:`smysl.qwen3.worker.EngineProcess.share`, over its Unix socket. Connects on first
    use, and again after the engine process restarted; while it cannot, ``alive`` is False and
    calls raise :class:`EngineProcessError`."""

    address: str
    authkey: bytes
    #: The engine's shape (``hidden_size``, ``device``...), as of the last connection.
    info: dict[str, Any]

    def __post_init__(self) -> None:
        self._replies: Replies | None = None
        self._lock = threading.Lock()
        self._init_reading()
        self._describe(self.info)
        watch_forks(self)

    def _forked(self) -> None:
        # the connection is the parent's: sharing it mixed the two processes' replies; this
        # process connects again on its next call (the engine serves any number of clients)
        super()._forked()
        self._replies = None

    def __getstate__(self) -> dict[str, Any]:  # the address and key travel, not the socket
        return {"address": self.address, "authkey": self.authkey, "info": self.info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def _channel(self) -> Replies:
        """The connection (under the lock), made or remade when needed."""
        # with no reply to come, a readable connection is one the engine process closed
        if self._replies is not None and not self._replies.waiting and self._replies.conn.poll():
            self._drop()
        if self._replies is None:
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
                _, info = conn.recv()
            except FileNotFoundError:  # its owner removes the socket when it closes it
                raise EngineProcessError(f"the engine process at {self.address} was closed "
                                         "by its owner (or the owner's process ended), or is "
                                         "restarting") from None
            except (OSError, EOFError) as e:
                raise EngineProcessError(f"the engine process does not answer at "
                                         f"{self.address} ({e}); it may be restarting") from None
            self._replies, self.info = Replies(conn), info
            self._describe(info)
        return self._replies

    def _drop(self) -> None:
        if self._replies is not None:
            self._replies.conn.close()
        self._replies = None

    def connect(self) -> EngineClient:
        """Connect now (the shape attributes are read from the engine): self."""
        with self._lock:
            self._channel()
        return self

    @property
    def alive(self) -> bool:
        # never waits for a call in flight (a server's event loop polls this): that call
        # reports its own failure
        if not self._lock.acquire(blocking=False):
            return self._replies is not None
        try:
            self._channel()
        except EngineProcessError:
            return False
        finally:
            self._lock.release()
        return True

    def _io(self, step: Callable[[], _T]) -> _T:
        """One send or receive (under the lock); on failure the connection is dropped (an
        interrupted one too: its reply must not reach a later call)."""
        try:
            return step()
        except (EOFError, OSError):
            del step  # may hold the exception (reraise): no cycle through its traceback
            self._drop()
            raise EngineProcessError("the engine process exited during this batch; it "
                                     "is restarting") from None
        except BaseException:
            del step
            self._drop()
            raise

    def share(self) -> EngineClient:
        return EngineClient(self.address, self.authkey, self.info)

    def close(self) -> None:
        """Disconnect (the engine process keeps running for its owner)."""
        with self._lock:
            self._drop()
