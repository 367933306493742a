"""LanceDB store details the shared store tests (test_store.py) do not reach."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("lancedb")


def test_stderr_stays_the_process_s_beside_other_threads(capfd) -> None:
    """fd 2 belongs to the whole process: a LanceDB call beside other threads leaves it alone.
    Two calls whose holds overlapped (A in, B in, A out, B out) used to leave stderr pointing
    at A's deleted temporary file for good, and what other threads wrote meanwhile was lost."""
    from smysl.toolkit.lancedb import _held_stderr

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with _held_stderr():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with _held_stderr():
            b_in.set()
            os.write(2, b"during\n")  # another thread's line, written while both calls run
            a_out.wait(10)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "during\nafter\n"


def test_a_process_of_one_thread_holds_native_lines_back() -> None:
    """The CLI's case: a failed call drops what LanceDB wrote during it, a successful one
    replays it after the call."""
    code = """if True:
        import os, sys, threading
        from smysl.toolkit.lancedb import _held_stderr
        assert threading.active_count() == 1
        with _held_stderr():
            os.write(2, b"kept\\n")
            sys.stdout.write("inside\\n"); sys.stdout.flush()
        try:
            with _held_stderr():
                os.write(2, b"dropped\\n")
                raise ValueError
        except ValueError:
            pass
        os.write(2, b"end\\n")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert (out.stdout, out.stderr) == ("inside\n", "kept\nend\n")

