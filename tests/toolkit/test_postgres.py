"""PostgreSQL + pgvector store (issue 16), on a real server started for the session: HNSW
recall, the dimension limits, bad DSNs, upserts by id, and an index end to end (API and CLI).
The shared store contract runs on it in test_store.py."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from typing import Any

import numpy as np
import pytest

from smysl.cli import main
from smysl.toolkit import lexical
from smysl.toolkit.store import StoreConfig
from smysl.toolkit.stores import open_store
from toolkit.helpers import brute_force, unit_rows

pytest.importorskip("psycopg")


def _config(dsn: str, **kw) -> StoreConfig:
    return StoreConfig(backend="postgres", uri=dsn, table=f"t_{uuid.uuid4().hex[:12]}", **kw)


def _recall(store, q: np.ndarray, k: int = 10, where=None) -> float:
    exact = store.search(q, k, exact=True, where=where)
    approx = store.search(q, k, exact=False, where=where)
    return float(np.mean([len({h.id for h in a} & {h.id for h in e}) / k
                          for a, e in zip(approx, exact, strict=True)]))


def test_hnsw_recall_at_10_on_10000_vectors(postgres_dsn) -> None:
    """Issue 16 bar: HNSW recall@10 >= 0.95 against exact search on 10,000 vectors, also
    with a filter (iterative index scans keep filling the k results)."""
    x = unit_rows(10_000, 64, seed=7, clusters=50)
    q = unit_rows(100, 64, seed=8, clusters=50)
    with open_store(_config(postgres_dsn), 64) as s:
        s.upsert([str(i) for i in range(len(x))], x, [{"g": i % 10} for i in range(len(x))])
        assert s.build_index()
        exact = s.search(q[:5], 10, exact=True)
        ref, _ = brute_force(x, q[:5], 10)
        assert [[int(h.id) for h in row] for row in exact] == ref.tolist()
        assert _recall(s, q) >= 0.95
        filtered = s.search(q[:10], 10, exact=False, where={"g": 3})
        assert all(len(row) == 10 and all(h.payload["g"] == 3 for h in row) for row in filtered)
        assert _recall(s, q[:20], where={"g": 3}) >= 0.95


# binary codes of isotropic noise lose most of the ranking: the re-scoring is what matters
@pytest.mark.parametrize(("dims", "kind", "bar"), [(2048, "auto", 0.9), (256, "binary", 0.8)])
def test_halfvec_and_binary_indexes_rescore_exactly(postgres_dsn, dims, kind, bar) -> None:
    """Over 2,000 dimensions ``auto`` indexes the halfvec cast; ``binary`` indexes bit codes;
    both re-score their candidates on the stored float32 vectors (issue 16)."""
    x = unit_rows(1500, dims, seed=9, clusters=20)
    q = unit_rows(20, dims, seed=10, clusters=20)
    with open_store(_config(postgres_dsn, pg_index=kind, refine_factor=8), dims) as s:
        s.upsert([str(i) for i in range(len(x))], x)
        assert s.build_index()
        hits = s.search(q, 10, exact=False, with_vectors=True)
        assert _recall(s, q) >= bar
    for row in hits:  # exact scores and vectors, not halfvec or bit approximations
        for h in row:
            np.testing.assert_array_equal(h.vector, x[int(h.id)])
        np.testing.assert_allclose([h.score for h in row],
                                   [float(x[int(h.id)] @ q[hits.index(row)]) for h in row],
                                   atol=1e-5)


def test_dimension_limits_name_the_way_out(postgres_dsn) -> None:
    """pgvector cannot index 4,096-d vectors (Qwen3-8B): the message suggests Matryoshka
    dimensions or the binary index; an explicit impossible choice fails at opening (issue 16)."""
    with open_store(_config(postgres_dsn), 4096) as s:
        x = unit_rows(3, 4096)
        s.upsert(["a", "b", "c"], x)
        assert [h.id for h in s.search(x[1], 1)[0]] == ["b"]  # exact search still works
        with pytest.raises(ValueError, match=r"at most 2,000.*Matryoshka.*pg_index='binary'"):
            s.build_index()
    with pytest.raises(ValueError, match="4,000 of halfvec"):
        open_store(_config(postgres_dsn, pg_index="vector"), 3000)
    with pytest.raises(ValueError, match=r"1\.\.16000"):
        open_store(_config(postgres_dsn), 20000)


def test_unreachable_dsn_names_the_server() -> None:
    """A DSN nobody answers: one clear error with host, port and database (issue 16)."""
    from smysl.toolkit.postgres import PostgresStoreError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = StoreConfig.parse(f"postgres://smysl:secret@127.0.0.1:{port}/kb", connect_timeout=3)
    with pytest.raises(PostgresStoreError, match=f"at 127.0.0.1:{port}/kb") as e:
        open_store(cfg, 8)
    assert "secret" not in str(e.value)


def test_reopen_upsert_and_bad_payloads(postgres_dsn) -> None:
    """Reopening finds the table and its width; upserts replace by id; a payload PostgreSQL
    cannot hold fails before anything is written (issue 16)."""
    cfg = _config(postgres_dsn)
    x = unit_rows(4, 8)
    with open_store(cfg, 8) as s:
        s.upsert(["a", "b"], x[:2], [{"v": 1}, {"v": 2}])
        s.update_meta({"model": "m", "records": 2})
    with open_store(cfg) as s:
        assert s.dimensions == 8 and s.count() == 2 and s.read_meta()["records"] == 2
        s.upsert(["b", "c"], x[2:4], [{"v": 3}, {"v": 4}])
        assert {r.id: r.payload["v"] for r in s.get(["a", "b", "c"])} == {"a": 1, "b": 3, "c": 4}
        with pytest.raises(ValueError, match="NaN"):
            s.upsert(["d"], x[:1], [{"v": float("nan")}])
        assert s.count() == 3
    with pytest.raises(ValueError, match="8-d"):
        open_store(cfg, 16)
    with open_store(cfg, 16, replace=True) as s:
        assert s.count() == 0 and s.read_meta() == {}
    with pytest.raises(FileNotFoundError, match="no table"):
        open_store(_config(postgres_dsn))


def test_index_add_search_through_cli(postgres_dsn, tiny_dir, tmp_path, capsys) -> None:
    """`smysl index add/search postgres:DSN` end to end, with the model read back from the
    store's metadata and a filter (issue 16)."""
    rows = [{"id": f"r{i}", "text": f"row {i} says {w}", "lang": ["en", "de"][i % 2]}
            for i, w in enumerate(["alpha", "beta", "gamma", "delta", "alpha", "beta"])]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    spec = f"postgres:{postgres_dsn}"
    table = f"kb_{uuid.uuid4().hex[:8]}"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", spec, "--table", table, str(tmp_path / "rows.jsonl"),
                 "--id-field", "id", *model, "--no-progress", "--ann"]) == 0
    err = capsys.readouterr().err
    assert "index holds 6 chunks" in err and "approximate index built" in err
    assert main(["index", "add", spec, "--table", table, str(tmp_path / "rows.jsonl"),
                 "--id-field", "id", *model, "--no-progress"]) == 0
    assert "0 embedded" in capsys.readouterr().err  # upsert by chunk id: nothing twice
    assert main(["index", "search", spec, "alpha", "--table", table, "-k", "3",
                 "--where", "lang=de", "--format", "json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out.splitlines()[0])["hits"]
    assert len(hits) == 3 and all(h["payload"]["lang"] == "de" for h in hits)
    assert main(["index", "verify", spec, "--table", table, "--device", "cpu"]) == 0


def test_dsn_carries_index_settings() -> None:
    """HNSW m, ef_construction, ef_search, refine_factor and the index kind ride in the DSN
    (URL query or key=value words); the rest reaches libpq untouched; bad values are named."""
    from smysl.toolkit.postgres import split_options

    url = ("postgres://me:p%40ss@db:5433/kb?sslmode=disable&index=binary&m=32"
           "&ef_construction=200&options=-c%20search_path%3Dx&ef_search=100&refine_factor=8")
    assert split_options(url) == (
        "postgres://me:p%40ss@db:5433/kb?sslmode=disable&options=-c%20search_path%3Dx",
        {"pg_index": "binary", "hnsw_m": 32, "ef_construction": 200, "ef_search": 100,
         "refine_factor": 8})
    assert split_options("postgresql://db/kb?index=halfvec") == (
        "postgresql://db/kb", {"pg_index": "halfvec"})
    words = "host=db m = 24 password='a m=3 \\' b' dbname=kb index=VECTOR ef_search=64"
    assert split_options(words) == ("host=db  password='a m=3 \\' b' dbname=kb",
                                    {"hnsw_m": 24, "pg_index": "vector", "ef_search": 64})
    assert split_options("postgresql://db/kb") == ("postgresql://db/kb", {})
    assert split_options("") == ("", {})
    for bad, match in [("?m=1", r"m='1'.*2\.\.100"), ("?ef_search=x", "ef_search='x'"),
                       ("?index=ivf", "index='ivf'.*auto, vector, halfvec, binary"),
                       ("?m=8&hnsw_m=9", "hnsw_m twice")]:
        with pytest.raises(ValueError, match=match):
            split_options("postgresql://db/kb" + bad)
    with pytest.raises(ValueError, match="at least twice m=32"):
        open_store(StoreConfig.parse("postgresql://127.0.0.1:1/kb?m=32&ef_construction=40"), 8)


def _hnsw(dsn: str, table: str) -> dict[str, list[str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c "
                            "ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s) "
                            "AND c.relname LIKE %s", [table, "%hnsw%"]).fetchall()
    return {name: sorted(opts or []) for name, opts in rows}


def test_index_settings_through_cli_dsn(postgres_dsn, tiny_dir, tmp_path, capsys) -> None:
    """`smysl index add/search postgres:DSN?index=binary&m=8&ef_construction=40&ef_search=80`
    builds that index with those settings; search without `index=` finds it; new m in the
    DSN rebuilds it, the DSN without settings leaves it alone (issue 16)."""
    rows = [{"id": f"r{i}", "text": f"row {i} says {w}"}
            for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 10)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    table = f"kb_{uuid.uuid4().hex[:8]}"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    spec = f"postgres:{postgres_dsn}?index=binary&m=8&ef_construction=40"
    assert main(["index", "add", spec, "--table", table, str(tmp_path / "rows.jsonl"),
                 "--id-field", "id", *model, "--no-progress", "--ann"]) == 0
    assert "approximate index built" in capsys.readouterr().err
    assert _hnsw(postgres_dsn, table) == {f"{table}_hnsw_binary": ["ef_construction=40", "m=8"]}
    with open_store(StoreConfig.parse(f"postgres:{postgres_dsn}?ef_search=80",
                                      table=table)) as s:
        assert s.config.ef_search == 80 and s.config.pg_index == "auto"
        assert s._search_kind() == "binary"  # the index the table has, without index=
    for dsn in (f"{postgres_dsn}?ef_search=80", f"{postgres_dsn}?index=binary&refine_factor=2"):
        assert main(["index", "search", f"postgres:{dsn}", "alpha", "--table", table, "-k",
                     "3", "--approximate", "--format", "json", "--device", "cpu"]) == 0
        hits = json.loads(capsys.readouterr().out.splitlines()[0])["hits"]
        assert len(hits) == 3
    assert main(["index", "add", f"postgres:{postgres_dsn}?index=binary&m=12", "--table",
                 table, str(tmp_path / "rows.jsonl"), "--id-field", "id", *model,
                 "--no-progress", "--ann"]) == 0
    assert _hnsw(postgres_dsn, table) == {
        f"{table}_hnsw_binary": ["ef_construction=128", "m=12"]}  # rebuilt
    with open_store(StoreConfig.parse(f"postgres:{postgres_dsn}", table=table,
                                      pg_index="binary")) as s:
        s.build_index()  # defaults, not in the DSN: the index stays as built
    assert _hnsw(postgres_dsn, table) == {
        f"{table}_hnsw_binary": ["ef_construction=128", "m=12"]}
    with pytest.raises(ValueError, match="index='ivf'"):
        open_store(StoreConfig.parse(f"postgres:{postgres_dsn}?index=ivf", table=table))


# ---------------------------------------------------------------- lexical search

_DOCS = [("ru1", "Кошки любят спать на диване", "ru"), ("ru2", "Собака спит во дворе", "ru"),
         ("ru3", "Кошка и собака", "ru"), ("en1", "The cats are running in the garden", "en"),
         ("en2", "A cat sleeps", "en"), ("en3", "Running late again", "en"),
         ("en4", "covid19 cases in 2020, or not", "en")]


def _text_store(dsn: str):
    s = open_store(_config(dsn), 8)
    x = unit_rows(len(_DOCS) + 1, 8, seed=3)
    s.upsert([d[0] for d in _DOCS] + ["empty"], x,
             [{"text": t, "lang": lang} for _, t, lang in _DOCS] + [{"lang": "en"}])
    return s, x


def _ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_search_text_stems_ranks_and_filters(postgres_dsn) -> None:
    """Lexical search over the analysed text: Russian and English stems meet the query's,
    a row with more query terms ranks higher, the filter applies, vectors come back."""
    from smysl.toolkit.lexical import analyze

    s, x = _text_store(postgres_dsn)
    with s:
        # "кошка" -> "кошк" finds "Кошки" and "Кошка"; "cats"/"cat" -> "cat"
        assert set(_ids(s.search_text([analyze("кошка")], 10)[0])) == {"ru1", "ru3"}
        assert set(_ids(s.search_text([analyze("cat")], 10)[0])) == {"en1", "en2"}
        # both terms above one term; every hit scores > 0, best first
        hits = s.search_text([analyze("кошка спать")], 10)[0]
        assert _ids(hits)[0] == "ru1" and set(_ids(hits)) == {"ru1", "ru3"}
        assert all(h.score > 0 for h in hits) and hits[0].score > hits[1].score
        ran = s.search_text([analyze("cats running")], 10)[0]
        assert _ids(ran)[0] == "en1" and set(_ids(ran)) == {"en1", "en2", "en3"}
        # the filter, k, several queries in one call, and the records as search returns them
        two = s.search_text([analyze("кошка собака"), analyze("running")], 1,
                            where={"lang": "ru"}, with_vectors=True)
        assert [len(q) for q in two] == [1, 0]
        top = two[0][0]
        assert top.id == "ru3" and top.payload == {"text": "Кошка и собака", "lang": "ru"}
        np.testing.assert_array_equal(top.vector, x[2])
        assert s.search_text([analyze("кошка")], 5)[0][0].vector is None
        # digits and mixed words are terms as they are
        assert _ids(s.search_text([["covid19"], ["2020"]], 5)[0]) == ["en4"]
        assert _ids(s.search_text([["2020"]], 5)[0]) == ["en4"]
        # no terms, unknown terms, no rows: no hits
        assert s.search_text([[], ["zebra"], analyze("кошка")], 5, where={"lang": "xx"}) == [
            [], [], []]
        assert s.search_text([], 5) == []
        with pytest.raises(ValueError, match="k must be"):
            s.search_text([["cat"]], 0)
        # rewriting a record rewrites its terms
        s.upsert(["ru3"], x[2:3], [{"text": "Собака", "lang": "ru"}])
        assert set(_ids(s.search_text([analyze("кошка")], 10)[0])) == {"ru1"}


def test_search_text_terms_cannot_inject(postgres_dsn) -> None:
    """Query terms are quoted lexemes: tsquery operators, quotes and backslashes are plain
    terms (matching nothing, or what holds them), never syntax."""
    s, _ = _text_store(postgres_dsn)
    with s:
        assert _ids(s.search_text([["or"]], 5)[0]) == ["en4"]
        assert _ids(s.search_text([["not", "and"]], 5)[0]) == ["en4"]
        odd = ["'", "''", "\\", "it's", "a\\'b", "!", "|", "&", "<->", ":*", "cat:*", "x' | 'y",
               "cat' | 'кошк", "a b", "(", ")", "", "x" * 65, "nul\x00", "'; DROP TABLE x; --"]
        assert s.search_text([[t] for t in odd], 5) == [[] for _ in odd]
        # the odd terms beside a real one change nothing
        assert set(_ids(s.search_text([["cat", *odd]], 5)[0])) == {"en1", "en2"}
        assert s.count() == len(_DOCS) + 1


def test_search_text_agrees_with_memory_store(postgres_dsn) -> None:
    """The same rows match as in MemoryStore (BM25 over every record), with and without a
    filter, before and after ANALYZE (the collection size from the planner's statistics)."""
    from smysl.toolkit.lexical import analyze
    from smysl.toolkit.memory import MemoryStore

    rng = np.random.default_rng(11)
    words = ["кошка", "кошки", "собаки", "спит", "спать", "дом", "дома", "cat", "cats", "dog",
             "running", "runs", "house", "2020", "covid19", "x1", "или", "and", "not"]
    n = 80
    texts = [" ".join(rng.choice(words, rng.integers(1, 12))) if i % 13 else None
             for i in range(n)]
    pays = [({"text": t} if t else {}) | {"g": i % 3} for i, t in enumerate(texts)]
    ids = [f"d{i}" for i in range(n)]
    x = unit_rows(n, 8, seed=12)
    mem = MemoryStore(8)
    mem.upsert(ids, x, pays)
    queries = [analyze(q) for q in ["кошка", "спать дома", "cats running", "dog 2020", "not",
                                    "covid19 x1 house", "собака кошки дом", "zebra", ""]]
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(ids, x, pays)
        for analysed in (False, True):
            if analysed:
                s.optimize()  # ANALYZE: reltuples known, no count per query
            for where in (None, {"g": 1}, {"g": [0, 2]}):
                got = s.search_text(queries, n, where=where)
                ref = mem.search_text(queries, n, where=where)
                for g, r in zip(got, ref, strict=True):
                    assert {h.id for h in g} == {h.id for h in r}
                    scores = [h.score for h in g]
                    assert scores == sorted(scores, reverse=True)
                    assert all(sc > 0 for sc in scores)
        with s._conn.cursor() as cur:
            assert s._text_stats(cur).docs == n


def _scoring_statements(monkeypatch, needle: str = "ts_rank_cd", after=None) -> list[list]:
    """The parameters of every BM25 statement (one holding ``needle``) run from now on (the
    test's end undoes it); ``after(executed)`` is called once each such statement ran."""
    import psycopg

    executed: list[list] = []
    real = psycopg.Cursor.execute

    def execute(self, query, params=None, **kw):
        text = query if isinstance(query, str) else query.as_string(self.connection)
        if needle not in text:
            return real(self, query, params, **kw)
        executed.append(list(params or ()))
        out = real(self, query, params, **kw)
        if after is not None:
            after(executed)
        return out

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return executed


def _zipf_corpus(n: int, seed: int) -> tuple[list[str], list[dict]]:
    """Texts of Zipf-distributed words (a few in most rows, most in few) and a group field."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    p = 1 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    texts = [" ".join(rng.choice(vocab, rng.integers(3, 40), p=p)) for _ in range(n)]
    return [f"d{i}" for i in range(n)], [{"text": t, "g": i % 4} for i, t in enumerate(texts)]


def test_search_text_prunes_exactly(postgres_dsn, monkeypatch) -> None:
    """Scoring the rarest terms' rows first and stopping once the other terms cannot lift a
    row into the top k gives the same hits and scores, bit for bit, as scoring every row that
    holds a query term, with and without a filter, before and after ANALYZE (df from its
    sample); and it does stop early: fewer statements than terms, fewer rows read."""
    import smysl.toolkit.postgres as pg

    ids, pays = _zipf_corpus(600, seed=5)
    rng = np.random.default_rng(6)
    # common words and rare ones, as questions mix them
    queries = [[f"w{i}" for i in sorted(set(rng.integers(0, 400, 2)) | {0, 1, 2})]
               for _ in range(12)] + [["w0", "w1"], ["w399"], ["w0", "w350", "nothere"]]
    scoring = _scoring_statements(monkeypatch)
    config = _config(postgres_dsn)
    with open_store(config, 8) as s:
        # ANALYZE by autovacuum between two searches would change the statistics under them
        s._conn.execute(f'ALTER TABLE "{config.table}" SET (autovacuum_enabled = off)')
        s.upsert(ids, unit_rows(len(ids), 8, seed=7), pays)
        for analysed in (False, True):
            if analysed:
                s.optimize()
            for where in (None, {"g": [1, 2]}):
                for k in (1, 5, 50):
                    monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1 << 62)  # score all at once
                    full = s.search_text(queries, k, where=where)
                    monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1)  # rarest term first
                    for max_sets in (1, 3, 16):  # sets of terms relaxed hard, some, not
                        monkeypatch.setattr(pg, "TEXT_MAX_SETS", max_sets)
                        pruned = s.search_text(queries, k, where=where)
                        assert [[(h.id, h.score) for h in q] for q in pruned] == [
                            [(h.id, h.score) for h in q] for q in full]
        # some last statements found rows by sets of terms: ('a' & 'b') | ...
        assert any("' & '" in str(p) for params in scoring for p in params)
        assert s._text_stats(s._conn.cursor()).common  # ANALYZE's shares were used
        # it stops early: a rare term's rows decide a query of three common words and it
        rare = next(t for t in (f"w{i}" for i in range(399, 0, -1)) if s.search_text([[t]], 1)[0])
        scoring.clear()
        monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1)
        assert len(s.search_text([["w0", "w1", "w2", rare]], 1)[0]) == 1
        (params,) = scoring  # one statement
        # the rows scored are those holding the rare term (after two tsqueries per term)
        assert params[8] == f"'{rare}'"


def test_search_text_long_question_takes_few_statements(postgres_dsn, monkeypatch) -> None:
    """A question of hundreds of words (a pasted paragraph) is scored in a few statements,
    the rows scored at least doubling from one to the next, not one statement per word; the
    hits are those of scoring every row at once."""
    import smysl.toolkit.postgres as pg

    ids, pays = _zipf_corpus(3000, seed=8)
    scoring = _scoring_statements(monkeypatch)
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(ids, unit_rows(len(ids), 8, seed=9), pays)
        s.optimize()
        for n_words, k in ((256, 10), (64, 10), (32, 50)):
            query = [f"w{i}" for i in range(400 - n_words, 400)]  # the rarer words
            monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1 << 62)
            full = s.search_text([query], k)[0]
            monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1)
            scoring.clear()
            pruned = s.search_text([query], k)[0]
            assert [(h.id, h.score) for h in pruned] == [(h.id, h.score) for h in full]
            # from one row to 3,000: twice log2(3000) statements at the very most
            assert 1 < len(scoring) <= 24, (n_words, len(scoring))


def test_search_text_sees_one_snapshot(postgres_dsn, monkeypatch) -> None:
    """A row rewritten between two statements of one word search (its rare word gone, the
    common one kept) is scored once, as it stood when the search began."""
    import psycopg

    import smysl.toolkit.postgres as pg
    from smysl.toolkit.lexical import analyze

    config = _config(postgres_dsn)
    texts = {"x": "редкое common", **{f"o{i}": f"common words {i}" for i in range(8)}}
    query = [analyze("редкое common")]
    with open_store(config, 8) as s, open_store(config, 8) as writer:
        s.upsert(list(texts), unit_rows(9, 8, seed=1), [{"text": t} for t in texts.values()])
        monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1)  # the rare word's row first, alone
        before = s.search_text(query, 5)[0]
        assert before[0].id == "x"
        real = psycopg.Cursor.execute
        # between the first statement and the second, another connection rewrites x
        statements = _scoring_statements(monkeypatch, after=lambda done: len(done) == 1 and (
            writer.upsert(["x"], unit_rows(1, 8, seed=1), [{"text": "common common"}])))
        during = s.search_text(query, 5)[0]
        assert len(statements) > 1
        assert [(h.id, h.score) for h in during] == [(h.id, h.score) for h in before]
        after = s.search_text(query, 5)[0]  # the rewrite, seen by the next search
        assert len({h.id for h in after}) == len(after)
        assert next(h.score for h in after if h.id == "x") < before[0].score
        monkeypatch.setattr(psycopg.Cursor, "execute", real)
        # inside a transaction of the caller's, its snapshot serves
        with s._conn.transaction():
            s._conn.execute("SELECT 1")
            assert s.search_text(query, 5)[0] == after
        # the rows holding a term are counted once per call, whatever the questions
        counts = _scoring_statements(monkeypatch, "count(*)")
        assert s.search_text([query[0], query[0][::-1], ["zzz"]], 5)[:2] == [after, after]
        assert sorted(p for params in counts for p in params) == ["'common'", "'zzz'", "'редк'"]


def test_search_text_rows_without_positions(postgres_dsn, monkeypatch) -> None:
    """Terms stored without positions (written by another program, ``strip()``) score 0
    (``ts_rank_cd`` counts positions): the hits are still those of scoring every row."""
    import smysl.toolkit.postgres as pg

    config = _config(postgres_dsn)
    ids, pays = _zipf_corpus(60, seed=4)
    with open_store(config, 8) as s:
        s.upsert(ids, unit_rows(len(ids), 8, seed=4), pays)
        s._conn.execute(f'UPDATE "{config.table}" SET terms = strip(terms)')
        query = [[f"w{i}" for i in range(0, 400, 19)]]
        monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1 << 62)
        full = s.search_text(query, 2)
        monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", 1)
        assert s.search_text(query, 2) == full
        assert [h.score for h in full[0]] == [0.0, 0.0]


def test_search_text_ties_in_code_point_order(postgres_dsn, monkeypatch) -> None:
    """Equal scores come in the ids' code-point order (what Python's sort gives, and the
    order the statements' rows are merged in), in a database whose collation orders them
    otherwise (en_US; where glibc's locale sources are missing, the session's C.UTF-8 one),
    whether the rows were scored in one statement or several (each tied row holds its own
    rare word, all as rare)."""
    import psycopg

    import smysl.toolkit.postgres as pg
    from smysl.toolkit.lexical import analyze
    from toolkit.pgserver import can_build_locales, postgres_server

    # code points: 10 9 Y Z a b | b é Ж ё; en_US: 10 9 a b b é | Y Z Ж ё
    ids = ["b", "Z", "é", "ё", "10", "9", "a b", "Ж", "Y"]
    tied = [{"text": f"zq{i} common words"} for i in range(len(ids))]
    other = [{"text": f"common words {i}"} for i in range(40)]
    with contextlib.ExitStack() as stack:
        dsn = postgres_dsn
        if can_build_locales():
            server = stack.enter_context(postgres_server(locales=["en_US.UTF-8"]))
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute("CREATE DATABASE ties TEMPLATE template0 LOCALE 'en_US.UTF-8'")
            dsn = server.rsplit("/", 1)[0] + "/ties"
            with psycopg.connect(dsn) as conn:
                (db_order,) = conn.execute("SELECT array_agg(x ORDER BY x) FROM "
                                           "unnest(%s::text[]) AS x", [ids]).fetchone()
            assert db_order != sorted(ids)  # the database's own order is not code points
        s = stack.enter_context(open_store(_config(dsn), 8))
        s.upsert([*ids, *(f"o{i}" for i in range(40))], unit_rows(49, 8, seed=2),
                 [*tied, *other])
        query = [analyze(" ".join(f"zq{i}" for i in range(len(ids))) + " common")]
        scoring = _scoring_statements(monkeypatch)
        for first, statements in ((1, range(2, 9)), (1 << 62, [1])):
            monkeypatch.setattr(pg, "TEXT_FIRST_ROWS", first)
            scoring.clear()
            hits = s.search_text(query, 5)[0]
            assert [h.id for h in hits] == sorted(ids)[:5]
            assert len({h.score for h in hits}) == 1
            assert len(scoring) in statements


def test_term_sets_find_every_row_that_can_reach_the_score(monkeypatch) -> None:
    """Every set of terms whose bounds add up to the score holds one of the sets (no row that
    could enter the top k is missed); unrelaxed, each set reaches the score and none is
    redundant; relaxed (fewer sets allowed), at most that many sets, still finding every such
    set of terms, or None; and a search too large to finish gives None, soon."""
    import itertools

    import smysl.toolkit.postgres as pg

    rng = np.random.default_rng(3)
    relaxed = 0
    for trial in range(200):
        n = int(rng.integers(1, 10))
        ub = list(rng.uniform(0.1, 5, n))
        df = list(rng.uniform(1, 1000, n))
        need = float(rng.uniform(0, sum(ub) * 1.2))
        terms = list(range(n))
        for max_sets in (1 << 30, 3, 1):
            monkeypatch.setattr(pg, "TEXT_MAX_SETS", max_sets)
            sets = pg._term_sets(terms, ub, df, need)
            if sets is None:
                assert max_sets < 1 << 30 or sum(ub) < need, (trial, max_sets)
                continue
            assert 0 < len(sets) <= max_sets
            held = [set(c) for c in sets]
            for r in range(n + 1):
                for h in map(set, itertools.combinations(terms, r)):
                    if sum(ub[i] for i in h) >= need:
                        assert any(c <= h for c in held), (trial, h, sets)
            if max_sets == 1 << 30:
                for c in held:
                    assert sum(ub[i] for i in c) >= need
                    assert all(sum(ub[i] for i in c - {j}) < need for j in c)
            else:
                relaxed += 1
    assert relaxed > 100
    steps = []
    minimal_sets = pg._minimal_sets
    monkeypatch.setattr(pg, "_minimal_sets", lambda *a: (
        found := minimal_sets(*a), steps.append(found[1]))[0])
    monkeypatch.setattr(pg, "TEXT_MAX_SETS", 16)
    # 256 terms, each enough alone: too many sets, and none can be left out
    assert pg._term_sets(list(range(256)), [2.0] * 256, [10.0] * 256, 1.0) is None
    assert sum(steps) <= 17
    # 20 terms, any 8 enough (125,970 sets): the 7 commonest are left out, 13 sets remain
    steps.clear()
    sets = pg._term_sets(list(range(20)), [1.0] * 20, [float(i) for i in range(1, 21)], 8.0)
    assert sets == [[i] for i in range(13)] and sum(steps) < 500
    monkeypatch.setattr(pg, "_TERM_SETS_STEPS", 50)
    steps.clear()
    assert pg._term_sets(list(range(30)), [1.0] * 30, [10.0] * 30, 15.0) is None
    assert sum(steps) <= 51


def test_search_text_scores_are_bm25_over_table_statistics(postgres_dsn) -> None:
    """A hit's score is BM25 (lexical's k1, b and term-frequency part) with the table's
    statistics: df counted over the whole table (not the filter), the mean number of distinct
    terms per row with terms, the row count; before ANALYZE (every df counted) and after it
    (the common terms' shares from ANALYZE's sample, here the whole table)."""
    import math

    from smysl.toolkit import lexical

    ids, pays = _zipf_corpus(300, seed=9)
    pays[5] = {"g": 1}  # a row without text: counted in the rows, not in the mean length
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(ids, unit_rows(len(ids), 8, seed=10), pays)
        terms = {i: lexical.record_terms(p.get("text")) for i, p in zip(ids, pays, strict=True)}
        with_terms = [t for t in terms.values() if t]
        avgdl = sum(len(set(t)) for t in with_terms) / len(with_terms)
        stats = s._text_stats(s._conn.cursor())
        assert stats.docs == 300 and stats.avgdl == pytest.approx(avgdl, rel=1e-12)
        query = ["w3", "w40", "w0"]
        for where in (None, {"g": 2}, "analysed"):
            if where == "analysed":
                s.optimize()
                assert {"w0", "w3"} <= set(s._text_stats(s._conn.cursor()).common)
                where = None
            hits = s.search_text([query], 300, where=where)[0]
            assert hits
            for h in hits:
                doc = terms[h.id]
                want = 0.0
                for q in query:
                    df = sum(q in t for t in terms.values())
                    tf = doc.count(q)
                    if tf:
                        idf = math.log(1 + (300 - df + 0.5) / (df + 0.5))
                        want += idf * lexical.tf_weight(tf, len(set(doc)), avgdl)
                # ANALYZE's shares are float4
                assert h.score == pytest.approx(want, rel=1e-6), h.id
                assert where is None or h.payload["g"] == 2


def test_search_text_statistics_follow_deletes(postgres_dsn) -> None:
    """A review's: after ``index delete`` (or ``--prune``) of 2 of 7 rows, word scores kept
    the 7 rows' statistics (ANALYZE's, until autovacuum came by): rows of equal df and length
    scored 1.16 and 0.83. Once a process has deleted a tenth of the rows, it analyses."""
    ids, pays = _zipf_corpus(300, seed=4)
    x = unit_rows(len(ids), 8, seed=5)
    query = [["w3", "w40", "w0"], ["w1"], ["w7", "w2"]]
    gone = [i for n, i in enumerate(ids) if n % 3 == 0]  # a third, in several deletes
    with open_store(_config(postgres_dsn), 8) as s, open_store(_config(postgres_dsn), 8) as ref:
        s.upsert(ids, x, pays)
        s.optimize()  # analysed with every row
        for i in range(0, len(gone), 25):
            assert s.delete(gone[i : i + 25]) == len(gone[i : i + 25])
        left = [n for n, i in enumerate(ids) if i not in set(gone)]
        ref.upsert([ids[n] for n in left], x[left], [pays[n] for n in left])
        ref.optimize()
        for got, want in zip(s.search_text(query, 300), ref.search_text(query, 300),
                             strict=True):
            assert {h.id: h.score for h in got} == pytest.approx(
                {h.id: h.score for h in want}, rel=1e-6)


def test_optimize_restarts_the_share_deleted_before_analysing(postgres_dsn) -> None:
    """The deletes counted towards the next ``ANALYZE`` restart at :meth:`optimize` (which
    analyses): 20 of 300 rows deleted, optimized, then 15 more (5% of the 280 counted) ran
    ``ANALYZE`` again, counting the 20 already analysed."""
    ids, pays = _zipf_corpus(300, seed=4)
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(ids, unit_rows(len(ids), 8, seed=5), pays)
        s.optimize()

        def reltuples() -> float:
            row = s._conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                                  [s._qualified()]).fetchone()
            return float(row[0])

        assert s.delete(ids[:20]) == 20 and reltuples() == 300  # 20 of 300: not analysed
        s.optimize()
        assert reltuples() == 280
        assert s.delete(ids[20:35]) == 15
        assert reltuples() == 280  # not analysed again for 15 of 280


def test_search_text_statistics_at_scale_and_both_row_reads(postgres_dsn, monkeypatch) -> None:
    """A large table's mean row length comes from a fixed sample (close to the exact one, the
    same on every call until ANALYZE runs again); rows' terms read in place and read once per
    row give the same hits."""
    import smysl.toolkit.postgres as pg

    ids, pays = _zipf_corpus(400, seed=13)
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(ids, unit_rows(len(ids), 8, seed=14), pays)
        s.optimize()
        exact = s._text_stats(s._conn.cursor()).avgdl
        s._text_cache = None
        monkeypatch.setattr(pg, "AVGDL_SAMPLE_ROWS", 100)
        sampled = s._text_stats(s._conn.cursor()).avgdl
        assert sampled != exact and sampled == pytest.approx(exact, rel=0.25)
        assert s._text_stats(s._conn.cursor()).avgdl == sampled
        # read again once the table is analysed again, even with its size unchanged
        key = s._text_cache[0]
        s.optimize()
        s._text_stats(s._conn.cursor())
        assert s._text_cache[0][:2] == key[:2] and s._text_cache[0] != key
        queries = [["w0", "w7", "w100"], ["w1"], ["w2", "w300"]]
        got = {}
        for inline in (0, 1 << 30):  # each row's terms read once, or where they lie
            monkeypatch.setattr(pg, "TEXT_INLINE_BYTES", inline)
            s._text_cache = None
            assert s._text_stats(s._conn.cursor()).in_place == bool(inline)
            got[inline] = s.search_text(queries, 20, where={"g": [0, 3]})
        assert got[0] == got[1 << 30] and all(got[0])


def test_search_text_reads_long_rows_once(postgres_dsn) -> None:
    """Rows whose terms are stored out of line (TOAST: long chunks) are read once per row,
    by their stored size (ANALYZE's average width counts only the pointer); short ones
    where they lie."""
    long_words = [f"w{i}" for i in range(2000)]
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(["a", "b"], unit_rows(2, 8, seed=3),
                 [{"text": " ".join(long_words)}, {"text": " ".join(reversed(long_words))}])
        s.optimize()
        assert not s._text_stats(s._conn.cursor()).in_place
        assert {h.id for h in s.search_text([["w5", "w1999"]], 5)[0]} == {"a", "b"}
    with open_store(_config(postgres_dsn), 8) as s:
        s.upsert(["a"], unit_rows(1, 8, seed=4), [{"text": "cats and dogs"}])
        s.optimize()
        assert s._text_stats(s._conn.cursor()).in_place


def test_table_without_terms_is_migrated(postgres_dsn) -> None:
    """A table an earlier smysl made (no terms column, no GIN index on it) gets both when
    opened, by several openers at once; its rows match nothing until written again."""
    import threading

    import psycopg

    from smysl.toolkit.lexical import analyze

    cfg = _config(postgres_dsn)
    x = unit_rows(3, 8)
    pays = [{"text": "Кошки любят спать"}, {"text": "cats sleep"}, {"text": "dogs"}]
    with open_store(cfg, 8) as s:
        s.upsert(["a", "b", "c"], x, pays)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{cfg.table}" DROP COLUMN terms')  # and its index

        def columns() -> tuple[bool, int]:
            col = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                               "AND attname = 'terms' AND NOT attisdropped",
                               [cfg.table]).fetchone()
            idx = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND "
                               "indexdef LIKE %s", [cfg.table, "%gin (terms)%"]).fetchone()
            return col is not None, idx[0]

        assert columns() == (False, 0)
        errors: list[BaseException] = []

        def reopen() -> None:
            try:
                with open_store(cfg) as other:
                    assert other.count() == 3
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reopen) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert columns() == (True, 1)
    with open_store(cfg) as s:
        assert s.search_text([analyze("кошка"), analyze("cat")], 5) == [[], []]  # NULL terms
        assert [h.id for h in s.search(x[1], 1)[0]] == ["b"]  # vector search as before
        s.upsert(["a", "b"], x[:2], pays[:2])  # what the index layer does
        assert [_ids(q) for q in s.search_text([analyze("кошка"), analyze("cat")], 5)] == [
            ["a"], ["b"]]


def test_role_that_cannot_migrate_still_opens(postgres_dsn) -> None:
    """A role that may use but not alter an earlier smysl's table opens it: vector search
    works, lexical search has no hits, and a write fails naming the way out."""
    import psycopg

    from smysl.toolkit.postgres import PostgresStoreError

    cfg = _config(postgres_dsn)
    x = unit_rows(2, 8)
    with open_store(cfg, 8) as s:
        s.upsert(["a", "b"], x, [{"text": "cats"}, {"text": "dogs"}])
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{cfg.table}" DROP COLUMN terms')
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{cfg.table}", smysl_meta '
                     f"TO {role}")
        try:
            dsn = postgres_dsn.replace("postgres@", f"{role}@")
            with open_store(StoreConfig(backend="postgres", uri=dsn, table=cfg.table)) as s:
                assert [h.id for h in s.search(x[0], 1)[0]] == ["a"]
                assert s.search_text([["cat"]], 5) == [[]]
                with pytest.raises(PostgresStoreError, match="owner"):
                    s.upsert(["c"], x[:1], [{"text": "cats"}])
                assert s.count() == 2
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _pending(dsn: str, table: str) -> list[int]:
    """Pages each GIN index of ``table`` had pending (emptied by asking)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT gin_clean_pending_list(i.indexrelid) FROM pg_index i JOIN pg_class c ON "
            "c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = "
            "to_regclass(%s) AND a.amname = 'gin' ORDER BY c.relname", [table]).fetchall()]


