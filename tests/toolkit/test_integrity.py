"""Integrity end to end (issue 11): damaged cache entries and stored vectors are never served,
model identity is the fingerprint, document ids are normalised paths, bad files are named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from smysl.cli import main
from smysl.toolkit.cache import CacheConfig, CachedEmbedder, EmbeddingCache
from smysl.toolkit.chunking import ChunkConfig, TokenChunker, chunker_for, word_offsets
from smysl.toolkit.index import Index, IndexConfig, verify_store
from smysl.toolkit.ingest import BadFileError, IngestConfig, ReadConfig, read_documents
from smysl.toolkit.io import read_column
from smysl.toolkit.search import SearchConfig
from smysl.toolkit.store import DIGEST_FIELD, StoreConfig
from toolkit.helpers import Counting

pytest.importorskip("lancedb")

CFG = IngestConfig(chunk=ChunkConfig(max_tokens=24, overlap=4), batch_size=16)
TEXTS = [f"note {i}: the {w} sits by the {v} at dawn." for i, (w, v) in enumerate(
    zip(["river", "stone", "lamp", "cat", "tree", "boat", "bell", "kite"] * 3,
        ["door", "hill", "sea", "road", "wall", "farm", "gate", "mill"] * 3, strict=True))]
IDS = [str(i) for i in range(len(TEXTS))]  # readable chunk ids ("3#0") for the damage tests


def flip(path: Path, needle: bytes, offset: int, bit: int) -> None:
    """Flip one bit of the first copy of ``needle`` in a file (a vector's raw float32 bytes)."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "vector bytes not found in the file"
    data[at + offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def flip_in_folder(folder: Path, needle: bytes, offset: int, bit: int) -> None:
    """:func:`flip` in every data file holding the vector (older versions keep copies)."""
    files = [p for p in folder.rglob("*.lance") if p.is_file() and needle in p.read_bytes()]
    assert files, "vector bytes not found in the store"
    for f in files:
        flip(f, needle, offset, bit)


def no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("loaded a model")


def test_damaged_cache_entries_are_recomputed_not_served(tiny, tmp_path) -> None:
    """issue 11 item 1: flipped bytes in embedding-cache.sqlite (an exponent: norm ~85; a low
    mantissa bit: norm still ~1) are found by the checksum, recomputed and counted."""
    path = tmp_path / "cache.sqlite"
    first = EmbeddingCache(path)
    good = CachedEmbedder(tiny, first).embed(TEXTS[:10])
    first.close()  # the last connection folds the WAL into the file
    flip(path, good[2].tobytes(), 4 * 3 + 3, 6)  # exponent of component 3
    flip(path, good[5].tobytes(), 4 * 7, 0)  # lowest mantissa bit of component 7
    model = Counting(tiny)
    ce = CachedEmbedder(model, EmbeddingCache(path))
    np.testing.assert_array_equal(ce.embed(TEXTS[:10]), good)
    assert model.embedded == ce.recomputed == 2 and ce.cached == 8
    np.testing.assert_array_equal(ce.embed(TEXTS[:10]), good)  # rewritten: served again
    assert model.embedded == 2
    # A file SQLite cannot read at all: reported, bypassed, vectors still right.
    path.write_bytes(b"garbage" * 1000)
    broken = CachedEmbedder(model, EmbeddingCache(path))
    np.testing.assert_allclose(broken.embed(TEXTS[:3]), good[:3], atol=1e-6)
    assert broken.problems and str(path) in broken.problems[0]


def test_damaged_stored_vectors_are_not_served_and_reruns_repair_them(tiny, tmp_path, capsys,
                                                                      monkeypatch) -> None:
    """issue 11 item 1: a damaged stored vector is left out of search results (reported), and
    the next ingestion re-embeds it instead of calling it unchanged. ``smysl index verify``
    finds damage and lost records without loading the model."""
    kb = tmp_path / "kb"
    cfg = IndexConfig(StoreConfig(uri=str(kb)))
    with Index.create_or_open(tiny, cfg) as ix:
        ix.add_texts(TEXTS, IDS, config=CFG)
        records = {r.id: r for b in ix.store.scan() for r in b}
    assert all(r.payload[DIGEST_FIELD] for r in records.values())
    flip_in_folder(kb, records["3#0"].vector.tobytes(), 4 * 2 + 3, 6)  # norm far from 1
    flip_in_folder(kb, records["7#0"].vector.tobytes(), 4 * 9 + 1, 3)  # norm still ~1
    (kb / "embedding-cache.sqlite").unlink()  # the repair must come from the model
    with monkeypatch.context() as m:
        m.setattr("smysl.commands.index.load_model", no_model)
        assert main(["index", "verify", str(kb), "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert "damaged 3#0: has norm" in out and "damaged 7#0: does not match its checksum" in out
    assert f"2 of {len(TEXTS)} records damaged" in err
    model = Counting(tiny)
    with Index.create_or_open(model, cfg) as ix:
        (hits,) = ix.search(TEXTS[3], SearchConfig(k=len(TEXTS)))
        assert {"3#0", "7#0"}.isdisjoint(h.id for h in hits)
        assert len(hits) == len(TEXTS) - 2 and set(ix.damaged) == {"3#0", "7#0"}
        assert "norm" in ix.damaged["3#0"] and "checksum" in ix.damaged["7#0"]
        assert set(ix.verify()) == {"3#0", "7#0"}  # the full scan finds them too
        before = model.embedded  # the query
        rep = ix.add_texts(TEXTS, IDS, config=CFG)
        assert (rep.repaired, rep.written, rep.unchanged) == (2, 2, len(TEXTS) - 2)
        assert model.embedded - before == 2
        (hits,) = ix.search(TEXTS[3], SearchConfig(k=len(TEXTS)))
        assert len(hits) == len(TEXTS) and ix.verify() == {}  # repaired: served again
        fixed = {r.id: r for r in ix.store.get(["3#0", "7#0"])}
        ix.store.delete(["1#0", "2#0"])  # records gone behind the index's back (a lost fragment)
    lost = f"{kb} table chunks: holds {len(TEXTS) - 2} records but {len(TEXTS)} were written"
    found = verify_store(cfg.store)
    assert found.damaged == {} and found.total == len(TEXTS) - 2
    assert len(found.problems) == 1 and lost in found.problems[0]
    with Index.create_or_open(model, cfg) as ix:
        (problem,) = ix.problems
        assert lost in problem
        assert ix.add_texts(TEXTS, IDS, config=CFG).written == 2  # the rerun restores them
    with Index.create_or_open(model, cfg) as ix:
        assert ix.problems == []
    for i in ("3#0", "7#0"):
        np.testing.assert_allclose(fixed[i].vector, records[i].vector, atol=1e-6)


def test_store_refuses_vectors_that_are_not_unit_length(tmp_path) -> None:
    """issue 11 item 1: stores checked NaN only; a vector of norm 85 is refused on write."""
    from smysl.toolkit.stores import open_store

    with open_store(StoreConfig(uri=str(tmp_path / "s")), 4) as s, \
            pytest.raises(ValueError, match="unit length: row 1 has norm 85"):
        s.upsert(["a", "b"], np.array([[1, 0, 0, 0], [85, 0, 0, 0]], np.float32))


def test_document_ids_are_normalised_paths(tiny, tmp_path, monkeypatch) -> None:
    """issue 11 item 2: ``/abs/xq`` and ``xq`` give the same ids (no duplicates), and two
    projects' ``docs/notes.txt`` ingested from their own folders do not collide."""
    for project in ("projA", "projB"):
        (tmp_path / project / "docs").mkdir(parents=True)
        (tmp_path / project / "docs" / "notes.txt").write_text(f"{project} notes: " + TEXTS[0])
    (tmp_path / "xq").mkdir()
    (tmp_path / "xq" / "a.md").write_text(TEXTS[1])
    monkeypatch.chdir(tmp_path)
    ids_abs = [d.id for d in read_documents([tmp_path / "xq"])]
    assert ids_abs == [d.id for d in read_documents(["xq"])] == [f"{tmp_path}/xq/a.md"]
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))) as ix:
        ix.add_files([tmp_path / "xq"], config=CFG)
        assert ix.add_files(["xq"], config=CFG).unchanged == ix.count() == 1
        for project in ("projA", "projB"):
            monkeypatch.chdir(tmp_path / project)
            ix.add_files(["docs"], config=CFG)
        assert ix.count() == 3
        assert {h.payload["doc_id"] for h in ix.search("notes", SearchConfig(k=3))[0]} == {
            f"{tmp_path}/xq/a.md", f"{tmp_path}/projA/docs/notes.txt",
            f"{tmp_path}/projB/docs/notes.txt"}
    # with a declared root, ids are relative to it, however the folder is spelled
    monkeypatch.chdir(tmp_path)
    rel = ReadConfig(root=Path("projA"))
    assert [d.id for d in read_documents(["projA/docs"], rel)] == ["docs/notes.txt"]
    assert [d.id for d in read_documents([tmp_path / "projA" / "docs"], rel)] == [
        "docs/notes.txt"]
    with pytest.raises(ValueError, match="outside the root folder"):
        list(read_documents(["projB/docs"], rel))


def test_an_index_refused_for_other_settings_names_them(tiny_dir, tmp_path) -> None:
    """An index built in float32 and opened with the same weights in bf16 was refused for
    "other weights or settings" alone: a default that changes between versions (a quantised
    GGUF's dtype) left the user guessing which setting to give."""
    from smysl import Embedder

    cfg = IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))
    with Index.create_or_open(Embedder.load(str(tiny_dir), device="cpu"), cfg) as ix:
        ix.add_texts(TEXTS[:2], config=CFG)
    bf16 = Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"built with dtype float32 \(this model: bfloat16\)"):
        Index.create_or_open(bf16, cfg)


