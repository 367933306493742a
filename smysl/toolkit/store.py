"""Vector storage behind one small interface, and the portable filter language every backend reads.

Vectors are unit rows (what every smysl backend returns), so the score of a hit is the dot product,
i.e. the cosine similarity. Payloads are JSON-like dicts; their top-level scalar fields can be
filtered on with :data:`Where` mappings::

    {"lang": "en"}                      # equality
    {"lang": ["en", "de"]}              # any of
    {"chunk": {"$gte": 2, "$lt": 5}}    # range ($gt, $gte, $lt, $lte)

Conditions on several fields are ANDed; a record without the field never matches.

The backends implement :class:`VectorStore` here; :func:`smysl.toolkit.stores.open_store`
picks one for a :class:`StoreConfig`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smysl.tokenize import check_unicode

Where = Mapping[str, Any]
Op = Literal["eq", "in", "gt", "gte", "lt", "lte"]
RANGE_OPS: dict[str, Op] = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
Scalar = str | int | float | bool

#: Payload field a store may keep for itself (Qdrant holds a record's own id there, its point id
#: being a UUID): refused in every store's payloads, so a user's field of that name is never
#: overwritten in one store and kept in another.
ID_FIELD = "_smysl_id"

#: Largest ``|norm - 1|`` a unit vector may show; float32 rounding stays near 1e-6, while a
#: damaged exponent or sign-bit-free garbage lands far outside.
NORM_TOLERANCE = 1e-3
#: Payload field with :func:`vector_digest` of the record's vector (written by ingestion), so
#: damage too small for the norm check (a low mantissa bit) is found as well.
DIGEST_FIELD = "vector_sha"


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as float32 ``[items, dimensions]``; ``ValueError`` unless 2-D and finite."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array [items, dimensions], got shape "
                         f"{x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinity")
    return x


def check_unit(rows: np.ndarray, why: str = "") -> None:
    """``ValueError`` unless every row of ``rows`` ``[n, d]`` has unit length (cosine is then
    the dot product), within :data:`NORM_TOLERANCE`; ``why`` follows "unit length"."""
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        raise ValueError(f"vectors must have unit length{why}: row {int(bad[0])} has norm "
                         f"{float(norms[bad[0]]):.4g} ({len(bad)} such rows)")


def vector_digest(vector: np.ndarray) -> str:
    """Short SHA-256 (hex) of a float32 vector's bytes."""
    return hashlib.sha256(np.asarray(vector, np.float32).tobytes()).hexdigest()[:16]


def vector_problem(vector: np.ndarray, dimensions: int, digest: str | None = None) -> str | None:
    """Why a vector read back cannot be trusted (wrong width, not finite, not unit length, or
    not matching its ``digest``), else None."""
    v = np.asarray(vector, np.float32)
    if v.shape != (dimensions,):
        return f"has shape {v.shape}, not ({dimensions},)"
    if not np.isfinite(v).all():
        return "holds NaN or infinity"
    norm = float(np.linalg.norm(v.astype(np.float64)))  # float64: damage can overflow float32
    if abs(norm - 1.0) > NORM_TOLERANCE:
        return f"has norm {norm:.4g}, not 1"
    if digest is not None and digest != vector_digest(v):
        return "does not match its checksum"
    return None


@dataclass(frozen=True)
class Condition:
    """One normalised filter condition: ``payload[key] <op> value``."""

    key: str
    op: Op
    value: Any


def parse_where(where: Where | None) -> list[Condition]:
    """Validate a :data:`Where` mapping and flatten it into ANDed conditions."""
    if not where:
        return []
    if not isinstance(where, Mapping):
        raise ValueError(f"a filter must be a mapping of field -> condition, got {where!r}")
    out: list[Condition] = []
    for key, cond in where.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter field names must be non-empty strings, got {key!r}")
        _check_text(key, "a filter field name")
        if isinstance(cond, Mapping):
            if not cond:
                raise ValueError(f"empty range condition for {key!r}")
            for name, v in cond.items():
                if name not in RANGE_OPS:
                    raise ValueError(f"unknown filter operator {name!r} for {key!r}; "
                                     f"use one of {sorted(RANGE_OPS)}")
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ValueError(f"range bound {name} for {key!r} must be a number")
                out.append(Condition(key, RANGE_OPS[name], v))
        elif isinstance(cond, list | tuple | set | frozenset):
            values = list(cond)
            if not values or not all(isinstance(v, Scalar) for v in values):
                raise ValueError(f"'any of' filter for {key!r} needs a non-empty list of scalars")
            out.append(Condition(key, "in", values))
        elif isinstance(cond, Scalar):
            out.append(Condition(key, "eq", cond))
        else:
            raise ValueError(f"unsupported filter value for {key!r}: {cond!r}")
    for c in out:  # what no payload holds and no backend's query language can write
        values = c.value if c.op == "in" else [c.value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"filter values for {c.key!r} must be finite numbers, got "
                             f"{c.value!r}")
        for v in values:
            if isinstance(v, str):
                _check_text(v, f"the filter value for {c.key!r}")
    return out