def test_optimize_empties_the_gin_pending_lists(postgres_dsn) -> None:
    """optimize() moves the entries PostgreSQL queued for the GIN indexes (terms, payload)
    into them: searches by words and filters no longer read the queue; a role that does not
    own the table gets the statistics refreshed and no error."""
    import psycopg

    cfg = _config(postgres_dsn)
    ids, pays = _zipf_corpus(400, seed=3)
    x = unit_rows(len(ids), 8, seed=4)
    with open_store(cfg, 8) as s:
        s.upsert(ids, x, pays)
        assert all(n > 0 for n in _pending(postgres_dsn, cfg.table))  # queued, now emptied
        s.upsert([f"more{i}" for i in ids], x, pays)
        hits = s.search_text([["w3", "w30"]], 6, where={"g": 1})[0]
        s.optimize()
        assert _pending(postgres_dsn, cfg.table) == [0, 0]
        # the same rows (ANALYZE's float4 shares move the scores a little)
        again = s.search_text([["w3", "w30"]], 6, where={"g": 1})[0]
        assert [h.id for h in again] == [h.id for h in hits]
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{cfg.table}", smysl_meta '
                     f"TO {role}")
        try:
            dsn = postgres_dsn.replace("postgres@", f"{role}@")
            with open_store(StoreConfig(backend="postgres", uri=dsn, table=cfg.table)) as s:
                s.upsert(["late"], x[:1], [{"text": "w3 w30"}])
                s.optimize()  # not the owner: nothing emptied, no error
                assert s.search_text([["w3", "w30"]], 1)[0][0].id == "late"
            assert _pending(postgres_dsn, cfg.table)[1] > 0  # still queued for terms
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_tsvector_literal_keeps_terms_as_they_are(postgres_dsn) -> None:
    """The stored tsvector holds the analyser's terms unchanged (what to_tsvector('simple')
    gives for plain words), with positions; PostgreSQL's limits are kept, not hit."""
    import psycopg

    from smysl.toolkit.postgres import query_lexemes, tsvector_literal

    assert tsvector_literal("") == ""
    assert tsvector_literal("кошк cat кошк 2020 covid19") == (
        "'кошк':1,3 'cat':2 '2020':4 'covid19':5")
    assert tsvector_literal("it's a\\b") == "'it''s':1 'a\\\\b':2"
    assert query_lexemes(["cat", "", "cat", "it's", "x" * 65, "\x00"]) == ["cat", "it's"]
    long = " ".join(["a"] * 300 + ["b"] * 20_000 + ["c"] * 3)
    lit = tsvector_literal(long)
    parsed = {w.split(":")[0]: w.split(":")[1].split(",") for w in lit.split()}
    # at most 256 positions a term; past 16,383 every term sits at 16,383
    assert parsed == {"'a'": [str(i) for i in range(1, 257)],
                      "'b'": [str(i) for i in range(301, 557)], "'c'": ["16383"]}
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        text = "кошк cat кошк 2020 covid19 x2 007"
        same = conn.execute("SELECT to_tsvector('simple', %s) = %s::tsvector",
                            [text, tsvector_literal(text)]).fetchone()
        assert same == (True,)
        tf = conn.execute("SELECT ts_rank_cd('{1,1,1,1}', v, 'a'), ts_rank_cd('{1,1,1,1}', v, "
                          "'c'), length(v) FROM (SELECT %s::tsvector AS v) AS t", [lit]).fetchone()
        assert tf == (256.0, 1.0, 3)
        # distinct terms past 1 MiB: the ones that fit are kept, the row is not refused
        huge = " ".join(f"w{i:07d}" for i in range(100_000))
        assert conn.execute("SELECT length(%s::tsvector)",
                            [tsvector_literal(huge)]).fetchone()[0] == 87_381


