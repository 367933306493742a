"""PostgreSQL + pgvector store: the database most teams already run.

Layout of a table: ``id`` (text, primary key), ``embedding`` (``vector(d)``: the float32 rows
exactly, as the index's checksums need) and ``payload`` (JSONB, every field). Filters are SQL on
the payload: equality and "any of" are JSONB containment (``payload @> '{"lang": "en"}'``, served
by a GIN index), ranges compare numbers only. Writes are binary ``COPY`` into a temporary table
followed by one ``INSERT ... ON CONFLICT (id) DO UPDATE`` (upsert by chunk id), in one
transaction. Index metadata lives in the ``smysl_meta`` table, one row per table.

Lexical search (:meth:`PostgresStore.search_text`): ``terms`` (``tsvector``, GIN-indexed) holds
the terms of ``payload["text"]`` as smysl's one analyser makes them (:mod:`smysl.toolkit.lexical`),
written as they are: no PostgreSQL text search configuration re-parses or re-stems them. Rows
are ranked by BM25 with table-wide statistics that cost no scan of the rows a query matches
(the row count and ``ANALYZE``'s share of rows holding each common term from the planner's
statistics, rarer terms counted through the index, the mean row length once per ``ANALYZE``),
lengths in distinct terms. The rows holding the rarest query terms are scored first, then
only the rows holding a set of the other terms that could still lift a row into the top k
(MaxScore): exact for those statistics. Tables of an earlier smysl get the column and index
when opened; their rows match nothing until written again.

:meth:`PostgresStore.build_index` builds an HNSW index (cosine). pgvector indexes at most 2,000
dimensions of ``vector`` and 4,000 of ``halfvec``, so the index is built on the column itself,
on its ``halfvec`` cast, or on its binary quantization (``binary_quantize``, any width); the last
two fetch ``k * refine_factor`` candidates and re-score them exactly on the stored vectors.
``exact=True`` orders by inner product, which no index serves: a full scan.

The index settings may ride in the DSN, so that ``smysl index add/search postgres:...`` takes
them without flags (:func:`split_options`): ``postgres://me@db/kb?index=binary&m=32&
ef_construction=200&ef_search=100&refine_factor=8``, or the same words in a ``key=value``
connection string. They override the :class:`StoreConfig` fields and never reach libpq. Without
``index``, approximate search uses whichever HNSW index the table has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np

from smysl.shown import first_line, split_user
from smysl.toolkit import lexical
from smysl.toolkit.store import (
    Condition,
    Hit,
    Record,
    StoreConfig,
    StoreError,
    VectorStore,
    Where,
    has_nul,
    parse_where,
    record_ids,
    text_queries,
)

INSTALL_HINT = "pip install 'smysl[postgres]'"
META_TABLE = "smysl_meta"
#: pgvector's limits: HNSW on ``vector`` / ``halfvec`` columns, and a ``vector`` column at all.
MAX_VECTOR_INDEX = 2000
MAX_HALFVEC_INDEX = 4000
MAX_VECTOR_COLUMN = 16000
#: Binary codes keep one bit per dimension: re-score this many times more candidates than
#: ``refine_factor`` alone asks for, or recall collapses.
BINARY_OVERSAMPLE = 4
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
#: Word search: the mean row length is exact up to this many rows, else from a sample of about
#: this many (off by a fraction of a percent: every score moves alike, near-ties may swap).
AVGDL_SAMPLE_ROWS = 20_000
#: The rows of the rarest query terms are scored first, those terms up to this many rows'
#: worth, at least one term (:meth:`PostgresStore._top_by_words`).
TEXT_FIRST_ROWS = 1_000
#: The most sets of terms one statement looks for (:func:`_term_sets`): PostgreSQL checks each
#: row holding any of their terms against every set (16 measured best of 8, 16, 32 and 64).
TEXT_MAX_SETS = 16
#: Steps of the search for those sets (:func:`_minimal_sets`, under 1 us each): past them, the
#: terms are taken as the top k is filled.
_TERM_SETS_STEPS = 5000
#: Rows' terms larger than this (bytes stored, on average) are likely compressed or kept out
#: of line (TOAST): read them once per row, not once per function that looks at them.
TEXT_INLINE_BYTES = 1000
#: tsvector limits: positions run 1..16383 (later ones read as 16383), a lexeme keeps at most
#: 256 of them, and lexemes with their positions take under 1 MiB in all.
_MAX_POSITION = 16383
_MAX_POSITIONS = 256
_MAX_TSVECTOR_BYTES = (1 << 20) - 1
_POSITION_TEXT = [str(n) for n in range(_MAX_POSITION + 1)]


#: Bytes a row keeps besides its vector once its text and terms went out of line (tuple
#: header, the id, two TOAST pointers): a vector stays in the row (storage MAIN) where it fits
#: a page with this much room, up to 1,958 dimensions with 8 KB pages.
ROW_ROOM = 320


#: pgvector's HNSW build defaults (what an index built without options has).
_PG_DEFAULTS = {"m": "16", "ef_construction": "64"}
#: Index settings a DSN may carry -> the :class:`StoreConfig` field each sets.
DSN_OPTIONS = {"index": "pg_index", "pg_index": "pg_index", "m": "hnsw_m", "hnsw_m": "hnsw_m",
               "ef_construction": "ef_construction", "ef_search": "ef_search",
               "refine_factor": "refine_factor"}
INDEX_KINDS = ("auto", "vector", "halfvec", "binary")
#: pgvector's accepted ranges (hnsw.ef_search is at most 1,000 too).
_RANGES = {"hnsw_m": (2, 100), "ef_construction": (4, 1000), "ef_search": (1, 1000),
           "refine_factor": (1, 1000)}
# one ``key = value`` word of a libpq connection string; a value is quoted or runs to a space
_WORD = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"
                   r"(?P<value>'(?:[^'\\]|\\.)*'|[^\s']*)")


#: What :func:`place` names a DSN libpq cannot parse.
UNPARSABLE = "<unparsable DSN>"


def _holdable(ids: list[str]) -> list[str]:
    """The ids a table can hold: one with a NUL is none (PostgreSQL text holds no NUL, and
    upsert refuses it), so it is not found, as any absent id, rather than an error of the
    database's."""
    return [i for i in ids if "\x00" not in i]


class PostgresStoreError(StoreError):
    """A PostgreSQL store that cannot be reached or used; the message names the server."""


def _import() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise ImportError(f"the PostgreSQL store needs psycopg 3: {INSTALL_HINT}") from e
    return psycopg


def dsn_of(uri: str) -> str:
    """The DSN a store URI names: ``postgres://...``/``postgresql://...`` URLs or
    ``key=value`` connection strings pass through; empty means libpq's defaults ($PGHOST...)."""
    return "postgresql://" + uri[len("postgres://"):] if uri.startswith("postgres://") else uri


