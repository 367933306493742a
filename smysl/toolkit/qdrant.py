"""Qdrant store: scale-out on a Qdrant server or cluster (or the client's local mode for tests).

Qdrant point ids must be integers or UUIDs, so a string id maps to ``uuid5(namespace, id)`` and the
original id travels in the payload under :data:`~smysl.toolkit.store.ID_FIELD`. Index metadata
lives in the collection's own ``metadata``. Qdrant maintains its HNSW index itself;
``exact=True`` asks it for a full scan.

Lexical search keeps each record's BM25 term weights (of ``payload["text"]``, analysed by
:mod:`~smysl.toolkit.lexical`) in the named sparse vector :data:`TEXT_VECTOR`, beside the unnamed
dense one; Qdrant multiplies them by the IDF it keeps itself (``Modifier.IDF``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from smysl.shown import first_line, redacted, shown_url, url_secrets
from smysl.toolkit import lexical
from smysl.toolkit._deps import INSTALL_HINT
from smysl.toolkit.store import (
    ID_FIELD,
    Condition,
    Hit,
    Record,
    StoreConfig,
    StoreError,
    VectorStore,
    Where,
    bound,
    parse_where,
    record_ids,
    text_queries,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")

_NAMESPACE = uuid.UUID("6f1d0c8e-5b7a-4a8e-9a51-2f0f8d6c1e37")
#: The named sparse vector with a record's term weights.
TEXT_VECTOR = "text_terms"
#: Qdrant's name for a collection's unnamed (dense) vector.
_DENSE = ""
#: Document length (in terms) BM25's length normalisation divides by. Qdrant supplies the IDF
#: but not the collection's mean length, and a weight stored with a point cannot follow a mean
#: that every write moves. So the weights are written over a mean kept in the collection's
#: metadata (:data:`AVG_KEY`): its first write's (:data:`AVG_SAMPLE` texts or more), this
#: (fastembed's Qdrant/bm25 default) where that write was smaller or the collection is older;
#: and :meth:`QdrantStore.optimize` (the end of an ingestion) rewrites them all over the
#: collection's own mean once the texts written since have moved it by :data:`REWEIGH_DRIFT`.
#: A fixed 256 over chunks of ~30-100 terms reordered 15 of 19 XQuAD questions' top 10
#: against BM25 over the same terms.
AVG_TERMS = 256.0
#: The collection metadata key of the mean length its term weights were written with.
AVG_KEY = "bm25_mean_terms"
#: Metadata keys of the terms and texts (with terms) written since the weights' mean was
#: set: a replaced or deleted point is not taken off, so they only estimate the drift.
_WRITTEN = ("bm25_written_terms", "bm25_written_texts")
#: Texts with terms a first write needs for its mean to become the collection's.
AVG_SAMPLE = 16
#: Relative drift of the mean length that makes :meth:`QdrantStore.optimize` rewrite the weights.
REWEIGH_DRIFT = 0.1


def _number(value: Any) -> float | None:
    """A metadata value as a float; None for anything else (a bool, a string, absent)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def point_id(record_id: str) -> str:
    """The Qdrant point id (a UUID string) for a smysl record id."""
    return str(uuid.uuid5(_NAMESPACE, record_id))


@functools.lru_cache(maxsize=1 << 16)
def term_index(term: str) -> int:
    """The sparse-vector index of a term: 32 bits of its BLAKE2b, the same in every process
    (``hash()`` is salted per process). Stored in collections: changing it needs a rebuild."""
    return int.from_bytes(hashlib.blake2b(term.encode()).digest()[:4], "big")


def term_weights(text: Any, mean_terms: float = AVG_TERMS) -> dict[int, float]:
    """The sparse vector of a record's text, ``{term_index: weight}``: the term-frequency part
    of BM25 (:func:`~smysl.toolkit.lexical.tf_weight`, over ``mean_terms``, the collection's
    mean length); empty for a record without text. Terms that share an index (a hash
    collision) add up."""
    return _weights(lexical.record_terms(text), mean_terms)


def _weights(terms: Sequence[str], mean_terms: float) -> dict[int, float]:
    out: dict[int, float] = {}
    for term, tf in Counter(terms).items():
        i = term_index(term)
        out[i] = out.get(i, 0.0) + lexical.tf_weight(tf, len(terms), mean_terms)
    return out


class QdrantStoreError(StoreError):
    """A Qdrant server that cannot be reached or refused a call; the message names it (without
    credentials) and gives Qdrant's reason. A served index answers 503 with it."""


