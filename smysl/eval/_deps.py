"""Lazy imports of the optional ``eval`` extra, with an install hint instead of a bare error."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module.split(".")[0]
        raise ImportError(f"smysl eval needs {name}: pip install 'smysl[eval]'") from e


def require_all(plots: bool) -> None:
    """Everything a run needs, before any model loads (a missing scikit-learn was found after
    the model had loaded): scipy and scikit-learn, and matplotlib where ``plots``."""
    require("scipy.stats", "scipy")
    require("sklearn.metrics", "scikit-learn")
    if plots:
        require("matplotlib")
