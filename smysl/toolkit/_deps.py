"""The toolkit's optional dependencies (the ``toolkit`` extra): install hint and lazy imports."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'smysl[toolkit]'"


def require_sklearn() -> ModuleType:
    """Import scikit-learn, or raise ImportError naming the extra that provides it."""
    try:
        import sklearn
    except ImportError as e:
        raise ImportError(f"supervised classification needs scikit-learn: {INSTALL_HINT}") from e
    return sklearn
