"""The contract's one instruction rule and its derived API, on a backend without a model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from smysl.base import BaseEmbedder
from smysl.prompts import DEFAULT_TASK, TASK_PRESETS, format_query


class Echo(BaseEmbedder):
    """Rows are a hash of the formatted text, so the test can see what was embedded."""

    name = "echo"
    dimensions = 64

    def __init__(self, aware: bool = True) -> None:
        self.instruction_aware = aware
        self.seen: list[str] = []

    def _embed(self, texts: list[str], *, truncate: bool, progress: Any = None) -> np.ndarray:
        self.seen += texts
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(64)
                         for t in texts]).astype(np.float32)


@pytest.mark.parametrize(("instruction", "role", "default", "expected"), [
    (None, None, None, None),                       # plain embed: documents
    (None, "document", None, None),
    (None, "query", None, DEFAULT_TASK),            # queries get the model's default task
    (None, "query", "classification", TASK_PRESETS["classification"]),  # or the caller's
    (None, "query", "  ", None),                    # an empty default: none
    ("sts", None, None, TASK_PRESETS["sts"]),       # an instruction makes texts queries
    ("Find recipes", "query", "classification", "Find recipes"),  # explicit beats default
    ("", "query", None, None),                      # "" forces none
    ("   ", None, None, None),
])
def test_choose_instruction(instruction: str | None, role: Any, default: str | None,
                            expected: str | None) -> None:
    assert Echo().choose_instruction(instruction, role=role, default=default) == expected


def test_models_without_instructions() -> None:
    plain = Echo(aware=False)
    assert plain.choose_instruction(None, role="query") is None
    assert plain.choose_instruction(None, role="query", default="sts") is None
    with pytest.raises(ValueError, match="does not take instructions"):
        plain.choose_instruction("sts")
    plain.embed_queries(["q"])  # embedded as it is, not refused
    assert plain.seen == ["q"]


def test_contradictions_are_refused() -> None:
    with pytest.raises(ValueError, match="instruction makes the inputs queries"):
        Echo().choose_instruction("sts", role="document")
    with pytest.raises(ValueError, match="role must be"):
        Echo().choose_instruction(None, role="passage")  # type: ignore[arg-type]


def test_embed_paths_apply_the_rule() -> None:
    e = Echo()
    e.embed_queries(["q"])
    e.embed_queries(["q"], "qa")
    e.embed_documents(["d"])
    e.embed(["x"], instruction="sts")
    assert e.seen == [format_query("q", DEFAULT_TASK), format_query("q", TASK_PRESETS["qa"]),
                      "d", format_query("x", TASK_PRESETS["sts"])]


def test_a_lone_surrogate_is_named_before_any_backend_sees_it() -> None:
    """A Python string may hold a lone surrogate (``surrogateescape``, JSON's ``\\ud800``); no
    tokenizer or API takes it (the local one raised a TypeError about its own input types).
    Every path says which text, and embeds nothing."""
    e = Echo()
    for call in (e.embed, e.embed_queries, e.embed_documents):
        with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode: a lone surrogate "
                                             r"\('\\udc80'\) at character 3"):
            call(["fine", "bad\udc80 text"])
    assert e.seen == []
    assert e.embed(["ok 😀 ёж"]).shape == (1, 64)  # astral and Cyrillic are text


def test_embed_formatted_checks_the_backend_shape() -> None:
    class Short(Echo):
        def _embed(self, texts: list[str], *, truncate: bool, progress: Any = None) -> np.ndarray:
            return np.zeros((len(texts), 3), dtype=np.float32)

    with pytest.raises(RuntimeError, match="backend returned shape"):
        Short().embed(["a"])


def test_empty_input_needs_no_width_that_costs() -> None:
    """``embed([])`` answers ``[0, d]`` without asking :attr:`dimensions` where that costs a
    request (a remote server of unknown width): the size asked for, else 0 wide."""
    class Remote(Echo):
        @property  # type: ignore[misc]
        def dimensions(self) -> int:
            raise AssertionError("a billed request for the width")

        def known_dimensions(self) -> int | None:
            return None

    r = Remote()
    assert r.embed([]).shape == (0, 0) and r.embed_queries([], dimensions=128).shape == (0, 128)
    assert r.embed([]).dtype == np.float32
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            r.embed([], dimensions=bad)  # type: ignore[arg-type]
    # a review's: below the smallest size, known without the width, it was taken as given
    with pytest.raises(ValueError, match="dimensions must be at least 32 for this model, got 16"):
        r.embed([], dimensions=16)
    e = Echo()  # a known width: checked as any call's
    assert e.embed([]).shape == (0, 64) and e.embed([], dimensions=32).shape == (0, 32)
    with pytest.raises(ValueError, match=r"must be in 32\.\.64"):
        e.embed([], dimensions=65)
    assert e.seen == []


def test_default_info() -> None:
    info = Echo().info()
    assert (info.name, info.backend, info.dimensions, info.dtype) == ("echo", "custom", 64, None)
    assert info.quantization_level == ""


def test_default_fingerprint_is_the_description_not_the_instance() -> None:
    """issue 11 item 3: a remote model's identity is what info() says (backend, name,
    dimensions, dtype, quantization); it is stable across instances and changes with any of
    them."""
    a, b = Echo(), Echo(aware=False)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 32

    class Other(Echo):
        dimensions = 32

    renamed = Echo()
    renamed.name = "echo-2"
    assert len({a.fingerprint(), Other().fingerprint(), renamed.fingerprint()}) == 3
    assert a.info().fingerprint is None  # the default is not filled into ModelInfo


def test_fingerprint_files_reads_windows_of_large_files(tmp_path, monkeypatch) -> None:
    """issue 11 item 3: a weights file is identified by its size and three windows, so a
    change inside a window or of the size changes the fingerprint (and reading stays cheap)."""
    import smysl.base as base

    monkeypatch.setattr(base, "FINGERPRINT_WINDOW", 16)
    f = tmp_path / "w.bin"
    data = bytearray(range(256)) * 4  # 1 KiB: over 3 windows, read in windows
    f.write_bytes(bytes(data))
    first = base.fingerprint_files([f], {"dtype": "float32"})
    assert first == base.fingerprint_files([f], {"dtype": "float32"})
    assert first != base.fingerprint_files([f], {"dtype": "bfloat16"})
    for at in (0, (len(data) - 16) // 2, len(data) - 1):  # start, middle, end windows
        changed = bytearray(data)
        changed[at] ^= 1
        f.write_bytes(bytes(changed))
        assert base.fingerprint_files([f], {"dtype": "float32"}) != first
    f.write_bytes(bytes(data) + b"x")
    assert base.fingerprint_files([f], {"dtype": "float32"}) != first


@pytest.mark.parametrize("bad", ["no", "false", 0, 1, None])
def test_truncate_is_a_flag_not_anything_truthy(bad: object) -> None:
    """``truncate="no"`` cut over-long texts (``bool("no")`` is True); a flag is True or False
    (numpy's too), on every path, before anything is embedded."""
    e = Echo()
    for call in (e.embed, e.embed_queries, e.embed_documents):
        with pytest.raises(ValueError, match=f"truncate must be True or False, got {bad!r}"):
            call(["a"], truncate=bad)
    assert e.seen == [] and e.embed(["a"], truncate=np.bool_(True)).shape == (1, 64)


def test_progress_and_a_0d_array_are_refused_before_the_work() -> None:
    """``progress="yes"`` failed with an AttributeError after the batch was computed; a 0-d
    numpy array of one string with numpy's "iteration over a 0-d array"."""
    e = Echo()
    with pytest.raises(ValueError, match="progress must be True, False or an object"):
        e.embed(["a"], progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got a 0-d array"):
        e.embed(np.array("hello"))  # type: ignore[arg-type]
    assert e.seen == []

    class Bar:
        n = 0

        def update(self, n: int = 1) -> None:
            self.n += n

    e.embed(np.array(["a", "b"]), progress=Bar())  # anything with update(n) is a bar
    assert e.seen == ["a", "b"]


def test_a_lone_surrogate_in_the_instruction_is_named() -> None:
    """Texts were checked, the instruction not: the tokenizer's TypeError, and an adapter made
    with such a task failed only at its first query."""
    e = Echo()
    with pytest.raises(ValueError, match="the instruction is not valid Unicode"):
        e.embed_queries(["a"], "Find \ud800 docs")
    with pytest.raises(ValueError, match="the instruction is not valid Unicode"):
        e.choose_instruction("Find \ud800 docs", role="query")
    assert e.seen == []
