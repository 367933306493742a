"""The toolkit's optional dependencies (the ``toolkit`` extra): install hint and lazy imports."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'smysl[toolkit]'"


def require_sklearn(purpose: str) -> ModuleType:
    """Import scikit-learn, or raise ImportError saying that ``purpose`` ("clustering")
    needs it and naming the extra that provides it."""
    try:
        import sklearn
    except ImportError as e:
        raise ImportError(f"{purpose} needs scikit-learn: {INSTALL_HINT}") from e
    return sklearn