def split_options(uri: str) -> tuple[str, dict[str, Any]]:
    """(the DSN libpq sees, the index settings it carried as :class:`StoreConfig` fields).

    Settings (:data:`DSN_OPTIONS`): ``index`` (``auto``, ``vector``, ``halfvec``, ``binary``:
    what the HNSW index is built on), ``m`` and ``ef_construction`` (its build parameters),
    ``ef_search`` (the search beam) and ``refine_factor`` (candidates re-scored per hit for the
    ``halfvec``/``binary`` indexes): URL query parameters (``postgres://h/db?m=32&ef_search=100``)
    or words of a ``key=value`` string (``host=h dbname=db m=32``). Every other parameter is
    left, byte for byte, for libpq. A bad value raises ValueError naming it.
    """
    found: dict[str, str] = {}
    if uri.startswith(("postgres://", "postgresql://")):
        base, sep, query = uri.partition("?")
        kept = []
        for part in query.split("&") if sep else []:
            key, _, value = part.partition("=")
            name = unquote(key).strip().lower()
            if name in DSN_OPTIONS:
                found[name] = unquote(value)
            elif part:
                kept.append(part)
        dsn = base + ("?" + "&".join(kept) if kept else "")
    else:
        pieces, last = [], 0
        for m in _WORD.finditer(uri):
            if m.group("key").lower() in DSN_OPTIONS:
                value = m.group("value")
                if value.startswith("'"):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                found[m.group("key").lower()] = value
                pieces.append(uri[last : m.start()])
                last = m.end()
        dsn = "".join([*pieces, uri[last:]]).strip() if found else uri
    return dsn, _settings(found)


def _settings(found: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in found.items():
        field = DSN_OPTIONS[key]
        if field in out:
            raise ValueError(f"the DSN sets {field} twice")
        value = raw.strip()
        if field == "pg_index":
            if value.lower() not in INDEX_KINDS:
                raise ValueError(f"DSN parameter {key}={raw!r}: use one of "
                                 f"{', '.join(INDEX_KINDS)}")
            out[field] = value.lower()
            continue
        lo, hi = _RANGES[field]
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise ValueError(f"DSN parameter {key}={raw!r}: expected an integer in {lo}..{hi}")
        out[field] = int(value)
    return out


def check_settings(config: StoreConfig) -> None:
    """pgvector's rules for the HNSW settings: a clear error instead of the server's."""
    for field, (lo, hi) in _RANGES.items():
        value = getattr(config, field)
        if not lo <= value <= hi:
            raise ValueError(f"{field}={value}: pgvector takes {lo}..{hi}")
    if config.ef_construction < 2 * config.hnsw_m:
        raise ValueError(f"ef_construction={config.ef_construction} must be at least twice "
                         f"m={config.hnsw_m} (pgvector)")


def place(uri: str) -> str:
    """``host:port/dbname`` of a DSN, without the password, for messages (and reprs: without
    psycopg installed too)."""
    try:
        psycopg = _import()
    except ImportError:
        info = _rough_conninfo(dsn_of(uri))
    else:
        try:
            info = psycopg.conninfo.conninfo_to_dict(dsn_of(split_options(uri)[0]))
        except (psycopg.ProgrammingError, ValueError):
            return UNPARSABLE
    # a password with an unescaped '@' ends up in libpq's host: never show what precedes it
    host = (info.get("host") or "localhost").rpartition("@")[2]
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def _rough_conninfo(dsn: str) -> dict[str, str]:
    """Host, port, database and user of a DSN, read without libpq (psycopg not installed)."""
    if dsn.startswith("postgresql://"):
        user, rest = split_user(dsn)
        url = urlsplit(rest)
        try:
            port = str(url.port or "")
        except ValueError:
            port = ""
        return {"host": url.hostname or "", "port": port, "dbname": unquote(url.path.lstrip("/")),
                "user": unquote((user or "").partition(":")[0])}
    return {m.group("key").lower(): m.group("value").strip("'") for m in _WORD.finditer(dsn)}


def index_kind(dimensions: int, wanted: str) -> str:
    """Which HNSW index a ``dimensions``-wide store gets for ``StoreConfig.pg_index``
    (``auto``: the most precise that fits); a clear error when it cannot have ``wanted``."""
    fits = {"vector": dimensions <= MAX_VECTOR_INDEX, "halfvec": dimensions <= MAX_HALFVEC_INDEX,
            "binary": True}
    if wanted == "auto":
        wanted = "vector" if fits["vector"] else "halfvec"
    if wanted not in fits:
        raise ValueError(f"unknown pg_index {wanted!r}: use auto, vector, halfvec or binary")
    if not fits[wanted]:
        raise ValueError(
            f"pgvector's HNSW index takes at most {MAX_VECTOR_INDEX:,} dimensions of vector and "
            f"{MAX_HALFVEC_INDEX:,} of halfvec; these vectors have {dimensions}. Store fewer "
            f"Matryoshka dimensions (--dimensions / IndexConfig(dimensions=...), e.g. "
            f"{MAX_VECTOR_INDEX // 2} or {MAX_HALFVEC_INDEX // 2}), or index binary-quantized "
            f"codes with exact re-scoring (StoreConfig(pg_index='binary'))")
    return wanted


def vector_literal(v: np.ndarray) -> str:
    """pgvector's text form of a float32 row; the reprs round-trip every float32 exactly."""
    return "[" + ",".join(map(repr, np.asarray(v, np.float32).tolist())) + "]"


def _vector_bytes(raw: bytes, dimensions: int) -> np.ndarray:
    # binary vector: int16 dim, int16 unused, then dim big-endian float32
    return np.frombuffer(raw, ">f4", count=dimensions, offset=4).astype(np.float32)


def tsvector_literal(terms: str) -> str:
    """PostgreSQL's text form of a ``tsvector`` of ``terms`` (space-separated, as
    :func:`smysl.toolkit.lexical.terms_text` gives them), each term once with its positions.
    The ``tsvector`` input takes lexemes as written, where ``to_tsvector`` would parse them
    again (``'simple'`` drops ``²``; splitting follows the server's locale)."""
    words = terms.split()
    positions: dict[str, list[str]] = {}
    # position strings made once (upserts are hot); zip stops at the last position
    for n, term in zip(_POSITION_TEXT[1:], words, strict=False):
        p = positions.get(term)
        if p is None:
            positions[term] = [n]
        else:
            p.append(n)
    last = _POSITION_TEXT[-1]
    for term in words[_MAX_POSITION:]:  # as to_tsvector: a long text's tail shares the last
        p = positions.setdefault(term, [])
        if not p or p[-1] != last:
            p.append(last)
    lexemes = list(positions)
    # a term of c characters takes at most 4c + 5 bytes with one position, a further
    # occurrence 2 more: only a long text can overflow, count its bytes then
    if 8 * (len(terms) + 1) > _MAX_TSVECTOR_BYTES:
        size, kept = 0, []
        for t in lexemes:
            nbytes = len(t.encode())
            # 2-aligned lexeme, number of positions, positions
            size += nbytes + nbytes % 2 + 2 + 2 * min(len(positions[t]), _MAX_POSITIONS)
            if size > _MAX_TSVECTOR_BYTES:
                break  # the server would refuse the row: index the terms that fit
            kept.append(t)
        lexemes = kept
    return " ".join([_quoted(t) + ":" + ",".join(positions[t][:_MAX_POSITIONS])
                     for t in lexemes])


def query_lexemes(terms: Sequence[str]) -> list[str]:
    """The distinct query terms that a stored term could equal (non-empty, at most
    :data:`~smysl.toolkit.lexical.MAX_TERM_CHARS` characters, no NUL), in order, the first
    :data:`~smysl.toolkit.lexical.MAX_QUERY_TERMS` (the statement has columns per term, and
    PostgreSQL takes at most 1,664). Each becomes a quoted ``tsquery`` (:func:`_quoted`): a
    term never reads as an operator or gets split."""
    kept = dict.fromkeys(t for t in terms
                         if t and len(t) <= lexical.MAX_TERM_CHARS and "\x00" not in t)
    return list(kept)[: lexical.MAX_QUERY_TERMS]


@dataclasses.dataclass(frozen=True)
class _TextStats:
    """BM25's collection statistics of a table (:meth:`PostgresStore._text_stats`)."""

    docs: int
    avgdl: float
    common: Mapping[str, float]  # term -> share of all rows holding it, for ANALYZE's commonest
    in_place: bool  # rows' terms are small enough to be read where they lie


def _quoted(lexeme: str) -> str:
    # tsvector/tsquery quoting: backslashes and quotes doubled
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _term_sets(terms: Sequence[int], ub: Sequence[float], df: Sequence[float], need: float
               ) -> list[list[int]] | None:
    """What a row holding none of the terms already scored must hold to score ``need``: at
    most :data:`TEXT_MAX_SETS` sets of ``terms`` (indexes into ``ub``, each term's most it
    adds, and ``df``, the rows holding it), read as "all of one of the sets". Every row that
    can reach ``need`` is found by them (they may find more). None when no such sets were
    found within :data:`_TERM_SETS_STEPS` steps of the search.

    Too many sets cost PostgreSQL more to check than the rows they save: then the commonest
    terms are left out of the sets, taken as held (a set's other terms alone find more rows,
    never fewer), as long as the terms left out cannot reach ``need`` by themselves."""
    kept = sorted(terms, key=lambda i: (-ub[i], i))
    left_out = 0.0  # the bounds of the terms left out
    steps = 0
    for out in [None, *sorted(terms, key=lambda i: (-df[i], i))]:
        if out is not None:
            if left_out + ub[out] >= need:
                continue  # a row holding only terms left out could reach need
            left_out += ub[out]
            kept.remove(out)
        found, used = _minimal_sets(kept, ub, need - left_out, TEXT_MAX_SETS,
                                    _TERM_SETS_STEPS - steps)
        steps += used
        if found:
            return [sorted(c, key=lambda i: (df[i], i)) for c in found]
        if found is not None or steps >= _TERM_SETS_STEPS:
            return None  # none (rounding at the last bit) or out of steps
    return None


def _minimal_sets(by_ub: Sequence[int], ub: Sequence[float], need: float, most: int,
                  budget: int) -> tuple[list[list[int]] | None, int]:
    """Every minimal set of ``by_ub`` (terms in falling ``ub`` order) whose bounds add up to
    ``need``, and the steps taken; None past ``most`` sets or ``budget`` steps (under 1 us a
    step). Depth first, terms in order, a set ending as soon as its sum reaches ``need``: as
    the bounds fall, no term of such a set can be spared, and no set is found twice."""
    n = len(by_ub)
    suffix = [0.0] * (n + 1)  # suffix[j]: the sum of the bounds from position j on
    for j in range(n - 1, -1, -1):
        suffix[j] = suffix[j + 1] + ub[by_ub[j]]
    found: list[list[int]] = []
    chosen: list[int] = []  # positions in by_ub
    totals = [0.0]  # totals[-1]: the bounds of the chosen terms
    j = steps = 0
    while True:
        if j < n and totals[-1] + suffix[j] >= need:
            steps += 1
            if steps > budget:
                return None, steps
            if totals[-1] + ub[by_ub[j]] >= need:
                found.append([by_ub[c] for c in (*chosen, j)])
                if len(found) > most:
                    return None, steps
            else:
                chosen.append(j)
                totals.append(totals[-1] + ub[by_ub[j]])
            j += 1
        elif chosen:  # nothing from position j on completes the chosen terms: back up
            j = chosen.pop() + 1
            totals.pop()
        else:
            return found, steps


def _rows_of_sets(sets: Sequence[Sequence[int]], df: Sequence[float], docs: float) -> float:
    """About how many rows hold all of one of ``sets``: terms taken as independent."""
    return sum(docs * math.prod(df[i] / docs for i in c) for c in sets)


def copy_tuples(ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str],
                terms: Sequence[str]) -> bytes:
    """Binary COPY tuples (no header or trailer) for (text, vector, jsonb, text) rows."""
    n, d = vectors.shape
    # per row: int32 length, int16 dim, int16 unused, d big-endian float32
    vec_part = np.empty((n, 8 + 4 * d), np.uint8)
    vec_part[:, :8] = np.frombuffer(struct.pack(">ihh", 4 + 4 * d, d, 0), np.uint8)
    vec_part[:, 8:] = vectors.astype(">f4").view(np.uint8).reshape(n, 4 * d)
    parts = []
    for i, row_id, pay, words in zip(range(n), ids, payloads, terms, strict=True):
        rid = row_id.encode()
        js = b"\x01" + pay.encode()  # jsonb binary: version 1, then the JSON text
        tv = words.encode()
        parts += [struct.pack(">hi", 4, len(rid)), rid, vec_part[i].tobytes(),
                  struct.pack(">i", len(js)), js, struct.pack(">i", len(tv)), tv]
    return b"".join(parts)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _read(method: Callable[Concatenate[PostgresStore, _P], _R]
          ) -> Callable[Concatenate[PostgresStore, _P], _R]:
    """A read whose connection the server ended (a restart, ``pg_terminate_backend``,
    ``idle_session_timeout``) runs once more on a new connection: a server restarted
    under a running ``smysl serve`` costs no failed search. So does one an administrator
    ended on purpose (it runs again, once). Not inside a transaction the caller opened on the
    thread's connection: that transaction is gone, and a read on a new connection would
    answer from outside it; the read fails as a write does."""

    @functools.wraps(method)
    def call(self: PostgresStore, *args: _P.args, **kw: _P.kwargs) -> _R:
        idle = self._idle()
        with self._lost_connection(wrote=False, idle=idle):
            try:
                return method(self, *args, **kw)
            except self._pg.OperationalError:
                if not idle or not self._lost():
                    raise
            return method(self, *args, **kw)

    return call


