"""The one check every provider answer's rows pass before they become vectors.

A row must be a list of JSON numbers (booleans, strings and nulls are not numbers), all rows of
one width (the expected one where known), every value finite in float32, and the row must be
normalisable in float32 exactly as :func:`smysl.pooling.finish` will do it: a non-zero, finite
norm at full width and at the smallest Matryoshka cut. Rows that fail are an error naming the
provider, the row and the input, never a silent zero vector (issue 11 item 4).

Rows all wider than expected come from a server that ignored the request's ``dimensions`` (an
OpenRouter upstream, vLLM): of a Matryoshka model their prefix is the narrower embedding, so they
are cut to the expected width, as ``embed(..., dimensions=...)`` cuts, and
:func:`smysl.pooling.finish` normalises the cut exactly as a server-side ``dimensions`` would.
Narrower rows cannot be made whole and stay an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smysl.pooling import MIN_DIMENSIONS, check_dimensions
from smysl.providers.errors import InvalidRowError, ProviderError

_NUMBERS = (float, int)


def check_rows(rows: Sequence[Any], n: int, *, width: int | None, name: str,
               min_width: int = MIN_DIMENSIONS, asked: bool = False,
               positions: Sequence[int] | None = None) -> np.ndarray:
    """``rows`` as float32 ``[n, width]``, after checking them.

    A wrong row count raises ``ValueError`` and a row that is no embedding
    :class:`InvalidRowError` (a ``ValueError`` too: both are malformed bodies, retried),
    naming row ``i`` of the response and input ``positions[i]``. Rows all wider than ``width``
    are cut to it where the request ``asked`` the server for ``width`` (the caller's
    ``dimensions``, sent: not a width guessed from the model's name, where wider rows mean
    another model, nor one a server without the parameter never saw) and is a Matryoshka
    size of theirs (at least ``min_width``, the model's smallest); rows that all have another
    width raise :class:`ProviderError` with a ``dimensions=`` hint.
    """
    if not isinstance(rows, Sequence | np.ndarray) or isinstance(rows, str | bytes):
        raise TypeError(f"embeddings are a {type(rows).__name__}, not a list")
    if len(rows) != n:
        raise ValueError(f"{len(rows)} embeddings for {n} inputs")

    def bad(i: int, what: str) -> InvalidRowError:
        at = f" (input #{positions[i]})" if positions is not None else ""
        return InvalidRowError(f"{name}: row {i} of the response{at} {what}")

    widths = set()
    for i, row in enumerate(rows):
        if isinstance(row, np.ndarray):  # decoded base64
            if row.ndim != 1 or row.dtype.kind != "f":
                raise bad(i, f"is an array of {row.dtype} and shape {row.shape}")
        elif isinstance(row, list | tuple):
            if not set(map(type, row)) <= set(_NUMBERS):  # exact types: bool is not a number
                j, v = next((j, v) for j, v in enumerate(row) if type(v) not in _NUMBERS)
                raise bad(i, f"has a non-number at position {j}: {v!r}")
        else:
            raise bad(i, f"is a {type(row).__name__}, not a list of numbers")
        widths.add(len(row))
    if n == 0:
        return np.zeros((0, width or 0), np.float32)
    if len(widths) == 1 and width is not None and width not in widths:
        got = widths.pop()
        if not (asked and _cuttable(got, width, min_width)):
            # Not transient: the model is not the width this object was built for.
            raise ProviderError(f"{name} returned {got}-wide rows but {width} were expected; "
                                f"pass dimensions={got} if that is the model's width",
                                reason=f"{got}-wide rows where {width} were expected")
        rows = [row[:width] for row in rows]
    want = width if width is not None else max(widths)
    for i, row in enumerate(rows):
        if len(row) != want:
            raise bad(i, f"has {len(row)} values, expected {want}")
    if want == 0:
        raise ValueError("embeddings of width 0")
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        try:
            arr = np.asarray(rows, dtype=np.float32)
        except OverflowError:  # a JSON integer beyond float range
            for i, row in enumerate(rows):
                try:
                    np.asarray(row, dtype=np.float64)
                except OverflowError:
                    raise bad(i, "has an integer beyond float range") from None
            raise
        finite = np.isfinite(arr)
        norms = np.linalg.norm(arr, axis=1)
        cut = np.linalg.norm(arr[:, :min(MIN_DIMENSIONS, want)], axis=1)
        # Squares of tiny values lose precision (float32 denormals): the unit row must be unit.
        unit = np.linalg.norm(arr / norms[:, None], axis=1)
    broken = np.flatnonzero(~finite.all(axis=1) | ~np.isfinite(norms) | ~(norms > 0) |
                            ~(cut > 0) | ~(np.abs(unit - 1) < 1e-3))
    if len(broken):
        raise bad(int(broken[0]), _what_is_wrong(rows[int(broken[0])], arr[broken[0]],
                                                 min(MIN_DIMENSIONS, want)))
    return arr


def _cuttable(got: int, width: int, min_width: int) -> bool:
    """Whether ``got``-wide rows hold ``width``-wide ones as their prefix: ``width`` is a size
    ``embed(..., dimensions=width)`` would accept of a ``got``-wide model."""
    try:
        check_dimensions(width, got, minimum=min_width)
    except ValueError:
        return False
    return True


def _what_is_wrong(raw: Any, row: np.ndarray, smallest: int) -> str:
    """Why float32 ``row`` (parsed from ``raw``) cannot become a unit vector."""
    finite = np.isfinite(row)
    peak = float(np.max(np.abs(row[finite]), initial=0.0))
    with np.errstate(over="ignore", under="ignore"):
        norm, cut = np.linalg.norm(row), np.linalg.norm(row[:smallest])
    if not finite.all():
        j = int(np.flatnonzero(~finite)[0])
        return (f"has a non-finite value at position {j}: {raw[j]!r} (NaN, infinity, or "
                "beyond float32 range)")
    if peak == 0.0:
        return "is all zeros"
    if not np.isfinite(norm):
        return f"cannot be normalised: its norm overflows float32 (largest |value| {peak:.3g})"
    if not norm > 0:
        return (f"cannot be normalised: its norm underflows to 0 in float32 (largest |value| "
                f"{peak:.3g})")
    if not cut > 0:
        return (f"has its first {smallest} values all zero (or denormal), so a Matryoshka cut "
                "would be a zero vector")
    return f"cannot be normalised accurately in float32 (largest |value| {peak:.3g}: denormal)"
