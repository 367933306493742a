"""LanceDB store: the embedded default — a folder on disk, no server, versioned atomic writes.

Layout of a table: ``id`` (string, unique), ``vector`` (float32[d]), ``payload`` (the full
payload as JSON, returned verbatim) and one ``p_<field>`` column per top-level scalar payload
field, so that filters run inside LanceDB as SQL prefilters. A field's column gets the type it is
first stored with (bool, int64, float64 or string; ints and floats in one first batch make it
float64); a later value of another type goes to a column of that type, ``p_<field>~<t>``, and a
filter reads every column of its field (a score stored as 1, then as 2.5, filters as one field).

Damage to the files (a flipped byte, a truncated manifest) surfaces as :class:`StoreDamagedError`:
one line naming the folder and what to do, instead of LanceDB's Rust error or panic. Its log
lines, written straight to fd 2, are held back while a call runs and dropped when the call fails,
in a process of one thread (the CLI); beside other threads they go out as written. A record
whose payload no longer decodes comes back with an empty payload, which fails the index's
checksum check (:mod:`smysl.toolkit.index`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from smysl.files import file_lock, replace_file
from smysl.shown import first_line, split_user
from smysl.toolkit import lexical
from smysl.toolkit._deps import INSTALL_HINT
from smysl.toolkit.store import (
    Condition,
    Hit,
    Record,
    StoreConfig,
    VectorStore,
    Where,
    bound,
    local_path,
    merged_meta,
    parse_where,
    record_ids,
    text_queries,
)

log = logging.getLogger(__name__)

#: How LanceDB says a write lost to another process's (after its own retries), lower case.
_CONFLICTS = ("commit conflict", "too many concurrent writers", "incompatible transaction")

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Filter columns: ``p_<field>`` for a field named like an SQL identifier, ``px_<digest>`` for
#: any other name (Cyrillic, a hyphen, a space, past 63 characters), which had no column and
#: so matched nothing.
_PREFIX = "p_"
_HASHED = "px_"


#: Suffix of a field's column for values of another type than its first (see the module's text);
#: no field's own column name holds a "~".
_TYPED = "~"
#: Schema metadata of a table made with typed columns: an older one may hold values no column
#: has (:meth:`LanceDBStore._check_filled` looks for them before a filter trusts its columns).
_TYPED_MARK = {b"smysl_filter_columns": b"typed"}


def _base(column: str) -> str:
    """The field's own column of a filter column (itself, or the one a typed column extends)."""
    return column.partition(_TYPED)[0]


@functools.lru_cache(maxsize=4096)  # called per field of every row written
def _column(key: str) -> str:
    """The filter column of payload field ``key``."""
    if _FIELD.match(key):
        return _PREFIX + key
    return _HASHED + hashlib.blake2b(key.encode("utf-8", "surrogatepass"),
                                     digest_size=12).hexdigest()
#: Column of each row's analysed text (:func:`smysl.toolkit.lexical.terms_text`), and the name
#: of its full-text index; not a payload field (those are ``p_*``).
_TERMS = "terms"
_TERMS_INDEX = "terms_idx"
# Below this many rows an approximate index buys nothing and IVF training has too little data.
MIN_INDEX_ROWS = 1024


def _import() -> Any:
    try:
        import lancedb
        import pyarrow
    except ImportError as e:
        raise ImportError(f"the LanceDB store needs lancedb and pyarrow: {INSTALL_HINT}") from e
    return lancedb, pyarrow


T = TypeVar("T")


class StoreDamagedError(ValueError):
    """A LanceDB store whose files cannot be read (damaged, truncated, edited by hand)."""


class StoreConflictError(ValueError):
    """A write that lost to another process's write of the same table (LanceDB's commit
    conflict, after its own retries): nothing is damaged, the write can be made again."""


_swap_lock = threading.Lock()


def _alone() -> bool:
    """Whether the calling thread is the process's only one but LanceDB's event loop and
    tqdm's monitor (a progress bar's: it only redraws the bar, which may be held back)."""
    from lancedb.background_loop import LOOP

    monitor = sys.modules.get("tqdm._monitor")
    quiet: tuple[type, ...] = (monitor.TMonitor,) if monitor is not None else ()
    me = threading.current_thread()
    return all(t is me or t is LOOP.thread or isinstance(t, quiet)
               for t in threading.enumerate())