def test_a_refusal_hints_at_the_dtype_of_an_index_from_before_settings_were_recorded() -> None:
    """Indexes built before settings were recorded name none: for a quantised GGUF now in
    bf16 (float32 by default before), the refusal says to try float32."""
    from smysl.base import ModelInfo
    from smysl.toolkit.index import _settings_changed

    class Gguf:
        def info(self) -> ModelInfo:
            return ModelInfo(name="m", backend="qwen3", dimensions=64, min_dimensions=32,
                             max_tokens=512, instruction_aware=True, default_task="t",
                             dtype="bfloat16", file_format="gguf")

    assert "try dtype float32" in _settings_changed({}, Gguf())  # type: ignore[arg-type]
    assert _settings_changed({"dtype": "bfloat16", "quantization": None},
                             Gguf()) == ""  # type: ignore[arg-type]


def test_ids_with_a_nul_are_deleted_and_replaced(tiny) -> None:  # type: ignore[no-untyped-def]
    """A NUL refused in every filter (for /search) broke re-ingesting a document whose id
    holds one: its stale chunks were left beside the new ones. /search alone refuses it."""
    with Index.create_or_open(tiny, IndexConfig(StoreConfig(backend="memory"))) as ix:
        ix.add_texts(TEXTS[:2], ["a\x00b", "c"], config=CFG)
        assert ix.delete(["a\x00b"]) >= 1 and ix.count() >= 1


