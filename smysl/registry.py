"""Model strings: the one place where a name becomes a backend.

A model string is ``scheme:rest`` (``openrouter:qwen/qwen3-embedding-8b``, ``st:all-minilm-l6-v2``,
``tei:http://host:8080``) or, without a known scheme, a local checkpoint for the native Qwen3
engine: a directory, a GGUF file, a Hub repo id, or an alias (``qwen3-embedding:0.6b``). Every
scheme is a :class:`Scheme` in :data:`SCHEMES`, the local engine included; factories are
imported on first use, so remote schemes never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smysl.options import ModelOptions

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder
    from smysl.rerank import BaseReranker

#: ``factory(rest, options, **backend_kwargs) -> BaseEmbedder``
Factory = Callable[..., "BaseEmbedder"]

#: Short names clients use (Ollama-style tags, lower case) -> Hugging Face repo ids.
ALIASES: dict[str, str] = {
    "qwen3-embedding:0.6b": "Qwen/Qwen3-Embedding-0.6B",
    "qwen3-embedding:4b": "Qwen/Qwen3-Embedding-4B",
    "qwen3-embedding:8b": "Qwen/Qwen3-Embedding-8B",
    "qwen3-embedding": "Qwen/Qwen3-Embedding-0.6B",  # FAMILY
}

#: The family's name without a size (``ALIASES`` loads it as the 0.6B).
FAMILY = "qwen3-embedding"

#: The scheme of model strings that name none.
LOCAL = "qwen3"

_ENGINE = frozenset({"device", "dtype", "quantize", "threads", "lanes", "max_tokens",
                     "max_batch_tokens", "max_batch_size", "revision", "process",
                     "cuda_graphs", "cuda_kernels"})
_REMOTE = frozenset({"max_tokens", "max_batch_tokens", "max_batch_size"})


@dataclass(frozen=True)
class Scheme:
    """One kind of backend behind the :class:`~smysl.base.BaseEmbedder` contract."""

    name: str
    #: ``"module:function"`` (imported on first use) or the factory itself.
    target: str | Factory
    #: :class:`~smysl.options.ModelOptions` fields the backend uses; others are rejected.
    options: frozenset[str]
    #: Whether the model runs elsewhere (an HTTP API): no local weights, device or dtype.
    remote: bool
    summary: str = ""

    def factory(self) -> Factory:
        """The loader of this scheme's model strings, its module imported on first use (an
        optional dependency is needed only by the scheme that uses it)."""
        if callable(self.target):
            return self.target
        module, _, func = self.target.partition(":")
        made: Factory = getattr(importlib.import_module(module), func)
        return made


def _remote(name: str, summary: str) -> Scheme:
    return Scheme(name, f"smysl.providers:load_{name}", _REMOTE, True, summary)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme(LOCAL, "smysl.qwen3.embedder:load", _ENGINE, False,
           "native Qwen3-Embedding engine: checkpoint dir, Hub id or alias"),
    Scheme("ollama-store", "smysl.qwen3.embedder:load_ollama_store", _ENGINE - {"revision"},
           False, "a Qwen3-Embedding GGUF in the local Ollama store, run in-process"),
    Scheme("st", "smysl.backends.sentence_transformers:load",
           frozenset({"device", "dtype", "max_tokens", "max_batch_size"}), False,
           "any sentence-transformers model (reference pipeline)"),
    _remote("openrouter", "OpenRouter API"),
    _remote("dashscope", "Alibaba Cloud DashScope API"),
    _remote("deepinfra", "DeepInfra API"),
    _remote("fireworks", "Fireworks AI API"),
    _remote("siliconflow", "SiliconFlow API"),
    _remote("openai", "any OpenAI-compatible /embeddings URL"),
    _remote("ollama", "an Ollama server"),
    _remote("tei", "a Text Embeddings Inference server"),
    _remote("smysl", "another smysl server"),
    _remote("replicate", "Replicate predictions API"),
)}


def register(name: str, target: str | Factory, *, options: Iterable[str] = (),
             remote: bool = False, summary: str = "") -> None:
    """Add a scheme: ``target`` is ``"module:function"`` or a callable with the signature
    ``factory(rest, options: ModelOptions, **kwargs) -> BaseEmbedder``; ``options`` names the
    :class:`~smysl.options.ModelOptions` fields it uses."""
    SCHEMES[name] = Scheme(name, target, frozenset(options), remote, summary)


def split(model: str, schemes: dict[str, Scheme] | None = None) -> tuple[str, str]:
    """``"openrouter:qwen/x"`` -> ``("openrouter", "qwen/x")``; anything else is local:
    ``("qwen3", model)`` (``qwen3-embedding:0.6b`` and ``C:\\models`` included). ``schemes``:
    the table to look the scheme up in (default :data:`SCHEMES`)."""
    head, sep, rest = model.partition(":")
    if sep and head in (SCHEMES if schemes is None else schemes) \
            and not (len(head) == 1 and rest.startswith("\\")):
        return head, rest
    return LOCAL, model


def scheme_of(model: str) -> Scheme:
    """The :class:`Scheme` that ``model`` loads through."""
    return SCHEMES[split(model)[0]]


def load(model: str, options: ModelOptions | None = None, **kwargs: Any) -> BaseEmbedder:
    """Load any model string (see the module docs) as a :class:`~smysl.base.BaseEmbedder`.

    ``kwargs`` may hold :class:`~smysl.options.ModelOptions` fields (merged over ``options``)
    and the backend's own options (providers: ``api_key``, ``timeout``, ``dimensions``...).
    """
    embedder: BaseEmbedder = _load(model, SCHEMES, options, kwargs)
    return embedder


def _load(model: str, schemes: dict[str, Scheme], options: ModelOptions | None,
          kwargs: dict[str, Any]) -> Any:
    """The one loading path of :func:`load` and :func:`load_reranker`: ``kwargs``' option
    fields merged over ``options`` and checked against the scheme, the factory called, and the
    model string recorded as ``source`` (a local folder or file made absolute, so the string
    loads the same model from any directory)."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if options is not None and not isinstance(options, ModelOptions):  # a dict: AttributeError
        raise TypeError(f"options must be a ModelOptions, got {type(options).__name__}; pass "
                        "options as keywords instead: smysl.load(model, threads=1)")
    extra_opts, backend_kwargs = ModelOptions.split(kwargs)
    if options is None:
        options = extra_opts
    elif extra_opts.given():
        options = options.replace(**extra_opts.given())
    name, rest = split(model.strip(), schemes)
    scheme = schemes[name]
    options.check(scheme.options, model)
    made = scheme.factory()(rest, options, **backend_kwargs)
    # a local folder made absolute; a scheme's string as typed (a server's clients may name
    # the model by its --model, st:./m included)
    made.source = portable_model(model.strip(), schemes) if name == LOCAL else model.strip()
    return made