def _check_text(text: str, what: str) -> None:
    """ValueError for a string no store holds in a payload: a lone surrogate (LanceDB failed
    on one as on a damaged table, a 503 for a client's filter). A NUL is a store's to refuse
    or hold (LanceDB and memory hold one in an id; the toolkit deletes by it)."""
    check_unicode(text, what)


def text_queries(queries: Sequence[Sequence[str]], k: int) -> list[list[str]]:
    """The arguments of :meth:`VectorStore.search_text`, checked (every store's): ``k`` >= 1
    and each query a list of terms. A string in place of the list, or of one query, would
    be read letter by letter (a query of one-letter terms, each found nowhere)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(queries, (str, bytes)):
        raise TypeError("search_text takes a list of queries, each a list of terms "
                        "(smysl.toolkit.lexical.analyze of its text), not a string")
    out = []
    for i, query in enumerate(queries):
        terms = None if isinstance(query, (str, bytes)) else list(query)  # an iterator once
        if terms is None or not all(isinstance(t, str) for t in terms):
            raise TypeError(f"query {i} of search_text is not a list of terms (strings): "
                            f"{query!r:.80}; analyse its text with "
                            "smysl.toolkit.lexical.analyze")
        out.append(terms)
    return out


def _same(a: Any, b: Any) -> bool:
    # bool is an int in Python; a filter for True must not match 1 (and backends agree).
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def same_payload(a: Any, b: Any) -> bool:
    """Whether two payload values (nested mappings and lists too) are one value to a filter:
    ``==``, except that a bool never equals a number (Python's ``True == 1``); 1 and 1.0 are
    one value, as stores that widen ints to floats give them back."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping | list | tuple) or isinstance(b, Mapping | list | tuple):
        return False
    if (isinstance(a, float) and isinstance(b, int) and not isinstance(b, bool)) or (
            isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool)):
        # a float PostgreSQL's jsonb gives back as an int (1e23 as 10**23, which == calls
        # another number): one value, as the float it was
        return float(a) == float(b)
    return _same(a, b)


def has_nul(value: Any) -> bool:
    """Whether a payload value (nested mappings and lists, keys too) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any("\x00" in str(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


def record_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` as strings, checked: ``ValueError`` for one no store can hold (a lone
    surrogate: LanceDB took it for a damaged table, the others failed unnamed)."""
    out = [str(i) for i in ids]
    for i in out:
        check_unicode(i, f"the id {i!r}")
    return out


