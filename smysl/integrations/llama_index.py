"""LlamaIndex adapter: any smysl model as
``llama_index.core.base.embeddings.base.BaseEmbedding``.

>>> from smysl.integrations.llama_index import SmyslEmbedding
>>> emb = SmyslEmbedding("Qwen/Qwen3-Embedding-0.6B", dimensions=256)    # or a BaseEmbedder
>>> emb.get_query_embedding("как устроен поиск?")
>>> emb.get_text_embedding_batch(["Поиск ищет по смыслу."])

Needs the ``llamaindex`` extra (``llama-index-core``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from smysl.base import BaseEmbedder, positive_int
from smysl.integrations import (
    AdapterConfig,
    check_config,
    check_text,
    check_text_list,
    embed_documents,
    embed_queries,
    open_model,
    require,
)
from smysl.providers.errors import RejectedInputError
from smysl.shown import shown_source
from smysl.tokenize import InputTooLongError

_base = require("llama_index.core.base.embeddings.base", "llamaindex")
_kv = require("llama_index.core.storage.kvstore.types", "llamaindex")
# pydantic comes with llama-index-core (its models are pydantic's)
from pydantic import (  # noqa: E402
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    computed_field,
    field_validator,
)

#: The framework's own fields (callback_manager, num_workers, embeddings_cache, ...): keyword
#: arguments by these names go to LlamaIndex, the rest to smysl.load.
_FRAMEWORK_FIELDS = frozenset(_base.BaseEmbedding.model_fields)
#: Fields checked against the model, when the adapter is made and when one is assigned.
_CHECKED = frozenset({"dimensions", "task", "truncate", "embeddings_cache"})


class _ModelCache(_kv.BaseKVStore):  # type: ignore[name-defined]
    """A user's ``embeddings_cache`` with its collections named by the model's fingerprint,
    the vectors' size and ``truncate``: LlamaIndex keys that cache by text alone, so one store
    shared by two models or sizes (a Redis cache, a persisted file) handed one's vectors to the
    other, and an adapter that refuses over-long texts got the vector another had cut. The
    fingerprint is read at the first lookup (a remote model may send a request for it)."""

    def __init__(self, store: Any, model: BaseEmbedder, dimensions: int | None,
                 truncate: bool) -> None:
        self.store, self.model, self.dimensions = store, model, dimensions
        self.truncate = truncate
        self._suffix: str | None = None

    def _named(self, collection: str) -> str:
        if self._suffix is None:
            # vectors of texts within the limit are the same either way; a cut one is not
            cut = "-truncated" if self.truncate else ""
            self._suffix = f"smysl-{self.model.fingerprint()}-{self.dimensions or 'native'}{cut}"
        return f"{collection}/{self._suffix}"

    def put(self, key: str, val: dict[str, Any], collection: str = _kv.DEFAULT_COLLECTION
            ) -> None:
        self.store.put(key, val, collection=self._named(collection))

    async def aput(self, key: str, val: dict[str, Any],
                   collection: str = _kv.DEFAULT_COLLECTION) -> None:
        await self.store.aput(key, val, collection=self._named(collection))

    def get(self, key: str, collection: str = _kv.DEFAULT_COLLECTION) -> dict[str, Any] | None:
        got: dict[str, Any] | None = self.store.get(key, collection=self._named(collection))
        return got

    async def aget(self, key: str, collection: str = _kv.DEFAULT_COLLECTION
                   ) -> dict[str, Any] | None:
        got: dict[str, Any] | None = await self.store.aget(key,
                                                           collection=self._named(collection))
        return got

    def get_all(self, collection: str = _kv.DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        got: dict[str, dict[str, Any]] = self.store.get_all(collection=self._named(collection))
        return got

    async def aget_all(self, collection: str = _kv.DEFAULT_COLLECTION
                       ) -> dict[str, dict[str, Any]]:
        got: dict[str, dict[str, Any]] = await self.store.aget_all(
            collection=self._named(collection))
        return got

    def put_all(self, kv_pairs: list[tuple[str, dict[str, Any]]],
                collection: str = _kv.DEFAULT_COLLECTION, batch_size: int = 1) -> None:
        self.store.put_all(kv_pairs, collection=self._named(collection), batch_size=batch_size)

    async def aput_all(self, kv_pairs: list[tuple[str, dict[str, Any]]],
                       collection: str = _kv.DEFAULT_COLLECTION, batch_size: int = 1) -> None:
        await self.store.aput_all(kv_pairs, collection=self._named(collection),
                                  batch_size=batch_size)

    def persist(self, *args: Any, **kwargs: Any) -> Any:
        """The user's store's own ``persist`` (a SimpleKVStore's file)."""
        return self.store.persist(*args, **kwargs)

    def delete(self, key: str, collection: str = _kv.DEFAULT_COLLECTION) -> bool:
        return bool(self.store.delete(key, collection=self._named(collection)))

    async def adelete(self, key: str, collection: str = _kv.DEFAULT_COLLECTION) -> bool:
        return bool(await self.store.adelete(key, collection=self._named(collection)))


class SmyslEmbedding(_base.BaseEmbedding):  # type: ignore[name-defined]
    """Queries (``get_query_embedding``) -> smysl's ``embed_queries`` with instruction
    ``task``; texts (``get_text_embedding[_batch]``, what indexes store) -> ``embed_documents``.

    ``model`` is a loaded :class:`~smysl.base.BaseEmbedder` or a model string for
    :func:`smysl.load`, also accepted as ``model_name`` (what ``from_dict`` passes); other
    keyword arguments are LlamaIndex's fields (``callback_manager``, ``num_workers``,
    ``embeddings_cache``, ...) or else :func:`smysl.load` options. ``embed_batch_size`` (texts
    per call into smysl, which plans its own forward passes) defaults to 256.

    ``to_dict()`` holds ``dimensions``, ``task``, ``truncate`` and the model's
    :meth:`~smysl.base.BaseEmbedder.fingerprint`, so LlamaIndex's ingestion cache (keyed by it)
    never hands back another model's or size's vectors, and ``from_dict`` loads ``model_name``
    again, refusing a model whose fingerprint changed. ``embeddings_cache`` is refused while
    queries get an instruction (LlamaIndex keys it by text alone, queries and documents alike);
    otherwise its collections are named by the model's fingerprint and ``dimensions``, so one
    store serves several models and sizes. Fields assigned later are checked as in the
    constructor (a refused value leaves the old one). Pickling (a worker pool) needs
    a model that pickles (``model.share()`` of one loaded with ``process=True``); otherwise a
    ``TypeError`` saying so, where LlamaIndex would drop the model.
    """

    # assigned fields are validated as given ones (pydantic) and checked against the model
    model_config = ConfigDict(validate_assignment=True)

    dimensions: int | None = Field(
        default=None, description="Matryoshka output size (None: the model's native size).")
    task: str | None = Field(
        default=None, description="Query instruction or preset (None: the model's default).")
    truncate: bool = Field(  # strict: "no" is not False
        default=False, strict=True, description="Cut over-long inputs instead of raising.")
    # LlamaIndex's field, left out of to_dict()/to_json(): a store is no setting (to_json()
    # of an adapter with one raised "not JSON serializable")
    embeddings_cache: Any = Field(
        default=None, exclude=True,
        description="Cache for the embeddings (a BaseKVStore): if None, none are cached")

    _model: Any = PrivateAttr()
    _owned: bool = PrivateAttr()

    @field_validator("dimensions", mode="before")
    @classmethod
    def _size(cls, value: object) -> int | None:
        # smysl's rule (numpy integers too; True is not 1); its range is the model's
        if value is None:
            return None
        n = positive_int(value)
        if n is None:
            raise ValueError(f"dimensions must be a positive integer or None, got {value!r}")
        return n

    def __init__(self, model: str | BaseEmbedder | None = None, *, model_name: str | None = None,
                 dimensions: int | None = None, task: str | None = None,
                 truncate: bool = False, embed_batch_size: int = 256, **kwargs: Any) -> None:
        if model is None and model_name is not None:
            model = model_name
        elif model is None or model_name is not None:
            raise TypeError("pass the model (a BaseEmbedder or a model string) or model_name "
                            "(a model string), not both or neither")
        # what model_dump()/to_dict() hold besides the fields (pydantic's model_validate of
        # a dump passes them here): the class's name, and the fingerprint, checked below
        kwargs.pop("class_name", None)
        recorded = kwargs.pop("fingerprint", None)
        fields = {k: v for k, v in kwargs.items() if k in _FRAMEWORK_FIELDS}
        loaded = open_model(model, {k: v for k, v in kwargs.items() if k not in fields})
        owned = not isinstance(model, BaseEmbedder)
        try:
            if recorded is not None and loaded.fingerprint() != recorded:
                raise ValueError(
                    f"model {shown_source(loaded.source or loaded.name)!r} is not the model "
                    f"this was saved with (fingerprint {loaded.fingerprint()}, saved "
                    f"{recorded}): its vectors would not match the ones made before. If it "
                    "was loaded with options (dtype=, quantize=, ...), pass them: "
                    "SmyslEmbedding.from_dict(data, dtype=...)")
            # model_name is the string the model loads from again (from_dict), else its name;
            # a URL's password is left out: to_dict() is stored (LlamaIndex's caches and files)
            super().__init__(model_name=shown_source(loaded.source or loaded.name),
                             embed_batch_size=embed_batch_size, dimensions=dimensions,
                             task=task, truncate=truncate, **fields)
            self._model, self._owned = loaded, owned
            self._check()
        except Exception:
            if owned:  # a model loaded for an adapter that is not made would leak
                loaded.close()
            raise

    def _check(self) -> None:
        """Check the fields against the model; name ``embeddings_cache``'s collections by it."""
        check_config(self._model, self._config)
        cache = self.embeddings_cache
        if cache is None:
            return
        if self._model.choose_instruction(self.task, role="query") is not None:
            # LlamaIndex keys that cache by the text alone, queries and documents in one
            # collection: a query once embedded as a document got the document's vector
            raise ValueError(
                "embeddings_cache keys vectors by text alone, so a query would get the "
                "vector of the same text embedded as a document (without the query "
                "instruction); cache documents with IngestionPipeline(cache=...) instead, "
                "or pass task=\"\" to embed queries without an instruction")
        store = cache.store if isinstance(cache, _ModelCache) else cache
        # set past __setattr__ (and pydantic's check: a _ModelCache is a BaseKVStore)
        super().__setattr__("embeddings_cache", _ModelCache(store, self._model, self.dimensions,
                                                              self.truncate))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _CHECKED:
            super().__setattr__(name, value)
            return
        old = self.__dict__[name]
        try:
            super().__setattr__(name, value)  # pydantic validates the value itself
            self._check()
        except Exception:
            # a refused value loses nothing (LlamaIndex's own check raised after pydantic
            # had written it)
            self.__dict__[name] = old
            raise

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> SmyslEmbedding:
        """pydantic's copy, with ``update``'s fields checked as assigned ones (pydantic takes
        them unvalidated; a copy at another size kept the cache of the first)."""
        twin: SmyslEmbedding = super().model_copy(deep=deep)
        for name, value in (update or {}).items():
            setattr(twin, name, value)
        return twin

    @classmethod
    def class_name(cls) -> str:
        return "SmyslEmbedding"

    @property
    def model(self) -> BaseEmbedder:
        """The wrapped smysl model."""
        loaded: BaseEmbedder = self._model
        return loaded

    @computed_field(repr=False)  # type: ignore[prop-decorator]
    @property
    def fingerprint(self) -> str:
        """The model's :meth:`~smysl.base.BaseEmbedder.fingerprint` (what makes it the same
        model), part of ``to_dict()`` and so of LlamaIndex's ingestion cache keys."""
        return self.model.fingerprint()

    @property
    def _config(self) -> AdapterConfig:
        # read from the fields on every call: they are what to_dict() reports
        return AdapterConfig(dimensions=self.dimensions, task=self.task, truncate=self.truncate)

    def _get_query_embedding(self, query: str) -> list[float]:
        check_text(query, "get_query_embedding")
        return embed_queries(self._model, [query], self._config)[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        check_text(text, "get_text_embedding")
        return embed_documents(self._model, [text], self._config)[0]

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False,
                                 **kwargs: Any) -> list[list[float]]:
        check_text_list(texts, "get_text_embedding_batch", "get_text_embedding for one text")
        out: list[list[float]] = super().get_text_embedding_batch(texts, show_progress,
                                                                  **kwargs)
        return out

    async def aget_text_embedding_batch(self, texts: list[str], show_progress: bool = False,
                                        **kwargs: Any) -> list[list[float]]:
        check_text_list(texts, "aget_text_embedding_batch", "aget_text_embedding for one text")
        out: list[list[float]] = await super().aget_text_embedding_batch(texts, show_progress,
                                                                         **kwargs)
        return out

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        # LlamaIndex cuts the texts into batches of embed_batch_size: smysl's "input i" would
        # count within a batch the caller never sees, so the text's start names it
        try:
            return embed_documents(self._model, list(texts), self._config)
        except InputTooLongError as e:
            named = e.but()
            named.args = (e.describe(f"the text starting {texts[e.index][:60]!r}",
                                     audience="python"),)
            raise named from e
        except RejectedInputError as e:  # a remote model's refusal (an API's 400 or 422)
            first = texts[e.named][:60] if e.named is not None else ""
            # the other failed inputs were not sent (the call stopped at the refusal)
            others, said = len(e.failed) - 1, e.brief()
            refused = RejectedInputError(
                f"{self.model.name} refused the text starting {first!r}"
                + (f"; its answer to that text sent alone: {said}" if e.refused is not None
                   else f": {said}")
                + (f" ({others} other text(s) of the batch were not embedded)"
                   if others > 0 else ""),
                e.failed, e.total, e.cause, done=e.done, rows=e.rows)
            raise refused from e

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def close(self) -> None:
        """Close the model if this adapter loaded it from a string."""
        if self._owned:
            self._model.close()

    def __enter__(self) -> SmyslEmbedding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # ``with SmyslEmbedding(...) as e:``, as ``with smysl.load(...)``

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> SmyslEmbedding:
        """Load ``data["model_name"]`` again (``to_dict``'s output); ``ValueError`` when the
        model found there is not the one recorded (its fingerprint differs: checked by the
        constructor, which pydantic's ``model_validate`` of a dump reaches too)."""
        made: SmyslEmbedding = super().from_dict(data, **kwargs)
        return made

    def __copy__(self) -> SmyslEmbedding:
        twin: SmyslEmbedding = super().__copy__()
        twin._owned = False  # only the adapter that loaded the model closes it
        return twin

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> SmyslEmbedding:
        # the copy shares the model, as it would a connection (copying it reached the weights
        # and failed in torch)
        memo = {} if memo is None else memo
        memo[id(self._model)] = self._model
        cache = self.embeddings_cache
        if isinstance(cache, _ModelCache):  # shared too: a store is a connection of sorts
            memo[id(cache.store)] = cache.store
        twin: SmyslEmbedding = super().__deepcopy__(memo)
        twin._owned = False
        return twin

    def __getstate__(self) -> dict[str, Any]:
        # LlamaIndex's own tries to pickle each attribute and drops an unpicklable model with
        # a log line: the copy then failed at its first embedding with an AttributeError
        state: dict[str, Any] = super().__getstate__()
        if "_model" not in (state.get("__pydantic_private__") or {}):
            model = self._model
            raise TypeError(
                f"{type(self).__name__} cannot be pickled (a worker pool such as "
                f"IngestionPipeline(num_workers=...) pickles it): its model {model.name!r} "
                f"({type(model).__name__}) does not pickle. A local model: wrap model.share() "
                "of one loaded with process=True (workers compute on its engine process); a "
                "remote API: make the adapter in each worker, or run without num_workers")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pydantic's restore: LlamaIndex's calls __init__ with the fields, which would load
        # model_name afresh instead of keeping the model that was pickled
        BaseModel.__setstate__(self, state)