#: The schemes whose model string is a local folder or file (else a Hub id or a cache name).
PATH_SCHEMES = frozenset({LOCAL, "st"})


def portable_model(model: str, schemes: dict[str, Scheme] | None = None) -> str:
    """``model`` as a string that loads the same model from any working directory (a Ray
    actor's): a folder or file of :data:`PATH_SCHEMES` that exists here made absolute
    (``st:./m`` -> ``st:/abs/m``), any other string as given."""
    name, rest = split(model, SCHEMES if schemes is None else schemes)
    if name not in PATH_SCHEMES or not rest.strip() or not Path(rest).exists():
        return model
    path = str(Path(rest).resolve())
    return path if name == LOCAL else f"{name}:{path}"


#: Reranker schemes: ``factory(rest, options, **backend_kwargs) -> BaseReranker``. A string
#: without one of these schemes is a local Qwen3-Reranker (directory or Hub id).
RERANK_SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme(LOCAL, "smysl.qwen3.reranker:load", _ENGINE - {"cuda_graphs", "lanes"}, False,
           "native Qwen3-Reranker engine: checkpoint dir or Hub id"),
    *(Scheme(name, f"smysl.providers.rerankers:load_{name}", frozenset(), True, summary)
      for name, summary in (
          ("siliconflow", "SiliconFlow /v1/rerank"),
          ("deepinfra", "DeepInfra inference API (Qwen3-Reranker)"),
          ("dashscope", "Alibaba Cloud DashScope text-rerank"),
          ("cohere", "Cohere /v2/rerank, or any Cohere/Jina-compatible /v1/rerank URL"),
          ("jina", "Jina AI /v1/rerank"),
          ("tei", "a Text Embeddings Inference server's /rerank"),
          ("smysl", "another smysl server's /v1/rerank"),
      )),
)}