def _write(method: Callable[Concatenate[PostgresStore, _P], _R]
           ) -> Callable[Concatenate[PostgresStore, _P], _R]:
    """A write whose connection the server ended fails with :class:`PostgresStoreError`
    (not psycopg's error); the thread's next call opens a new connection."""

    @functools.wraps(method)
    def call(self: PostgresStore, *args: _P.args, **kw: _P.kwargs) -> _R:
        with self._lost_connection(wrote=True, idle=self._idle()):
            return method(self, *args, **kw)

    return call


class _Connection:
    """A thread's connection, closed when the thread ends (its ``threading.local`` slot goes)
    or when the store closes, whichever comes first."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __del__(self) -> None:
        self.conn.close()


class PostgresStore(VectorStore):
    """A pgvector table; search is an exact scan unless an HNSW index exists and
    ``exact=False``. Index settings in the DSN (:func:`split_options`) override ``config``'s.

    One store may be used from several threads at once (:attr:`concurrent_reads`): each
    thread gets a connection of its own at its first call, so its statements and
    transactions are its own and run beside the others' (8 threads on one 20,000-row table,
    2 cores: 1.6-2.6x the searches a second of one shared connection). A thread's connection
    closes when the thread ends or the store closes."""

    concurrent_reads = True
    holds_nul = False

    def __init__(self, config: StoreConfig, dimensions: int | None = None, *,
                 replace: bool = False) -> None:
        psycopg = _import()
        self._pg = psycopg
        from psycopg import sql

        self._sql = sql
        dsn, settings = split_options(config.uri)
        config = dataclasses.replace(config, uri=dsn, **settings)
        check_settings(config)
        #: The StoreConfig fields the DSN set (an index built otherwise is rebuilt).
        self.dsn_settings = settings
        self.config = config
        self.where = place(config.uri)
        self._threads = threading.local()  # .held: the calling thread's _Connection
        self._held: weakref.WeakSet[_Connection] = weakref.WeakSet()  # every open one
        self._closing = threading.Lock()
        self._closed = False
        self._table = sql.Identifier(config.table)
        try:
            with self._lost_connection(wrote=True, idle=True):
                self._open(dimensions, replace)
        except BaseException:
            self.close()
            raise

    @property
    def _conn(self) -> Any:
        """The calling thread's connection (autocommit), opened at its first call."""
        if self._closed:  # not the closed connection's own error, from a thread that had one
            raise PostgresStoreError(f"the store of {self.where} is closed")
        try:
            conn = self._threads.held.conn
        except AttributeError:
            pass
        else:
            if not conn.broken:
                return conn
            # the server ended it (a restart, pg_terminate_backend): this call gets a new
            # connection (a read that found out is run again: _read)
        with self._closing:
            if self._closed:
                raise PostgresStoreError(f"the store of {self.where} is closed")
            with contextlib.suppress(AttributeError):  # under the lock: close() iterates
                self._held.discard(self._threads.held)
            try:
                conn = self._pg.connect(dsn_of(self.config.uri), autocommit=True,
                                        connect_timeout=self.config.connect_timeout)
            except self._pg.Error as e:
                # libpq's words on a DSN it cannot parse quote it, the password with it
                why = ("the DSN cannot be parsed: percent-encode the password's special "
                       "characters (%, @, /, :) in a URL, quote values with spaces in "
                       "key=value words" if self.where == UNPARSABLE else first_line(e))
                raise PostgresStoreError(
                    f"cannot connect to PostgreSQL at {self.where}: {why}") from None
            self._threads.held = held = _Connection(conn)
            self._held.add(held)
        return conn

    def _lost(self) -> bool:
        """Whether the calling thread's connection is one the server ended."""
        try:
            return bool(self._threads.held.conn.broken)
        except AttributeError:
            return False

    def _idle(self) -> bool:
        """Whether no transaction is open on the calling thread's connection (or it has none,
        or one the server ended, which the next call replaces)."""
        try:
            conn = self._threads.held.conn
        except AttributeError:
            return True
        return bool(conn.broken) or (
            conn.info.transaction_status == self._pg.pq.TransactionStatus.IDLE)

    @contextlib.contextmanager
    def _lost_connection(self, *, wrote: bool, idle: bool) -> Iterator[None]:
        """psycopg's errors as a PostgresStoreError that names the server: a connection the
        server ended, the store closed from another thread mid-call, a statement the server
        refused or cancelled (``statement_timeout``, ``lock_timeout``, a full disk, a table
        dropped meanwhile). A served index answers 503 with its message, not 500. ``wrote``:
        the call writes; ``idle``: no transaction was open on the connection before it."""
        try:
            yield
        except self._pg.Error as e:
            if self._closed:  # close() from another thread, mid-call
                raise PostgresStoreError(f"the store of {self.where} is closed") from None
            if not isinstance(e, self._pg.OperationalError) or not self._lost():
                raise PostgresStoreError(f"PostgreSQL at {self.where}: {first_line(e)}") from e
            if not idle:
                what = "; the transaction open on it is lost"
            elif wrote:
                what = "; a write may not have landed (upserts by id may be repeated)"
            else:
                what = ""
            raise PostgresStoreError(
                f"PostgreSQL at {self.where} ended the connection ({first_line(e)}){what}; "
                f"the next call reconnects") from None

    # ---------------------------------------------------------------- setup
    def _open(self, dimensions: int | None, replace: bool) -> None:
        if dimensions is not None and not 1 <= dimensions <= MAX_VECTOR_COLUMN:
            raise ValueError(f"a pgvector column holds 1..{MAX_VECTOR_COLUMN} dimensions, "
                             f"not {dimensions}")
        #: Whether the table has the terms column, else why it could not get it
        #: (:meth:`_ensure_terms`).
        self._lexical = True
        self._terms_refused = ""
        #: The word statistics as read after the table's last ANALYZE, under its key
        #: (reltuples, relpages, how many ANALYZEs); the row count is read on every search.
        self._text_cache: tuple[tuple[float, int, int], _TextStats] | None = None
        #: Rows this process deleted since it last analysed the table (:meth:`delete`).
        self._deleted = 0
        with self._conn.transaction():
            # one creator at a time per table (concurrent job workers)
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.config.table])
            self._ensure_extension()
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                               "(table_name text PRIMARY KEY, meta jsonb NOT NULL)")
            if replace and dimensions is not None:
                self._conn.execute(self._q("DROP TABLE IF EXISTS {t}"))
                self._conn.execute(f"DELETE FROM {META_TABLE} WHERE table_name = %s",
                                   [self.config.table])
            dims = self._stored_dimensions()
            if dims is None:
                if dimensions is None:
                    raise FileNotFoundError(f"no table {self.config.table!r} in PostgreSQL at "
                                            f"{self.where}")
                self._conn.execute(self._q(
                    "CREATE TABLE {t} (id text PRIMARY KEY, embedding vector({d}) NOT NULL, "
                    "payload jsonb NOT NULL DEFAULT '{{}}', terms tsvector)",
                    d=self._sql.Literal(dimensions)))
                # rows up to a page stay whole in the table: by default any row over 2 KB
                # has its widest values moved out to the TOAST table, so an exact search of
                # 1,024-d vectors (the 0.6B's, 4 KB) fetched every vector from there (20,000
                # chunks: 121 vs 38 ms). A row still wider than a page (a long chunk's text
                # and terms) moves its widest value out, which is the vector unless it is
                # stored MAIN: so it is, where it fits a page beside the row's other parts,
                # and such a row moves its text or terms out instead. Storage MAIN alone (the
                # 2 KB target) had pushed every payload out (a word search 2.7x slower).
                # Wider vectors (over 1,958-d: 2,048, 2,560, 4,096) go out of line; the
                # payload and words stay.
                page = int(self._conn.execute("SHOW block_size").fetchone()[0])
                self._conn.execute(self._q("ALTER TABLE {t} SET (toast_tuple_target = {n})",
                                           n=self._sql.Literal(page - 32)))
                if 4 * dimensions + 8 + ROW_ROOM <= page - 32:
                    self._conn.execute(self._q(
                        "ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE MAIN"))
                self._conn.execute(self._q("CREATE INDEX {i} ON {t} USING gin "
                                           "(payload jsonb_path_ops)",
                                           i=self._sql.Identifier(f"{self.config.table}_payload")))
                self._conn.execute(self._q("CREATE INDEX {i} ON {t} USING gin (terms)",
                                           i=self._sql.Identifier(f"{self.config.table}_terms")))
                dims = dimensions
            elif dimensions is not None and dims != dimensions:
                raise ValueError(f"table {self.config.table!r} holds {dims}-d vectors, "
                                 f"not {dimensions}-d")
            else:
                self._lexical = self._ensure_terms()
        self.dimensions = dims
        if self.config.pg_index != "auto":
            index_kind(dims, self.config.pg_index)  # an impossible explicit choice fails now

    def _ensure_extension(self) -> None:
        if self._conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            with self._conn.transaction():
                self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except self._pg.Error as e:
            raise PostgresStoreError(
                f"PostgreSQL at {self.where} lacks the pgvector extension and it could not be "
                f"created ({first_line(e)}); install pgvector there, or have an administrator "
                f"run CREATE EXTENSION vector") from None

    def _ensure_terms(self) -> bool:
        """Give a table of an earlier smysl the terms column and its GIN index (under the
        caller's lock; its rows get terms when written again); whether it has the column.
        The catalog is read first: ALTER TABLE would lock the table against every reader on
        each open. A role that may not alter the table (not its owner) still opens it: vector
        search works, lexical search finds nothing and writes fail until the owner opens it."""
        has_column = self._conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'terms' "
            "AND NOT attisdropped", [self._qualified()]).fetchone() is not None
        # any index on the column will do (one a DBA built, a name PostgreSQL truncated)
        has_index = has_column and self._conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND "
            "a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND a.attname = 'terms'",
            [self._qualified()]).fetchone() is not None
        if has_index:
            return True
        try:
            with self._conn.transaction():  # a savepoint: a refusal leaves the open going
                self._conn.execute(self._q("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS "
                                           "terms tsvector"))
                self._conn.execute(self._q(
                    "CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (terms)",
                    i=self._sql.Identifier(f"{self.config.table}_terms")))
        except self._pg.errors.InsufficientPrivilege as e:
            self._terms_refused = first_line(e)
            return has_column
        return True

    def _stored_dimensions(self) -> int | None:
        row = self._conn.execute(
            "SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
            "AND a.attname = 'embedding'", [self._qualified()]).fetchone()
        return int(row[0]) if row else None

    def _qualified(self) -> str:
        return self._sql.Identifier(self.config.table).as_string(self._conn)

    def _q(self, template: str, **parts: Any) -> Any:
        return self._sql.SQL(template).format(t=self._table, **parts)

    # ---------------------------------------------------------------- filters
    def _conditions(self, conditions: Sequence[Condition]) -> tuple[Any, list[Any]]:
        sql = self._sql
        parts: list[Any] = []
        params: list[Any] = []
        for c in conditions:
            if "\x00" in c.key:  # no payload here holds one (upsert refuses it)
                return sql.SQL("FALSE"), []
            if c.op in ("eq", "in"):
                values = c.value if c.op == "in" else [c.value]
                # NaN is no JSON and equals nothing (the reference semantics); nor does a text
                # with a NUL, which jsonb cannot hold (the cast failed as a database error)
                docs = [json.dumps({c.key: v}) for v in values
                        if not (isinstance(v, float) and v != v)
                        and not (isinstance(v, str) and "\x00" in v)]
                if not docs:
                    return sql.SQL("FALSE"), []
                parts.append(sql.SQL("payload @> ANY(%s::jsonb[])"))
                params.append(docs)
            else:
                sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
                # CASE: the cast runs only on numbers (bools, strings, lists never match)
                parts.append(sql.SQL("CASE WHEN jsonb_typeof(payload -> %s) = 'number' "
                                     "THEN (payload -> %s)::numeric END " + sym + " %s::numeric"))
                # a float bound as its exact decimal text: as float8, the cast to numeric kept
                # 15 digits, and 1765000000.123456 missed a payload equal to it
                # (float(): numpy's repr is "np.float64(2.0)")
                bound = Decimal(repr(float(c.value))) if isinstance(c.value, float) else c.value
                params += [c.key, c.key, bound]
        if not parts:
            return sql.SQL("TRUE"), []
        return sql.SQL(" AND ").join(parts), params

    def _where(self, where: Where | None, ids: Sequence[str] | None = None
               ) -> tuple[Any, list[Any]]:
        clause, params = self._conditions(parse_where(where))
        if ids is not None:
            clause = self._sql.SQL("{} AND id = ANY(%s)").format(clause)
            params = [*params, list(ids)]
        return clause, params

    # ---------------------------------------------------------------- VectorStore
    @_write
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        ids, vecs, pays = self._check_upsert(ids, vectors, payloads)
        if not ids:
            return
        try:
            texts = [json.dumps(p, ensure_ascii=False, allow_nan=False) for p in pays]
        except (TypeError, ValueError) as e:
            raise ValueError(f"payloads must be JSON (no NaN or infinity): {e}") from None
        # jsonb holds no NUL, and the JSON text shows one escaped: look at the values
        if has_nul(ids) or has_nul(pays):
            raise ValueError("ids and payloads must not contain NUL characters (PostgreSQL text)")
        if not self._lexical:  # rows without terms would go missing from lexical search
            raise PostgresStoreError(
                f"table {self.config.table!r} in PostgreSQL at {self.where} predates lexical "
                f"search and this role could not add its terms column "
                f"({self._terms_refused}); open it once as the table's owner, then write again")
        terms = [tsvector_literal(lexical.terms_text(p.get("text"))) for p in pays]
        with self._conn.transaction(), self._conn.cursor() as cur:
            # the terms travel as text and become a tsvector in the INSERT (binary COPY would
            # need tsvector's binary form)
            cur.execute(self._q("CREATE TEMP TABLE _smysl_load (LIKE {t}, terms_text text) "
                                "ON COMMIT DROP"))
            with cur.copy("COPY _smysl_load (id, embedding, payload, terms_text) FROM STDIN "
                          "WITH (FORMAT BINARY)") as copy:
                copy.write(_COPY_HEADER)
                step = 8192  # bounded COPY buffers
                for s in range(0, len(ids), step):
                    copy.write(copy_tuples(ids[s : s + step], vecs[s : s + step],
                                           texts[s : s + step], terms[s : s + step]))
                copy.write(_COPY_TRAILER)
            cur.execute(self._q("INSERT INTO {t} (id, embedding, payload, terms) SELECT id, "
                                "embedding, payload, terms_text::tsvector FROM _smysl_load "
                                "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                                "payload = EXCLUDED.payload, terms = EXCLUDED.terms"))

    def _index_expr(self, kind: str) -> tuple[str, str, str]:
        """(indexed expression, operator class, distance operator) of an index kind."""
        d = self.dimensions
        return {"vector": ("embedding", "vector_cosine_ops", "<=>"),
                "halfvec": (f"(embedding::halfvec({d}))", "halfvec_cosine_ops", "<=>"),
                "binary": (f"(binary_quantize(embedding)::bit({d}))", "bit_hamming_ops", "<~>"),
                }[kind]

    def _index_name(self, kind: str) -> str:
        return f"{self.config.table}_hnsw_{kind}"[:63]

    def _has_index(self, kind: str) -> bool:
        return kind in self._built_indexes()

    def _search_kind(self) -> str | None:
        """The HNSW index approximate search uses: ``pg_index``'s if built; with ``auto``
        (the DSN or config names none) the most precise one the table has; None: no index
        yet, so an exact scan, as the other stores do."""
        if self.config.pg_index != "auto":
            kind = index_kind(self.dimensions, self.config.pg_index)
            return kind if self._has_index(kind) else None
        preferred = index_kind(self.dimensions, "auto")
        built = self._built_indexes()
        return next((k for k in (preferred, "vector", "halfvec", "binary") if k in built), None)

    def _built_indexes(self) -> dict[str, dict[str, str]]:
        """This table's smysl HNSW indexes: kind -> their storage options (m, ...)."""
        rows = self._conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = "
            "i.indexrelid WHERE i.indrelid = to_regclass(%s)", [self._qualified()]).fetchall()
        names = {self._index_name(k): k for k in ("vector", "halfvec", "binary")}
        return {names[name]: dict(o.split("=", 1) for o in (opts or []))
                for name, opts in rows if name in names}

    @_read
    def search(self, vectors: np.ndarray, k: int = 10, *, where: Where | None = None,
               exact: bool = True, with_vectors: bool = False) -> list[list[Hit]]:
        q = self._queries(vectors, k)
        clause, params = self._where(where)
        kind = None if exact else self._search_kind()
        cols = self._sql.SQL("id, payload, -(embedding <#> %s::vector) AS score"
                             + (", embedding" if with_vectors else ""))
        if kind is None:
            query = self._q("SELECT {c} FROM {t} WHERE {w} ORDER BY embedding <#> %s::vector "
                            "LIMIT %s", c=cols, w=clause)
        else:
            expr, _, op = self._index_expr(kind)
            probe = {"vector": "%s::vector", "halfvec": f"%s::halfvec({self.dimensions})",
                     "binary": "binary_quantize(%s::vector)"}[kind]
            # candidates from the index, then exact scores on the stored vectors
            query = self._q("SELECT * FROM (SELECT {c} FROM {t} WHERE {w} ORDER BY {e} {o} "
                            + probe + " LIMIT %s) AS candidates ORDER BY score DESC LIMIT %s",
                            c=cols, w=clause, e=self._sql.SQL(expr), o=self._sql.SQL(op))
        fetch = k if kind in (None, "vector") else k * self.config.refine_factor * (
            BINARY_OVERSAMPLE if kind == "binary" else 1)
        out: list[list[Hit]] = []
        with self._conn.transaction(), self._conn.cursor(binary=True) as cur:
            if kind is not None:
                cur.execute(self._sql.SQL("SET LOCAL hnsw.ef_search = {}").format(
                    self._sql.Literal(min(1000, max(self.config.ef_search, fetch)))))
                # filtered queries keep scanning the graph until enough rows pass the filter
                cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            for row in q:
                lit = vector_literal(row)
                args = [lit, *params, lit] + ([k] if kind is None else [fetch, k])
                cur.execute(query, args)
                out.append([Hit(r[0], float(r[2]), r[1],
                                _vector_bytes(r[3], self.dimensions) if with_vectors else None)
                            for r in cur.fetchall()])
        return out

    def search_text(self, queries: Sequence[Sequence[str]], k: int = 10, *,
                    where: Where | None = None, with_vectors: bool = False
                    ) -> list[list[Hit]]:
        """BM25 (:mod:`smysl.toolkit.lexical`'s k1 and b) over the table's statistics
        (:meth:`_text_stats`), the best ``k`` rows the filter leaves. Found through the GIN
        index, rarest terms first (:meth:`_top_by_words`): a common word ("и", "the") adds
        its score to the rows the rarer words found, and its rows are read only where they
        hold enough of the other words to enter the top ``k``. Every question of one call
        reads one snapshot of the table (:meth:`_one_snapshot`). A table that could not get
        the terms column (see :meth:`_ensure_terms`) has no hits."""
        # read once, before the retry on a lost connection: an iterator would be empty then
        return self._search_text(text_queries(queries, k), k, where=where,
                                 with_vectors=with_vectors)

    @_read
    def _search_text(self, queries: list[list[str]], k: int, *, where: Where | None,
                     with_vectors: bool) -> list[list[Hit]]:
        clause, params = self._where(where)
        out: list[list[Hit]] = []
        stats: _TextStats | None = None
        counted: dict[str, float] = {}  # rows holding a term, counted in this snapshot
        with self._conn.cursor(binary=True) as cur, contextlib.ExitStack() as snapshot:
            for terms in queries:
                lexemes = query_lexemes(terms)
                if not lexemes or not self._lexical:
                    out.append([])
                    continue
                if stats is None:
                    snapshot.enter_context(self._one_snapshot(cur))
                    stats = self._text_stats(cur)
                rows = self._top_by_words(cur, lexemes, stats, clause, params, k, with_vectors,
                                          counted)
                out.append([Hit(r[0], float(r[2]), r[1],
                                _vector_bytes(r[3], self.dimensions) if with_vectors else None)
                            for r in rows])
        return out

    @contextlib.contextmanager
    def _one_snapshot(self, cur: Any) -> Iterator[None]:
        """One snapshot for every statement of a search by words: a row written meanwhile is
        neither scored twice (once by the terms it held, once by those it holds now) nor
        missed. Inside a transaction the caller opened, its snapshot (and isolation) serve."""
        if self._conn.info.transaction_status != self._pg.pq.TransactionStatus.IDLE:
            yield
            return
        with self._conn.transaction():
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _text_stats(self, cur: Any) -> _TextStats:
        """The collection statistics of BM25, table-wide (as Lucene's are index-wide, not per
        filter) and cheap at any size: the row count (the planner's estimate scaled to the
        table's current size, as the planner scales it; counted while the table has no
        statistics), the mean number of distinct terms of a row with terms (exact up to
        :data:`AVGDL_SAMPLE_ROWS` rows, else from a fixed sample of the table's blocks), and
        the share of rows holding each of the most common terms as ``ANALYZE`` counted them in
        its sample (``pg_stats.most_common_elems``). The last two are read again only after the
        table is analysed again (``ANALYZE``, autovacuum, :meth:`optimize`)."""
        cur.execute("SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) / "
                    "current_setting('block_size')::int, "
                    "coalesce(s.analyze_count + s.autoanalyze_count, 0) FROM pg_class c "
                    "LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
                    "WHERE c.oid = to_regclass(%s)", [self._qualified()])
        reltuples, relpages, pages, analyses = cur.fetchone()
        analysed = reltuples > 0 and relpages > 0
        if analysed:
            docs = round(reltuples / relpages * pages)
        else:
            cur.execute(self._q("SELECT count(*) FROM {t}"))
            docs = int(cur.fetchone()[0])
        key = (float(reltuples), int(relpages), int(analyses))
        cached = self._text_cache
        if analysed and cached is not None and cached[0] == key:
            return dataclasses.replace(cached[1], docs=docs)
        common: dict[str, float] = {}
        if analysed:
            cur.execute("SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, "
                        "s.null_frac FROM pg_class c JOIN pg_namespace n ON "
                        "n.oid = c.relnamespace JOIN pg_stats s ON s.schemaname = n.nspname "
                        "AND s.tablename = c.relname AND s.attname = 'terms' "
                        "WHERE c.oid = to_regclass(%s)", [self._qualified()])
            row = cur.fetchone()
            if row and row[0] and row[1]:
                # ANALYZE's shares are of the rows with terms; the extra entries at the end
                # of the frequencies (minimum, maximum, nulls) have no element
                share = 1.0 - float(row[2] or 0.0)
                common = {e: float(f) * share for e, f in zip(row[0], row[1], strict=False)}
        # rows without text (an empty tsvector) or never written since terms came (NULL)
        # are no documents of the mean length; pg_column_size is what a row stores (a TOAST
        # pointer's target size, compressed or not), where ANALYZE's avg_width counts a
        # pointer's 18 bytes
        mean = ("SELECT avg(nullif(length(terms), 0))::float8, "
                "avg(pg_column_size(terms))::float8 FROM {t}")
        found = None
        if docs > AVGDL_SAMPLE_ROWS:
            cur.execute(self._q(mean + " TABLESAMPLE SYSTEM (%s) REPEATABLE (0)"),
                        [100.0 * AVGDL_SAMPLE_ROWS / docs])
            found = cur.fetchone()
        if found is None or found[0] is None:  # a small table, or a sample of no terms
            cur.execute(self._q(mean))
            found = cur.fetchone()
        avgdl = float(found[0] or 0.0) or 1.0
        in_place = found[1] is not None and found[1] <= TEXT_INLINE_BYTES
        stats = _TextStats(docs, avgdl, common, in_place)
        if analysed:
            self._text_cache = (key, stats)
        return stats

    def _doc_freqs(self, cur: Any, lexemes: Sequence[str], stats: _TextStats,
                   counted: dict[str, float]) -> list[float]:
        """How many rows hold each term: from ``ANALYZE``'s shares for the common terms,
        counted through the GIN index for the others (the rarer, the cheaper), once per
        snapshot (``counted``, which this fills)."""
        out = [stats.common[t] * stats.docs if t in stats.common else counted.get(t, -1.0)
               for t in lexemes]
        missing = [i for i, f in enumerate(out) if f < 0]
        if missing:
            count = self._q("(SELECT count(*) FROM {t} WHERE terms @@ %s::tsquery)")
            cur.execute(self._sql.SQL("SELECT {}").format(
                self._sql.SQL(", ").join([count] * len(missing))),
                [_quoted(lexemes[i]) for i in missing])
            for i, n in zip(missing, cur.fetchone(), strict=True):
                out[i] = counted[lexemes[i]] = float(n)
        return out

    def _top_by_words(self, cur: Any, lexemes: Sequence[str], stats: _TextStats,
                      clause: Any, params: Sequence[Any], k: int, with_vectors: bool,
                      counted: dict[str, float]) -> list[Any]:
        """The best ``k`` rows by BM25, found as MaxScore finds them, and exact: the same rows
        and scores as scoring every row that holds any query term. The rows holding the
        rarest terms are scored first, each row on every query term (a row is scored once:
        later statements leave out the rows of the terms already taken). No term adds more
        than ``idf * (k1 + 1)`` to a score, so once the top ``k`` is full, a row holding
        none of the terms taken can enter it only if it holds a set of the other terms whose
        bounds add up to the ``k``-th score (:func:`_term_sets`): one more statement scores
        the rows holding such a set, and the top ``k`` is final. While those sets would
        match more rows than the next rarest term holds, the next terms are taken instead,
        until the rows scored at least double, as while the top ``k`` is filled (a long
        question takes a few statements, not one per term). ``cur`` reads one snapshot
        (:meth:`_one_snapshot`): a row is scored once, written meanwhile or not."""
        df = self._doc_freqs(cur, lexemes, stats, counted)
        if not any(df):
            return []  # no row holds any of the terms
        docs = max(stats.docs, *df)  # ANALYZE's estimate may run ahead of the row count
        idf = [lexical.idf(f, docs) for f in df]
        order = sorted(range(len(lexemes)), key=lambda i: (df[i], i))
        tsq = [_quoted(t) for t in lexemes]
        statement = self._text_query(len(lexemes), clause, with_vectors, stats.in_place)
        ub = [f * (lexical.BM25_K1 + 1) for f in idf]  # the most a term adds to a score
        rest = [sum(ub[i] for i in order[n:]) for n in range(len(order) + 1)]
        rows_of = [sum(df[i] for i in order[:n]) for n in range(len(order) + 1)]

        def score(match: str, taken: int) -> list[Any]:
            """The best k of the rows ``match`` finds, leaving out those of order[:taken]."""
            if taken:
                match = f"({match}) & !({' | '.join(tsq[i] for i in order[:taken])})"
            cur.execute(statement, [*(q for q in tsq for _ in "tf"), match, *params, *idf,
                                    stats.avgdl, k])
            return list(cur.fetchall())

        def merged(a: list[Any], b: list[Any]) -> list[Any]:
            # the statement's order: score, then id in code-point order (COLLATE "C" is
            # that in a UTF-8 database; in one of another encoding, the encoding's bytes)
            return sorted([*a, *b], key=lambda r: (-r[2], r[0]))[:k]

        rows: list[Any] = []
        taken = 0  # the rows of order[:taken] are scored
        while taken < len(order):
            end = len(order)
            if len(rows) == k:
                # a row holding none of the terms taken scores below rest[taken]; the k-th
                # score only grows as rows join
                kth = rows[-1][2] * (1 - 1e-9)
                if rest[taken] < kth:
                    break
                sets = _term_sets(order[taken:], ub, df, kth)
                if sets is not None and _rows_of_sets(sets, df, docs) <= df[order[taken]]:
                    found = " | ".join("(" + " & ".join(tsq[i] for i in c) + ")"
                                       for c in sets)
                    return merged(rows, score(found, taken))
                # rows holding only terms of order[end:] score below kth: none past end
                end = next((n for n in range(taken + 1, len(order)) if rest[n] < kth),
                           len(order))  # (a k-th score of 0: rows stored without positions)
            # the next terms, until the rows scored at least double (at least one term)
            reach = max(2 * rows_of[taken], TEXT_FIRST_ROWS)
            nxt = taken + 1
            while nxt < end and rows_of[nxt + 1] <= reach:
                nxt += 1
            if rows_of[nxt] - rows_of[taken] > stats.docs / 2:
                nxt = end  # most of the table either way: score it once
            rows = merged(rows, score(" | ".join(tsq[i] for i in order[taken:nxt]), taken))
            taken = nxt
        return rows

    def _text_query(self, n_terms: int, clause: Any, with_vectors: bool, in_place: bool
                    ) -> Any:
        """The BM25 statement of :meth:`_top_by_words` for ``n_terms`` query terms;
        parameters: the tsquery of each term twice, the OR of the terms whose rows are scored,
        the filter's, one idf per term, the mean row length, k. ``in_place``: the rows' terms
        are read where they lie, else each row's are read (detoasted) once into ``d.tv`` (a
        per-row subquery: ~2 us a row, less than reading a long row from TOAST per term)."""
        sql = self._sql
        k1, b = lexical.BM25_K1, lexical.BM25_B

        def per_term(template: str, sep: str = ", ") -> Any:
            return sql.SQL(sep).join(sql.SQL(template.replace("#", str(i)))
                                     for i in range(n_terms))

        tv = "r.terms" if in_place else "d.tv"
        source = ("{t} AS r" if in_place else "{t} AS r CROSS JOIN LATERAL "
                  "(SELECT r.terms || ''::tsvector AS tv OFFSET 0) AS d")
        return self._q(
            # the matching rows, each term's frequency: with unit weights ts_rank_cd scores
            # each occurrence of a lone lexeme 1; it costs ~0.6 us even where the term is
            # absent, @@ (a binary search) far less. OFFSET 0 keeps each computed once.
            "SELECT r.id, r.payload, top.score" + (", r.embedding" if with_vectors else "")
            + " FROM (SELECT m.id, {score} AS score FROM (SELECT r.id, "
            "length(" + tv + ")::float8 AS dl, {tf} FROM " + source
            + " WHERE r.terms @@ %s::tsquery AND {w} OFFSET 0) AS m, "
            "(SELECT {idf}, %s::float8 AS avgdl) AS c ORDER BY score DESC, m.id COLLATE \"C\" "
            "LIMIT %s) AS top JOIN {t} AS r ON r.id = top.id "
            "ORDER BY top.score DESC, top.id COLLATE \"C\"",
            tf=per_term("CASE WHEN " + tv + " @@ %s::tsquery THEN ts_rank_cd('{1,1,1,1}', "
                        + tv + ", %s::tsquery)::float8 ELSE 0 END AS tf#"),
            w=clause,
            idf=per_term("%s::float8 AS idf#"),
            score=per_term(f"c.idf# * m.tf# * {k1 + 1} / (m.tf# + {k1} * (1 - {b} + {b} * m.dl "
                           f"/ c.avgdl))", " + "))

    @_read
    def get(self, ids: Sequence[str]) -> list[Record]:
        ids = _holdable(record_ids(ids))
        found: dict[str, Record] = {}
        with self._conn.cursor(binary=True) as cur:
            for s in range(0, len(ids), 1000):
                cur.execute(self._q("SELECT id, embedding, payload FROM {t} WHERE id = ANY(%s)"),
                            [ids[s : s + 1000]])
                for rid, raw, pay in cur.fetchall():
                    found[rid] = Record(rid, _vector_bytes(raw, self.dimensions), pay)
        return [found[i] for i in ids if i in found]

    @_write
    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        if ids is None and not where:
            raise ValueError("delete needs ids or a filter")
        clause, params = self._where(where, _holdable(record_ids(ids)) if ids is not None
                                     else None)
        with self._conn.cursor() as cur:
            cur.execute(self._q("DELETE FROM {t} WHERE {w}", w=clause), params)
            gone = int(cur.rowcount)
        self._deleted += gone
        if gone:
            # word scores read the planner's statistics (_text_stats): a delete of 2 of 7
            # rows left them at the 7 rows' until autovacuum came by. Once this process has
            # deleted a tenth of the rows they counted (autovacuum's own share), analyse
            row = self._conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                                     [self._qualified()]).fetchone()
            if row and row[0] > 0 and 10 * self._deleted >= row[0]:
                self._conn.execute(self._q("ANALYZE {t}"))
                self._deleted = 0
        return gone

    @_read
    def count(self, where: Where | None = None) -> int:
        clause, params = self._where(where)
        row = self._conn.execute(self._q("SELECT count(*) FROM {t} WHERE {w}", w=clause),
                                 params).fetchone()
        return int(row[0]) if row else 0

    def scan(self, batch_size: int = 2048, *, where: Where | None = None,
             with_vectors: bool = True) -> Iterator[list[Record]]:
        clause, params = self._where(where)
        cols = "id, payload" + (", embedding" if with_vectors else "")
        # keyset pagination: no transaction stays open between batches, so the caller may
        # write to the store while scanning
        query = self._q("SELECT " + cols + " FROM {t} WHERE {w} AND id > %s ORDER BY id LIMIT %s",
                        w=clause)
        empty = np.zeros(0, np.float32)
        last = ""
        while True:
            rows = self._fetch(query, [*params, last, batch_size])
            if not rows:
                return
            yield [Record(r[0], _vector_bytes(r[2], self.dimensions) if with_vectors else empty,
                          r[1]) for r in rows]
            last = rows[-1][0]

    @_read
    def _fetch(self, query: Any, args: Sequence[Any]) -> list[Any]:
        """One statement's rows (binary), as a read: one batch of :meth:`scan`."""
        with self._conn.cursor(binary=True) as cur:
            cur.execute(query, args)
            return cur.fetchall()

    @_read
    def read_meta(self) -> dict[str, Any]:
        row = self._conn.execute(f"SELECT meta FROM {META_TABLE} WHERE table_name = %s",
                                 [self.config.table]).fetchone()
        if row is None:
            return {}
        if not isinstance(row[0], dict):
            raise ValueError(f"PostgreSQL at {self.where}: index metadata of "
                             f"{self.config.table!r} is damaged (not a JSON object); rebuild the "
                             f"index (smysl index add --rebuild)")
        return dict(row[0])

    @_write
    def claim_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        self._conn.execute(f"INSERT INTO {META_TABLE} (table_name, meta) VALUES (%s, %s::jsonb) "
                           f"ON CONFLICT (table_name) DO UPDATE "
                           f"SET meta = {META_TABLE}.meta || EXCLUDED.meta "
                           f"WHERE coalesce(nullif({META_TABLE}.meta->>'fingerprint', ''), "
                           f"nullif({META_TABLE}.meta->>'model', ''), '') = ''",  # not bound()
                           [self.config.table, json.dumps(dict(meta), ensure_ascii=False)])
        return self.read_meta()

    @_write
    def update_meta(self, changes: Mapping[str, Any]) -> None:
        # One statement: the row lock of ON CONFLICT ... DO UPDATE orders concurrent writers,
        # and each merges into what the one before it left.
        kept = {k: v for k, v in changes.items() if v is not None}
        gone = [k for k, v in changes.items() if v is None]
        self._conn.execute(f"INSERT INTO {META_TABLE} (table_name, meta) VALUES (%s, %s::jsonb) "
                           f"ON CONFLICT (table_name) DO UPDATE "
                           f"SET meta = ({META_TABLE}.meta || EXCLUDED.meta) - %s::text[]",
                           [self.config.table, json.dumps(kept, ensure_ascii=False), gone])

    @_write
    def build_index(self) -> bool:
        """Build the HNSW index (see the module docstring) if missing; PostgreSQL maintains it
        for later writes. An index of this kind built with other ``m``/``ef_construction``
        than the DSN names is rebuilt (settings not in the DSN never rebuild one). Too many
        dimensions for ``pg_index`` raise a clear error."""
        kind = index_kind(self.dimensions, self.config.pg_index)
        expr, ops, _ = self._index_expr(kind)
        built = self._built_indexes().get(kind)
        wanted = {"m": str(self.config.hnsw_m), "ef_construction": str(self.config.ef_construction)}
        named = {"m": "hnsw_m", "ef_construction": "ef_construction"}
        stale = built is not None and any(
            named[k] in self.dsn_settings and built.get(k, _PG_DEFAULTS[k]) != v
            for k, v in wanted.items())
        with self._conn.transaction():
            self._conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            if stale:
                self._conn.execute(self._sql.SQL("DROP INDEX {}").format(
                    self._sql.Identifier(self._index_name(kind))))
            self._conn.execute(self._q(
                "CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (" + expr + " " + ops + ") "
                "WITH (m = {m}, ef_construction = {ef})",
                i=self._sql.Identifier(self._index_name(kind)),
                m=self._sql.Literal(self.config.hnsw_m),
                ef=self._sql.Literal(self.config.ef_construction)))
        return True

    @_write
    def optimize(self) -> None:
        """After large writes: move the GIN indexes' pending entries into the indexes, and
        refresh the planner's statistics. PostgreSQL queues a GIN index's new entries in a
        pending list (up to ``gin_pending_list_limit``, 4 MB by default) that every search by
        words or by payload filter reads through until (auto)vacuum empties it: right after
        30,000 chunks were written, word search took twice as long. Emptying it needs the
        table's owner (or MAINTAIN, PostgreSQL 17); another role leaves it to autovacuum."""
        with contextlib.suppress(self._pg.errors.InsufficientPrivilege):
            self._conn.execute(
                "SELECT gin_clean_pending_list(i.indexrelid) FROM pg_index i JOIN pg_class c "
                "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "WHERE i.indrelid = to_regclass(%s) AND a.amname = 'gin'", [self._qualified()])
        self._conn.execute(self._q("ANALYZE {t}"))
        self._deleted = 0  # the statistics now count the rows left (delete's share restarts)

    def close(self) -> None:
        with self._closing:
            self._closed = True
            for held in list(self._held):
                held.conn.close()