def test_one_store_serves_several_threads(postgres_dsn, monkeypatch) -> None:
    """A store takes calls from several threads at once (the server runs ``/search`` on
    several): each thread has a connection of its own, so one thread's transactions (an
    upsert, a word search's snapshot) never take in another's statements; a thread's
    connection closes when the thread ends, every one when the store closes."""
    import gc
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from smysl.toolkit.postgres import PostgresStoreError

    opened: list[Any] = []
    real = psycopg.connect
    monkeypatch.setattr(psycopg, "connect", lambda *a, **kw: opened.append(real(*a, **kw))
                        or opened[-1])
    x = unit_rows(64, 16, seed=3)
    texts = [f"common word{i % 8} row{i}" for i in range(len(x))]
    with open_store(_config(postgres_dsn), 16) as s:
        assert s.concurrent_reads
        s.upsert([str(i) for i in range(32)], x[:32], [{"text": t, "g": 0} for t in texts[:32]])
        want_vec = s.search(x[:8], 5, where={"g": 0})
        want_text = s.search_text([["word3"], ["common", "row5"]], 5)
        barrier = threading.Barrier(8, timeout=30)

        def work(n: int) -> tuple[Any, ...]:
            barrier.wait()  # all eight at once
            for r in range(3):  # each thread writes rows of its own, in transactions
                i = 32 + 4 * n + r
                s.upsert([str(i)], x[i : i + 1], [{"text": f"other{i}"}])
            own = str(32 + 4 * n)
            return (s.search(x[:8], 5, where={"g": 0}),
                    s.search_text([["word3"], ["common", "row5"]], 5),
                    s.count(where={"text": f"other{own}"}), len(s.get([own])))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for vec, text, count, got in results:
            assert [[h.id for h in row] for row in vec] == [[h.id for h in row]
                                                            for row in want_vec]
            # (the scores move with the rows the others add: the table's statistics)
            assert [[h.id for h in row] for row in text] == [[h.id for h in row]
                                                             for row in want_text]
            assert (count, got) == (1, 1)
        assert s.count() == 32 + 8 * 3
        assert len(opened) == 9  # the opening thread's, one per pool thread
        del pool, results
        gc.collect()
        assert [c.closed for c in opened] == [False] + [True] * 8  # their threads ended
        t = threading.Thread(target=s.count)
        t.start()
        t.join()
        gc.collect()
        assert len(opened) == 10 and opened[-1].closed
    assert all(c.closed for c in opened)
    errors: list[BaseException] = []

    def late() -> None:
        try:
            s.count()
        except PostgresStoreError as e:
            errors.append(e)

    t = threading.Thread(target=late)
    t.start()
    t.join()
    assert len(errors) == 1 and "closed" in str(errors[0])
    with pytest.raises(PostgresStoreError, match="closed"):
        s.count()  # this thread had one: the store's word, not the closed connection's
    assert len(opened) == 10  # a closed store opens nothing


