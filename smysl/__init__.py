"""smysl: Qwen3-Embedding, exact and fast.

>>> from smysl import Embedder
>>> emb = Embedder.load("Qwen/Qwen3-Embedding-0.6B")        # doctest: +SKIP
>>> q = emb.embed_queries(["Что такое смысл?"])               # doctest: +SKIP
>>> d = emb.embed_documents(["Смысл — это содержание."])     # doctest: +SKIP
"""

from smysl.base import BaseEmbedder
from smysl.embedder import Embedder
from smysl.prompts import DEFAULT_TASK, QUERY_TEMPLATE, TASK_PRESETS

__all__ = ["DEFAULT_TASK", "QUERY_TEMPLATE", "TASK_PRESETS", "BaseEmbedder", "Embedder", "load"]
__version__ = "0.1.0"


def load(model: str, **options: object) -> BaseEmbedder:
    """Shorthand for :meth:`Embedder.load` (any model string: local, Hub, or ``scheme:...``)."""
    return Embedder.load(model, **options)  # type: ignore[arg-type]