def matches(payload: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Evaluate conditions on one payload (the reference semantics the backends follow)."""
    for c in conditions:
        if c.key not in payload or payload[c.key] is None:
            return False
        v = payload[c.key]
        if c.op == "eq":
            ok = _same(v, c.value)
        elif c.op == "in":
            ok = any(_same(v, x) for x in c.value)
        else:
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                return False
            ok = {"gt": v > c.value, "gte": v >= c.value,
                  "lt": v < c.value, "lte": v <= c.value}[c.op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Record:
    """A stored item: its id, unit vector and payload."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: id, score (higher is closer: the cosine for a vector search, the
    store's BM25 for a search by words), payload, vector when asked."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class StoreConfig:
    """Where vectors live.

    Attributes:
        backend: ``"lancedb"`` (embedded, a folder on disk: the default), ``"qdrant"`` (a Qdrant
            server or cluster, or the client's local mode), ``"postgres"`` (PostgreSQL with
            pgvector) or ``"memory"`` (numpy, exact, gone when the process ends).
        uri: LanceDB folder; for Qdrant a ``http(s)://`` URL, ``":memory:"`` or a local folder;
            for PostgreSQL a DSN (``postgresql://user@host:5432/db`` or ``host=... dbname=...``).
        table: Table (LanceDB, PostgreSQL) or collection (Qdrant) name.
        index: Approximate index LanceDB builds on :meth:`VectorStore.build_index`:
            ``"ivf_hnsw_sq"``, ``"ivf_pq"`` or ``"ivf_flat"``. Qdrant always indexes with HNSW.
        nprobes: IVF partitions LanceDB probes per approximate query (more: better recall).
        refine_factor: LanceDB, and PostgreSQL's ``halfvec``/``binary`` indexes, re-rank
            ``k * refine_factor`` index candidates with full vectors.
        api_key: Qdrant API key (else ``$QDRANT_API_KEY``).
        pg_index: What PostgreSQL's HNSW index is built on: the ``vector`` column (at most
            2,000 dimensions), its ``halfvec`` cast (4,000) or its ``binary`` quantization (any
            width, candidates re-scored exactly); ``auto``: the first that fits.
        hnsw_m, ef_construction: PostgreSQL HNSW build parameters (graph degree, build beam;
            128 rather than pgvector's 64: recall@10 0.90 -> 0.97 on hard 64-d data).
        ef_search: PostgreSQL HNSW search beam per query (more: better recall, slower).
        connect_timeout: Seconds to wait for a PostgreSQL server before giving up.
    """

    backend: Literal["lancedb", "qdrant", "postgres", "memory"] = "lancedb"
    uri: str = ""
    table: str = "chunks"
    index: Literal["ivf_hnsw_sq", "ivf_pq", "ivf_flat"] = "ivf_hnsw_sq"
    nprobes: int = 64
    refine_factor: int = 4
    api_key: str | None = field(default=None, repr=False)
    pg_index: Literal["auto", "vector", "halfvec", "binary"] = "auto"
    hnsw_m: int = 16
    ef_construction: int = 128
    ef_search: int = 256
    connect_timeout: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.table, str) or not self.table.strip():
            # LanceDB took "" and reported a damaged store, with advice to rebuild it
            raise ValueError(f"the table (collection) name must not be empty, got "
                             f"{self.table!r}")
        if self.backend == "lancedb" and (not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", self.table)
                                          or not self.table.strip(".")):
            # LanceDB's own refusal came as a damaged store, with advice to rebuild it (a
            # folder <name>.lance: "." and ".." and long names fail in the file system)
            raise ValueError(f"a LanceDB table name holds only ASCII letters, digits, '_', '-' "
                             f"and '.', at most 200 of them and not dots alone, not "
                             f"{self.table!r} (Qdrant and PostgreSQL take others)")

    def __repr__(self) -> str:
        # the place without secrets (a DSN's password, a URL's user part); no api_key
        from smysl.toolkit.stores import location

        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["uri"] = location(self)
        return f"StoreConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> StoreConfig:
        """``path`` or ``lancedb:path``; ``qdrant:URL|:memory:|path``; ``postgres://...``,
        ``postgresql://...`` or ``postgres:DSN``; ``memory:``."""
        if spec.startswith(("postgres://", "postgresql://")):
            return cls(backend="postgres", uri=spec, **kw)
        head, sep, rest = spec.partition(":")
        if sep and head in ("lancedb", "qdrant", "postgres", "memory"):
            return cls(backend=head, uri=rest, **kw)  # type: ignore[arg-type]
        if spec.startswith(("http://", "https://")):
            return cls(backend="qdrant", uri=spec, **kw)
        return cls(backend="lancedb", uri=spec, **kw)