def test_a_connection_the_server_ended_is_replaced(postgres_dsn) -> None:
    """A connection the server ends (a restart, ``pg_terminate_backend``): a read runs
    again on a new one and answers; a write fails with a PostgresStoreError that names the
    server (a served index answers 503, not 500), and the thread's next call goes on."""
    import psycopg

    from smysl.toolkit.postgres import PostgresStoreError

    x = unit_rows(8, 16, seed=5)
    # the store's connections by name (other tests' stores may still hold theirs)
    name = f"ended-{uuid.uuid4().hex[:8]}"
    others = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'"
    with open_store(_config(f"{postgres_dsn}?application_name={name}"), 16) as s, \
            psycopg.connect(postgres_dsn, autocommit=True) as c:
        s.upsert([str(i) for i in range(len(x))], x,
                 [{"text": "общий корень" if i in (3, 5) else f"слово{i}"} for i in range(len(x))])

        def end_the_stores_connection() -> list[int]:
            pids = [r[0] for r in c.execute(others)]
            assert len(pids) == 1  # the store's one connection (this thread's)
            assert c.execute("SELECT pg_terminate_backend(%s)", pids).fetchone()[0]
            return pids

        reads = [lambda: s.count(), lambda: [h.id for h in s.search(x[2], 1)[0]],
                 lambda: [r.id for r in s.get(["1"])], lambda: s.search_text([["x"]], 1),
                 # queries given as iterators: read once, not emptied for the second attempt
                 lambda: sorted(h.id for h in s.search_text(
                     iter([iter(lexical.analyze("общий"))]), 5)[0]),
                 lambda: [len(b) for b in s.scan(3)], lambda: s.read_meta()]
        answers = [r() for r in reads]
        assert answers[:3] == [len(x), ["2"], ["1"]] and answers[4] == ["3", "5"]
        for read, answer in zip(reads, answers, strict=True):
            pids = end_the_stores_connection()
            assert read() == answer
            assert [r[0] for r in c.execute(others)] not in ([], pids)
        end_the_stores_connection()
        with pytest.raises(PostgresStoreError, match=r"ended the connection.*next call"):
            s.upsert(["new"], x[:1])
        s.upsert(["new"], x[:1])
        assert s.count() == len(x) + 1