def test_same_name_other_weights_neither_share_cache_nor_index(tmp_path, monkeypatch,
                                                               capsys) -> None:
    """issue 11 item 3: ``--model tiny-eos`` naming other weights in two folders: the second
    model embeds its own vectors (no reuse from the shared cache) and the index refuses it."""
    from qwen_tiny import build_tiny

    from smysl import Embedder

    build_tiny(tmp_path / "a" / "tiny-eos", seed=0)
    build_tiny(tmp_path / "b" / "tiny-eos", seed=4)
    cache = tmp_path / "cache.sqlite"
    cfg = IndexConfig(StoreConfig(uri=str(tmp_path / "kb")),
                      cache=CacheConfig(cache))
    monkeypatch.chdir(tmp_path / "a")
    a = Embedder.load("tiny-eos", device="cpu")
    with Index.create_or_open(a, cfg) as ix:
        ix.add_texts(TEXTS, config=CFG)
    monkeypatch.chdir(tmp_path / "b")
    b = Counting(Embedder.load("tiny-eos", device="cpu"))
    mine = CachedEmbedder(b, EmbeddingCache(cache)).embed(TEXTS)
    assert b.embedded == len(TEXTS)  # nothing reused from model a's entries
    np.testing.assert_allclose(mine, b.inner.embed(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match=r"fingerprint .*rebuild"):
        Index.create_or_open(b, cfg)
    # verify checks the records alone, and with --model also that it built the index
    kb = tmp_path / "kb"
    capsys.readouterr()
    assert main(["index", "verify", str(kb)]) == 0
    assert f"0 of {len(TEXTS)} records damaged" in capsys.readouterr().err
    assert main(["index", "verify", str(kb), "--model", "tiny-eos", "--device", "cpu"]) == 2
    assert "fingerprint" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "a")  # where tiny-eos names the model that built it
    assert main(["index", "verify", str(kb), "--model", "tiny-eos", "--device", "cpu"]) == 0
    monkeypatch.chdir(tmp_path / "b")
    with Index.create_or_open(b, cfg, rebuild=True) as ix:  # the explicit way to switch
        assert ix.count() == 0 and ix.add_texts(TEXTS, config=CFG).cached == len(TEXTS)
    # metadata that disagrees with the store's vectors: damage, found without the model
    meta = kb / "chunks.smysl.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "dimensions": 7}))
    capsys.readouterr()
    assert main(["index", "verify", str(kb)]) == 1
    assert "metadata says 7-d vectors" in capsys.readouterr().err