@contextlib.contextmanager
def _held_stderr() -> Iterator[None]:
    """Hold back what native code writes to fd 2 during the block; replay it on success.

    Only in a process of one thread (the CLI): fd 2 is the whole process's, so a swap beside
    other threads would hold back their lines too (a server's log), drop them when the call
    fails, and two overlapping swaps would leave stderr pointing at a deleted file for good.
    With other threads, LanceDB's lines go out as it writes them. LanceDB's own event loop
    thread (started by ``import lancedb``; it runs the calls) and tqdm's monitor (an
    interactive ``smysl index add`` has a progress bar) do not count."""
    if not _alone() or not _swap_lock.acquire(blocking=False):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        ok = False
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
                ok = True
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                if ok:
                    tmp.seek(0)
                    held = tmp.read()
                    if held:
                        os.write(2, held)
    finally:
        _swap_lock.release()


def _payload(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        payload = json.loads(text)
    except ValueError:  # damaged JSON: an empty payload, which fails the checksum check
        return {}
    return payload if isinstance(payload, dict) else {}


def _sql_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        if isinstance(v, int) and v == -(2**63):
            # SQL reads "-9223372036854775808" as minus a literal beyond int64 (a float)
            return "(-9223372036854775807 - 1)"
        return repr(float(v)) if isinstance(v, float) else str(int(v))
    return "'" + str(v).replace("'", "''") + "'"


class LanceStore(VectorStore):
    """A LanceDB table; search is an exact scan unless an index exists and ``exact=False``.

    Reads run from several threads at once (:attr:`concurrent_reads`): LanceDB's table is
    shared by its native runtime, and this object keeps no state a read changes (20,000
    rows, 2 cores: 1.5x the searches by words a second with two threads, ~1.1x by vector,
    whose scan LanceDB already spreads over the cores)."""

    concurrent_reads = True

    def __init__(self, config: StoreConfig, dimensions: int | None = None, *,
                 replace: bool = False) -> None:
        lancedb, pa = _import()
        self._pa = pa
        self.config = config
        #: The store's place in messages: a folder as given, a URL (``s3://...``) without a
        #: user part (its query kept: ``s3+ddb://bucket/kb?ddbTableName=...`` names the store).
        self.where = split_user(config.uri)[1]
        self._terms_ready = False  # the terms column and its index exist (checked on a write)
        #: Rows were deleted or rewritten since the full-text index was (re)built here: its
        #: word statistics still count them (see :meth:`_rescore_terms`).
        self._terms_stale = False
        self._rescoring = threading.Lock()
        #: Fields' own columns known to hold every row's value (:meth:`_check_filled`).
        self._filled: set[str] = set()
        path = local_path(config.uri)
        if path is None and not config.uri:
            raise ValueError("a LanceDB store needs a folder (uri)")
        if path is not None:
            if path.exists() and not path.is_dir():  # mkdir's FileExistsError: a traceback
                raise ValueError(f"{path} is a file, not a LanceDB folder: give the index a "
                                 f"folder of its own")
            if dimensions is None and not path.exists():  # opening only: make no folder (a
                # search of a mistyped path left an empty one behind)
                raise FileNotFoundError(f"no table {config.table!r} in {self.where} (no such "
                                        f"folder)")
            path.mkdir(parents=True, exist_ok=True)
        with self._guard():
            # Every read sees the table's latest version: by default LanceDB keeps the version
            # it opened, so a server searching the index never saw documents `smysl index add`
            # wrote later, and drivers of one job added payload columns from stale schemas.
            # The check costs ~0.03 ms a read on a local folder.
            self._db = lancedb.connect(str(path) if path is not None else config.uri,
                                       read_consistency_interval=timedelta(0))
        if replace and dimensions is not None:
            self._drop()
        for attempt in range(3):
            dims = self._open_table()
            if dims is not None:
                if dimensions is not None and dims != dimensions:
                    raise ValueError(f"table {config.table!r} holds {dims}-d vectors, "
                                     f"not {dimensions}-d")
                self.dimensions = dims
                return
            if dimensions is None:
                raise FileNotFoundError(f"no table {config.table!r} in {self.where}")
            try:
                self._create(int(dimensions))
                return
            except StoreDamagedError:
                # two first writers (drivers of one job on a new index): the other created
                # it between our look and our create, and it is opened on the next round
                if attempt == 2 or self._open_table() is None:
                    raise

    def _open_table(self) -> int | None:
        """Open the table if it exists; its width, else None."""
        with self._guard():
            names = self._db.list_tables()
            if self.config.table not in list(names.tables):
                return None
            self._table = self._db.open_table(self.config.table)
            return int(self._table.schema.field("vector").type.list_size)

    def _create(self, dimensions: int) -> None:
        pa = self._pa
        self.dimensions = dimensions
        schema = pa.schema([pa.field("id", pa.string(), nullable=False),
                            pa.field("vector", pa.list_(pa.float32(), self.dimensions)),
                            pa.field("payload", pa.string()),
                            pa.field(_TERMS, pa.string())], metadata=_TYPED_MARK)
        with self._guard():
            self._table = self._db.create_table(self.config.table, schema=schema)

    def _drop(self) -> None:
        """Delete the table (a damaged one's folder directly) and its metadata."""
        try:
            with self._guard():
                names = self._db.list_tables()
                if self.config.table in list(names.tables):
                    self._db.drop_table(self.config.table)
        except StoreDamagedError:
            path = local_path(self.config.uri)
            if path is None:
                raise
            shutil.rmtree(path / f"{self.config.table}.lance", ignore_errors=True)
        if local_path(self.config.uri) is not None:
            self._meta_path().unlink(missing_ok=True)

    # ---------------------------------------------------------------- damage
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """LanceDB's own failures (Rust errors, panics, undecodable files) as one clear line."""
        try:
            with _held_stderr():
                yield
        except (StoreDamagedError, StoreConflictError, KeyboardInterrupt):
            raise
        except Exception as e:  # whatever else the native code raises means damage
            first = first_line(e, 200).split(", /")[0]  # less the Rust source location
            if any(m in first.lower() for m in _CONFLICTS):
                raise StoreConflictError(
                    f"{self.where}: another process changed LanceDB store "
                    f"{self.config.table!r} at the same time and LanceDB gave up retrying "
                    f"({first}); nothing is damaged: run the command again") from None
            raise StoreDamagedError(
                f"{self.where}: LanceDB store {self.config.table!r} is damaged or "
                f"unreadable ({type(e).__name__}: {first}); restore the folder from a backup, "
                f"or rebuild it: smysl index add {self.where} FILES... --rebuild"
            ) from None

    def _guarded(self, items: Iterable[T]) -> Iterator[T]:
        """Iterate ``items`` with every step under :meth:`_guard` (not the consumer's code)."""
        it = iter(items)
        while True:
            with self._guard():
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    # ---------------------------------------------------------------- columns and filters
    def _columns(self) -> dict[str, Any]:
        """Filter column (:func:`_column`) -> arrow type."""
        return self._filter_columns()[0]

    def _filter_columns(self) -> tuple[dict[str, Any], bool]:
        """:meth:`_columns`, and whether the table is marked as made with typed columns
        (:data:`_TYPED_MARK`): one read of the schema."""
        with self._guard():
            schema = self._table.schema
        return ({f.name: f.type for f in schema if f.name.startswith((_PREFIX, _HASHED))},
                (schema.metadata or {}).items() >= _TYPED_MARK.items())

    def _arrow_type(self, v: Any) -> Any:
        pa = self._pa
        if isinstance(v, bool):
            return pa.bool_()
        if isinstance(v, int):
            return pa.int64() if -(2**63) <= v < 2**63 else None
        if isinstance(v, float):
            return pa.float64()
        if isinstance(v, str):
            return pa.string()
        return None

    def _typed(self, base: str, typ: Any) -> str:
        """The column of field column ``base`` for values of arrow type ``typ``."""
        pa = self._pa
        code = {pa.bool_(): "b", pa.int64(): "i", pa.float64(): "f", pa.string(): "s"}[typ]
        return f"{base}{_TYPED}{code}"

    def _slot(self, v: Any, base: str, cols: Mapping[str, Any]) -> str | None:
        """The column value ``v`` of field column ``base`` goes to: the field's own when it
        fits there, else the one of its type (None: no column holds it, e.g. a list)."""
        t = self._arrow_type(v)
        if t is None:
            return None
        own = cols.get(base)
        if own is None or self._fits(v, own) is not None:
            return base
        return self._typed(base, t)

    def _fits(self, v: Any, typ: Any) -> Any:
        """The column value for ``v`` in a column of ``typ`` (None when it does not fit)."""
        pa = self._pa
        t = self._arrow_type(v)
        if t is None:
            return None
        if t == typ:
            return v
        if typ == pa.float64() and t == pa.int64():
            return float(v)
        return None

    def _add_columns(self, payloads: list[dict[str, Any]]) -> dict[str, Any]:
        """The filterable columns, after adding those ``payloads`` need. Another process may
        add columns at the same time (drivers of one job): its commit makes ours fail, and the
        columns are read again; what it added is taken as it is."""
        for attempt in range(8):
            cols = self._columns()
            new = self._new_columns(cols, payloads)
            if not new:
                return cols
            sql = {self._pa.bool_(): "BOOLEAN", self._pa.int64(): "BIGINT",
                   self._pa.float64(): "DOUBLE", self._pa.string(): "STRING"}
            try:
                with self._guard():
                    self._table.add_columns({name: f"CAST(NULL AS {sql[t]})"
                                             for name, t in new.items()})
                return {**cols, **new}
            except StoreConflictError:
                if attempt == 7:
                    raise
            except StoreDamagedError:  # LanceDB's "already exists" of a column just added
                if attempt == 7 or set(self._columns()) == set(cols):
                    raise  # nobody else changed the schema: a real failure
        raise AssertionError("unreachable")

    def _new_columns(self, cols: dict[str, Any], payloads: list[dict[str, Any]]
                     ) -> dict[str, Any]:
        """The columns of payload fields that have none yet -> the arrow type they get."""
        pa = self._pa
        new: dict[str, Any] = {}
        for p in payloads:  # first the fields' own columns
            for key, v in p.items():
                name = _column(key)
                if name in cols:
                    continue
                t = self._arrow_type(v)
                if t is None:
                    continue
                if name in new and new[name] != t:
                    # int and float in one batch widen to float; other mixes: the first type
                    # (the others get typed columns below)
                    if {new[name], t} == {pa.int64(), pa.float64()}:
                        new[name] = pa.float64()
                    continue
                new.setdefault(name, t)
        own = {**cols, **new}
        for p in payloads:  # then the columns of values another type than their field's
            for key, v in p.items():
                slot = self._slot(v, _column(key), own)
                if slot is not None and slot not in own and slot not in new:
                    new[slot] = self._arrow_type(v)
        return new

    def _sql(self, conditions: Sequence[Condition]) -> str | None:
        if not conditions:
            return None
        cols, marked = self._filter_columns()
        parts = []
        for c in conditions:
            base = _column(c.key)
            if not marked:
                self._check_filled(c.key, cols)
            # the field's own column and its typed ones: a row fills one of them at most
            either = [self._condition(c, name, typ) for name, typ in cols.items()
                      if _base(name) == base]
            either = [e for e in either if e is not None]
            if not either:
                return "FALSE"
            parts.append(" OR ".join(f"({e})" for e in either))
        return " AND ".join(f"({p})" for p in parts)

    def _condition(self, c: Condition, name: str, typ: Any) -> str | None:
        """SQL of condition ``c`` on filter column ``name`` of arrow type ``typ`` (None: no
        value that column holds can match)."""
        pa = self._pa
        numeric = (pa.int64(), pa.float64())
        col = f"`{name}`"
        values = c.value if c.op == "in" else [c.value]
        # an int column meets a float value as a DOUBLE (LanceDB refuses to compare them:
        # "could not convert Float64 to Int64"); exact for ints below 2**53
        floats = typ == pa.int64() and any(self._arrow_type(v) == pa.float64() for v in values)
        if floats:
            col = f"CAST({col} AS DOUBLE)"
        if c.op in ("eq", "in"):
            ok = [v for v in values if self._arrow_type(v) == typ
                  or (typ in numeric and self._arrow_type(v) in numeric)]
            return f"{col} IN ({', '.join(_sql_literal(v) for v in ok)})" if ok else None
        if typ not in numeric:
            return None
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
        limit = c.value
        if self._arrow_type(limit) is None:  # an int beyond int64: LanceDB refuses
            limit = float(limit)  # the literal; as a DOUBLE the comparison holds
            col = col if floats else f"CAST({col} AS DOUBLE)"
        return f"{col} {sym} {_sql_literal(limit)}"

    def _check_filled(self, key: str, cols: Mapping[str, Any]) -> None:
        """``ValueError`` when rows of an earlier smysl hold a value of ``key`` that no filter
        column holds, so a filter would find only the rows written since (a partial "deleted
        1" of 2): it made no column for a name that is no SQL identifier (before 2026-12-04),
        and kept a value of another type than the field's first in the payload alone (before
        typed columns, 2026-12-06). A table made since is marked (:data:`_TYPED_MARK`) and
        holds none; others are checked once per field and store: every write since fills the
        columns."""
        name = _column(key)
        if name in self._filled:
            return
        # (an identifier's field without a column never held a value one could: nothing to
        # look for, and nothing remembered, so a client's made-up names cost nothing)
        if name.startswith(_HASHED) or name in cols:
            # rows whose payload spells the field (json.dumps, ensure_ascii=False) and whose
            # columns of it are all empty; of those, the ones whose value a column would hold
            # (not null, not a list or mapping)
            spelled = _sql_literal("%" + json.dumps(key, ensure_ascii=False) + ":%")
            unfilled = f"payload LIKE {spelled}" + "".join(
                f" AND `{c}` IS NULL" for c in cols if _base(c) == name)
            stale = sum(1 for batch in self._records(unfilled, False, 2048) for r in batch
                        if self._arrow_type(r.payload.get(key)) is not None)
            if stale:
                raise ValueError(
                    f"filter field {key!r}: {stale} record(s) of this index were written by an "
                    "earlier smysl that kept their value of it in no filter column (a field "
                    "name that is no SQL identifier, or a value of another type than the "
                    "field's first), so a filter would miss them; rebuild the index (smysl "
                    "index add ... --rebuild) to filter on it")
            if len(self._filled) >= 4096:  # bounded whatever names clients filter on
                self._filled.clear()
            self._filled.add(name)

    def _where(self, where: Where | None, ids: Sequence[str] | None = None) -> str | None:
        parts = []
        sql = self._sql(parse_where(where))
        if sql:
            parts.append(sql)
        if ids is not None:
            parts.append("id IN (" + ", ".join(_sql_literal(str(i)) for i in ids) + ")"
                         if ids else "FALSE")
        return " AND ".join(f"({p})" for p in parts) if parts else None

    # ---------------------------------------------------------------- VectorStore
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        ids, vecs, pays = self._check_upsert(ids, vectors, payloads)
        if not ids:
            return
        pa = self._pa
        self._ensure_terms()
        cols = self._add_columns(pays)
        data: dict[str, Any] = {
            "id": pa.array(ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()),
                                                        self.dimensions),
            "payload": pa.array([json.dumps(p, ensure_ascii=False) for p in pays], pa.string()),
            _TERMS: pa.array([lexical.terms_text(p.get("text")) for p in pays], pa.string()),
        }
        named = {_column(k): k for p in pays for k in p}  # column -> the field it holds
        # each row's column of each field, once (a field may have several)
        slots = {base: [self._slot(p.get(key), base, cols) for p in pays]
                 for base, key in named.items()}
        for name, typ in cols.items():
            base = _base(name)
            key = named.get(base)
            if key is None:  # no row of this batch has the field
                data[name] = pa.nulls(len(pays), typ)
                continue
            data[name] = pa.array([self._fits(p.get(key), typ) if slot == name else None
                                   for p, slot in zip(pays, slots[base], strict=True)], typ)
        with self._guard():
            schema = self._table.schema
            # in the table's column order: a table of an earlier smysl has its terms column
            # after the payload columns, where it was added; a payload column another process
            # added since _add_columns is null here (these records lack that field)
            table = pa.table({n: data[n] if n in data else pa.nulls(len(ids), schema.field(n).type)
                              for n in schema.names}).cast(schema)
            merged = (self._table.merge_insert("id").when_matched_update_all()
                      .when_not_matched_insert_all().execute(table))
        if merged.num_updated_rows:  # an update is a delete and an insert to LanceDB
            self._terms_stale = True

    def _ensure_terms(self) -> None:
        """Give a table of an earlier smysl the terms column (its rows get terms when they are
        written again), and the table its full-text index: LanceDB searches rows written since
        the index was built (or last folded in by :meth:`optimize`) by a scan, so it is built
        once, on the first write. Another process may do either at the same time: its commit
        makes ours fail, and what it made is used."""
        if self._terms_ready:
            return

        def ensure() -> None:
            if _TERMS not in self._table.schema.names:
                self._table.add_columns({_TERMS: "CAST(NULL AS STRING)"})
            if not self._has_terms_index():
                self._index_terms(replace=False)

        self._retried(ensure)
        self._terms_ready = True

    def _has_terms_index(self) -> bool:
        return any(i.name == _TERMS_INDEX for i in self._table.list_indices())

    def _index_terms(self, *, replace: bool) -> None:
        from lancedb.index import FTS

        # terms are analysed already: split at spaces, nothing else
        self._table.create_index(_TERMS, config=FTS(
            base_tokenizer="whitespace", lower_case=False, stem=False, remove_stop_words=False,
            ascii_folding=False, with_position=False, max_token_length=None),
            name=_TERMS_INDEX, replace=replace)

    def _retried(self, change: Callable[[], None]) -> None:
        """``change`` (under the guard), tried again when another process's commit beat it."""
        for attempt in range(8):
            try:
                with self._guard():
                    change()
                return
            except (StoreConflictError, StoreDamagedError):  # "already exists" of a racer
                if attempt == 7:
                    raise
                time.sleep(0.02 * (1 + random.random()))

    def _has_index(self) -> bool:
        with self._guard():
            return any(i.name != _TERMS_INDEX for i in self._table.list_indices())

    def search(self, vectors: np.ndarray, k: int = 10, *, where: Where | None = None,
               exact: bool = True, with_vectors: bool = False) -> list[list[Hit]]:
        q = self._queries(vectors, k)
        sql = self._where(where)
        cols = ["id", "payload", "_distance"] + (["vector"] if with_vectors else [])
        out: list[list[Hit]] = [[] for _ in range(len(q))]
        use_index = not exact and self._has_index()
        step = 256  # bounded result sets per round trip
        for s in range(0, len(q), step):
            block = q[s : s + step]
            with self._guard():
                query = self._table.search(list(block) if len(block) > 1 else block[0],
                                           vector_column_name="vector")
                query = query.distance_type("dot").limit(k).select(cols)
                if sql:
                    query = query.where(sql, prefilter=True)
                if use_index:
                    query = query.nprobes(self.config.nprobes).refine_factor(
                        self.config.refine_factor)
                else:
                    query = query.bypass_vector_index()
                res = query.to_arrow()
            qidx = (res.column("query_index").to_pylist() if "query_index" in res.column_names
                    else [0] * res.num_rows)
            rid = res.column("id").to_pylist()
            pay = res.column("payload").to_pylist()
            dist = res.column("_distance").to_numpy()
            vec = (res.column("vector").combine_chunks().flatten().to_numpy()
                   .reshape(-1, self.dimensions) if with_vectors else None)
            for n in range(res.num_rows):
                out[s + qidx[n]].append(Hit(
                    rid[n], float(1.0 - dist[n]), _payload(pay[n]),
                    vec[n].copy() if vec is not None else None))
        for hits in out:  # scores from 1 - distance can reorder at float ties; sort, stably
            hits.sort(key=lambda h: -h.score)
        return out

    def search_text(self, queries: Sequence[Sequence[str]], k: int = 10, *,
                    where: Where | None = None, with_vectors: bool = False
                    ) -> list[list[Hit]]:
        queries = text_queries(queries, k)
        sql = self._where(where)
        self._rescore_terms()
        with self._guard():
            has_terms = _TERMS in self._table.schema.names
        cols = ["id", "payload", "_score"] + (["vector"] if with_vectors else [])
        out: list[list[Hit]] = []
        for terms in queries:
            if not terms or not has_terms:  # a table no smysl with lexical search wrote
                out.append([])
                continue
            with self._guard():
                # BM25 over the whitespace-split terms; a query term no row holds adds nothing
                query = self._table.search(" ".join(terms), query_type="fts",
                                           fts_columns=_TERMS).limit(k).select(cols)
                if sql:
                    query = query.where(sql, prefilter=True)
                res = query.to_arrow()
            vec = (res.column("vector").combine_chunks().flatten().to_numpy()
                   .reshape(-1, self.dimensions) if with_vectors else None)
            hits = [Hit(i, float(s), _payload(p), vec[n].copy() if vec is not None else None)
                    for n, (i, p, s) in enumerate(zip(
                        res.column("id").to_pylist(), res.column("payload").to_pylist(),
                        res.column("_score").to_pylist(), strict=True))]
            hits.sort(key=lambda h: -h.score)
            out.append(hits)
        return out

    def _records(self, sql: str | None, with_vectors: bool, batch_size: int
                 ) -> Iterator[list[Record]]:
        cols = ["id", "payload"] + (["vector"] if with_vectors else [])
        with self._guard():
            query = self._table.search().select(cols).limit(None)
            if sql:
                query = query.where(sql)
        empty = np.zeros(0, np.float32)
        for batch in self._guarded(query.to_batches(batch_size)):
            ids = batch.column("id").to_pylist()
            pays = batch.column("payload").to_pylist()
            vecs = (batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                    .reshape(-1, self.dimensions) if with_vectors else None)
            yield [Record(i, vecs[n].astype(np.float32, copy=True) if vecs is not None
                          else empty, _payload(p))
                   for n, (i, p) in enumerate(zip(ids, pays, strict=True))]

    def get(self, ids: Sequence[str]) -> list[Record]:
        ids = record_ids(ids)
        found: dict[str, Record] = {}
        for s in range(0, len(ids), 1000):
            for batch in self._records(self._where(None, ids[s : s + 1000]), True, 4096):
                found.update((r.id, r) for r in batch)
        return [found[i] for i in ids if i in found]

    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        if ids is None and not where:
            raise ValueError("delete needs ids or a filter")
        gone = 0
        listed = record_ids(ids) if ids is not None else None
        chunks = [listed[s : s + 1000] for s in range(0, len(listed), 1000)] if listed is not None \
            else [None]
        for part in chunks:
            sql = self._where(where, part)
            with self._guard():
                n = self._table.count_rows(sql)
                if n:
                    self._table.delete(sql)
            gone += n
        if gone:
            self._terms_stale = True
        return gone

    def _rescore_terms(self) -> None:
        """Rebuild the full-text index if rows were deleted or rewritten since. LanceDB's BM25
        keeps counting such rows in its word statistics until a compaction rewrites their file,
        which its :meth:`optimize` does only past about 10% of a file deleted: with 4 of 60
        rows deleted, a word's score stayed 3.18 where the rows left score 3.89. A rebuild
        costs about as much as a build (2.2 s for 200,000 chunks of 60 words on a 2-core
        Zen 5), so it waits for the next word search, :meth:`optimize` (ingestion's end) or
        :meth:`close`: one for a whole ingestion's deletes and rewrites."""
        with self._rescoring:
            if not self._terms_stale:
                return

            def rebuild() -> None:
                if self._has_terms_index():
                    self._index_terms(replace=True)

            # cleared first: a delete of another thread during the rebuild sets it again
            self._terms_stale = False
            try:
                self._retried(rebuild)
            except BaseException:
                self._terms_stale = True
                raise

    def count(self, where: Where | None = None) -> int:
        sql = self._where(where)
        with self._guard():
            return int(self._table.count_rows(sql) if sql else self._table.count_rows())

    def scan(self, batch_size: int = 2048, *, where: Where | None = None,
             with_vectors: bool = True) -> Iterator[list[Record]]:
        yield from self._records(self._where(where), with_vectors, batch_size)

    def _meta_path(self) -> Path:
        path = local_path(self.config.uri)
        if path is None:
            raise ValueError("index metadata needs a local LanceDB folder")
        return path / f"{self.config.table}.smysl.json"

    def read_meta(self) -> dict[str, Any]:
        return self._read_meta(self._meta_path())

    @staticmethod
    def _meta_lock(p: Path) -> contextlib.AbstractContextManager[None]:
        """The lock every change of the metadata file ``p`` holds (other processes write it)."""
        return file_lock(p.with_name(p.name + ".lock"))

    @staticmethod
    def _read_meta(p: Path) -> dict[str, Any]:
        if not p.is_file():
            return {}
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: index metadata is damaged ({e}); restore it, or rebuild the "
                             f"index (smysl index add --rebuild)") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{p}: index metadata is damaged (not a JSON object); restore it, "
                             f"or rebuild the index (smysl index add --rebuild)")
        return meta

    def claim_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        p = self._meta_path()
        with self._meta_lock(p):
            held = self._read_meta(p)
            if bound(held):
                return held
            claimed = {**held, **meta}
            replace_file(p, json.dumps(claimed, indent=2, ensure_ascii=False))
            return claimed

    def update_meta(self, changes: Mapping[str, Any]) -> None:
        # Read, change and write under a lock on the folder: drivers of one corpus job commit
        # their shards into this file at the same time.
        p = self._meta_path()
        with self._meta_lock(p):
            meta = merged_meta(self._read_meta(p), changes)
            replace_file(p, json.dumps(meta, indent=2, ensure_ascii=False))

    def build_index(self) -> bool:
        """(Re)build the approximate index; tables under :data:`MIN_INDEX_ROWS` stay exact."""
        n = self.count()
        if n < MIN_INDEX_ROWS:
            return False
        kind = self.config.index.upper()
        options: dict[str, Any] = {"metric": "dot", "index_type": kind, "replace": True,
                                   "num_partitions": max(1, min(256, int(np.sqrt(n) / 2)))}
        if kind == "IVF_PQ":
            sub = next(s for s in (self.dimensions // 8, self.dimensions // 4,
                                   self.dimensions // 2, 1) if s and self.dimensions % s == 0)
            options["num_sub_vectors"] = sub
        with self._guard():
            self._table.create_index(**options)
        return True

    def optimize(self) -> None:
        """Compact small write batches into larger files and fold new rows into the index.
        Another process writing the table at the same time makes a compaction fail (a commit
        conflict; measured: 7-13 of 40 while another process wrote): it is tried again, and
        after five conflicts left to a later write, since the data are all there. The
        full-text index is rebuilt if rows were deleted or rewritten (:meth:`_rescore_terms`)."""
        self._compact()
        self._rescore_terms()

    def _compact(self) -> None:
        for attempt in range(5):
            try:
                with self._guard():
                    self._table.optimize()
                return
            except StoreConflictError:
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
        log.info("%s: LanceDB compaction skipped: other processes keep writing the table",
                 self.where)

    def close(self) -> None:
        """Rebuild the full-text index if this process left it counting deleted or rewritten
        rows, so that other processes score words right (a failure is logged: the rows are
        all there, and a rebuild after a later change mends the scores)."""
        try:
            self._rescore_terms()
        except (StoreConflictError, StoreDamagedError) as e:
            log.warning("%s: the full-text index was left counting deleted rows: %s",
                        self.where, e)
