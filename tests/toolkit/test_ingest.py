"""Ingestion: readers, chunk payloads, the no-re-embedding guarantee, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from smysl.toolkit.chunking import ChunkConfig
from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.ingest import Document, IngestConfig, ReadConfig, read_documents, text_ids
from smysl.toolkit.search import SearchConfig
from smysl.toolkit.store import StoreConfig
from toolkit.helpers import Counting, OtherWeights

pytest.importorskip("lancedb")

WORDS = [
    "river", "stone", "light", "paper", "garden", "window", "engine", "music", "winter",
    "harbor", "signal", "forest", "copper", "thread", "orbit", "lantern", "meadow", "canyon",
]


def corpus(n_docs: int, sentences: int = 12, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        text = " ".join(" ".join(rng.choice(WORDS, 7)) + "." for _ in range(sentences))
        docs.append(Document(f"doc{d}", text, {"group": d % 4, "name": f"n{d}"}))
    return docs


CFG = IngestConfig(chunk=ChunkConfig(max_tokens=24, overlap=4), batch_size=64)


def open_index(model, path: Path) -> Index:
    return Index.create_or_open(model, IndexConfig(StoreConfig(uri=str(path))))


def test_second_ingest_embeds_nothing(tiny, tmp_path) -> None:
    """The small version of the bar: ~500 chunks twice; the second run embeds nothing."""
    model = Counting(tiny)
    docs = corpus(90)
    with open_index(model, tmp_path / "kb") as ix:
        first = ix.add(docs, CFG)
        assert first.chunks >= 500 and first.written == first.chunks
        assert model.embedded == first.embedded == first.chunks - first.cached
        assert ix.count() == first.chunks
    before = model.embedded
    with open_index(model, tmp_path / "kb") as ix:
        second = ix.add(docs, CFG)
    assert model.embedded == before  # not a single text reached the model
    assert (second.chunks, second.unchanged, second.written, second.embedded) == (
        first.chunks, first.chunks, 0, 0)


def test_changes_reembed_only_what_changed(tiny, tmp_path) -> None:
    model = Counting(tiny)
    docs = corpus(8, seed=1)
    with open_index(model, tmp_path / "kb") as ix:
        ix.add(docs, CFG)
        n0 = ix.count({"doc_id": "doc3"})
        assert n0 >= 3
        # metadata change: payload rewritten, vectors from the cache
        before = model.embedded
        moved = [Document(d.id, d.text, {**d.metadata, "group": 9}) if d.id == "doc1" else d
                 for d in docs]
        rep = ix.add(moved, CFG)
        assert model.embedded == before and rep.written == ix.count({"doc_id": "doc1"})
        assert ix.count({"group": 9}) == rep.written
        # a shorter doc3: its old tail chunks go, nothing else is embedded
        short = [Document(d.id, d.text[:60], d.metadata) if d.id == "doc3" else d for d in moved]
        rep = ix.add(short, CFG)
        assert ix.count({"doc_id": "doc3"}) == 1 and rep.stale_deleted == n0 - 1
        assert rep.embedded <= 1 and model.embedded - before == rep.embedded
        # stored vector of a chunk equals embedding its text directly
        (rec,) = ix.store.get(["doc3#0"])
        np.testing.assert_allclose(rec.vector, tiny.embed([rec.payload["text"]])[0], atol=1e-5)
        assert ix.delete(["doc0", "doc2"]) > 0 and ix.count({"doc_id": ["doc0", "doc2"]}) == 0


def test_the_tokens_embedded_leave_out_chunks_from_the_cache(tiny, tmp_path) -> None:
    """An index job said "tokens not counted" whenever a chunk came from the cache or was in
    the index already (a file's old rows, resumed): ingestion counted only the tokens of all
    chunks written. It counts those sent to the model too."""
    model = Counting(tiny)
    docs = corpus(6, seed=2)
    with open_index(model, tmp_path / "kb") as ix:
        first = ix.add(docs, CFG)
        assert first.embedded_tokens == first.tokens == sum(tiny.count_tokens(model.texts))
        sent = len(model.texts)
        # doc1's metadata changes (its chunks rewritten from the cache), doc4's text changes
        changed = [Document(d.id, d.text, {**d.metadata, "group": 9}) if d.id == "doc1" else
                   Document(d.id, "a new text entirely. " + d.text[:80], d.metadata)
                   if d.id == "doc4" else d for d in docs]
        rep = ix.add(changed, CFG)
    assert rep.cached > 0 and rep.embedded > 0 and rep.unchanged > 0
    assert rep.embedded_tokens == sum(tiny.count_tokens(model.texts[sent:])) > 0
    assert rep.tokens is not None and rep.tokens > rep.embedded_tokens


def test_readers_and_payloads(tiny, tmp_path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Title\n\nSome markdown text.", encoding="utf-8")
    (tmp_path / "notes" / "b.txt").write_text("Plain text file.", encoding="utf-8")
    (tmp_path / "notes" / "skip.bin").write_bytes(b"\x00")
    (tmp_path / "rows.csv").write_text("id,body,lang\nr1,First row,en\nr2,Zweite Zeile,de\n",
                                       encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"body": "json row", "year": 2024, "lang": "en"}) + "\n", encoding="utf-8")
    docs = list(read_documents([tmp_path / "notes", tmp_path / "rows.csv"],
                               ReadConfig(text_field="body", id_field="id")))
    assert [d.id for d in docs] == [str(tmp_path / "notes" / "a.md"),
                                    str(tmp_path / "notes" / "b.txt"), "r1", "r2"]
    assert docs[3].metadata == {"lang": "de", "source": str(tmp_path / "rows.csv")}
    (j,) = read_documents([tmp_path / "rows.jsonl"], ReadConfig(text_field="body",
                                                                metadata_fields=("year",)))
    assert j.id == f"{tmp_path / 'rows.jsonl'}:1" and j.metadata["year"] == 2024
    with open_index(tiny, tmp_path / "kb") as ix:
        ix.add([*docs, j], CFG)
        assert ix.count({"lang": "de"}) == 1 and ix.count({"year": {"$gte": 2000}}) == 1
        hit = ix.store.get(["r2#0"])[0].payload
        assert hit["text"] == "Zweite Zeile" and hit["doc_id"] == "r2" and hit["chunk"] == 0
    with pytest.raises(ValueError, match="no 'text' column"):
        list(read_documents([tmp_path / "rows.csv"]))
    with pytest.raises(ValueError, match="reserved"), open_index(tiny, tmp_path / "kb") as ix:
        ix.add([Document("x", "text", {"chunk": 1})], CFG)


def test_a_repeated_document_id_is_refused_not_overwritten(tiny, tmp_path) -> None:
    """Two documents with one id (the later silently replaced the earlier): a ValueError naming
    both, before the batch holding the repeat is written; batches stored before it stay, as
    after a crash. A file named twice is read once."""
    with open_index(tiny, tmp_path / "kb") as ix:
        with pytest.raises(ValueError, match="document id 'a' repeats: document 1 and "
                                             "document 3; ids must be unique"):
            ix.add_texts(["one", "two", "three"], ids=["a", "b", "a"])
        assert ix.count() == 0  # one batch: nothing of it written
        with pytest.raises(ValueError, match="'a' repeats"):
            ix.add_texts(["one", "two", "three"], ids=["a", "b", "a"],
                         config=IngestConfig(batch_size=1))
        assert [r.payload["text"] for r in ix.store.get(["a#0", "b#0"])] == ["one", "two"]
        # a review's: None was an AttributeError in chunking; "" made the chunk id "#0"
        with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, not a string"):
            ix.add_texts(["one", None])  # type: ignore[list-item]
        with pytest.raises(ValueError, match=r"ids\[1\] is '': a document id is not blank"):
            ix.add_texts(["one", "two"], ids=["c", ""])
        assert ix.count() == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("text", encoding="utf-8")
    notes = tmp_path / "notes"
    assert len(list(read_documents([notes / "a.md", notes, notes / ".." / "notes" / "a.md"]))
               ) == 1


def test_texts_without_ids_never_replace_other_documents(tiny, tmp_path) -> None:
    """`add_texts` without ids numbered the texts of each call from 0: a second call replaced
    the first call's documents, silently. Ids are now hashes of the texts: a later text is a
    new document, the same texts again change nothing, a repeat is its own document."""
    with open_index(tiny, tmp_path / "kb") as ix:
        assert ix.add_texts(["first note", "second note"]).written == 2
        assert ix.add_texts(["a later note"]).written == 1
        assert ix.count() == 3
        again = ix.add_texts(["first note", "second note"])
        assert (again.written, again.unchanged, ix.count()) == (0, 2, 3)
        assert ix.add_texts(["twice", "twice"]).written == 2 and ix.count() == 5
        texts = sorted(r.payload["text"] for b in ix.store.scan() for r in b)
        assert texts == ["a later note", "first note", "second note", "twice", "twice"]
        with pytest.raises(TypeError, match="not one string"):
            ix.add_texts("one string")
    assert text_ids(["x", "y", "x"]) == [text_ids(["x"])[0], text_ids(["y"])[0],
                                         text_ids(["x"])[0] + "-2"]


def test_an_index_rebuilt_meanwhile_is_neither_written_nor_searched(tiny, tmp_path) -> None:
    """`index add --rebuild` with another model while an `index add` of this model ran: the
    running one's later batches landed in the other model's index (`index verify`: nothing
    damaged), and an open Index searched the other model's vectors."""
    with open_index(tiny, tmp_path / "kb") as ix:
        ix.add_texts(["before the rebuild"])
        with Index.create_or_open(OtherWeights(tiny), IndexConfig(StoreConfig(
                uri=str(tmp_path / "kb"))), rebuild=True) as other:
            other.add_texts(["the other model's"])
        with pytest.raises(ValueError, match="another process rebuilt the index"):
            ix.add_texts(["after the rebuild"])
        with pytest.raises(ValueError, match="another process rebuilt the index"):
            ix.search("anything")
    with Index.create_or_open(OtherWeights(tiny), IndexConfig(StoreConfig(
            uri=str(tmp_path / "kb"))), create=False) as other:
        assert [r.payload["text"] for b in other.store.scan() for r in b] == ["the other model's"]
    # the same model rebuilt at another size: said so, not called damage
    with open_index(tiny, tmp_path / "kb2") as ix:
        ix.add_texts(["full size"])
        with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb2")),
                                                    dimensions=32), rebuild=True) as small:
            small.add_texts(["cut to 32"])
        with pytest.raises(ValueError, match=r"rebuilt the index .*: index stores 32-d "
                                             r"vectors, not 64-d$"):
            ix.search("anything")