@pytest.fixture
def labelled(tmp_path):
    rows = [{"text": t, "label": lab} for t, lab in zip(TEXTS[:6], ["Alpha ", "beta"] * 3,
                                                        strict=True)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_zero_shot_accuracy_only_for_matching_gold_labels(tiny_dir, labelled, capsys) -> None:
    """issue 11 item 5: an unrelated ``label`` column gave ``accuracy 0.0000``; now it says
    which gold labels do not match, and matching ones are mapped (case, spacing)."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "-i", str(labelled)]
    assert main(["classify", *model, "--labels", "billing,bug"]) == 0
    err = capsys.readouterr().err
    assert "accuracy 0" not in err and "do not match" in err
    assert "'Alpha '" in err and "'beta'" in err and "'billing'" in err
    assert main(["classify", *model, "--labels", "alpha,Beta"]) == 0
    err = capsys.readouterr().err
    assert "accuracy " in err and "on 6 texts" in err
    # half the rows of a label no candidate names: still unrelated, no accuracy
    assert main(["classify", *model, "--labels", "alpha,bug"]) == 0
    err = capsys.readouterr().err
    assert "accuracy 0" not in err and "do not match" in err and "'beta'" in err


def test_a_gold_label_the_classifier_never_saw_counts_wrong(tiny_dir, labelled, tmp_path,
                                                            capsys) -> None:
    """A review's: a test split with a label its training split lacks (the intents data has
    one, 3 rows of 1,104) printed "no accuracy" and nothing for the other rows. Those rows
    now count wrong, and are named."""
    rows = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines()]
    rows[5]["label"] = "gamma"
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    out = tmp_path / "p.jsonl"
    assert main(["classify", *model, "--train", str(labelled), "-i", str(test),
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("1 row has a gold label in 'label' that no candidate label matches ('gamma'), "
            "counted wrong in the accuracy") in err, err
    predicted = [json.loads(line)["predicted"] for line in out.read_text().splitlines()]
    right = sum(p.strip().lower() == r["label"].strip().lower()
                for p, r in zip(predicted, rows, strict=True))
    assert f"accuracy {right / 6:.4f} on 6 texts" in err, err


def test_bad_files_are_skipped_by_name_or_stop_strict(tiny_dir, tmp_path, capsys) -> None:
    """issue 11 item 9: one invalid-UTF-8 or binary file aborted a folder ingest with no file
    name; now it is skipped and listed (exit 0), or stops the run under --strict."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(TEXTS[0], encoding="utf-8")
    (docs / "b.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 3)
    (docs / "c.md").write_bytes(b"PK\x03\x04\x00\x00binary")
    (docs / "d.txt").write_text(TEXTS[1], encoding="utf-8")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    kb = str(tmp_path / "kb")
    assert main(["index", "add", kb, str(docs), *model]) == 0
    err = capsys.readouterr().err
    assert "2 documents" in err and "2 files skipped" in err
    assert f"skipped {docs / 'b.txt'}: not valid UTF-8" in err
    assert f"skipped {docs / 'c.md'}: binary file" in err
    assert main(["index", "add", kb, str(docs), "--strict", *model]) == 2
    err = capsys.readouterr().err
    assert str(docs / "b.txt") in err and "c.md" not in err
    with pytest.raises(BadFileError, match=r"b\.txt"):
        list(read_documents([docs], ReadConfig(strict=True)))
    bad_csv = tmp_path / "rows.csv"  # the table readers of classify/cluster/dedup name it too
    bad_csv.write_bytes(b"text\nok\n" + "caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"rows\.csv: not valid UTF-8"):
        read_column(bad_csv, "text")


def test_tables_on_stdin_are_read_as_utf8_bytes(monkeypatch) -> None:
    """A table on stdin (``-``) is read as a file is: UTF-8 whatever the locale (a latin-1
    locale's text layer turned Cyrillic into mojibake, silently), a lone \\r (JSON whitespace)
    inside its line; sys.stdin's buffer is left open."""
    import io

    buf = io.BytesIO('{"text":\r"один"}\n{"text": "два\\r"}\n'.encode())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(buf, encoding="latin-1"))
    assert read_column("-", "text")[0] == ["один", "два\r"]
    assert not buf.closed
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "caf\xe9"}\n')))
    with pytest.raises(ValueError, match="stdin: not valid UTF-8"):
        read_column("-", "text")