class VectorStore(abc.ABC):
    """Ids + unit vectors + payloads. Ids are strings; upserting an existing id replaces it."""

    dimensions: int
    #: Whether one store object takes calls from several threads at once (the reads:
    #: :meth:`search`, :meth:`search_text`, :meth:`get`, :meth:`count`, :meth:`scan`,
    #: :meth:`read_meta`). False: one call at a time, which the server keeps by running a
    #: store's calls on one thread (``smysl serve --index-threads``).
    concurrent_reads: bool = False
    #: Whether ids and payloads may hold a NUL character (PostgreSQL's text cannot): where
    #: not, ingestion refuses such a document by name before writing.
    holds_nul: bool = True

    @abc.abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert or replace records; durable once this returns."""

    @abc.abstractmethod
    def search(self, vectors: np.ndarray, k: int = 10, *, where: Where | None = None,
               exact: bool = True, with_vectors: bool = False) -> list[list[Hit]]:
        """Top-``k`` hits per query row (``[n, d]`` or ``[d]``), best first.

        ``exact=True`` scans every candidate (brute force); ``exact=False`` may use an
        approximate index when one exists.
        """

    def search_text(self, queries: Sequence[Sequence[str]], k: int = 10, *,
                    where: Where | None = None, with_vectors: bool = False
                    ) -> list[list[Hit]]:
        """Top-``k`` hits per query by lexical relevance, best first: each query is a list of
        terms (:func:`smysl.toolkit.lexical.analyze` of its text), matched against the terms of
        the records' ``payload["text"]``, which the store analyses the same way when a record
        is written (:func:`~smysl.toolkit.lexical.terms_text`). ``score`` is the backend's
        relevance (BM25, or what it has nearest to it), comparable within one query only. A
        record matching no query term is no hit; a query without terms has none. Every smysl
        store has it; a store of another package may not (``NotImplementedError``).
        """
        raise NotImplementedError(f"{type(self).__name__} has no search by words")

    @abc.abstractmethod
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""

    @abc.abstractmethod
    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        """Delete by ids and/or filter (both: records matching both); returns how many went."""

    @abc.abstractmethod
    def count(self, where: Where | None = None) -> int:
        """Number of records (matching ``where``)."""

    @abc.abstractmethod
    def scan(self, batch_size: int = 2048, *, where: Where | None = None,
             with_vectors: bool = True) -> Iterator[list[Record]]:
        """Every record (matching ``where``) in batches; vectors are empty when not asked."""

    @abc.abstractmethod
    def read_meta(self) -> dict[str, Any]:
        """The index metadata (small JSON: model, dimensions...) saved with
        :meth:`update_meta`; empty when none."""

    @abc.abstractmethod
    def claim_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``meta`` to the metadata unless it is :func:`bound` already, and return what it
        holds then: with ``meta``, or what another process bound it to first (two first
        `smysl index add` runs with two models: one binds the index, the other finds it
        bound)."""

    @abc.abstractmethod
    def update_meta(self, changes: Mapping[str, Any]) -> None:
        """Set the top-level metadata keys in ``changes`` (a value of None removes the key)
        and keep every other key, as one step: processes updating other keys of the same
        store at the same time (drivers of one corpus job) do not undo each other's changes,
        as reading the whole, changing it and writing it back would."""

    def build_index(self) -> bool:
        """Build or refresh an approximate index; True when approximate search will use one."""
        return False

    def optimize(self) -> None:  # noqa: B027 - optional maintenance
        """After many writes: compact storage and bring search structures up to date (LanceDB:
        files and the full-text index; PostgreSQL: the GIN indexes' pending entries and the
        planner's statistics); a no-op where there is nothing to do. Ingestion calls it at
        its end."""

    def close(self) -> None:  # noqa: B027 - nothing to release for most backends
        """Release connections. Safe to call twice."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # helpers shared by backends
    def _check_upsert(self, ids: Sequence[str], vectors: np.ndarray,
                      payloads: Sequence[Mapping[str, Any]] | None
                      ) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        ids = record_ids(ids)
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(ids), self.dimensions):
            raise ValueError(f"expected vectors of shape {(len(ids), self.dimensions)}, "
                             f"got {vecs.shape}")
        check_unit(finite_rows(vecs))
        pays = [dict(p) for p in payloads] if payloads is not None else [{} for _ in ids]
        if len(pays) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(pays)} payloads")
        if any(not i for i in ids):
            raise ValueError("ids must be non-empty strings")
        for i, p in zip(ids, pays, strict=True):
            if ID_FIELD in p:
                raise ValueError(f"the payload of {i!r} has the field {ID_FIELD!r}, which "
                                 "stores keep for themselves; rename it")
            for key, value in p.items():
                if not _finite(value):  # JSON has no NaN: PostgreSQL and Qdrant refuse it,
                    # and a search's JSON output would not parse
                    raise ValueError(f"the payload of {i!r} has NaN or infinity in {key!r}")
        # Last write wins inside one batch, as it would across batches.
        last = {i: n for n, i in enumerate(ids)}
        if len(last) != len(ids):
            keep = sorted(last.values())
            ids, vecs, pays = [ids[n] for n in keep], vecs[keep], [pays[n] for n in keep]
        return ids, vecs, pays

    def _queries(self, vectors: np.ndarray, k: int) -> np.ndarray:
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dimensions:
            raise ValueError(f"query vectors must have {self.dimensions} columns, got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return q


def _finite(value: Any) -> bool:
    """Whether ``value`` (a payload value: nested lists and mappings too) holds no NaN or
    infinite float."""
    if isinstance(value, float | np.floating):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


class StoreError(ValueError):
    """The database behind a store failed, refused a call or could not be reached (its
    message names the place, never a password): not a problem of the index's contents, so
    "rebuild it" is no answer to it. A served index answers 503 with it."""


def local_path(uri: str) -> Path | None:
    """The local folder a URI names, or None for remote/in-memory URIs."""
    if not uri or uri == ":memory:" or "://" in uri:
        return None
    return Path(uri).expanduser()


def merged_meta(meta: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with ``changes`` applied as :meth:`VectorStore.update_meta` defines them."""
    out = dict(meta)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def bound(meta: Mapping[str, Any]) -> bool:
    """Whether index metadata names the model it was built with (keys other writers add, such
    as a corpus job's shard records, do not bind it)."""
    return bool(meta.get("fingerprint") or meta.get("model"))
