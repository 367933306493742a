"""Shared files: whole writes under a temporary name of their own, changes under a lock."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from smysl.files import file_lock, replace_file


def test_read_change_write_under_the_lock_loses_nothing(tmp_path: Path) -> None:
    """Four writers adding keys to one JSON file at once: each change is made under the lock,
    so every key stays, and no temporary file is left behind."""
    path = tmp_path / "shared.json"
    replace_file(path, "{}")

    def add(worker: int) -> None:
        for i in range(50):
            with file_lock(tmp_path / "shared.json.lock"):
                data = json.loads(path.read_text(encoding="utf-8"))
                data[f"{worker}-{i}"] = i
                replace_file(path, json.dumps(data))

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        f"{w}-{i}": i for w in range(4) for i in range(50)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json", "shared.json.lock"]


def test_a_replaced_file_keeps_the_umask_mode(tmp_path: Path) -> None:
    """mkstemp's 0600 made every index's metadata its builder's alone: an index built in CI
    or as root could not be searched or served by another user."""
    import os

    old = os.umask(0o022)
    try:
        replace_file(tmp_path / "meta.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "meta.json").stat().st_mode & 0o777 == 0o644


def test_replacing_writes_what_is_no_regular_file_in_place(tmp_path: Path) -> None:
    """`smysl embed -o /dev/null` renamed a regular file over the device (as root: for the
    whole machine); a symlink became a plain file and its target was never written; an old
    file's mode was lost."""
    import os
    import stat

    from smysl.files import replacing

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with replacing(fifo, binary=True) as f:
        f.write(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    target, link = tmp_path / "real.txt", tmp_path / "link.jsonl"
    target.write_text("old")
    link.symlink_to(target)
    with replacing(link) as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    private = tmp_path / "private.jsonl"
    private.write_text("old")
    private.chmod(0o600)
    with replacing(private) as f:
        f.write("new")
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() == "new"
    with replacing(Path(os.devnull)) as f:  # no temporary file in /dev (refused, or worse)
        f.write("dropped")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_replacing_writes_through_a_pipe_and_long_names(tmp_path: Path) -> None:
    """A review's: `-o /dev/stdout | cat` failed after the work (the realpath of a pipe's fd is
    no path, and the temporary file went there); a 250-character name failed because the
    temporary one beside it was 14 characters longer; a failure named the temporary file."""
    import subprocess
    import sys

    import pytest

    from smysl.files import replacing

    code = ("from pathlib import Path\nfrom smysl.files import replacing\n"
            "with replacing(Path('/dev/stdout')) as f:\n    f.write('through the pipe')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout == "through the pipe", p.stderr
    long = tmp_path / ("r" * 245 + ".jsonl")
    with replacing(long) as f:
        f.write("x")
    assert long.read_text() == "x" and [q.name for q in tmp_path.iterdir()] == [long.name]
    missing = tmp_path / "no-such-folder" / "out.jsonl"
    with pytest.raises(FileNotFoundError) as info, replacing(missing) as f:
        f.write("x")
    assert info.value.filename == str(missing)


def test_process_temp_dirs_of_dead_processes_are_removed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: `smysl serve --workers 2` killed with SIGKILL left /tmp/smysl-metrics-* and
    /tmp/smysl-engine-* behind, one pair a run (38 and 40 of them on the review's machine).
    The next start removes this user's folders of this machine whose process is gone, and only
    those; a name another user made to look like one (a pid past pid_t, "²") is skipped,
    not a crash (a diff review's)."""
    import subprocess
    import sys

    from smysl.files import machine_id, process_temp_dir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    here = machine_id()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead = tmp_path / f"smysl-metrics-{here}.{gone}-abc"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "x.db").write_bytes(b"0" * 10)
    kept = [tmp_path / f"smysl-metrics-{here}.{os.getppid()}-def",  # a live process's
            tmp_path / f"smysl-metrics-0badc0de.{gone}-ghi",  # another machine's (shared /tmp)
            tmp_path / f"smysl-metrics-{here}.99999999999-x",  # a pid past pid_t
            tmp_path / f"smysl-metrics-{here}.²-x",
            tmp_path / "smysl-metrics-kp3sp411"]  # the older naming: no pid to judge
    for k in kept:
        k.mkdir()
    (tmp_path / f"smysl-metrics-{here}.{gone}-link").symlink_to(kept[0])
    made = Path(process_temp_dir("smysl-metrics-"))
    assert not dead.exists() and all(k.is_dir() for k in kept)
    assert (tmp_path / f"smysl-metrics-{here}.{gone}-link").is_symlink()
    assert made.parent == tmp_path
    assert made.name.startswith(f"smysl-metrics-{here}.{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700


def test_output_to_stdout_is_utf8_where_the_platform_writes_another_code_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows writes a pipe or file in its ANSI code page (cp1252): ``-o -`` with Cyrillic
    failed part-way, after the first lines were out. Written UTF-8, as the files are; the
    stream is left as it was."""
    from smysl.files import output

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252", errors="replace")
    monkeypatch.setattr(sys, "stdout", stream)
    with output("-") as f:
        f.write('{"text": "привет"}\n')
    assert raw.getvalue().decode("utf-8") == '{"text": "привет"}\n'
    assert (stream.encoding, stream.errors) == ("cp1252", "replace")


def test_a_csv_to_stdout_keeps_its_line_ends_where_stdout_translates_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' stdout turns "\\n" into "\\r\\n": a CSV's own "\\r\\n" came out "\\r\\r\\n".
    Emulated with a stream that translates as Windows' does."""
    from smysl import files
    from smysl.toolkit.io import write_rows

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", newline="\r\n"))
    monkeypatch.setattr(files, "STDOUT_TRANSLATES", True)
    write_rows("-", [{"text": "a"}, {"text": "b"}])  # JSONL: "\n", as its files have
    assert raw.getvalue() == b'{"text": "a"}\n{"text": "b"}\n'
    raw.seek(0)
    raw.truncate()
    with files.output("-", newline="") as f:
        f.write("text\r\na\r\n")  # what csv writes
    assert raw.getvalue() == b"text\r\na\r\n"
