"""An index: a vector store bound to one embedding model, with ingestion, search and deletion.

The store remembers which model built it — its :meth:`~smysl.base.BaseEmbedder.fingerprint`, not
its name — and the dimensions (``read_meta``), so adding or searching with another model is
refused instead of returning meaningless neighbours; ``rebuild=True`` empties it for a new model.
Every vector read back is checked (:func:`~smysl.toolkit.store.vector_problem` and its checksum):
a damaged hit is left out of the results and reported in :attr:`Index.damaged`, and re-embedded
by the next ingestion of its document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.shown import shown_source
from smysl.toolkit import lexical
from smysl.toolkit.cache import CacheConfig, CachedEmbedder, EmbeddingCache
from smysl.toolkit.chunking import chunker_for
from smysl.toolkit.ingest import (
    Document,
    IngestConfig,
    IngestReport,
    ReadConfig,
    SkippedFile,
    StoredCallback,
    document_path,
    ingest,
    read_documents,
    stored_problem,
    text_ids,
)
from smysl.toolkit.search import MMR_AND_RERANK, SearchConfig, check_queries, search_vectors
from smysl.toolkit.store import Hit, Record, StoreConfig, VectorStore, Where, local_path
from smysl.toolkit.stores import described, open_store

if TYPE_CHECKING:
    from smysl.rerank import BaseReranker

CACHE_FILE = "embedding-cache.sqlite"
#: Meta key: records carry vector checksums (indexes built before them do not).
CHECKSUMS = "checksums"
#: Meta key: records the index held after its last write through :class:`Index`; fewer at
#: opening means the store lost some (a damaged manifest drops whole fragments silently).
RECORDS = "records"
#: Meta key: the :data:`smysl.toolkit.lexical.VERSION` every record's search terms were made
#: with; absent in an index of an earlier smysl, whose records have none until written again.
LEXICAL = "lexical"


@dataclass(frozen=True)
class IndexConfig:
    """Where an index lives and how it embeds.

    Attributes:
        store: The vector store (see :class:`~smysl.toolkit.store.StoreConfig`).
        cache: The embedding cache; a path of None puts it next to a local LanceDB store
            (``<folder>/embedding-cache.sqlite``) and disables it for other stores.
        dimensions: Matryoshka size of stored vectors; None is the model's native size.
    """

    store: StoreConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    dimensions: int | None = None


def default_cache_path(store: StoreConfig) -> Path | None:
    path = local_path(store.uri) if store.backend == "lancedb" else None
    return path / CACHE_FILE if path is not None else None


class Index:
    """Documents in, nearest chunks out. Build with :meth:`create_or_open` or :meth:`open`."""

    def __init__(self, store: VectorStore, embedder: BaseEmbedder, *,
                 cache: EmbeddingCache | None = None, model_key: str | None = None,
                 dimensions: int | None = None, checksums: bool = True) -> None:
        self.store = store
        self.embedder = embedder
        self.dimensions = dimensions or store.dimensions
        self.cached = CachedEmbedder(embedder, cache, model_key)
        #: Whether every record carries a vector checksum (False: an index built before them).
        self.checksums = checksums
        #: Record id -> problem, for damaged records met by searches since opening.
        self.damaged: dict[str, str] = {}
        #: Problems with the index as a whole found at opening (records lost).
        self.problems: list[str] = []

    @classmethod
    def create_or_open(cls, embedder: BaseEmbedder, config: IndexConfig, *,
                       create: bool = True, rebuild: bool = False) -> Index:
        """Open the index at ``config.store`` (``create``: make it for ``embedder`` if missing)
        and check that it was built with this model (same fingerprint) and size.

        ``rebuild`` deletes every record first and binds the index to ``embedder``: the one way
        to switch an index to another model. The string that loads the model
        (:attr:`BaseEmbedder.source`, what :func:`smysl.load` was given, e.g.
        ``st:all-minilm-l6-v2``) is saved so that later searches can load it without being told
        (backend ``name``s may lack the scheme).
        """
        # before anything is opened, created or (rebuild) emptied: a size the model cannot
        # give, written into a new index's settings, made every later call fail
        dims = embedder.check_dimensions(config.dimensions)
        try:
            store = open_store(config.store, dims if rebuild or config.store.backend == "memory"
                               else None, replace=rebuild)
        except FileNotFoundError:
            if not create:
                raise
            store = open_store(config.store, dims)
        try:
            meta = store.read_meta()
            if not meta and (held := store.count()) > 0:
                # an index claims its metadata before it writes a record: records without it
                # were bound since the read above by another process, or lost it (binding
                # them to this model mixed two models' vectors of one width in one index,
                # which no later check could see)
                meta = store.read_meta()
                if not meta:
                    raise ValueError(f"{described(config.store)}: holds {held} records but "
                                     f"no smysl index metadata, {NO_META_HELP}")
            if meta:
                problem = _mismatch(meta, embedder, config.dimensions, store.dimensions)
                if problem:
                    raise ValueError(problem)
                dims = store.dimensions
            elif store.dimensions != dims:  # an empty store made at another size
                raise ValueError(f"index stores {store.dimensions}-d vectors, not {dims}-d; "
                                 f"ask for {store.dimensions} (--dimensions "
                                 f"{store.dimensions}), or rebuild it at {dims} (smysl index "
                                 "add --rebuild)")
            else:  # bound now, unless another process bound it since the read above
                info = embedder.info()
                meta = store.claim_meta({
                    "model": embedder.name, "fingerprint": embedder.fingerprint(),
                    "dimensions": dims, "load": shown_source(embedder.source or embedder.name),
                    # what a later mismatch names (the fingerprint alone says nothing)
                    "dtype": info.dtype, "quantization": info.quantization,
                    CHECKSUMS: True, LEXICAL: lexical.VERSION})
                problem = _mismatch(meta, embedder, config.dimensions, store.dimensions)
                if problem:
                    raise ValueError(problem)
            lost = _lost_records(store.count(), meta, config.store)
        except BaseException:
            store.close()
            raise
        path = config.cache.path or default_cache_path(config.store)
        cache = EmbeddingCache(path) if path is not None else None
        index = cls(store, embedder, cache=cache, model_key=config.cache.model_key,
                    dimensions=dims, checksums=bool(meta.get(CHECKSUMS)))
        if lost:
            index.problems.append(lost)
        return index

    @staticmethod
    def stored_model(config: StoreConfig) -> str:
        """The model string that loads the model an existing index was built with."""
        with open_store(config) as store:
            meta = _index_meta(store, config)
        model = meta.get("load") or meta.get("model")
        if not model:
            raise ValueError(f"{described(config)}: its smysl index metadata names "
                             "no model (damaged?); name the model that built it (--model), "
                             "or rebuild the index (smysl index add --rebuild)")
        return str(model)

    # ------------------------------------------------------------------ writing
    def add(self, documents: Iterable[Document], config: IngestConfig | None = None,
            *, on_stored: StoredCallback | None = None) -> IngestReport:
        """Ingest documents; unchanged chunks are skipped and cached vectors reused."""
        config = config or IngestConfig()
        dims = config.dimensions or self.dimensions
        if dims != self.dimensions:
            raise ValueError(_width_problem(self.dimensions, dims))
        chunker = chunker_for(self.embedder, config.chunk)

        def embed(texts: list[str]) -> np.ndarray:
            vectors = self.cached.embed(texts, dimensions=self._dims_arg(), truncate=True)
            self._check_binding()  # just before these vectors are written
            return vectors

        report = ingest(documents, store=self.store, chunker=chunker, config=config,
                        embed=embed, on_stored=on_stored, counters=self.cached,
                        checksums=self.checksums)
        record_count(self.store)
        return report

    def add_files(self, paths: Iterable[str | Path], read: ReadConfig | None = None,
                  config: IngestConfig | None = None,
                  on_stored: StoredCallback | None = None, *, prune: bool = False
                  ) -> IngestReport:
        """Ingest txt/md/csv/jsonl files or folders of them (ids: see
        :func:`~smysl.toolkit.ingest.document_path`); files that are not UTF-8 text are
        skipped and listed in the report's ``skipped`` (``read.strict``: an error).

        ``prune``: once every file is in, delete the documents whose file lies in ``paths``
        (a file named, or one under a folder named) but that this ingestion did not read: a
        file removed from a folder, a row removed from a CSV/JSONL (whose later rows' ids
        moved). Without it such documents stay searchable. A skipped file's documents stay."""
        read = read or ReadConfig()
        paths = list(paths)
        skipped: list[SkippedFile] = []
        ids: set[str] = set()

        def documents() -> Iterator[Document]:
            for doc in read_documents(paths, read, skipped):
                ids.add(doc.id)
                yield doc

        report = self.add(documents(), config, on_stored=on_stored)
        report.skipped = skipped
        if prune:
            kept = {document_path(Path(s.path), read.root) for s in skipped}
            report.pruned = self._prune([document_path(Path(p), read.root) for p in paths],
                                        ids, kept)
        return report

    def _prune(self, roots: list[str], ids: set[str], kept: set[str]) -> int:
        """Delete the documents read from a file (their id is its ``source``, or
        ``source:ROW``) whose file is one of ``roots`` or under one, unless their id is in
        ``ids`` or their source in ``kept``; the number deleted. A document added by hand
        (``add_texts``, with a ``source`` of its own) or a table row under ``--id-field``
        has another id, and stays."""
        # a root folder given as the path itself is "." (its files' ids are relative to it)
        prefixes = tuple("" if r == "." else r.rstrip("/") + "/" for r in roots)
        doomed: set[str] = set()
        for batch in self.store.scan(with_vectors=False):
            for r in batch:
                source, doc = r.payload.get("source"), r.payload.get("doc_id")
                if not (isinstance(source, str) and isinstance(doc, str)) or doc in ids:
                    continue
                row = doc[len(source) + 1:] if doc.startswith(source + ":") else None
                from_file = doc == source or (row is not None and row.isdigit())
                if (from_file and source not in kept
                        and (source in roots or source.startswith(prefixes))):
                    doomed.add(doc)
        order = sorted(doomed)
        for i in range(0, len(order), 1000):  # a filter of a bounded size per delete
            self.delete(order[i : i + 1000])
        return len(order)

    def add_texts(self, texts: Sequence[str], ids: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any]] | None = None,
                  config: IngestConfig | None = None) -> IngestReport:
        """Ingest in-memory texts; without ``ids``, each text's id is a hash of it
        (:func:`~smysl.toolkit.ingest.text_ids`): pass ids to replace documents in place."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        for n, text in enumerate(texts):  # None was an AttributeError deep in chunking
            if not isinstance(text, str):
                raise TypeError(f"texts[{n}] is {type(text).__name__}, not a string")
        ids = list(ids) if ids is not None else text_ids(texts)
        metas = list(metadata) if metadata is not None else [{} for _ in texts]
        if not len(ids) == len(metas) == len(texts):
            raise ValueError("texts, ids and metadata must have the same length")
        if blank := [n for n, i in enumerate(ids) if isinstance(i, str) and not i.strip()]:
            # "" made the chunk id "#0", shared by every document given it
            raise ValueError(f"ids[{blank[0]}] is {ids[blank[0]]!r}: a document id is not "
                             "blank")
        return self.add((Document(i, t, dict(m)) for i, t, m in zip(ids, texts, metas,
                                                                    strict=True)), config)

    def add_terms(self, batch_size: int = 1024) -> int:
        """Give the records of an index built by an earlier smysl (or with other analysis
        rules) their lexical search terms: each record is written again as it is, and the store
        analyses its text (see :mod:`~smysl.toolkit.lexical`). Once per index (``smysl index
        add`` runs it first); returns how many records were written (0: nothing to do).

        Each batch is read again just before it is written, so a record another process
        deleted or changed since the scan is not brought back; one changed within those
        milliseconds still could be: run it while no other process writes the index (a corpus
        job's drivers do not run it). Damaged records are left as they are (the next
        ingestion of their document writes them again, with terms). ``ValueError`` when the
        store cannot keep terms (a Qdrant server older than 1.18 for a collection made
        before them): the index is then not marked as having them."""
        if self.store.read_meta().get(LEXICAL) == lexical.VERSION:
            return 0
        written = 0
        for batch in self.store.scan(batch_size, with_vectors=False):
            now = self.store.get([r.id for r in batch])  # as they are now, vectors with them
            good = [r for r in now if stored_problem(r, self.store.dimensions,
                                                     self.checksums) is None]
            if good:
                self.store.upsert([r.id for r in good], np.stack([r.vector for r in good]),
                                  [r.payload for r in good])
                written += len(good)
        if written:
            self.store.optimize()  # LanceDB: fold the rewritten rows into its full-text index
        try:  # whether the store now searches by words at all (one cheap query)
            self.store.search_text([["smysl"]], 1)
        except NotImplementedError:
            raise ValueError("this index's store has no search by words") from None
        self.store.update_meta({LEXICAL: lexical.VERSION})
        return written

    def delete(self, doc_ids: Sequence[str] | None = None, *, where: Where | None = None
               ) -> int:
        """Delete the chunks of documents (by id) and/or those matching a filter."""
        if doc_ids is None and not where:
            raise ValueError("delete needs document ids or a filter")
        flt = dict(where or {})
        if doc_ids is not None and "doc_id" in flt:
            raise ValueError("give document ids either as doc_ids or in the filter")
        if doc_ids is not None:
            if not doc_ids:
                return 0
            flt["doc_id"] = list(doc_ids)
        gone = self.store.delete(where=flt)
        left = self.store.count()
        if gone and 10 * gone >= left:
            # a tenth of the records or more gone: the word statistics are brought up to date
            # (Qdrant's mean length, PostgreSQL's ANALYZE, LanceDB's word index); a delete of
            # a few, in a loop, is left to the next ingestion's
            self.store.optimize()
        record_count(self.store, left)
        return gone

    # ------------------------------------------------------------------ reading
    def embed_queries(self, queries: Sequence[str], instruction: str | None = None, *,
                      truncate: bool = False) -> np.ndarray:
        """Query vectors with the search instruction (model default when the model takes one);
        an over-long query raises :class:`~smysl.tokenize.InputTooLongError` unless
        ``truncate``."""
        task = self.embedder.choose_instruction(instruction, role="query")
        return self.embedder.embed(list(queries), instruction=task,
                                   dimensions=self._dims_arg(), truncate=truncate)

    def search(self, queries: str | Sequence[str], config: SearchConfig | None = None, *,
               reranker: BaseReranker | None = None) -> list[list[Hit]]:
        """Top-k chunks per query (a single string gives one list). Hits whose stored vector
        is damaged are left out and recorded in :attr:`damaged`.

        With a ``reranker``, the ``max(config.rerank_top, k)`` nearest chunks (filters
        applied) are scored by it against the query text and the best ``k`` come back as
        :class:`~smysl.toolkit.search.RerankedHit` (``score``: the reranker's,
        ``vector_score``: the first stage's); ``config.mmr`` with a reranker is refused.
        ``config.mode`` ``"text"`` ranks by the queries' words alone (nothing is embedded),
        ``"hybrid"`` fuses both rankings (:class:`~smysl.toolkit.search.FusedHit`)."""
        config = config or SearchConfig()
        qs = [queries] if isinstance(queries, str) else list(queries)
        check_queries(qs)
        if reranker is not None and config.mmr:
            raise ValueError(MMR_AND_RERANK)  # before the queries are embedded
        meta = self._check_binding()
        if config.mode != "vector":
            problem = lexical_problem(meta)
            if problem is not None:
                raise ValueError(problem)
        vectors = (self.embed_queries(qs, config.instruction, truncate=config.truncate)
                   if config.mode != "text" else None)
        terms = [lexical.query_terms(q) for q in qs] if config.mode != "vector" else None
        return search_vectors(self.store, vectors, config, check=self._check_hit,
                              reranker=reranker, texts=qs, terms=terms)

    def _check_binding(self) -> dict[str, Any]:
        """The index's metadata as read now, once it is still this embedder's."""
        meta = self.store.read_meta()
        problem = binding_problem(self.store, self.embedder, self.dimensions, meta)
        if problem is not None:
            raise ValueError(problem)
        return meta

    def _check_hit(self, hit: Hit) -> bool:
        problem = hit_problem(hit, self.store.dimensions, self.checksums)
        if problem is not None:
            self.damaged[hit.id] = problem
        return problem is None

    def verify(self, batch_size: int = 2048) -> dict[str, str]:
        """Check every stored record (what a search checks for its hits only): record id ->
        problem for the damaged ones, also added to :attr:`damaged`. A damaged vector whose
        score fell out of a search's top k is found here, or by the next ingestion."""
        found = _damaged_records(self.store, self.checksums, batch_size)
        self.damaged.update(found)
        return found

    def count(self, where: Where | None = None) -> int:
        return self.store.count(where)

    def close(self) -> None:
        if self.cached.cache is not None:
            self.cached.cache.close()
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dims_arg(self) -> int | None:
        return self.dimensions if self.dimensions != self.embedder.dimensions else None


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_store` found in an index."""

    #: Record id -> problem, for each damaged record.
    damaged: dict[str, str]
    #: Records the store holds.
    total: int
    #: Problems with the index as a whole (records lost, metadata that disagrees with the
    #: stored vectors' width).
    problems: list[str]


def verify_store(config: StoreConfig, batch_size: int = 2048) -> Verification:
    """Check every record of the index at ``config``, whether records were lost and whether
    its metadata matches the stored vectors, without its model (:meth:`Index.verify` needs one
    loaded; ``smysl index verify`` runs this, so an 8B model's index is checked without loading
    16 GB of weights)."""
    with open_store(config) as store:
        meta = _index_meta(store, config)
        total = store.count()
        problems = [p for p in (_lost_records(total, meta, config),
                                _dimension_problem(meta, store.dimensions)) if p]
        return Verification(_damaged_records(store, bool(meta.get(CHECKSUMS)), batch_size),
                            total, problems)


def search_words(config: StoreConfig, queries: Sequence[str], search: SearchConfig, *,
                 reranker: BaseReranker | None = None
                 ) -> tuple[list[list[Hit]], dict[str, str]]:
    """Mode ``text`` of :meth:`Index.search` without the index's model (nothing is embedded:
    ``smysl index search --mode text`` loads no weights): the hits per query, and record id
    -> problem for the damaged records left out."""
    if search.mode != "text":
        raise ValueError(f"search_words ranks by words alone (mode 'text'), not {search.mode!r}")
    check_queries(queries)
    damaged: dict[str, str] = {}
    with open_store(config) as store:
        meta = _index_meta(store, config)
        problem = lexical_problem(meta)
        if problem is not None:
            raise ValueError(problem)
        checksums = bool(meta.get(CHECKSUMS))

        def check(hit: Hit) -> bool:
            problem = hit_problem(hit, store.dimensions, checksums)
            if problem is not None:
                damaged[hit.id] = problem
            return problem is None

        hits = search_vectors(store, None, search, check=check, reranker=reranker,
                              texts=list(queries),
                              terms=[lexical.query_terms(q) for q in queries])
    return hits, damaged


#: What to do about a store without smysl's metadata (the model and size its vectors are of).
NO_META_HELP = ("so the model its vectors came from is unknown (built outside smysl, or its "
                "metadata lost: LanceDB keeps it in <table>.smysl.json beside the table); "
                "restore the metadata, or rebuild the index (smysl index add --rebuild)")


def _index_meta(store: VectorStore, config: StoreConfig) -> dict[str, object]:
    """An existing index's smysl metadata (model, fingerprint, dimensions...)."""
    meta = store.read_meta()
    if not meta:
        raise ValueError(f"{described(config)}: no smysl index metadata, {NO_META_HELP}")
    return meta


def _damaged_records(store: VectorStore, checksums: bool, batch_size: int) -> dict[str, str]:
    """Record id -> problem for every damaged record of ``store`` (a full scan)."""
    found: dict[str, str] = {}
    for batch in store.scan(batch_size, with_vectors=True):
        for r in batch:
            problem = stored_problem(r, store.dimensions, checksums)
            if problem is not None:
                found[r.id] = problem
    return found


def _lost_records(held: int, meta: Mapping[str, object], config: StoreConfig) -> str | None:
    """The problem of a store holding fewer records (``held``) than were written through an
    index."""
    written = meta.get(RECORDS)
    if isinstance(written, int) and held < written:
        return (f"{described(config)}: holds {held} records but {written} were "
                f"written: the store lost records (damaged?); run `smysl index add` on the "
                f"same files to restore them, or rebuild it (--rebuild)")
    return None


def record_count(store: VectorStore, count: int | None = None) -> None:
    """Save how many records the index holds (``RECORDS``; ``count`` when known), after
    writing through it; the next opening reports fewer as records lost."""
    if store.read_meta():
        store.update_meta({RECORDS: store.count() if count is None else count})


def lexical_problem(meta: Mapping[str, object]) -> str | None:
    """Why an index's records cannot all be searched by their words (an index of an earlier
    smysl: its records have no terms yet), else None."""
    if meta.get(LEXICAL) == lexical.VERSION:
        return None
    return ("the index was built by an earlier smysl: its chunks have no search terms for "
            "mode 'text' or 'hybrid' yet; `smysl index add` on it gives them terms first "
            "(once; or Index.add_terms(); while no other process writes it), or search with "
            "mode 'vector'")


def binding_problem(store: VectorStore, embedder: BaseEmbedder, dimensions: int,
                    meta: Mapping[str, object] | None = None) -> str | None:
    """Why ``embedder`` can no longer write or search ``store`` at ``dimensions`` since they
    were checked at opening, else None: another process rebuilt the index for another model or
    size (``--rebuild``), or removed it. One metadata read (a small file or one request), or
    ``meta`` as the caller just read it; checked before every search and after every embedded
    write batch, so vectors of two models never meet in one index and a search never
    compares them."""
    if meta is None:
        meta = store.read_meta()
    if not meta:
        return ("the index was removed, or is being rebuilt, by another process since it was "
                "opened")
    width = meta.get("dimensions")
    # the size first: a rebuild with this model at another size is no damage of the store
    problem = (f"index stores {width}-d vectors, not {dimensions}-d"
               if isinstance(width, int) and width != dimensions
               else _mismatch(meta, embedder, None, store.dimensions))
    return None if problem is None else (f"another process rebuilt the index since it was "
                                         f"opened: {problem}")


def _mismatch(meta: Mapping[str, object], embedder: BaseEmbedder, dimensions: int | None,
              stored_dimensions: int) -> str | None:
    """Why ``embedder`` may not use an index with ``meta``, else None."""
    built = meta.get("fingerprint")
    if built is not None:
        if built != embedder.fingerprint():
            return (f"index was built with model {_shown_model(meta)!r} "
                    f"(fingerprint {built}), "
                    f"not with {embedder.name!r} (fingerprint {embedder.fingerprint()}): other "
                    f"weights or settings{_settings_changed(meta, embedder)}; use that model "
                    f"and settings, or rebuild the index for this one (smysl index add "
                    f"--rebuild)")
    elif meta.get("model") != embedder.name:  # an index from before fingerprints
        return (f"index was built with model {_shown_model(meta)!r}, not "
                f"{embedder.name!r}; "
                f"use that model, or rebuild the index (smysl index add --rebuild)")
    if dimensions and dimensions != stored_dimensions:
        return _width_problem(stored_dimensions, dimensions)
    return _dimension_problem(meta, stored_dimensions)


def _width_problem(stored: int, asked: int) -> str:
    """Why vectors of ``asked`` values cannot go into (or search) an index of ``stored``."""
    return (f"index stores {stored}-d vectors, not {asked}-d; leave out --dimensions (the "
            f"index's own size is used), or rebuild it at {asked} (smysl index add --rebuild)")


def _settings_changed(meta: Mapping[str, object], embedder: BaseEmbedder) -> str:
    """The loading settings that differ from those an index was built with (indexes since
    they were recorded: dtype, quantization), as ", built with dtype float32 (this model:
    bfloat16)"; "" where none is known to differ. A default can change between versions (a
    quantised GGUF's dtype="auto" became bf16 where the CPU has it natively)."""
    info = embedder.info()
    now = {"dtype": info.dtype, "quantization": info.quantization}
    changed = [f"{k} {meta[k]} (this model: {now[k]})" for k in now
               if k in meta and meta[k] != now[k]]
    if changed:
        return f", built with {' and '.join(changed)}"
    if "dtype" not in meta and info.file_format == "gguf" and info.dtype == "bfloat16":
        # an index from before settings were recorded: a quantised GGUF ran float32 then
        return (" (an index from before smysl recorded its settings: a quantised GGUF file "
                "then computed in float32 by default; try dtype float32)")
    return ""


def _shown_model(meta: Mapping[str, object]) -> object:
    """The model an index's metadata names, without a URL's password."""
    model = meta.get("model")
    return shown_source(model) if isinstance(model, str) else model


def _dimension_problem(meta: Mapping[str, object], stored_dimensions: int) -> str | None:
    """The problem of a store whose vectors are not as wide as its metadata says."""
    if meta.get("dimensions") not in (None, stored_dimensions):
        return (f"index metadata says {meta.get('dimensions')}-d vectors but the store holds "
                f"{stored_dimensions}-d ones: the store is damaged; restore it or rebuild it "
                f"(smysl index add --rebuild)")
    return None


def hit_problem(hit: Hit, dimensions: int, checksums: bool) -> str | None:
    """Why a search hit (read with its vector) must not be served, else None: the check
    :meth:`Index.search` applies, for callers that search a store directly (``/search``)."""
    vector = hit.vector if hit.vector is not None else np.zeros(0, np.float32)
    return stored_problem(Record(hit.id, vector, hit.payload), dimensions, checksums)