def rerank_scheme_of(model: str) -> Scheme:
    """The :class:`Scheme` that the reranker string ``model`` loads through."""
    return RERANK_SCHEMES[split(model.strip(), RERANK_SCHEMES)[0]]


#: Loading flags a reranker shares with the embedding model it is loaded beside (``smysl serve
#: --reranker``, ``index search --rerank``, ``eval --reranker``): where and how it computes;
#: never the embedder's sizes, revision or quantisation.
RERANK_SHARED = frozenset({"device", "dtype", "threads", "process"})


def reranker_options(model: str, options: ModelOptions) -> ModelOptions:
    """The embedding model's ``options`` as the reranker ``model`` takes them: the
    :data:`RERANK_SHARED` flags its scheme uses (a local reranker: all; a remote API: none)."""
    usable = rerank_scheme_of(model).options & RERANK_SHARED
    return ModelOptions(**{k: v for k, v in options.given().items() if k in usable})


def load_reranker(model: str, options: ModelOptions | None = None,
                  **kwargs: Any) -> BaseReranker:
    """Load a reranker model string as a :class:`~smysl.rerank.BaseReranker`:
    ``scheme:rest`` for a scheme of :data:`RERANK_SCHEMES` (``siliconflow:BAAI/bge-reranker-v2-m3``,
    ``tei:http://host:8080``), else a local Qwen3-Reranker (``Qwen/Qwen3-Reranker-0.6B``, a
    directory). ``kwargs`` as for :func:`load`."""
    reranker: BaseReranker = _load(model, RERANK_SCHEMES, options, kwargs)
    return reranker


def sized_aliases(model: str) -> list[str]:
    """The aliases with a size (``qwen3-embedding:0.6b``) of the Hub repo ``model`` is (a repo
    id, or one of those aliases); none for any other model, and none for the family's bare
    name, which names no size."""
    repo = ALIASES.get(model.lower(), model).lower() if model.lower() != FAMILY else ""
    return [a for a, target in ALIASES.items() if a != FAMILY and target.lower() == repo]


def refers_to(name: str, names: set[str]) -> bool:
    """Whether a client's ``name`` is one of ``names`` (:func:`names_of`'s): any case, with
    or without Ollama's default tag ``:latest``, which clients add to a name that has none."""
    n = name.strip().lower()
    return n in names or n.removesuffix(":latest") in names


def names_of(model: str) -> set[str]:
    """Lower-case names that refer to ``model``: itself, its Hub repo id and every alias of that
    repo (and :data:`FAMILY` for any Qwen3-Embedding size), a local directory's last path
    component, and a remote model's own name (``rerank-v3.5`` of ``cohere:rerank-v3.5``: what
    a client of that API sends)."""
    repo = ALIASES.get(model.lower(), model)
    names = {model, repo, *(a for a, target in ALIASES.items() if target.lower() == repo.lower())}
    head, sep, rest = model.partition(":")
    remote = sep and head != LOCAL and (head in SCHEMES or head in RERANK_SCHEMES)
    # a URL alone names no model; the family's bare name stands for no size here (Ollama's
    # default tag is one of them, not necessarily the 0.6B its alias names): itself only
    if remote and "://" not in rest and split(rest, RERANK_SCHEMES | SCHEMES)[0] == LOCAL:
        names |= {rest} if rest.lower() == FAMILY else names_of(rest)
    if repo.lower() in {t.lower() for t in ALIASES.values()}:
        # the family's bare name (Ollama's default tag) asks for no size: any one served
        # answers it (a server of the 8B answered a client set to "qwen3-embedding" 404)
        names.add(FAMILY)
    names.add(model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1])
    names.discard("")
    return {n.lower() for n in names}