def test_two_first_writers_with_two_models_bind_the_index_once(tiny, tmp_path) -> None:
    """Two first `index add` runs into a new folder with two models: both found the table
    without metadata, both bound it (the last one won) and both wrote, so the index held two
    models' vectors under one binding. Here the other model binds it while this one hashes
    its checkpoint (its fingerprint): this one is refused, and nothing of it is written."""
    kb = IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))

    class Slow(Counting):
        def fingerprint(self) -> str:
            if not hasattr(self, "raced"):
                self.raced = True
                with Index.create_or_open(OtherWeights(tiny), kb) as other:
                    other.add_texts(["the other model's"])
            return super().fingerprint()

    with pytest.raises(ValueError, match=r"built with model .*fingerprint 0{32}"):
        Index.create_or_open(Slow(tiny), kb)
    with Index.create_or_open(OtherWeights(tiny), kb, create=False) as other:
        assert [r.payload["text"] for b in other.store.scan() for r in b] == ["the other model's"]


def test_index_refuses_another_model(tiny, tmp_path) -> None:
    with open_index(tiny, tmp_path / "kb") as ix:
        ix.add_texts(["a b c"])
    renamed = Counting(tiny)
    renamed.name = "another-name"  # the same weights under another name: the same model
    open_index(renamed, tmp_path / "kb").close()
    with pytest.raises(ValueError, match=r"built with model .*fingerprint"):
        open_index(OtherWeights(tiny), tmp_path / "kb")
    with pytest.raises(ValueError, match="64-d"):
        Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")),
                                               dimensions=32))


KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from smysl import Embedder
    from toolkit.helpers import Counting, OtherWeights
    from toolkit.test_ingest import CFG, corpus, open_index

    class Slow(Counting):
        def _embed(self, texts, *, truncate, progress=None):
            time.sleep(0.15)  # widen the window in which the kill lands
            return super()._embed(texts, truncate=truncate, progress=progress)

    model = Slow(Embedder.load({model!r}, device="cpu"))
    with open_index(model, __import__("pathlib").Path({index!r})) as ix:
        def stored(ids):
            print(json.dumps(ids), flush=True)
        rep = ix.add(corpus(40), CFG, on_stored=stored)
    print("DONE", rep.chunks, flush=True)
""")


def test_killed_ingestion_loses_nothing_and_rerun_completes(tiny, tiny_dir, tmp_path
                                                            ) -> None:
    script = tmp_path / "ingest.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parents[1]),
                                         model=str(tiny_dir), index=str(tmp_path / "kb")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reported: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        assert not line.startswith("DONE"), "ingestion finished before it could be killed"
        reported += json.loads(line)
        if len(reported) >= 3 * CFG.batch_size:
            proc.send_signal(signal.SIGKILL)  # no cleanup, no flush: a crash
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    model = Counting(tiny)
    with open_index(model, tmp_path / "kb") as ix:
        got = {r.id: r for r in ix.store.get(reported)}
        assert set(got) == set(reported)  # everything reported stored survived the kill
        sample = [got[i] for i in reported[::17]]
        ref = tiny.embed([r.payload["text"] for r in sample])
        np.testing.assert_allclose(np.stack([r.vector for r in sample]), ref, atol=1e-5)
        rep = ix.add(corpus(40), CFG)  # the rerun completes the job
        assert ix.count() == rep.chunks
        assert rep.unchanged >= len(reported)
        assert model.embedded == rep.embedded <= rep.chunks - len(reported)
    # the completed index equals an uninterrupted ingestion
    with open_index(tiny, tmp_path / "fresh") as fresh:
        fresh.add(corpus(40), CFG)
        a = {r.id: r for b in fresh.store.scan() for r in b}
    with open_index(tiny, tmp_path / "kb") as ix:
        b = {r.id: r for batch in ix.store.scan() for r in batch}
    assert set(a) == set(b)
    for k in a:
        assert a[k].payload == b[k].payload
        np.testing.assert_allclose(a[k].vector, b[k].vector, atol=1e-5)


def test_qdrant_index_ingests_incrementally(tiny, tmp_path) -> None:
    """The same Index on Qdrant (local mode): metadata, filters, no re-embedding, search."""
    pytest.importorskip("qdrant_client")
    model = Counting(tiny)
    cfg = IndexConfig(StoreConfig(backend="qdrant", uri=str(tmp_path / "q"), table="docs"))
    docs = corpus(6, seed=2)
    with Index.create_or_open(model, cfg) as ix:
        first = ix.add(docs, CFG)
        assert ix.store.read_meta()["model"] == tiny.name
    with Index.create_or_open(model, cfg) as ix:
        before = model.embedded
        second = ix.add(docs, CFG)  # no cache here: unchanged payloads alone skip the work
        assert model.embedded == before and second.unchanged == first.chunks
        (hits,) = ix.search("river stone", SearchConfig(k=3, where={"group": 1}))
        assert len(hits) == 3 and {h.payload["doc_id"] for h in hits} <= {"doc1", "doc5"}


def test_seen_ids_hold_every_id_past_their_recent_dict(monkeypatch) -> None:
    """Ids move from the recent dict into the sorted arrays; a repeat is found in either."""
    from smysl.toolkit.ingest import SeenIds

    monkeypatch.setattr(SeenIds, "RECENT", 7)
    seen = SeenIds()
    ids = [f"doc-{i}" for i in range(100)]
    assert all(seen.add(x, n) is None for n, x in enumerate(ids, 1))
    assert [seen.add(x, 1000) for x in ids[::9]] == list(range(1, 101, 9))
    assert seen.add("doc-100", 101) is None


def test_files_as_excel_and_editors_write_them(tmp_path) -> None:
    """A byte-order mark (Excel's "CSV UTF-8") became part of the first column's name (a
    `--where lang=ru` found nothing, or "no 'text' column") and began a text file's first
    chunk; a row with an unquoted comma stored "hello" and put " world" under the next column;
    a cell over 131,072 characters ended the run with the csv module's error, naming no
    file."""
    bom = "\ufeff"
    (tmp_path / "excel.csv").write_text(bom + "lang,text\nru,Привет мир\n", encoding="utf-8")
    (tmp_path / "first.csv").write_text(bom + "text,id\nhi,1\n", encoding="utf-8")
    (tmp_path / "bom.jsonl").write_text(bom + '{"text": "hi"}\n', encoding="utf-8")
    (tmp_path / "bom.txt").write_text(bom + "Заметка.", encoding="utf-8")
    (tmp_path / "long.csv").write_text("text\n" + "x " * 100_000 + "\n", encoding="utf-8")
    docs = list(read_documents([tmp_path / n for n in
                                ("excel.csv", "first.csv", "bom.jsonl", "bom.txt", "long.csv")]))
    assert docs[0].text == "Привет мир" and docs[0].metadata["lang"] == "ru"
    assert docs[1].text == "hi" and docs[1].metadata["id"] == "1"
    assert docs[2].text == "hi" and docs[3].text == "Заметка."
    assert len(docs[4].text) == 200_000
    (tmp_path / "comma.csv").write_text("text,lang\nhello, world,en\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"comma\.csv, line 2: more fields than the header"):
        list(read_documents([tmp_path / "comma.csv"]))


def test_a_lone_surrogate_at_any_depth_of_the_metadata_is_named(tmp_path) -> None:
    # in a list it passed the check and failed the store's write, naming no file
    (tmp_path / "t.jsonl").write_text('{"text": "fine", "tags": ["\\ud800"]}\n',
                                      encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.jsonl: row 1: the metadata is not valid Unicode"):
        list(read_documents([tmp_path / "t.jsonl"]))


@pytest.mark.parametrize("backend", ["memory", "lancedb"])
def test_metadata_of_numpy_dates_and_tuples_is_stored_alike_everywhere(tiny, tmp_path,
                                                                       backend) -> None:
    """LanceDB's write failed on a numpy int64 or a date (a pandas row's values), which the
    check had let through and the memory store kept as they were; a tuple came back a list
    and was rewritten at every ingestion. Stored as JSON values in every store now."""
    import datetime

    config = (StoreConfig(backend="memory") if backend == "memory"
              else StoreConfig(uri=str(tmp_path / "kb")))
    meta = {"year": np.int64(2004), "score": np.float32(0.5), "ok": np.bool_(True),
            "day": datetime.date(2020, 1, 2), "tags": ("a", "b"), "nested": {"v": np.arange(2)}}
    with Index.create_or_open(tiny, IndexConfig(config)) as ix:
        assert ix.add_texts(["a text"], ids=["a"], metadata=[meta]).written == 1
        assert ix.add_texts(["a text"], ids=["a"], metadata=[meta]).written == 0  # unchanged
        (hit,) = ix.search("a text", SearchConfig(k=1, where={"year": 2004}))[0]
        got = {k: hit.payload[k] for k in meta}
        assert got == {"year": 2004, "score": 0.5, "ok": True, "day": "2020-01-02",
                       "tags": ["a", "b"], "nested": {"v": [0, 1]}}
        assert type(got["year"]) is int
        with pytest.raises(ValueError, match="a metadata value must be text, a number"):
            ix.add_texts(["b"], ids=["b"], metadata=[{"s": {1, 2}}])


@pytest.mark.parametrize("backend", ["memory", "lancedb"])
def test_prune_removes_the_documents_files_no_longer_hold(tiny, tmp_path, backend) -> None:
    """A file deleted from a folder, or a row from a JSONL (the rows after it moved ids), left
    its chunks searchable for ever: a re-add cleaned up only documents it read. With prune
    they go; without it they stay (as documented); a file outside the paths given, a skipped
    (binary) file and texts added by hand are never touched."""
    config = (StoreConfig(backend="memory") if backend == "memory"
              else StoreConfig(uri=str(tmp_path / "kb")))
    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir()
    other.mkdir()
    for name in ("a", "b", "c"):
        (docs / f"{name}.txt").write_text(f"file {name} says hello", encoding="utf-8")
    (docs / "bin.txt").write_text("binary now", encoding="utf-8")
    (docs / "rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n"
                                             for i in range(4)), encoding="utf-8")
    (other / "keep.txt").write_text("elsewhere", encoding="utf-8")
    with Index.create_or_open(tiny, IndexConfig(config)) as ix:
        ix.add_files([docs, other])
        ix.add_texts(["by hand"], ids=["hand"])
        before = ix.count()
        (docs / "b.txt").unlink()
        (docs / "bin.txt").write_bytes(b"\x00\x01 now binary")  # skipped: its chunks stay
        (docs / "rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n"
                                                 for i in (0, 2, 3)), encoding="utf-8")
        report = ix.add_files([docs])
        assert report.pruned == 0 and ix.count() == before  # without prune: all stay
        report = ix.add_files([docs], prune=True)
        assert report.pruned == 2 and "2 documents no longer in their files" in report.summary()
        ids = {r.payload["doc_id"] for batch in ix.store.scan(with_vectors=False) for r in batch}
        names = {i.rsplit("/", 1)[-1] for i in ids}
        assert names == {"a.txt", "c.txt", "bin.txt", "rows.jsonl:1", "rows.jsonl:2",
                         "rows.jsonl:3", "keep.txt", "hand"}, names
        # a text added by hand with a source of its own under the folder stays (a review's
        # finding: it was deleted)
        ix.add_texts(["by hand, from a"], ids=["note"],
                     metadata=[{"source": str((docs / "a.txt").resolve())}])
        assert ix.add_files([docs], prune=True).pruned == 0


def test_prune_under_a_root_that_is_the_folder_given(tiny, tmp_path) -> None:
    """`index add kb docs --root docs --prune`: the folder's own id is ".", and no file's id
    ("b.txt") starts with "./": nothing was pruned."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a", "b"):
        (docs / f"{name}.txt").write_text(f"file {name}", encoding="utf-8")
    read = ReadConfig(root=docs)
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(backend="memory"))) as ix:
        ix.add_files([docs], read)
        (docs / "b.txt").unlink()
        assert ix.add_files([docs], read, prune=True).pruned == 1
        ids = {r.payload["doc_id"] for batch in ix.store.scan(with_vectors=False) for r in batch}
        assert ids == {"a.txt"}


