"""The embedding contract shared by every backend: the local engine, providers, generic models.

A backend implements one method, :meth:`BaseEmbedder._embed` (fully formatted texts in, one
float32 row per text out, in input order) and sets three attributes. Everything users call —
``embed``, ``embed_queries``, ``embed_documents`` with instructions, Matryoshka dimensions and
validation — is derived here once, so every backend has the same semantics.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from smysl.pooling import MIN_DIMENSIONS, check_dimensions, truncate_dimensions
from smysl.prompts import DEFAULT_TASK, format_query, resolve_task


class Progress(Protocol):
    """Anything with tqdm's ``update(n)``: backends report finished texts through it."""

    def update(self, n: int = 1) -> object: ...


class BaseEmbedder(abc.ABC):
    """Text in, unit float32 vectors out. Subclasses implement :meth:`_embed`."""

    #: Model name as users and clients refer to it.
    name: str = "unknown"
    #: Native output size (hidden size); ``dimensions`` may ask for any size in
    #: ``min_dimensions..dimensions``.
    dimensions: int = 0
    #: Smallest Matryoshka size; a model not trained for Matryoshka sets it to ``dimensions``.
    min_dimensions: int = MIN_DIMENSIONS
    #: Most tokens one input may have (EOS included), or None when the backend does not say.
    max_tokens: int | None = None
    #: Whether queries get the Qwen3 ``Instruct: ...\nQuery:`` template.
    instruction_aware: bool = True
    #: Task used by :meth:`embed_queries` when none is given.
    default_task: str = DEFAULT_TASK

    @property
    def healthy(self) -> bool:
        """Whether the backend can still compute (False when, say, its engine process died)."""
        return True

    @abc.abstractmethod
    def _embed(
        self, texts: list[str], *, truncate: bool, progress: Progress | None = None
    ) -> np.ndarray:
        """Embed already formatted texts: float32 ``[len(texts), self.dimensions]`` in input order.

        Rows need not be normalised. Over-long input raises ``ValueError`` unless ``truncate``.
        """

    # ----------------------------------------------------------------- derived API
    def embed(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed texts; returns float32 ``[n, dimensions]`` with unit rows, in input order.

        ``instruction`` (a task description, or a preset name from
        :data:`smysl.prompts.TASK_PRESETS`) turns every text into a query; without it texts are
        embedded as documents.
        """
        items = self._check_texts(texts)
        dims = check_dimensions(dimensions, self.dimensions, minimum=self.min_dimensions)
        if not items:
            return np.zeros((0, dims), dtype=np.float32)
        formatted = self.format_texts(items, instruction)
        with _progress_bar(progress, len(items)) as bar:
            raw = self._embed(formatted, truncate=bool(truncate), progress=bar)
        raw = np.asarray(raw, dtype=np.float32)
        if raw.shape != (len(items), self.dimensions):
            raise RuntimeError(
                f"backend returned shape {raw.shape}, expected {(len(items), self.dimensions)}"
            )
        return truncate_dimensions(raw, dims)  # re-normalises (all of it at the native size)

    def embed_queries(
        self,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed search queries with ``task`` (default: :attr:`default_task`)."""
        return self.embed(
            texts,
            instruction=task if task is not None else self.default_task,
            dimensions=dimensions,
            truncate=truncate,
            progress=progress,
        )

    def embed_documents(
        self,
        texts: str | Sequence[str],
        *,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed documents (no instruction)."""
        return self.embed(texts, dimensions=dimensions, truncate=truncate, progress=progress)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each text costs as a document, EOS included (backends with a tokenizer)."""
        raise NotImplementedError(f"{type(self).__name__} cannot count tokens")

    def format_texts(self, texts: list[str], instruction: str | None) -> list[str]:
        """Apply the query template when an instruction is given (instruction-aware models)."""
        if resolve_task(instruction) is None:
            return texts
        if not self.instruction_aware:
            raise ValueError(f"model {self.name!r} does not take instructions")
        return [format_query(t, instruction) for t in texts]

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Release resources (connections, device memory). Safe to call twice."""

    def __enter__(self) -> BaseEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_texts(texts: str | Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, bytes | bytearray) or not isinstance(texts, Sequence | np.ndarray):
            raise ValueError(f"texts must be a string or a sequence of strings, got {type(texts)}")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
        return items


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(progress: bool | Progress, total: int) -> Any:
    if progress is False or progress is None:
        return _NullBar()
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="text", desc="embedding", smoothing=0.1)
    bar = progress

    class _Wrap(_NullBar):
        def update(self, n: int = 1) -> None:
            bar.update(n)

    return _Wrap()


# --------------------------------------------------------------------------- model strings
#: ``scheme:rest`` model strings resolve through this table to ``module:function`` factories
#: with the signature ``factory(rest: str, **options) -> BaseEmbedder``. Modules load lazily.
SCHEMES: dict[str, str] = {
    "st": "smysl.backends.sentence_transformers:load",
    # Remote providers (docs/providers.md): scheme:MODEL or scheme:URL#MODEL.
    "openrouter": "smysl.providers:load_openrouter",
    "dashscope": "smysl.providers:load_dashscope",
    "deepinfra": "smysl.providers:load_deepinfra",
    "fireworks": "smysl.providers:load_fireworks",
    "siliconflow": "smysl.providers:load_siliconflow",
    "openai": "smysl.providers:load_openai",
    "ollama": "smysl.providers:load_ollama",
    "tei": "smysl.providers:load_tei",
    "smysl": "smysl.providers:load_smysl",
}


def register_scheme(scheme: str, target: str | Callable[..., BaseEmbedder]) -> None:
    """Register a model-string scheme (``"name"`` -> ``"module:function"`` or a callable)."""
    if callable(target):
        _CALLABLES[scheme] = target
        SCHEMES[scheme] = f"<callable {scheme}>"
    else:
        SCHEMES[scheme] = target


_CALLABLES: dict[str, Callable[..., BaseEmbedder]] = {}


def split_scheme(model: str) -> tuple[str | None, str]:
    """``"openrouter:qwen/x"`` -> ``("openrouter", "qwen/x")``; plain paths and repo ids -> None."""
    head, sep, rest = model.partition(":")
    if sep and head in SCHEMES and not (len(head) == 1 and rest.startswith("\\")):
        return head, rest
    return None, model


def load_scheme(scheme: str, rest: str, **options: Any) -> BaseEmbedder:
    """Build the backend registered for ``scheme``."""
    if scheme in _CALLABLES:
        return _CALLABLES[scheme](rest, **options)
    module_name, _, func = SCHEMES[scheme].partition(":")
    factory = getattr(importlib.import_module(module_name), func)
    backend: BaseEmbedder = factory(rest, **options)
    return backend