def test_rows_stay_whole_where_they_fit_a_page(postgres_dsn) -> None:
    """A new table keeps a row whole in the table while it fits a page (toast_tuple_target):
    with the default, every row over 2 KB had its vector (1,024-d: 4 KB) moved to the TOAST
    table, and an exact search fetched each from there (3.2x the time at 20,000 rows). A row
    still wider than a page (a 512-token chunk of Russian: its text and terms) moves its
    terms or text out, not the vector (stored MAIN where it fits a page: 20,000 such chunks,
    exact 110-131 -> 46-51 ms); storage MAIN with the 2 KB target had moved every payload
    out (a word search 2.7x slower). A 2,048-d vector cannot fit beside the rest and goes
    out of line; the payload and words stay. All of it reads back exactly."""
    import psycopg
    from psycopg import sql

    words = [f"слово{i}" for i in range(400)]
    # (dims, words a text, vector stored MAIN, vector out of line, text or terms out)
    cases = ((1024, 40, True, False, False), (1024, 400, True, False, True),
             (1958, 40, True, False, True), (2048, 40, False, True, False),
             (2560, 40, False, True, False))
    for dims, n_words, stored_main, vector_out, rest_out in cases:
        config = _config(postgres_dsn)
        x = unit_rows(20, dims, seed=dims)
        texts = [" ".join([f"row{i}"] + [words[(7 * i + j) % 400] for j in range(n_words)])
                 for i in range(len(x))]
        with open_store(config, dims) as s:
            s.upsert([str(i) for i in range(len(x))], x, [{"text": t} for t in texts])
            got = s.get(["3"])[0]
            np.testing.assert_array_equal(got.vector, x[3])
            assert got.payload == {"text": texts[3]}
            assert [h.id for h in s.search(x[5], 1)[0]] == ["5"]
            assert s.search_text([["row4"]], 1)[0][0].id == "4"
        with psycopg.connect(postgres_dsn) as c:
            out = c.execute(sql.SQL(
                "SELECT count(pg_column_toast_chunk_id(embedding)), "
                "count(pg_column_toast_chunk_id(payload)) + "
                "count(pg_column_toast_chunk_id(terms)), count(terms) FROM {}").format(
                    sql.Identifier(config.table))).fetchone()
            options = c.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)",
                                [config.table]).fetchone()[0]
            storage = c.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = "
                                "to_regclass(%s) AND attname = 'embedding'",
                                [config.table]).fetchone()[0]
        assert options == ["toast_tuple_target=8160"]
        assert storage == ("m" if stored_main else "e"), (dims, storage)
        assert out[0] == (len(x) if vector_out else 0), (dims, n_words, out)
        assert (out[1] >= len(x)) if rest_out else (out[1] == 0), (dims, n_words, out)
        assert out[2] == len(x)