def test_metadata_whose_type_changed_is_rewritten(tiny, tmp_path) -> None:
    """`reviewed: 1` corrected to `reviewed: true`: Python's True == 1 made the re-ingestion
    report it unchanged and keep the old type, which a filter for true never matches."""
    with open_index(tiny, tmp_path / "kb") as ix:
        ix.add_texts(["alpha"], ids=["a"], metadata=[{"reviewed": 1, "n": [1, 2]}])
        again = ix.add_texts(["alpha"], ids=["a"], metadata=[{"reviewed": 1.0, "n": [1, 2]}])
        assert (again.unchanged, again.written) == (1, 0)  # one value to a filter
        fixed = ix.add_texts(["alpha"], ids=["a"], metadata=[{"reviewed": True, "n": [True, 2]}])
        assert (fixed.unchanged, fixed.written) == (0, 1)
        assert ix.count({"reviewed": True}) == 1 and ix.count({"reviewed": 1}) == 0
        with pytest.raises(ValueError, match=r"\['_smysl_id'\] are reserved"):
            ix.add_texts(["beta"], ids=["b"], metadata=[{"_smysl_id": "x"}])


def test_a_delete_of_a_tenth_or_more_brings_word_statistics_up_to_date(tiny, tmp_path,
                                                                       monkeypatch) -> None:
    """A review's: after ``index delete`` the stores' word statistics (Qdrant's mean length,
    PostgreSQL's ANALYZE) stayed those of the records deleted. ``Index.delete`` optimizes
    the store once a tenth of its records or more went; a delete of a few is left to the next
    ingestion's."""
    with open_index(tiny, tmp_path / "kb") as ix:
        ix.add_texts([f"note number {i}" for i in range(30)], ids=[f"d{i}" for i in range(30)])
        calls: list[int] = []
        monkeypatch.setattr(ix.store, "optimize", lambda: calls.append(ix.store.count()))
        assert ix.delete(["d0"]) == 1 and calls == []
        assert ix.delete([f"d{i}" for i in range(1, 5)]) == 4 and calls == [25]