def _qdrant_errors(method: Callable[Concatenate[QdrantStore, _P], _R]
                   ) -> Callable[Concatenate[QdrantStore, _P], _R]:
    """The Qdrant client's errors (an HTTP status, a connection refused) of ``method`` as a
    :class:`QdrantStoreError`."""

    @functools.wraps(method)
    def call(self: QdrantStore, *args: _P.args, **kw: _P.kwargs) -> _R:
        with self._server_errors():
            return method(self, *args, **kw)

    return call


def _import() -> Any:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as e:
        raise ImportError(f"the Qdrant store needs qdrant-client: {INSTALL_HINT}") from e
    return QdrantClient, models


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _path(key: str) -> str:
    """Qdrant's path to the top-level payload field ``key``: quoted unless it is a plain name,
    as Qdrant reads ``.`` and ``[]`` as steps into nested payloads (``v1.2`` matched nothing,
    ``Year Published`` was an invalid path)."""
    if _PLAIN_KEY.match(key):
        return key
    if '"' in key:
        raise ValueError(f"filter field {key!r}: Qdrant has no way to name a field with a "
                         "double quote in a filter; rename it")
    return f'"{key}"'


class QdrantStore(VectorStore):
    """A Qdrant collection with dot-product distance (cosine on unit vectors)."""

    def __init__(self, config: StoreConfig, dimensions: int | None = None, *,
                 replace: bool = False) -> None:
        client_cls, self._m = _import()
        self.config = config
        uri = config.uri or ":memory:"
        #: Local mode is always an exact scan and warns about search parameters.
        self.remote = uri.startswith(("http://", "https://"))
        #: A server takes calls from several threads at once (the REST client's connection
        #: pool is thread-safe); the local mode is one process's in-memory engine: one call
        #: at a time.
        self.concurrent_reads = self.remote
        #: The store's place in messages: a server's URL without credentials.
        self.where = shown_url(uri) if self.remote else f"qdrant:{uri}"
        self._secrets: list[str] = []
        self._closed = False
        if uri == ":memory:":
            self.client = client_cls(":memory:")
        elif uri.startswith(("http://", "https://")):
            api_key = config.api_key or os.environ.get("QDRANT_API_KEY")
            self._secrets = [api_key or "", *url_secrets(uri)]
            try:
                self.client = client_cls(url=uri, api_key=api_key)
            except ValueError as e:  # a URL it cannot parse, quoted whole
                first = first_line(e)
                raise ValueError(f"bad Qdrant URL {self.where}: "
                                 f"{redacted(first, self._secrets)}") from None
        else:
            try:
                self.client = client_cls(path=uri)
            except RuntimeError as e:
                if "already accessed" not in str(e):
                    raise
                raise ValueError(
                    f"qdrant:{uri}: another process has this local Qdrant folder open (a "
                    f"server, an index add or search); Qdrant's local mode is one process at "
                    f"a time: wait for it, or use a Qdrant server (qdrant:http://HOST:6333) "
                    f"for several") from None
        self.collection = config.table
        try:
            with self._server_errors():
                self._open(dimensions, replace)
        except BaseException:
            self.client.close()  # local mode holds a folder lock until closed
            raise

    @contextlib.contextmanager
    def _server_errors(self) -> Iterator[None]:
        """A Qdrant server's failures as :class:`QdrantStoreError`: an HTTP status (429
        included), no answer (refused, timed out, reset), or an answer the client cannot read
        (not JSON, a result missing, another shape)."""
        import json

        from pydantic import ValidationError
        from qdrant_client.common.client_exceptions import QdrantException
        from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

        def failed(what: str, e: BaseException) -> QdrantStoreError:
            first = first_line(e)
            return QdrantStoreError(f"{what} {self.where}: {redacted(first, self._secrets)}")

        if self._closed:
            raise QdrantStoreError(f"the store of {self.where} is closed")
        try:
            try:
                yield
            except Exception:
                if self._closed:  # close() from another thread, mid-call: not Qdrant's fault
                    raise QdrantStoreError(f"the store of {self.where} is closed") from None
                raise
        except UnexpectedResponse as e:
            why = f"HTTP {e.status_code} {e.reason_phrase}".strip()
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                why += f": {e.structured()['status']['error']}"
            raise failed("Qdrant at", ValueError(why)) from None
        except ApiException as e:
            cause = getattr(e, "source", e)
            if isinstance(cause, ValidationError | ValueError):
                raise failed("bad answer from Qdrant at", cause) from None
            raise failed("cannot reach Qdrant at", cause) from None
        except QdrantException as e:  # 429 with Retry-After (ResourceExhaustedResponse)
            raise failed("Qdrant at", e) from None
        except (json.JSONDecodeError, ValidationError, AssertionError) as e:
            if not self.remote:
                raise
            # a proxy's HTML page, "result": null (the client asserts it is there)
            raise failed("bad answer from Qdrant at", e) from None

    def _open(self, dimensions: int | None, replace: bool) -> None:
        if replace and dimensions is not None and self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)  # its metadata goes with it
        if self.client.collection_exists(self.collection):
            params = self.client.get_collection(self.collection).config.params
            dims = int(params.vectors.size)
            if dimensions is not None and dims != dimensions:
                raise ValueError(f"collection {self.collection!r} holds {dims}-d vectors, "
                                 f"not {dimensions}-d")
            self.dimensions = dims
            self._lexical = TEXT_VECTOR in (params.sparse_vectors or {})
            self._tried_adding = False
        else:
            if dimensions is None:
                raise FileNotFoundError(f"no collection {self.collection!r} at {self.where}")
            self._create(int(dimensions))

    def _create(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.client.create_collection(
            self.collection,
            vectors_config=self._m.VectorParams(size=self.dimensions,
                                                distance=self._m.Distance.DOT),
            sparse_vectors_config={TEXT_VECTOR: self._m.SparseVectorParams(
                modifier=self._m.Modifier.IDF)})
        self._lexical = True
        self._tried_adding = False

    def _has_text_vector(self) -> bool:
        params = self.client.get_collection(self.collection).config.params
        return TEXT_VECTOR in (params.sparse_vectors or {})

    def _add_text_vector(self) -> bool:
        """Give a collection made before lexical search its sparse vector; whether it has one
        now. ``update_collection`` only tunes vectors that exist, ``create_vector_name`` adds
        one (local mode, or a server from Qdrant 1.18 on). Points written before it keep none
        until they are written again."""
        self._tried_adding = True  # once per store: an older server refuses every time
        m = self._m
        config = m.SparseVectorNameConfig(sparse=m.SparseVectorConfig(modifier=m.Modifier.IDF))
        # Adding a vector that exists with this schema is a no-op, so two writers racing here
        # both succeed. Whatever refuses (an older server, a read-only key), the re-read below
        # says whether the collection has the vector.
        with contextlib.suppress(Exception):
            self.client.create_vector_name(self.collection, TEXT_VECTOR, config)
        return self._has_text_vector()

    def _filter(self, conditions: Sequence[Condition], ids: Sequence[str] | None = None) -> Any:
        m = self._m
        must: list[Any] = []
        for c in conditions:
            key = _path(c.key)
            if c.op == "eq" or c.op == "in":
                alts = self._any_of(key, c.value if c.op == "in" else [c.value])
                must.append(alts[0] if len(alts) == 1 else m.Filter(should=alts))
            else:
                must.append(m.FieldCondition(key=key, range=m.Range(**{c.op: c.value})))
        if ids is not None:
            must.append(m.HasIdCondition(has_id=[point_id(i) for i in ids]))
        return m.Filter(must=must) if must else None

    def _any_of(self, key: str, values: Sequence[Any]) -> list[Any]:
        """Conditions, to be ORed, that ``payload[key]`` equals one of ``values`` as
        :func:`~smysl.toolkit.store.matches` has it: a bool only a bool, a string only a string,
        a number any equal number, int or float. Qdrant keeps those types apart: a match takes
        one string or int (``MatchAny`` all strings or all ints) and never finds a float, so
        each type gets its own condition and numbers are closed ranges, which compare int and
        float payloads alike and skip bools. A range compares as a float: an int beyond 2**53,
        which no float holds exactly, is matched exactly instead (a timestamp in ns, an id),
        up to Qdrant's 64-bit signed ints; one beyond those (no payload int can hold it, Qdrant
        refuses the match) stays a range, which finds a float payload of its value."""
        m = self._m
        strings = list(dict.fromkeys(v for v in values if isinstance(v, str)))
        bools = list(dict.fromkeys(v for v in values if isinstance(v, bool)))
        numbers = list(dict.fromkeys(v for v in values if not isinstance(v, str | bool)))
        huge = [v for v in numbers
                if isinstance(v, int) and abs(v) > 2**53 and -(2**63) <= v < 2**63]
        numbers = [v for v in numbers if v not in huge]
        alts: list[Any] = []
        if strings:
            alts.append(m.FieldCondition(key=key, match=m.MatchAny(any=strings))
                        if len(strings) > 1 else
                        m.FieldCondition(key=key, match=m.MatchValue(value=strings[0])))
        alts += [m.FieldCondition(key=key, match=m.MatchValue(value=b)) for b in bools]
        alts += [m.FieldCondition(key=key, match=m.MatchValue(value=v)) for v in huge]
        alts += [m.FieldCondition(key=key, range=m.Range(gte=v, lte=v)) for v in numbers]
        return alts

    @_qdrant_errors
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        ids, vecs, pays = self._check_upsert(ids, vectors, payloads)
        if not ids:
            return
        if not self._lexical and not self._tried_adding:
            self._lexical = self._add_text_vector()
        terms = [lexical.record_terms(p.get("text")) if self._lexical else [] for p in pays]
        mean = self._mean_terms(terms) if self._lexical else AVG_TERMS
        points = [self._m.PointStruct(id=point_id(i), vector=self._vectors(v, t, mean),
                                      payload={**p, ID_FIELD: i})
                  for i, v, p, t in zip(ids, vecs, pays, terms, strict=True)]
        self.client.upsert(self.collection, points=points, wait=True)

    def _mean_terms(self, terms: Sequence[Sequence[str]]) -> float:
        """The mean length the collection's term weights are written with (:data:`AVG_TERMS`):
        its metadata's, else (its first write) that of the texts of ``terms``; the terms and
        texts written are added to the metadata's tally (:data:`_WRITTEN`)."""
        meta = self._raw_meta()
        lengths = [len(t) for t in terms if t]
        held = _number(meta.get(AVG_KEY))
        tally = [_number(meta.get(k)) or 0.0 for k in _WRITTEN]
        counted = {_WRITTEN[0]: tally[0] + sum(lengths), _WRITTEN[1]: tally[1] + len(lengths)}
        if held is not None and held > 0:
            self.update_meta(counted)
            return held
        first = len(lengths) >= AVG_SAMPLE and self.count() == 0
        self.update_meta({AVG_KEY: sum(lengths) / len(lengths) if first else AVG_TERMS,
                          **counted})
        # two first writes at once (no conditional write in Qdrant): both take the mean the
        # metadata holds now, but for one that read it before the other wrote (its points
        # keep its own mean, and optimize() sees no drift in that)
        return self.bm25_mean_terms() or AVG_TERMS

    def _vectors(self, vector: np.ndarray, terms: Sequence[str], mean: float) -> Any:
        """A point's vectors: the dense one, with the text's term weights where the collection
        has room for them (a collection made before lexical search may not)."""
        if not self._lexical:
            return vector.tolist()
        weights = _weights(terms, mean)
        if not weights:  # a record without terms is no lexical hit: it needs no sparse vector
            return {_DENSE: vector.tolist()}
        indices = sorted(weights)
        return {_DENSE: vector.tolist(), TEXT_VECTOR: self._m.SparseVector(
            indices=indices, values=[weights[i] for i in indices])}

    @staticmethod
    def _payload(raw: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
        p = dict(raw or {})
        return str(p.pop(ID_FIELD, "")), p

    @staticmethod
    def _dense(raw: Any) -> np.ndarray:
        # A point of a collection with the sparse vector comes with a dict of its vectors by
        # name (the dense one under ""), one of an older collection with the dense list. All
        # are asked for (True), not [""]: that a server takes "" as a name to select is not
        # tested here, and a sparse vector is small.
        return np.asarray(raw[_DENSE] if isinstance(raw, Mapping) else raw, np.float32)

    def _hits(self, points: Sequence[Any], with_vectors: bool) -> list[Hit]:
        hits = []
        for p in points:
            rid, pay = self._payload(p.payload)
            hits.append(Hit(rid, float(p.score), pay,
                            self._dense(p.vector) if with_vectors else None))
        return hits

    @_qdrant_errors
    def search(self, vectors: np.ndarray, k: int = 10, *, where: Where | None = None,
               exact: bool = True, with_vectors: bool = False) -> list[list[Hit]]:
        q = self._queries(vectors, k)
        flt = self._filter(parse_where(where))
        params = self._m.SearchParams(exact=exact) if self.remote else None
        out: list[list[Hit]] = []
        for s in range(0, len(q), 64):
            requests = [self._m.QueryRequest(query=v.tolist(), filter=flt, limit=k,
                                             params=params, with_payload=True,
                                             with_vector=with_vectors)
                        for v in q[s : s + 64]]
            for res in self.client.query_batch_points(self.collection, requests=requests):
                out.append(self._hits(res.points, with_vectors))
        return out

    @_qdrant_errors
    def search_text(self, queries: Sequence[Sequence[str]], k: int = 10, *,
                    where: Where | None = None, with_vectors: bool = False
                    ) -> list[list[Hit]]:
        """BM25 with Qdrant's IDF over the whole collection (not only the records ``where``
        leaves) and the mean length its weights were written over (:data:`AVG_TERMS`)."""
        queries = text_queries(queries, k)
        if not self._lexical:  # another process may have added it since this one looked
            self._lexical = self._has_text_vector()
            if not self._lexical:
                raise ValueError(f"qdrant collection {self.collection!r} was created before "
                                 f"lexical search and has no term index: rebuild it (smysl "
                                 f"index add --rebuild)")
        flt = self._filter(parse_where(where))
        m = self._m
        out: list[list[Hit]] = [[] for _ in queries]
        asked = [(n, sorted({term_index(t) for t in terms}))
                 for n, terms in enumerate(queries) if terms]
        for s in range(0, len(asked), 64):
            # each distinct term once, weight 1: the score is the sum of its IDF * stored weight
            requests = [m.QueryRequest(query=m.SparseVector(indices=ix, values=[1.0] * len(ix)),
                                       using=TEXT_VECTOR, filter=flt, limit=k, with_payload=True,
                                       with_vector=with_vectors)
                        for _, ix in asked[s : s + 64]]
            results = self.client.query_batch_points(self.collection, requests=requests)
            for (n, _), res in zip(asked[s : s + 64], results, strict=True):
                out[n] = self._hits(res.points, with_vectors)
        return out

    @_qdrant_errors
    def get(self, ids: Sequence[str]) -> list[Record]:
        ids = record_ids(ids)
        found: dict[str, Record] = {}
        for s in range(0, len(ids), 1000):
            for p in self.client.retrieve(self.collection, [point_id(i) for i in ids[s : s + 1000]],
                                          with_payload=True, with_vectors=True):
                rid, pay = self._payload(p.payload)
                found[rid] = Record(rid, self._dense(p.vector), pay)
        return [found[i] for i in ids if i in found]

    @_qdrant_errors
    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        if ids is None and not where:
            raise ValueError("delete needs ids or a filter")
        flt = self._filter(parse_where(where), record_ids(ids) if ids is not None else None)
        n = self.client.count(self.collection, count_filter=flt, exact=True).count
        if not n:
            return 0
        lengths = self._term_lengths(flt) if self._lexical else []
        self.client.delete(self.collection, points_selector=self._m.FilterSelector(filter=flt),
                           wait=True)
        if lengths:
            # the tally (_WRITTEN) counted these texts in: deleting the 150 longest of 413
            # left the mean length where it was, and word scores off by up to 3 of 15; the
            # next optimize() (Index.delete's, an ingestion's end) reweighs past the drift
            meta = self._raw_meta()
            tally = [_number(meta.get(k)) or 0.0 for k in _WRITTEN]
            self.update_meta({_WRITTEN[0]: max(0.0, tally[0] - sum(lengths)),
                              _WRITTEN[1]: max(0.0, tally[1] - len(lengths))})
        return int(n)

    def _term_lengths(self, flt: Any) -> list[int]:
        """The number of terms of each point matching ``flt`` that has any."""
        lengths, offset = [], None
        while True:
            with self._server_errors():
                points, offset = self.client.scroll(self.collection, scroll_filter=flt,
                                                    limit=2048, offset=offset,
                                                    with_payload=["text"], with_vectors=False)
            lengths += [n for p in points
                        if (n := len(lexical.record_terms((p.payload or {}).get("text"))))]
            if offset is None:
                return lengths

    @_qdrant_errors
    def count(self, where: Where | None = None) -> int:
        flt = self._filter(parse_where(where))
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def scan(self, batch_size: int = 2048, *, where: Where | None = None,
             with_vectors: bool = True) -> Iterator[list[Record]]:
        flt = self._filter(parse_where(where))
        offset = None
        empty = np.zeros(0, np.float32)
        while True:
            with self._server_errors():
                points, offset = self.client.scroll(self.collection, scroll_filter=flt,
                                                    limit=batch_size, offset=offset,
                                                    with_payload=True,
                                                    with_vectors=with_vectors)
            if points:
                batch = []
                for p in points:
                    rid, pay = self._payload(p.payload)
                    batch.append(Record(rid, self._dense(p.vector) if with_vectors else empty,
                                        pay))
                yield batch
            if offset is None:
                return

    @_qdrant_errors
    def optimize(self) -> None:
        """Rewrite every point's term weights over the collection's own mean length when the
        texts written since they were set suggest it moved by more than :data:`REWEIGH_DRIFT`
        (an ingestion's first batch, English chunks of 72 terms, set 72 for a corpus whose
        mean was 28) and a scan of the texts confirms it; then their sparse vectors alone are
        written. The tally is reset to the scan's counts either way. A point another process
        writes during the rewrite may keep weights over the earlier mean (and be left out of
        the tally) until the next rewrite; one it deletes is skipped."""
        if not self._lexical:
            return
        meta = self._raw_meta()
        mean, terms, texts = (_number(meta.get(k)) for k in (AVG_KEY, *_WRITTEN))
        if not (mean and terms and texts) or abs(terms / texts - mean) <= REWEIGH_DRIFT * mean:
            return
        lengths = [len(lexical.record_terms(r.payload.get("text")))
                   for batch in self.scan(with_vectors=False) for r in batch]
        lengths = [n for n in lengths if n]
        exact = sum(lengths) / len(lengths) if lengths else mean
        if abs(exact - mean) > REWEIGH_DRIFT * mean:  # replaced points inflate the tally
            for batch in self.scan(with_vectors=False):
                self._reweigh(batch, exact)
        else:
            exact = mean
        self.update_meta({AVG_KEY: exact, _WRITTEN[0]: float(sum(lengths)),
                          _WRITTEN[1]: float(len(lengths))})

    def _reweigh(self, batch: list[Record], mean: float) -> None:
        """Write the term weights over ``mean`` of the points of ``batch`` that have terms."""
        m = self._m
        points = [m.PointVectors(id=point_id(r.id), vector={TEXT_VECTOR: m.SparseVector(
            indices=sorted(w), values=[w[i] for i in sorted(w)])})
            for r in batch if r.id and (w := term_weights(r.payload.get("text"), mean))]
        if not points:
            return
        try:
            self.client.update_vectors(self.collection, points=points, wait=True)
        except Exception:
            # a point deleted since the scan (another process's ingestion) fails the whole
            # call (a server's 404, local mode's KeyError): the others, once more
            held = {p.id for p in self.client.retrieve(
                self.collection, [p.id for p in points], with_payload=False)}
            left = [p for p in points if p.id in held]
            if len(left) == len(points):
                raise
            if left:
                self.client.update_vectors(self.collection, points=left, wait=True)

    @_qdrant_errors
    def build_index(self) -> bool:
        """Qdrant maintains its HNSW index itself (a server does; local mode is always exact)."""
        return self.remote

    @_qdrant_errors
    def read_meta(self) -> dict[str, Any]:
        # the index's metadata: the store's own BM25 keys are not part of it
        return {k: v for k, v in self._raw_meta().items() if k not in (AVG_KEY, *_WRITTEN)}

    def _raw_meta(self) -> dict[str, Any]:
        info = self.client.get_collection(self.collection)
        return dict(info.config.metadata or {})

    @_qdrant_errors
    def bm25_mean_terms(self) -> float | None:
        """The mean length (terms) the collection's term weights were written over
        (:data:`AVG_TERMS`); None before its first write of a text."""
        return _number(self._raw_meta().get(AVG_KEY))

    @_qdrant_errors
    def claim_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        # Qdrant has no conditional write of collection metadata: two processes binding a new
        # collection in the same instant may both write (the index's checks before each write
        # batch and search then stop the loser). A local folder is one process's anyway.
        held = self.read_meta()
        if bound(held):
            return held
        self.update_meta(meta)
        return self.read_meta()

    @_qdrant_errors
    def update_meta(self, changes: Mapping[str, Any]) -> None:
        # Qdrant's own merge (a null removes the key) is one step on the server.
        self.client.update_collection(self.collection, metadata=dict(changes))

    def close(self) -> None:
        self._closed = True
        self.client.close()