def test_a_read_inside_the_callers_transaction_is_not_run_again(postgres_dsn) -> None:
    """A read in a transaction the caller opened on the thread's connection, whose connection
    the server then ends, fails: run again on a new connection it would answer from outside
    that transaction, which is lost. The thread's next call goes on."""
    import psycopg

    from smysl.toolkit.postgres import PostgresStoreError

    x = unit_rows(4, 16, seed=6)
    name = f"intx-{uuid.uuid4().hex[:8]}"
    with open_store(_config(f"{postgres_dsn}?application_name={name}"), 16) as s, \
            psycopg.connect(postgres_dsn, autocommit=True) as c:
        s.upsert([str(i) for i in range(len(x))], x)
        lost = r"ended the connection.*transaction open on it is lost.*next call reconnects"
        with pytest.raises(PostgresStoreError, match=lost), s._conn.transaction():
            assert s.count() == len(x)
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = %s", [name])
            s.count()
        assert s.count() == len(x)


def test_a_statement_the_server_refuses_names_the_server(postgres_dsn) -> None:
    """psycopg's errors other than a lost connection (``lock_timeout``, ``statement_timeout``,
    a full disk, a table dropped meanwhile) leave the store as a PostgresStoreError naming the
    server, reads and writes alike (a served index answers 503 with it, not 500); the
    connection stays and serves the next call."""
    import psycopg
    from psycopg import sql

    from smysl.toolkit.postgres import PostgresStoreError

    x = unit_rows(4, 16, seed=7)
    config = _config(f"{postgres_dsn}?options=-c%20lock_timeout%3D200")
    with open_store(config, 16) as s, psycopg.connect(postgres_dsn) as c:
        s.upsert([str(i) for i in range(len(x))], x)
        table = sql.Identifier(config.table)
        c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        for call in (lambda: s.count(), lambda: s.search(x[0], 1), lambda: s.get(["1"]),
                     lambda: s.upsert(["new"], x[:1]), lambda: s.delete(["1"])):
            with pytest.raises(PostgresStoreError, match=r"PostgreSQL at 127\.0\.0\.1:\d+/"
                                                         r"postgres: .*lock timeout"):
                call()
        c.rollback()
        assert s.count() == len(x)
        c.execute(sql.SQL("DROP TABLE {}").format(table))
        c.commit()
        with pytest.raises(PostgresStoreError, match="does not exist"):
            s.search(x[0], 1)


def test_a_dsn_libpq_cannot_parse_is_not_quoted() -> None:
    """libpq's words on a DSN it cannot parse quote it, a password with a raw '%' with it:
    the error says how to write the DSN instead."""
    pytest.importorskip("psycopg")
    from smysl.toolkit.postgres import PostgresStoreError

    for dsn in ("postgresql://u:PG%ZZs3cret@127.0.0.1:9/db",
                "postgres:host=127.0.0.1 password=two s3cret words dbname=db"):
        with pytest.raises(PostgresStoreError, match="cannot be parsed: percent-encode") as e:
            open_store(StoreConfig.parse(dsn, table="t"), 4)
        assert "s3cret" not in str(e.value)