def test_damaged_store_and_metadata_give_one_line_errors(tiny_dir, tmp_path, capfd) -> None:
    """issue 11 item 9: LanceDB damage printed a 55-line Rust traceback and a garbled
    ``.smysl.json`` an error without the file; both are now one line naming the path."""
    kb = tmp_path / "kb"
    (tmp_path / "a.md").write_text(TEXTS[0], encoding="utf-8")
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", str(kb), str(tmp_path / "a.md"), *model,
                 "--no-progress"]) == 0
    meta = kb / "chunks.smysl.json"
    good_meta = meta.read_text(encoding="utf-8")
    meta.write_text(good_meta[:-7], encoding="utf-8")
    capfd.readouterr()
    assert main(["index", "search", str(kb), "river", *model]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"{meta}: index metadata is damaged" in err
    meta.write_text(good_meta, encoding="utf-8")
    for manifest in (kb / "chunks.lance" / "_versions").glob("*.manifest"):
        data = bytearray(manifest.read_bytes())
        # two places: a third of the way in alone now lands in the full-text index's entry,
        # which LanceDB only warns about (the search is right)
        for at in (len(data) // 4, len(data) // 2):
            data[at : at + 24] = b"\xff" * 24
        manifest.write_bytes(bytes(data))
    assert main(["index", "search", str(kb), "river", *model]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{kb}: LanceDB store 'chunks' is damaged" in err and "--rebuild" in err
    assert main(["index", "add", str(kb), str(tmp_path / "a.md"), *model, "--rebuild",
                 "--no-progress"]) == 0
    assert main(["index", "search", str(kb), "river", *model]) == 0


def test_an_index_without_its_metadata_is_never_bound_to_another_model(
        tiny, tiny_dir, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A review's: with its ``.smysl.json`` lost, search and verify refused the index, but
    ``index add`` bound its records to whatever model it was given (of the same width) and
    mixed that model's vectors in, which no later check could see. Now it is refused, with
    what to do, on every command; --rebuild still starts it afresh."""
    kb = tmp_path / "kb"
    cfg = IndexConfig(store=StoreConfig(uri=str(kb)))
    with Index.create_or_open(tiny, cfg) as ix:
        ix.add_texts(TEXTS[:4])
    (kb / "chunks.smysl.json").unlink()
    with pytest.raises(ValueError, match="holds 4 records but no smysl index metadata") as e:
        Index.create_or_open(tiny, cfg)
    assert "restore the metadata, or rebuild" in str(e.value)
    assert "<table>.smysl.json" in str(e.value) and "table chunks" in str(e.value)
    (tmp_path / "a.md").write_text(TEXTS[5], encoding="utf-8")
    capsys.readouterr()
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    for argv in (["add", str(kb), str(tmp_path / "a.md"), *model], ["search", str(kb), "x"]):
        assert main(["index", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "no smysl index metadata" in err and "--rebuild" in err, err
    assert not (kb / "chunks.smysl.json").exists()
    with Index.create_or_open(tiny, cfg, rebuild=True) as ix:
        assert ix.count() == 0


def test_windowed_chunking_equals_whole_text_chunking(tiny, monkeypatch) -> None:
    """issue 11 item 9: a long text is tokenised window by window (bounded memory) and gives
    exactly the chunks of tokenising it whole."""
    import smysl.toolkit.chunking as chunking

    text = " ".join(TEXTS * 12) + "\n" + "x" * 300 + " tail words here."
    for make in (lambda: chunker_for(tiny, ChunkConfig(max_tokens=20, overlap=3)),
                 lambda: TokenChunker(word_offsets, ChunkConfig(max_tokens=20, overlap=3))):
        whole = make().split(text)
        monkeypatch.setattr(chunking, "WINDOW_CHARS", 97)
        monkeypatch.setattr(chunking, "WINDOW_MARGIN", 16)
        windowed = make().split(text)
        monkeypatch.undo()
        assert len(whole) > 20 and windowed == whole


@pytest.mark.slow
def test_huge_one_line_file_ingests_in_bounded_memory(tiny_dir, tmp_path) -> None:
    """issue 11 item 9: a 20 MB one-line file peaked at 2.9 GB RSS; streamed chunking keeps
    the whole ingestion well under 1 GB."""
    import subprocess

    big = tmp_path / "big.txt"
    words = " ".join(TEXTS).encode()
    with open(big, "wb") as f:
        while f.tell() < 20 * 2**20:
            f.write(words + b" ")
    script = (
        "import resource, sys\n"
        "from smysl import Embedder\n"
        "from smysl.toolkit.chunking import ChunkConfig, chunker_for\n"
        "from smysl.toolkit.ingest import read_documents, iter_chunk_payloads\n"
        f"model = Embedder.load({str(tiny_dir)!r}, device='cpu')\n"
        "chunker = chunker_for(model, ChunkConfig(max_tokens=256, overlap=32))\n"
        f"(doc,) = read_documents([{str(big)!r}])\n"
        "n = sum(1 for _ in iter_chunk_payloads(doc, chunker))\n"
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    chunks, peak_kib = int(out[0]), int(out[1])
    assert chunks > 20_000 and peak_kib < 1_000_000, (chunks, peak_kib)


def test_a_nul_in_a_csv_field_is_text_not_a_binary_file(tmp_path) -> None:
    """One NUL in one CSV field skipped the whole file as binary (29 rows lost, exit 0); the
    corpus job read the same file whole. A table's NUL is text; a text file's still marks it
    binary, and a binary file named .csv fails as UTF-8."""
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\na,plain\nb,with a \x00 inside\n", encoding="utf-8")
    docs = list(read_documents([rows], ReadConfig(id_field="id", strict=True)))
    assert [d.text for d in docs] == ["plain", "with a \x00 inside"]
    (tmp_path / "n.txt").write_text("a \x00 b", encoding="utf-8")
    with pytest.raises(BadFileError, match="binary file"):
        list(read_documents([tmp_path / "n.txt"], ReadConfig(strict=True)))
    (tmp_path / "z.csv").write_bytes(b"PK\x03\x04\x00\x00\xff\xfebinary")
    with pytest.raises(BadFileError, match="not valid UTF-8"):
        list(read_documents([tmp_path / "z.csv"], ReadConfig(strict=True)))
    # a raw NUL is no JSON: a JSONL file holding one is still skipped as binary
    (tmp_path / "r.jsonl").write_bytes(b'{"id": "a", "text": "x\x00y"}\n')
    with pytest.raises(BadFileError, match="binary file"):
        list(read_documents([tmp_path / "r.jsonl"], ReadConfig(strict=True)))


def test_a_document_a_store_cannot_hold_is_named_before_writing(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL holds no NUL: a CSV row with one failed the run at the store's write,
    naming neither file nor row. Ingestion names it first, for a store that cannot hold it."""
    from smysl.toolkit.chunking import ChunkConfig, chunker_for
    from smysl.toolkit.ingest import Document, ingest
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    store = open_store(StoreConfig(backend="memory"), tiny.dimensions)
    docs = [Document("a", "plain"), Document("b", "with \x00 inside", origin="rows.csv row 3")]
    chunker = chunker_for(tiny, ChunkConfig(max_tokens=64, overlap=0))
    assert ingest(docs, store=store, embed=tiny.embed, chunker=chunker).written == 2
    strict = open_store(StoreConfig(backend="memory"), tiny.dimensions)
    strict.holds_nul = False  # as PostgreSQL's
    with pytest.raises(ValueError, match=r"rows.csv row 3: holds a NUL character, which "
                                         r"MemoryStore cannot store"):
        ingest(docs, store=strict, embed=tiny.embed, chunker=chunker)
