"""Shared files: whole writes under a temporary name of their own, changes under a lock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

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
