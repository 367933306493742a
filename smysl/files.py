"""Files several processes share: written whole under a temporary name of their own, and
changed under an exclusive lock (index metadata, the tuning file); and the rule for reading
CSV fields."""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) against other processes, for a
    read-change-write of a file next to it (another process's write would be lost)."""
    with open(path, "a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            f.seek(0)
            while True:
                try:  # LK_LOCK gives up after 10 s; a long-held lock is waited out
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError as e:
                    if e.errno not in (errno.EDEADLOCK, errno.EACCES):
                        raise
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file of this call's own, renamed into
    place: a reader (or a crash) sees the old file or the new one, never half of one, and two
    writers never write into one temporary file."""
    with replacing(path) as f:
        f.write(text)


@contextlib.contextmanager
def output(path: str, *, newline: str | None = None) -> Iterator[IO[Any]]:
    """Where a command's text output goes: stdout for ``-`` (left open; UTF-8 and ``newline``
    as the files are), else ``path`` replaced whole (:func:`replacing`)."""
    if path != "-":
        with replacing(Path(path), newline=newline) as f:
            yield f
        return
    out = sys.stdout
    change: dict[str, Any] = {}
    if isinstance(out, io.TextIOWrapper):
        # Windows writes a pipe or file in its ANSI code page (cp1252), as does a POSIX
        # locale of another charset: Cyrillic failed part-way through the output
        if codecs.lookup(out.encoding).name != "utf-8":
            change["encoding"] = "utf-8"
        # Windows' stdout turns "\n" into "\r\n": a CSV's own "\r\n" came out "\r\r\n"
        # (POSIX's translates nothing)
        if newline is not None and STDOUT_TRANSLATES:
            change["newline"] = newline
    if not change:
        yield out
        return
    assert isinstance(out, io.TextIOWrapper)
    was: dict[str, Any] = {"encoding": out.encoding, "errors": out.errors}
    if "newline" in change:
        was["newline"] = None  # Windows' own
    out.flush()
    out.reconfigure(**change)
    try:
        yield out
    finally:
        out.flush()
        out.reconfigure(**was)


#: Whether stdout turns "\n" into the platform's line end (Windows: "\r\n").
STDOUT_TRANSLATES = os.name == "nt"


def is_special(path: str | Path) -> bool:
    """Whether ``path`` names an existing file that is neither a regular file nor a folder
    (``/dev/null``, ``/dev/stdout``, a FIFO): written in place by :func:`replacing`, and
    named without a suffix."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def replacing(path: Path, *, binary: bool = False, newline: str | None = None
              ) -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content into (text with ``newline`` as ``open`` takes
    it, or ``binary``): a temporary file of
    its own beside it, renamed into place when the block ends, removed if it fails (Ctrl-C
    too): ``path`` is the old file or the whole new one, never a part. A symlink's target is
    the one replaced; a path that is no regular file (``/dev/null``, a FIFO, ``/dev/fd/N``) is
    written in place, as ``open`` would (renaming over it replaced the device itself)."""
    try:  # the path as given (stat follows links): /dev/stdout to a pipe is a FIFO here,
        # while its realpath (/proc/PID/fd/pipe:[N]) is no path at all
        mode: int | None = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb") if binary else open(path, "w", encoding="utf-8",
                                                  newline=newline) as out:
            yield out
        return
    path = Path(os.path.realpath(path))
    try:  # a name of its own, short enough beside any name the folder takes
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.",
                                   suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600: the old file's mode, else the umask's
            os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8",
                                                             newline=newline)) as f:
            yield f
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` naming the file asked for, not the temporary one beside it."""
    return type(e)(e.errno, e.strerror, str(path))


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it to
    read it back would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The longest CSV field read (the csv module's default, 131,072 characters, is shorter than
#: many documents); 2**31 - 1 fits the C long the module keeps it in everywhere.
CSV_FIELD_LIMIT = 2**31 - 1


def allow_long_csv_fields() -> None:
    """Raise the csv module's field limit to :data:`CSV_FIELD_LIMIT` (process-wide; only
    ever raised): a document in one cell is often longer than its default."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def process_temp_dir(prefix: str) -> str:
    """A new private folder in the system's temp dir named for this process
    (``{prefix}{machine}.{pid}-XXXX``, :func:`machine_id`), after removing this user's folders
    of ``prefix`` made on this machine by a process that is gone: a server killed with SIGKILL
    (an OOM kill, a container's stop) never ran its clean-up, and each run left its sockets and
    metric files behind. Another machine's or pid namespace's folders (a shared ``/tmp``) are
    not judged."""
    root, machine = Path(tempfile.gettempdir()), machine_id()
    named = re.compile(re.escape(prefix) + r"(?P<machine>[0-9a-f]{8})\.(?P<pid>[0-9]{1,10})-")
    with contextlib.suppress(OSError):
        for old in root.glob(f"{prefix}*") if os.name == "posix" else ():  # os.getuid
            m = named.match(old.name)
            if m is None or m["machine"] != machine or int(m["pid"]) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                st = old.lstat()  # a symlink is no folder of ours
                if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
                        and not process_alive(int(m["pid"]))):
                    shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{machine}.{os.getpid()}-")


def machine_id() -> str:
    """8 hex digits naming this machine and pid namespace (host name, boot id, the pid
    namespace): where a pid in a file name means a process this one can ask about."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):  # Linux only
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (True when that cannot be known)."""
    if os.name == "nt":  # os.kill(pid, 0) there would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: it runs, as another user; a pid past pid_t
        return True
    return True
