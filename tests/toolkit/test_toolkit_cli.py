"""The toolkit commands end to end on the tiny model: files in, CSV/JSONL out."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from smysl.cli import main

pytest.importorskip("lancedb")
pytest.importorskip("sklearn")


@pytest.fixture
def data(tmp_path):
    (tmp_path / "a.md").write_text("Cats purr.\n\nDogs bark at night.", encoding="utf-8")
    rows = [{"id": f"r{i}", "text": f"row {i} says {w}", "lang": ["en", "de"][i % 2],
             "label": ["x", "y"][i % 2]}
            for i, w in enumerate(["alpha", "beta", "gamma", "delta", "alpha", "beta"])]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    with open(tmp_path / "rows.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path


def test_index_add_search_delete(tiny_dir, data, capsys, monkeypatch) -> None:
    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", kb, str(data / "a.md"), str(data / "rows.jsonl"),
                 "--id-field", "id", "--chunk-tokens", "16", "--overlap", "2", *model,
                 "--no-progress"]) == 0
    assert "7 documents" in capsys.readouterr().err
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id", *model,
                 "--ann"]) == 0
    err = capsys.readouterr().err
    assert "0 embedded" in err  # unchanged content costs nothing
    assert "no approximate index" in err  # 7 chunks: searches stay exact
    # the model comes from the index metadata; filters and JSON output
    assert main(["index", "search", kb, "alpha", "-k", "3", "--where", "lang=de",
                 "--format", "json", "--device", "cpu"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    hits = json.loads(line)["hits"]
    assert len(hits) == 3 and all(h["payload"]["lang"] == "de" for h in hits)
    # a misspelt field matched nothing without a word; now the search says which
    assert main(["index", "search", kb, "alpha", "--where", "lang=de", "--where", "lnag=de",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "condition on 'lnag'" in err and "'lang'" not in err, err
    assert main(["index", "search", kb, "alpha", "--where", "lang=de", "--where", "label=x",
                 "--device", "cpu"]) == 0  # rows of lang de are all label y
    assert "none meets all 2 together" in capsys.readouterr().err
    assert main(["index", "search", kb, "alpha", "--mode", "text", "--where", "lang=fr"]) == 0
    assert "condition on 'lang'" in capsys.readouterr().err
    assert main(["index", "search", kb, "cats", "--where", "chunk>=0", "-o",
                 str(data / "hits.csv"), "--device", "cpu", "--mmr"]) == 0
    with open(data / "hits.csv", encoding="utf-8") as f:
        out = list(csv.DictReader(f))
    assert len(out) == 7 and {"query", "rank", "id", "score", "text"} <= set(out[0])
    assert main(["index", "search", kb, "cats", "--device", "cpu"]) == 0
    assert "score" in capsys.readouterr().out
    # an over-long query is refused, named, unless --truncate (it was cut without a word)
    long = "why " * 600
    assert main(["index", "search", kb, "cats", long, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "query 2 ('why why" in err and "pass --truncate" in err, err
    assert main(["index", "search", kb, long, "--device", "cpu", "--truncate"]) == 0
    assert "score" in capsys.readouterr().out
    assert main(["index", "search", kb, long, "--mode", "text", "--truncate"]) == 2
    assert "--truncate does nothing here" in capsys.readouterr().err
    # a query starting with "-" after `--` (argparse read it as an unknown option); stdin is
    # JSONL rows, as every toolkit table input reads `-`
    assert main(["index", "search", kb, "-k", "1", "--device", "cpu", "--format", "json",
                 "--", "-5 градусов", "--also"]) == 0
    assert [json.loads(x)["query"] for x in capsys.readouterr().out.splitlines()] == [
        "-5 градусов", "--also"]
    rows = '{"query": "кошки"}\n{"query": "-5"}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(rows.encode())))
    assert main(["index", "search", kb, "-k", "1", "--device", "cpu", "--format", "json",
                 "--queries-file", "-"]) == 0
    assert [json.loads(x)["query"] for x in capsys.readouterr().out.splitlines()] == [
        "кошки", "-5"]
    assert main(["index", "delete", kb, "--doc-id", "r0", "--doc-id", "r1"]) == 0
    assert "deleted 2 chunks; 5 left" in capsys.readouterr().err
    # an id no chunk has (a path, where the index holds it relative to --root): said, with
    # what the ids look like (a review's: "deleted 0 chunks", exit 0)
    assert main(["index", "delete", kb, "--doc-id", "/abs/r2"]) == 0
    err = capsys.readouterr().err
    assert "deleted 0 chunks; 5 left" in err and "no chunk has the document id(s) '/abs/r2'" \
        in err and "ids in this index look like " in err and "'r2'" in err, err
    assert main(["index", "delete", kb]) == 2  # nothing to delete by: an error, not a wipe


def test_classify_cluster_dedup(tiny_dir, data, capsys) -> None:
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    rows = str(data / "rows.csv")
    assert main(["classify", *model, "-i", rows, "--train", rows, "--save",
                 str(data / "m.npz"), "--method", "knn", "--neighbors", "1",
                 "-o", str(data / "p.jsonl")]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().err  # 1-NN on its own training data
    # more neighbours than training texts: said (kNN votes among all of them)
    assert main(["classify", *model, "-i", rows, "--train", rows, "--method", "knn",
                 "--neighbors", "50", "-o", str(data / "p.jsonl")]) == 0
    assert ("kNN's 50 neighbours (--neighbors) are more than the 6 training texts; it votes "
            "among all 6" in capsys.readouterr().err)
    assert main(["classify", *model, "-i", rows, "--load", str(data / "m.npz"),
                 "-o", str(data / "p2.csv")]) == 0
    with open(data / "p2.csv", encoding="utf-8") as f:
        assert [r["predicted"] for r in csv.DictReader(f)] == ["x", "y"] * 3
    assert main(["classify", *model, "-i", rows, "--labels", "x,y"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(out) == 6 and {o["predicted"] for o in out} <= {"x", "y"} and "score" in out[0]
    (data / "none.jsonl").write_text("", encoding="utf-8")  # exit 0, and nothing said
    assert main(["classify", *model, "-i", str(data / "none.jsonl"), "--labels", "x,y"]) == 0
    captured = capsys.readouterr()
    assert not captured.out and "none.jsonl holds no rows; nothing to classify" in captured.err

    assert main(["cluster", *model, "-i", str(data / "rows.jsonl"), "--k", "2",
                 "--summary", str(data / "s.json"), "-o", str(data / "c.csv")]) == 0
    summary = json.loads((data / "s.json").read_text(encoding="utf-8"))
    assert summary["k"] == 2 and sum(c["size"] for c in summary["clusters"]) == 6
    # texts all alike: HDBSCAN's all-noise answer is explained, and --single-cluster keeps them
    alike = _jsonl(data / "alike.jsonl", [{"text": "one and the same"}] * 6)
    assert main(["cluster", *model, "-i", alike, "--method", "hdbscan"]) == 0
    out, err = capsys.readouterr()
    assert {json.loads(x)["cluster"] for x in out.splitlines()} == {-1}
    assert "every text is noise" in err and "--single-cluster allows that" in err
    assert main(["cluster", *model, "-i", alike, "--method", "hdbscan", "--single-cluster"]) == 0
    assert {json.loads(x)["cluster"] for x in capsys.readouterr().out.splitlines()} == {0}

    dup = data / "dup.jsonl"
    dup.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["same words", "same words", "entirely different"]), encoding="utf-8")
    assert main(["dedup", *model, "-i", str(dup), "--threshold", "0.999", "--unique",
                 "--report", str(data / "r.json")]) == 0
    kept = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [k["text"] for k in kept] == ["same words", "entirely different"]
    assert [k["duplicate_of"] for k in kept] == [None, None]
    report = json.loads((data / "r.json").read_text(encoding="utf-8"))
    assert report["groups"] == 1 and report["groups_detail"][0][1]["index"] == 1
    assert report["groups_detail"][0][1]["duplicate_of"] == 0
    assert main(["dedup", *model, "-i", str(dup), "--threshold", "0.999"]) == 0
    marked = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(m["keep"], m["duplicate_of"]) for m in marked] == [(True, None), (False, 0),
                                                                 (True, None)]
    # a text longer than the model takes: an error naming it and the flag, not a silent cut
    dup.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["short", "word " * 600]), encoding="utf-8")  # 512 at most
    assert main(["dedup", *model, "-i", str(dup)]) == 2
    # named by file and row (was "input 1", which in classify could be another file's)
    err = capsys.readouterr().err
    assert "dup.jsonl, row 2: the text has" in err and "pass --truncate" in err
    assert main(["dedup", *model, "-i", str(dup), "--truncate"]) == 0


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_missing_fields_name_file_row_and_option(tiny_dir, data, capsys) -> None:
    """A row without the --label-field / --query-field column is one error line naming the
    file, the row and the option (was a KeyError traceback); classify fails before writing."""
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    rows = str(data / "rows.jsonl")
    bad = _jsonl(data / "bad.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    out = data / "pred.jsonl"
    for argv, name, option in (
            (["-i", rows, "--train", bad], bad, "--label-field"),
            (["-i", rows, "--labels", _jsonl(data / "labels.jsonl", [
                {"label": "x"}, {"description": "no label"}])], "labels.jsonl",
             "a labels file has the columns label and description"),
            (["-i", bad, "--labels", "x,y"], bad, "--label-field")):
        assert main(["classify", *model, *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("smysl classify: error: ") and err.count("\n") == 1, err
        assert name in err and "row 2 has no 'label' column" in err and option in err
        assert not out.exists()
    queries = _jsonl(data / "q.jsonl", [{"q": "alpha"}])
    assert main(["index", "search", str(data / "kb"), "--queries-file", queries]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smysl index: error: ") and "q.jsonl: row 1 has no 'query'" in err
    assert "--query-field" in err


def test_index_search_modes_and_terms_for_an_earlier_index(tiny_dir, data, capsys,
                                                           monkeypatch) -> None:
    """``--mode text|hybrid`` (text loads no model); an index of an earlier smysl is refused in
    those modes with what to do, and the next ``index add`` gives its chunks their terms
    first."""
    import smysl.commands.index as command
    from smysl.toolkit.index import LEXICAL
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id", *model,
                 "--no-progress"]) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(command, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
        assert main(["index", "search", kb, "gamma", "--mode", "text", "--format", "json",
                     "--device", "cpu"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["hits"]
    assert hit["id"] == "r2#0" and hit["score"] > 0
    assert main(["index", "search", kb, "delta", "--mode", "hybrid", "-k", "2",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "fused" in out[1]
    # the one chunk with the word is first by words, so among the 2 best fused (1/(60+1) at
    # least; only the nearest by vector can tie it)
    (row,) = [line.split() for line in out[2:] if "r3#0" in line]
    assert row[3] == "1"
    with open_store(StoreConfig(uri=kb)) as store:  # as an earlier smysl left it
        store.update_meta({LEXICAL: None})
    assert main(["index", "search", kb, "gamma", "--mode", "text", "--device", "cpu"]) == 2
    assert "`smysl index add` on it gives them terms" in capsys.readouterr().err
    assert main(["index", "add", kb, str(data / "a.md"), *model, "--no-progress"]) == 0
    assert "gave 6 chunks of an earlier smysl their search terms" in capsys.readouterr().err
    assert main(["index", "search", kb, "purr", "--mode", "text", "--device", "cpu"]) == 0
    assert "Cats purr" in capsys.readouterr().out


def test_index_add_refuses_a_repeated_document_id(tiny_dir, data, capsys) -> None:
    """Two rows with one --id-field value: an error naming both rows, and nothing of the batch
    written (the second silently replaced the first)."""
    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    twice = _jsonl(data / "twice.jsonl", [{"id": "r1", "text": "first"},
                                          {"id": "r2", "text": "other"},
                                          {"id": "r1", "text": "second"}])
    assert main(["index", "add", kb, twice, "--id-field", "id", *model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smysl index: error: document id 'r1' repeats: ")
    assert f"document 1 and {twice} row 3" in err
    from pathlib import Path

    assert not Path(kb).exists()  # found in the first read: no index made (it was, empty)
    # a file named twice (itself and through its folder) is read once, not a repeat
    notes = data / "notes"
    notes.mkdir()
    (notes / "n.md").write_text("Owls hunt at night.", encoding="utf-8")
    assert main(["index", "add", kb, str(notes / "n.md"), str(notes), *model]) == 0
    assert "1 documents" in capsys.readouterr().err


def test_index_search_queries_file_lines(tiny_dir, data, capsys) -> None:
    """--queries-file .txt: one query per \\n-ended line, blank ones skipped."""
    kb = str(data / "kb")
    assert main(["index", "add", kb, str(data / "a.md"), "--model", str(tiny_dir), "--device",
                 "cpu", "--no-progress"]) == 0
    queries = data / "q.txt"
    queries.write_bytes("cats\u2028dogs\r\n\nnight\x0cowls\n".encode())
    assert main(["index", "search", kb, "--queries-file", str(queries), "--format", "json",
                 "--device", "cpu"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.split("\n") if x]
    assert [o["query"] for o in out] == ["cats\u2028dogs", "night\x0cowls"]


def test_classify_and_cluster_refuse_what_they_would_get_silently_wrong(tiny_dir, data,
                                                                        capsys) -> None:
    """A mistyped labels file was taken as one label (every row predicted "labls.csv"); one
    label, a label given twice (its last description won), flags the mode ignores, and gold
    labels from the second row on (no accuracy, no word) each ran to exit 0."""
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    rows = str(data / "rows.csv")
    twice = _jsonl(data / "twice.jsonl", [{"label": "a", "description": "first"},
                                          {"label": "b"}, {"label": "a", "description": "x"}])
    late_gold = _jsonl(data / "late.jsonl", [{"text": "a"}, {"text": "b", "label": "x"}])
    out = data / "never.jsonl"
    for argv, says in (
            (["--labels", str(data / "labls.csv")], "no such file (labels given inline"),
            (["--labels", "labels.txt"], "no such file"),
            (["--labels", "billing"], "needs at least two labels, got 1"),
            (["--labels", "a,b,a"], "label 'a' is given twice (#1 and #3)"),
            (["--labels", "billing, Billing "], "label 'Billing' is given twice (#1 and #2, "
             "in another case)"),
            (["--labels", twice], "label 'a' is given twice"),
            (["--labels", "a,b", "--save", "m.npz"], "--save does nothing with --labels"),
            (["--labels", "a,b", "--description-field", "d"], "--description-field names"),
            (["--load", "m.npz", "--method", "knn"], "--method does nothing with --load"),
            (["--load", "m.npz", "--dimensions", "16"], "the classifier keeps the settings"),
            (["-i", late_gold, "--labels", "x,y"], "row 1 has no 'label' column"),
            # a review's: '' read as absent (the error named "None"), the other method's
            # setting ignored, a missing --load file named by errno text alone
            (["--labels", ""], "--labels is empty: give two labels or more"),
            (["--train", ""], "--train is empty: give a file"),
            (["--train", rows, "--neighbors", "5"],
             "--neighbors does nothing with --method logreg; it applies to --method knn"),
            (["--train", rows, "--method", "knn", "-C", "2"],
             "-C does nothing with --method knn; it applies to --method logreg"),
            (["--load", str(data / "nope.npz")], "--load " + str(data / "nope.npz")
             + ": No such file or directory")):
        argv = argv if "-i" in argv else ["-i", rows, *argv]
        assert main(["classify", *model, *argv, "-o", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("smysl classify: error: ") and says in err, (argv, err)
        assert not out.exists()
    (data / "notes.txt").write_text("a\nb\n", encoding="utf-8")
    # a review's: errno text without the flag, and an empty queries file called "no queries"
    assert main(["index", "add", str(data / "kb"), rows, *model, "--chunk-tokens", "0"]) == 2
    assert "--chunk-tokens must be >= 2, got 0" in capsys.readouterr().err
    assert main(["rerank", "--model", str(tiny_dir), "-q", "q", "-i", str(data)]) == 2
    assert f"smysl rerank: error: --input {data}: Is a directory" in capsys.readouterr().err
    (data / "none.txt").write_text("\n", encoding="utf-8")
    assert main(["index", "search", str(data / "kb"), *model, "--queries-file",
                 str(data / "none.txt")]) == 2
    assert f"--queries-file {data / 'none.txt'}: no query in it" in capsys.readouterr().err
    for bad, says in ((data, "give a .txt file (a query per line) or a .csv/.jsonl file"),
                      (data / "gone.tsv", "give a .txt file (a query per line) or a .csv"),
                      (data / "gone.jsonl", "No such file or directory")):
        assert main(["index", "search", str(data / "kb"), *model, "--queries-file",
                     str(bad)]) == 2
        assert f"--queries-file {bad}: {says}" in capsys.readouterr().err
    assert main(["classify", *model, "-i", rows, "--labels", str(data / "notes.txt")]) == 2
    assert "a labels file is .csv, .jsonl or .json" in capsys.readouterr().err
    for argv, says in ((["--method", "hdbscan", "--k", "3"], "--k does nothing with"),
                       (["--min-cluster-size", "3"], "--min-cluster-size is for --method"),
                       (["--single-cluster"], "--single-cluster is for --method"),
                       (["--k", "2", "--k-max", "4"], "--k-max bounds the estimate"),
                       (["--k-max", "1"], "--k-max must be >= k_min (2), got 1")):
        assert main(["cluster", *model, "-i", rows, *argv, "-o", str(out)]) == 2, argv
        assert says in capsys.readouterr().err
        assert not out.exists()


def test_classify_cluster_dedup_as_a_review_used_them(tiny_dir, data, capsys) -> None:
    """A review's: 30 inline labels crashed (the list tried as a file name: too long); a cut
    --load file was a traceback; a --label-field no row has, a user's own score / cluster /
    group column overwritten, a one-label --train file, and --seed with hdbscan each ran to
    exit 0; --train's problems came after the model had loaded (minutes for a large one)."""
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    absent = ["--model", str(data / "no-model"), "--device", "cpu"]  # checks before a load
    rows, out = str(data / "rows.csv"), data / "out.jsonl"
    many = ",".join(f"label{i:03d}" for i in range(30))
    assert main(["classify", *model, "-i", rows, "--labels", many, "-o", str(out)]) == 0
    assert {json.loads(x)["predicted"] for x in out.read_text().splitlines()} <= set(
        many.split(","))
    out.unlink()
    assert main(["classify", *model, "-i", rows, "--train", rows, "--save",
                 str(data / "m.npz")]) == 0
    (data / "cut.npz").write_bytes((data / "m.npz").read_bytes()[:1000])
    (data / "text.npz").write_text("hello\n", encoding="utf-8")
    one = _jsonl(data / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    mine = _jsonl(data / "mine.jsonl", [{"text": "a", "score": 5, "cluster": "c", "group": 1}])
    capsys.readouterr()
    for command, argv, says in (
            ("classify", ["--load", str(data / "cut.npz")], "cut.npz: not a smysl classifier"),
            ("classify", ["--load", str(data / "text.npz")], "text.npz: not a smysl classifier"),
            ("classify", ["--labels", "a,b", "--label-field", "answr"],
             "--label-field 'answr': " + rows + " has no such column"),
            ("classify", ["--train", one], "training needs texts of at least two labels"),
            ("classify", ["--train", str(data / "gone.csv")], "--train " + str(data / "gone.csv")
             + ": No such file or directory"),
            ("classify", ["--train", rows, "--method", "knn", "--neighbors", "0"],
             "--neighbors must be >= 1, got 0"),
            ("classify", ["-i", mine, "--labels", "a,b"], "has a column 'score', which the "
             "output adds (predicted, score); rename that column"),
            ("cluster", ["-i", mine], "has a column 'cluster'"),
            ("dedup", ["-i", mine], "has a column 'group'"),
            ("cluster", ["--method", "hdbscan", "--seed", "7"], "--seed does nothing with")):
        argv = argv if "-i" in argv else ["-i", rows, *argv]
        assert main([command, *absent, *argv, "-o", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert f"smysl {command}: error: " in err and says in err, (argv, err)
        assert not out.exists()
    # --label-field with --train names the training file's column: the input needs none
    (data / "plain.jsonl").write_text('{"text": "row 1"}\n', encoding="utf-8")
    assert main(["classify", *model, "-i", str(data / "plain.jsonl"), "--train", rows,
                 "--label-field", "lang", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["predicted"] in ("en", "de")


def test_index_add_checks_before_it_empties_or_binds_and_search_rows_keep_hit_fields(
        tiny_dir, data, capsys) -> None:
    """`--rebuild` with a path that is not there (or a missing --text-field) emptied the index
    and then failed; a --dimensions the model cannot give was written into a new index's
    settings and failed every later call; `index search -o` let a document's own `score`,
    `rank`, `query` or `id` column replace the hit's; a `source` column was overwritten with
    the file's path."""
    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id", *model]) == 0
    capsys.readouterr()
    # (and a review's: a character no chunk of --chunk-tokens 2 holds emptied the index
    # under --rebuild; a --meta-fields typo rewrote an index's rows before its error)
    (data / "emoji.jsonl").write_text(json.dumps({"id": "e", "text": "ok 𝔘"}) + "\n",
                                      encoding="utf-8")
    for bad in ([str(data / "no-such.jsonl")], [str(data / "rows.jsonl"), "--text-field", "x"],
                [str(data / "emoji.jsonl"), "--id-field", "id", "--chunk-tokens", "2",
                 "--overlap", "0"],
                [str(data / "rows.jsonl"), "--id-field", "id", "--meta-fields", "lnag"]):
        for rebuild in (["--rebuild"], []):
            assert main(["index", "add", kb, *bad, *rebuild, "--batch-size", "2", *model]) == 2
            capsys.readouterr()
            assert main(["index", "verify", kb]) == 0
            assert "0 of 6 records damaged" in capsys.readouterr().err
    assert main(["index", "search", kb, "row", "-k", "6", "--where", "lang=en", "-o",
                 str(data / "en.jsonl"), "--device", "cpu"]) == 0
    assert len((data / "en.jsonl").read_text().splitlines()) == 3  # every row kept its lang
    # a new index with --meta-fields: its input is checked in one read, not two, before the
    # add reads it again (and a typo still makes no index)
    from smysl.toolkit import ingest

    reads: list[object] = []
    real = ingest.read_documents

    def counted(*a: object, **k: object) -> object:
        reads.append(a)
        return real(*a, **k)  # type: ignore[arg-type]

    ingest.read_documents = counted  # type: ignore[assignment]
    try:
        assert main(["index", "add", str(data / "typo"), str(data / "rows.jsonl"), *model,
                     "--meta-fields", "lnag"]) == 2
        assert "no row of the input files has" in capsys.readouterr().err
        assert not (data / "typo").exists()
        reads.clear()
        assert main(["index", "add", str(data / "meta"), str(data / "rows.jsonl"), *model,
                     "--meta-fields", "lang"]) == 0
        assert len(reads) == 1  # the command's check (the add's own read is the index's)
    finally:
        ingest.read_documents = real
    fresh = str(data / "fresh")
    assert main(["index", "add", fresh, str(data / "rows.jsonl"), *model,
                 "--dimensions", "16"]) == 2
    assert "dimensions must be in 32..64" in capsys.readouterr().err
    assert main(["index", "add", fresh, str(data / "rows.jsonl"), *model]) == 0  # usable
    capsys.readouterr()

    clash = data / "clash.csv"
    clash.write_text("text,score,rank,query,id\nhello world,5,99,foo,d1\n", encoding="utf-8")
    hits = data / "hits.jsonl"
    other = str(data / "other")
    assert main(["index", "add", other, str(clash), *model]) == 0
    assert main(["index", "search", other, "hello", "-o", str(hits), "--device", "cpu"]) == 0
    (row,) = [json.loads(x) for x in hits.read_text(encoding="utf-8").splitlines()]
    assert row["query"] == "hello" and row["rank"] == 1 and row["id"].endswith(":1#0")
    assert row["score"] != "5" and row["payload_score"] == "5" and row["payload_rank"] == "99"
    assert row["payload_query"] == "foo" and row["payload_id"] == "d1"
    capsys.readouterr()
    (data / "src.csv").write_text("text,source\nhi,crm\n", encoding="utf-8")
    assert main(["index", "add", other, str(data / "src.csv"), *model]) == 2
    assert "the column 'source' is reserved" in capsys.readouterr().err


def test_index_add_refuses_bad_chunks_and_rows_before_it_empties_or_makes_an_index(
        tiny_dir, data, capsys) -> None:
    """Chunk settings the model refuses (an overlap leaving no room once EOS is counted), a
    reserved column and a lone surrogate were found after `--rebuild` had emptied the index,
    and a new index was left bound to the model."""
    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id", *model]) == 0
    (data / "reserved.csv").write_text("text,start\nhello,2024\n", encoding="utf-8")
    (data / "bad.jsonl").write_text('{"text": "ok \\ud800"}\n', encoding="utf-8")
    (data / "dup.csv").write_text("id,text\n1,one\n1,again\n", encoding="utf-8")
    for bad, says in ((["--chunk-tokens", "33", "--overlap", "32"], "must exceed the overlap"),
                      ([str(data / "reserved.csv")], "['start'] are reserved"),
                      ([str(data / "dup.csv"), "--id-field", "id"], "document id '1' repeats"),
                      ([str(data / "bad.jsonl")], "bad.jsonl: row 1: 'text' is not valid")):
        capsys.readouterr()
        assert main(["index", "add", kb, str(data / "rows.jsonl"), *bad, "--rebuild",
                     *model]) == 2
        assert says in capsys.readouterr().err
        assert main(["index", "verify", kb]) == 0
        assert "0 of 6 records damaged" in capsys.readouterr().err
        assert main(["index", "add", str(data / "new"), str(data / "rows.jsonl"), *bad,
                     *model]) == 2
        assert not (data / "new").exists()


def test_where_finds_csv_numbers_and_fields_named_in_russian(tiny_dir, data, capsys) -> None:
    """CSV columns are stored as text: `--where year=2020` found nothing; LanceDB had no filter
    column for a field not named like an SQL identifier (`язык`, `doc-type`): no results and
    "deleted 0"; a second `--where` on a key replaced the first."""
    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    (data / "ru.csv").write_text("text,year,язык,doc-type\nкошка спит,2020,ru,faq\n"
                                 "dogs bark,2021,en,man\n", encoding="utf-8")
    assert main(["index", "add", kb, str(data / "ru.csv"), *model]) == 0
    capsys.readouterr()
    for where, want in ((["year=2020"], "кошка спит"), (["язык=en"], "dogs bark"),
                        (["doc-type = faq"], "кошка спит"),
                        (['year=["2021"]', "язык=en"], "dogs bark")):
        args = [a for w in where for a in ("--where", w)]
        assert main(["index", "search", kb, "text", "-k", "5", *args, "--format", "json",
                     "--device", "cpu"]) == 0, where
        (line,) = capsys.readouterr().out.splitlines()
        assert [h["payload"]["text"] for h in json.loads(line)["hits"]] == [want], where
    for twice in (["lang=en", "lang=ru"], ["year>=2020", "year=2021"], ["chunk>=1", "chunk>=2"]):
        assert main(["index", "search", kb, "text", "--where", twice[0], "--where", twice[1],
                     "--device", "cpu"]) == 2
        assert "already" in capsys.readouterr().err
    assert main(["index", "delete", kb, "--where", "язык=ru"]) == 0
    assert "deleted 1" in capsys.readouterr().err


def test_index_search_takes_queries_after_options_and_refuses_ignored_flags(
        tiny_dir, data, capsys) -> None:
    """`index search kb -k 2 "q"` was a usage error (the query after an option); flags the
    others make ignored ran without a word; an output it cannot write failed after the
    work."""
    kb = str(data / "kb")
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--model", str(tiny_dir),
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "search", kb, "alpha", "-k", "2", "beta", "--device", "cpu",
                 "--format", "json"]) == 0
    assert [json.loads(x)["query"] for x in capsys.readouterr().out.splitlines()] == [
        "alpha", "beta"]
    for flags, says in ((["--mmr-lambda", "0.3"], "--mmr-lambda does nothing here"),
                        (["--fetch-k", "20"], "--fetch-k does nothing here"),
                        (["--text-weight", "2"], "--text-weight does nothing here"),
                        (["--query-field", "q"], "--query-field does nothing here"),
                        (["--format", "json", "-o", str(data / "h.csv")], "--format does "),
                        (["--mode", "text", "--instruction", "x"], "--instruction does "),
                        (["--mode", "text", "--approximate"], "--approximate does "),
                        (["  "], "a query is empty"),
                        (["-o", str(data / "h.txt")], "expected a .csv, .jsonl or .json file"),
                        (["-o", str(data / "nowhere" / "h.csv")], "no such folder")):
        assert main(["index", "search", kb, "alpha", "--device", "cpu", *flags]) == 2, flags
        assert says in capsys.readouterr().err, flags
    assert main(["index", "search", kb, "alpha", "--mmr", "--mmr-lambda", "0.3", "--fetch-k",
                 "5", "--device", "cpu"]) == 0
    for command in (["classify", "--labels", "a,b"], ["cluster", "--k", "2"], ["dedup"]):
        assert main([command[0], "--model", str(tiny_dir), "--device", "cpu", "-i",
                     str(data / "rows.csv"), *command[1:], "-o", str(data / "out.txt")]) == 2
        assert "expected a .csv, .jsonl or .json file" in capsys.readouterr().err


def test_a_misspelt_meta_field_of_a_csv_is_refused(tiny_dir, data, capsys) -> None:
    """`--meta-fields nope` stored "nope": null on every row of a CSV, without a word."""
    assert main(["index", "add", str(data / "kb"), str(data / "rows.csv"), "--model",
                 str(tiny_dir), "--device", "cpu", "--meta-fields", "lang,nope"]) == 2
    assert "--meta-fields ['nope']: no CSV input has that column" in capsys.readouterr().err


def test_a_meta_field_one_csv_lacks_and_another_has_is_kept(tiny_dir, tmp_path, capsys  # type: ignore[no-untyped-def]
                                                            ) -> None:
    """A review's: a folder of CSVs with different columns could not be indexed with
    --meta-fields (each file's header was checked on its own); the docs refuse only a name
    no input has. The file without the column stores null under it."""
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import open_store

    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "a.csv").write_text("text\nfine\n", encoding="utf-8")
    (folder / "b.csv").write_text('text,lang\n"x",en\n', encoding="utf-8")
    kb = tmp_path / "kb"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", str(kb), str(folder), *model, "--meta-fields", "lang"]) == 0, \
        capsys.readouterr().err
    store = open_store(StoreConfig(uri=str(kb)))
    try:
        langs = {Path(r.payload["source"]).name: r.payload.get("lang")
                 for batch in store.scan(with_vectors=False) for r in batch}
    finally:
        store.close()
    assert langs == {"a.csv": None, "b.csv": "en"}
    # a name no CSV has is still a typo, refused before anything is read or made
    assert main(["index", "add", str(tmp_path / "kb2"), str(folder), *model,
                 "--meta-fields", "lnag"]) == 2
    assert "--meta-fields ['lnag']: no CSV input has that column" in capsys.readouterr().err
    assert not (tmp_path / "kb2").exists()


def test_a_meta_field_no_jsonl_row_has_is_refused(tiny_dir, data, tmp_path, capsys) -> None:
    """`--meta-fields lang,lnag` on JSONL stored "lnag": null on every row without a word
    (a CSV's missing column was refused already). A field some rows lack stays legal."""
    kb = tmp_path / "kb"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["index", "add", str(kb), str(data / "rows.jsonl"), *model,
                 "--meta-fields", "lang,lnag"]) == 2
    assert "--meta-fields ['lnag']: no row of the input files has it" in capsys.readouterr().err
    assert not kb.exists()
    some = tmp_path / "some.jsonl"
    some.write_text('{"text": "a", "note": "n"}\n{"text": "b"}\n', encoding="utf-8")
    assert main(["index", "add", str(kb), str(data / "rows.jsonl"), str(some), *model,
                 "--meta-fields", "lang,note"]) == 0


def test_index_add_of_a_missing_path_makes_no_index(tiny_dir, data, capsys) -> None:
    """A mistyped path left a new, empty index bound to the model."""
    kb = data / "new-kb"
    assert main(["index", "add", str(kb), str(data / "rows.jsonl"), str(data / "typo.csv"),
                 "--model", str(tiny_dir), "--device", "cpu"]) == 2
    assert "typo.csv: no such file or folder" in capsys.readouterr().err
    assert not kb.exists()


def test_index_add_of_a_broken_file_makes_no_index(tiny_dir, data, tmp_path, capsys) -> None:
    """A file whose third line is not JSON left a new, empty index bound to the model named:
    a rerun with another model was refused. Now the inputs are read before a new index is
    made; into an index already there, what was added before the broken row stays."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "one"}\n{"id": 2, "text": "two"}\n{broken\n',
                   encoding="utf-8")
    kb = tmp_path / "kb"
    assert main(["index", "add", str(kb), str(bad), "--model", str(tiny_dir),
                 "--device", "cpu"]) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert not kb.exists()
    assert main(["index", "add", str(kb), str(data / "rows.jsonl"), "--model", str(tiny_dir),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["index", "add", str(kb), str(bad), "--model", str(tiny_dir),
                 "--device", "cpu"]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_chunks_larger_than_the_model_takes_are_said(tiny_dir, data, tmp_path, capsys) -> None:
    """`--chunk-tokens 100000` on a 512-token model made 512-token chunks without a word."""
    assert main(["index", "add", str(tmp_path / "kb"), str(data / "a.md"), "--model",
                 str(tiny_dir), "--device", "cpu", "--chunk-tokens", "100000"]) == 0
    err = capsys.readouterr().err
    assert ("smysl index: warning: chunks of 100000 tokens were asked for, but the model "
            "takes at most 512: chunks of 512 tokens") in err


def test_index_search_per_document(tiny_dir, data, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--per-document N``: at most N chunks of one document among the hits (by words here:
    no model to load); 0 is refused with the flag's name."""
    long = " ".join(f"Cats purr and sleep, part {i}." for i in range(30))
    (data / "long.md").write_text(long, encoding="utf-8")
    kb = str(data / "kb")
    assert main(["index", "add", kb, str(data / "long.md"), str(data / "a.md"), "--model",
                 str(tiny_dir), "--device", "cpu", "--chunk-tokens", "16", "--overlap", "0",
                 "--no-progress"]) == 0
    capsys.readouterr()

    def docs(*extra: str) -> list[str]:
        assert main(["index", "search", kb, "cats purr", "--mode", "text", "-k", "4",
                     "--format", "json", *extra]) == 0
        return [h["payload"]["doc_id"] for h in json.loads(capsys.readouterr().out)["hits"]]

    plain = docs()
    assert len(plain) == 4 and len(set(plain)) == 1  # the long document's chunks
    assert sorted(docs("--per-document", "1")) == sorted({str(data / "long.md"),
                                                          str(data / "a.md")})
    assert main(["index", "search", kb, "cats", "--mode", "text", "--per-document", "0"]) == 2
    assert "per-document" in capsys.readouterr().err


def test_index_add_says_what_an_interrupt_keeps(tiny_dir, data, capsys, monkeypatch) -> None:
    """Ctrl-C of `smysl index add`: exit status 130 and a line saying that what was added
    stays and the same command resumes (it exited without a word)."""
    from smysl.toolkit.index import Index

    kb = str(data / "kb")
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    assert main(["index", "add", kb, str(data / "a.md"), *model]) == 0
    added = Index.add_files

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Index, "add_files", interrupted)
    capsys.readouterr()
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id",
                 *model]) == 130
    assert ("smysl index: interrupted; what was added is kept, and the same command again "
            "adds the rest") in capsys.readouterr().err
    monkeypatch.setattr(Index, "add_files", added)
    assert main(["index", "add", kb, str(data / "rows.jsonl"), "--id-field", "id",
                 *model]) == 0
    assert "6 documents" in capsys.readouterr().err


def test_classify_cluster_dedup_check_their_files_and_name_the_row_at_fault(
        tiny_dir, data, capsys) -> None:
    """A review's findings: --save/--summary/--report in no folder failed after the work (the
    output of classify lost too); a .npz that is no classifier was a KeyError traceback; an
    over-long training text was "input 6" (a row of -i had that number); a --description-field
    no row has, or one with a .json labels file, did nothing; a labels file's column was the
    --label-field of the input's gold labels; a null label became a class "None"."""
    import numpy as np

    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    rows = str(data / "rows.csv")
    out = data / "never.jsonl"
    np.savez(data / "other.npz", a=np.zeros(3))
    np.save(data / "array.npy", np.zeros(3))
    (data / "junk.npz").write_bytes(b"not numpy at all")
    long_train = _jsonl(data / "long.jsonl", [{"text": "t", "label": "x"}] * 6
                        + [{"text": "word " * 600, "label": "y"}])
    null_label = _jsonl(data / "null.jsonl", [{"text": "a", "label": "x"},
                                              {"text": "b", "label": None}])
    labels = _jsonl(data / "labels.jsonl", [{"label": "x", "description": "ex"},
                                            {"label": "y", "description": "why"}])
    (data / "labels.json").write_text(json.dumps({"x": "ex", "y": None}), encoding="utf-8")
    gold = _jsonl(data / "gold.jsonl", [{"text": "a", "category": "x"},
                                        {"text": "b", "category": "y"}])
    for cmd, argv, says in (
            ("classify", ["--train", rows, "--save", str(data / "no" / "m.npz")],
             "--save " + str(data / "no" / "m.npz") + ": no such folder"),
            ("classify", ["--load", str(data / "other.npz")], "not a smysl classifier"),
            ("classify", ["--load", str(data / "array.npy")], "not a smysl classifier"),
            ("classify", ["--load", str(data / "junk.npz")], "not a smysl classifier"),
            ("classify", ["--train", long_train], "long.jsonl, row 7: the text has"),
            ("classify", ["--train", null_label], "null.jsonl: row 2: the label ('label') "
                                                  "must be a non-empty string or a number"),
            ("classify", ["--labels", labels, "--description-field", "descr"],
             "no row has the column --description-field 'descr'"),
            ("classify", ["--labels", str(data / "labels.json"), "--description-field", "d"],
             "--description-field names a column of a --labels table"),
            ("classify", ["--labels", str(data / "labels.json")],
             "label 'y' needs a text description, got None"),
            ("classify", ["--labels", "x,y", "-i", null_label], "null.jsonl: row 2: the label"),
            ("cluster", ["--k", "2", "--summary", str(data / "no" / "s.json")],
             "--summary " + str(data / "no" / "s.json") + ": no such folder"),
            ("dedup", ["--report", str(data / "no" / "r.json")], "no such folder"),
            ("dedup", ["--report", str(data)], "a folder, not a file"),
            ("dedup", ["--threshold", "2"], "threshold must be in [-1, 1]")):
        argv = argv if "-i" in argv else ["-i", rows, *argv]
        assert main([cmd, *model, *argv, "-o", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"smysl {cmd}: error: ") and says in err, (argv, err)
        assert err.count("\n") == 1 and not out.exists(), err
    # the labels file's own 'label' column, the input's gold labels in --label-field's
    assert main(["classify", *model, "-i", gold, "--labels", labels, "--label-field",
                 "category", "-o", str(data / "p.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().err


def test_two_flags_naming_one_file_are_refused_before_the_work(tiny_dir, data, capsys) -> None:  # type: ignore[no-untyped-def]
    """A review's: ``cluster -o X --summary X`` (and dedup's ``--report``) exited 0 with the
    summary alone in X, every row's cluster lost; ``--save`` onto the training file replaced
    it. ``-i`` and ``-o`` may still be one file (the rows are read whole first)."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    rows = data / "rows.csv"
    before = rows.read_bytes()
    os.link(rows, data / "link.csv")
    same = str(data / "same.json")
    for cmd, argv, says in (
            ("cluster", ["-i", str(rows), "--k", "2", "-o", same, "--summary", same],
             "-o and --summary name one file"),
            ("dedup", ["-i", str(rows), "-o", same, "--report", same],
             "-o and --report name one file"),
            ("classify", ["-i", str(rows), "--train", str(rows), "--save", str(rows)],
             "-i and --save name one file"),
            ("cluster", ["-i", str(rows), "--k", "2", "--summary", str(rows)],
             "-i and --summary name one file"),
            ("cluster", ["-i", str(rows), "--k", "2", "--summary", str(data / "link.csv")],
             "-i and --summary name one file")):  # a hard link of it
        assert main([cmd, *model, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"smysl {cmd}: error: ") and says in err, (argv, err)
    assert rows.read_bytes() == before and not (data / "same.json").exists()
    copy = data / "copy.csv"
    copy.write_bytes(before)
    assert main(["cluster", *model, "-i", str(copy), "--k", "2", "-o", str(copy)]) == 0
    assert "cluster" in copy.read_text(encoding="utf-8").splitlines()[0]


def test_cluster_refuses_more_clusters_than_texts_before_the_model_loads(data, capsys) -> None:  # type: ignore[no-untyped-def]
    """A review's: ``--k 10`` on 6 rows loaded the model and embedded every text before
    "k must be in 1..6"; a model that does not exist shows the check comes first."""
    assert main(["cluster", "--model", str(data / "no-such-model"), "-i",
                 str(data / "rows.csv"), "--k", "10"]) == 2
    err = capsys.readouterr().err
    assert "k=10 is more clusters than the 6 texts to cluster; give k <= 6" in err, err
    assert main(["cluster", "--model", str(data / "no-such-model"), "-i",
                 str(data / "rows.csv"), "--method", "hdbscan", "--min-cluster-size", "7"]) == 2
    err = capsys.readouterr().err
    assert "min_cluster_size (7) is larger than the number of texts (6)" in err, err


def test_classify_names_a_label_description_too_long(tiny_dir, data, capsys) -> None:
    """A description longer than the model takes was "input 0"."""
    labels = _jsonl(data / "labels.jsonl", [{"label": "x", "description": "ex"},
                                            {"label": "y", "description": "word " * 600}])
    assert main(["classify", "--model", str(tiny_dir), "--device", "cpu", "-i",
                 str(data / "rows.csv"), "--labels", labels]) == 2
    err = capsys.readouterr().err
    assert "labels.jsonl: the description of label 'y' has" in err and "--truncate" in err


def test_rerank_refuses_a_csv_output(tmp_path, capsys) -> None:
    """`rerank -o out.csv` wrote JSON lines into out.csv."""
    (tmp_path / "docs.txt").write_text("a\nb\n", encoding="utf-8")
    assert main(["rerank", "--model", "unused", "-q", "q", "-i", str(tmp_path / "docs.txt"),
                 "-o", str(tmp_path / "out.csv")]) == 2
    assert "rerank writes JSON lines; name it .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_rows_without_text_get_no_label_and_no_cluster(tiny_dir, data, capsys) -> None:
    """A blank text embeds as the end-of-text token alone: classify gave it a confident
    label (and counted it in the accuracy), cluster put it in a cluster. Such rows are now
    named and left null; a training row without text is refused; an over-long text after
    them is named by its own row."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    rows = [{"text": "billing question", "label": "x"}, {"text": "", "label": "y"},
            {"text": "  \n", "label": "y"}, {"text": "the app crashes", "label": "y"},
            {"text": "refund please", "label": "x"}]
    src = _jsonl(data / "blank.jsonl", rows)
    out = data / "out.jsonl"
    assert main(["classify", *model, "-i", src, "--labels", "x,y", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 row(s) of" in err and "(row 2, 3)" in err and "prediction is null" in err
    assert "on 3 texts (2 without text left out)" in err
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(g["predicted"], g["score"]) for g in got[1:3]] == [(None, None)] * 2
    assert all(g["predicted"] in ("x", "y") and g["score"] > 0 for g in got[::3] + got[4:])
    assert [g["text"] for g in got] == [r["text"] for r in rows]  # no row lost
    train = _jsonl(data / "train.jsonl", [r for r in rows if r["text"] != ""])
    assert main(["classify", *model, "-i", src, "--train", train, "-o", str(out)]) == 2
    assert "train.jsonl: row 2 has no text ('text')" in capsys.readouterr().err
    good = _jsonl(data / "good.jsonl", [r for r in rows if r["text"].strip()])
    assert main(["classify", *model, "-i", src, "--train", good, "-o", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["predicted"] for g in got][1:3] == [None, None] and "score" not in got[0]
    assert main(["cluster", *model, "-i", src, "--k", "2", "-o", str(out)]) == 0
    assert "cluster is null" in capsys.readouterr().err
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["cluster"] for g in got][1:3] == [None, None]
    assert all(g["cluster"] in (0, 1) for g in got[::3] + got[4:])
    _jsonl(data / "blank.jsonl", [*rows, {"text": "word " * 600, "label": "x"}])
    assert main(["cluster", *model, "-i", src, "--k", "2", "-o", str(out)]) == 2
    assert "blank.jsonl, row 6: the text has" in capsys.readouterr().err
    # nothing but blank rows: the nulls written, no accuracy (it failed after the output);
    # one text left to cluster is said to be so
    _jsonl(data / "blank.jsonl", rows[1:3])
    assert main(["classify", *model, "-i", src, "--labels", "x,y", "-o", str(out)]) == 0
    assert "no row has text, so no accuracy" in capsys.readouterr().err
    _jsonl(data / "blank.jsonl", rows[:3])
    assert main(["cluster", *model, "-i", src, "--k", "2", "-o", str(out)]) == 2
    assert "has 1 (the other 2 rows have no text)" in capsys.readouterr().err


def test_labels_as_a_json_array_of_objects_are_a_table(tiny_dir, data, capsys) -> None:
    """A review's: a --labels .json array of {label, description} objects (the toolkit's .json
    table) was refused: "the label must be a non-empty string or a number, got {...}"."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    (data / "labels.json").write_text(json.dumps(
        [{"label": "x", "description": "about x", "d2": "x again"},
         {"label": "y", "description": "about y", "d2": "y again"}]), encoding="utf-8")
    table = _jsonl(data / "labels.jsonl", [{"label": "x", "description": "about x"},
                                           {"label": "y", "description": "about y"}])
    outs = []
    for labels in (str(data / "labels.json"), table):
        assert main(["classify", *model, "-i", str(data / "rows.csv"), "--labels", labels,
                     "-o", str(data / "p.jsonl")]) == 0, capsys.readouterr().err
        outs.append((data / "p.jsonl").read_text(encoding="utf-8"))
    assert outs[0] == outs[1]  # the same labels and descriptions as the .jsonl table
    assert main(["classify", *model, "-i", str(data / "rows.csv"), "--labels",
                 str(data / "labels.json"), "--description-field", "d2"]) == 0


def test_classify_and_cluster_as_a_second_review_used_them(tiny_dir, data, capsys) -> None:
    """A review's: training labels `weather`/`Weather` were two classes whose gold labels the
    accuracy counted against each other (all right, "accuracy 0.3333"); a blank description in
    a labels table was embedded as it stood (in a .json object it is refused); a classifier
    trained with --truncate refused long texts under --load; `cluster --k 3` over two
    distinct texts returned 2 clusters after scikit-learn's raw warning."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    train = _jsonl(data / "train.jsonl", [
        {"text": "sunny and warm", "label": "weather"},
        {"text": "rain all day", "label": "Weather"}, {"text": "stocks fell", "label": "money"}])
    assert main(["classify", *model, "-i", train, "--train", train]) == 2
    err = capsys.readouterr().err
    assert "training labels 'weather' and 'Weather' differ only in case or spacing" in err, err
    # the CLI's rule, where gold is matched so: a Python caller keeps such classes apart
    from smysl.toolkit.classify import ClassifyConfig, SupervisedClassifier

    rng = np.random.default_rng(0)
    clf = SupervisedClassifier.fit_vectors(
        rng.standard_normal((4, 8)).astype(np.float32), ["Apple", "apple", "x", "x"],
        ClassifyConfig())
    assert sorted(str(c) for c in clf.classes) == ["Apple", "apple", "x"]
    # a blank description is the label itself, as an absent one is
    blank = _jsonl(data / "blank.jsonl", [{"label": "x", "description": "  "},
                                          {"label": "y", "description": ""}])
    outs = []
    for labels in (blank, "x,y"):
        assert main(["classify", *model, "-i", str(data / "rows.csv"), "--labels", labels,
                     "-o", str(data / "z.jsonl")]) == 0, capsys.readouterr().err
        outs.append((data / "z.jsonl").read_text(encoding="utf-8"))
    assert outs[0] == outs[1]
    # trained with --truncate, loaded without it: long texts cut as trained
    long = _jsonl(data / "long.jsonl", [{"text": "word " * 3000}, {"text": "short"}])
    assert main(["classify", *model, "-i", str(data / "rows.csv"), "--train",
                 str(data / "rows.csv"), "--truncate", "--save", str(data / "t.npz")]) == 0
    capsys.readouterr()
    assert main(["classify", *model, "-i", long, "--load", str(data / "t.npz")]) == 0, \
        capsys.readouterr().err
    assert len(capsys.readouterr().out.splitlines()) == 2
    four = _jsonl(data / "four.jsonl", [{"text": "same text"}] * 4 + [{"text": "other"}])
    assert main(["cluster", *model, "-i", four, "--k", "3"]) == 2
    err = capsys.readouterr().err
    assert "k-means found only 2 distinct clusters for k=3" in err and "sklearn" not in err, err


def test_a_csv_naming_a_column_twice_is_refused(tiny_dir, data, capsys) -> None:
    """A review's: a header `text,meta,text` kept the last `text` column: the first one's
    values were embedded as nothing and gone from the output, which keeps every column.
    Blank cells ending a spreadsheet's header are no names (a diff review's: refused)."""
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    (data / "twice.csv").write_text("text,meta,text\nfirst text,m,other\n", encoding="utf-8")
    assert main(["dedup", *model, "-i", str(data / "twice.csv")]) == 2
    assert "twice.csv: the header names the column 'text' twice" in capsys.readouterr().err
    (data / "tail.csv").write_text("id,text,,\n1,a text,,\n2,another,,\n", encoding="utf-8")
    assert main(["dedup", *model, "-i", str(data / "tail.csv")]) == 0, capsys.readouterr().err
    assert main(["dedup", *model, "-i", str(data / "tail.csv"), "--max-neighbors", "5"]) == 2
    assert "--max-neighbors 5 is below --neighbors 10" in capsys.readouterr().err


def test_dedup_says_texts_with_more_duplicates_than_it_looks_for(tiny_dir, data, capsys) -> None:
    """A review's: past 1,024 near-duplicates of one text, pairs went missing without a word
    (and no flag could widen it)."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    rows = str(data / "rows.jsonl")  # 6 rows, 4 distinct texts: at -1 every pair is one
    assert main(["dedup", *model, "-i", rows, "--threshold", "-1", "--neighbors", "1",
                 "--max-neighbors", "2"]) == 0
    err = capsys.readouterr().err
    assert "capped=" in err and "near-duplicates each at threshold -1.0" in err, err
    assert "raise --threshold or --max-neighbors" in err
    assert main(["dedup", *model, "-i", rows, "--threshold", "-1"]) == 0
    err = capsys.readouterr().err
    assert "pairs=15 " in err and "capped" not in err, err


def test_an_empty_csv_keeps_its_header_in_the_output(tiny_dir, data, capsys) -> None:
    """A review's: an input CSV with a header and no rows gave an output of one line break:
    the columns, the input's and the ones added, were lost."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    (data / "empty.csv").write_text("id,text,lang\n", encoding="utf-8")
    for command, extra, added in (("dedup", [], "group,keep,duplicate_of"),
                                  ("classify", ["--labels", "x,y"], "predicted,score")):
        out = data / f"{command}-out.csv"
        assert main([command, *model, "-i", str(data / "empty.csv"), "-o", str(out),
                     *extra]) == 0, capsys.readouterr().err
        assert out.read_text(encoding="utf-8").splitlines() == [f"id,text,lang,{added}"]


def test_classify_cluster_dedup_as_a_third_review_used_them(tiny_dir, data, capsys,  # type: ignore[no-untyped-def]
                                                            monkeypatch) -> None:
    """A review's: ``--report -``/``--summary -``/``--save -`` wrote a file named ``-``;
    ``-i - --train -`` read stdin twice ("got []"); JSON labels 1 and 1.0 were two classes;
    dedup grouped blank rows (and could drop "." as a duplicate of ""); config errors named
    fields (``k_max``), not flags; "1 clusters"; a missing ``-i`` file was a bare errno; a
    blank inline label was dropped unsaid; a CSV piped in was "invalid JSON" alone; a column
    row 1 lacks was "no column" though later rows had it."""
    monkeypatch.chdir(data)
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    absent = ["--model", str(data / "no-model"), "--device", "cpu"]  # checks before a load
    rows, out = str(data / "rows.csv"), data / "out.jsonl"

    def stdin(text: str) -> None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))

    for command, argv, says in (
            ("dedup", ["--report", "-"], "-o and --report both name - (stdout)"),
            ("cluster", ["--k", "2", "--summary", "-"], "-o and --summary both name - (stdout)"),
            ("classify", ["--train", rows, "--save", "-", "-o", str(out)],
             "--save -: a classifier is saved as a binary .npz file"),
            ("classify", ["--train", "-", "-i", "-"], "-i and --train both name - (stdin)"),
            ("cluster", ["--k-max", "1"], "--k-max must be >= k_min (2), got 1"),
            ("cluster", ["--method", "hdbscan", "--min-cluster-size", "1"],
             "--min-cluster-size must be >= 2, got 1"),
            ("dedup", ["--neighbors", "0", "--max-neighbors", "0"],
             "--neighbors must be >= 1, got 0"),
            ("dedup", ["-i", "nope.csv"], "-i nope.csv: No such file or directory"),
            ("classify", ["--labels", "billing, ,bug"], "label #2 is blank")):
        argv = argv if "-i" in argv else ["-i", rows, *argv]
        assert main([command, *absent, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert f"smysl {command}: error: " in err and says in err, (argv, err)
    assert not (data / "-").exists()
    stdin("id,text\n1,hello\n")
    assert main(["dedup", *absent, "-i", "-"]) == 2
    assert "stdin is read as JSON Lines" in capsys.readouterr().err
    mixed = _jsonl(data / "mixed.jsonl", [{"title": "a"}, {"text": "b"}])
    assert main(["dedup", *absent, "-i", mixed]) == 2
    assert "mixed.jsonl: row 1 has no 'text' column" in capsys.readouterr().err

    # --report - and --summary - with -o a file: the JSON on stdout, no file named -
    assert main(["dedup", *model, "-i", rows, "-o", str(out), "--report", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 6
    assert main(["cluster", *model, "-i", rows, "--k", "1", "-o", str(out),
                 "--summary", "-"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["k"] == 1 and "1 cluster\n" in got.err, got.err
    assert not (data / "-").exists()

    # one number, one label: 1 and 1.0 in one training file are refused as two spellings;
    # a CSV's gold "1.0" matches the class 1.0 of JSON (pandas writes whole floats so)
    numbers = _jsonl(data / "numbers.jsonl", [{"text": "good", "label": 1},
                                              {"text": "bad", "label": 0},
                                              {"text": "great", "label": 1.0}])
    assert main(["classify", *model, "-i", numbers, "--train", numbers, "-o", str(out)]) == 2
    assert "training labels '1' and '1.0' differ only in case or spacing (or a number's " \
        "spelling)" in capsys.readouterr().err
    floats = _jsonl(data / "floats.jsonl", [{"text": "good", "label": 1.0},
                                            {"text": "bad", "label": 0.0}])
    (data / "gold.csv").write_text("text,label\ngreat,1\nawful,0.0\n", encoding="utf-8")
    assert main(["classify", *model, "-i", str(data / "gold.csv"), "--train", floats,
                 "-o", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().err

    # blank rows: named, left null (and out of --unique's rows); the others keep their rows
    blank = _jsonl(data / "blank.jsonl", [{"text": "alpha beta"}, {"text": ""},
                                          {"text": " "}, {"text": "alpha beta"},
                                          {"text": "gamma"}])
    report = data / "report.json"
    exact = ["--threshold", "0.99999"]  # the tiny random model finds other texts alike
    assert main(["dedup", *model, *exact, "-i", blank, "-o", str(out), "--report",
                 str(report)]) == 0
    assert "2 row(s) of" in capsys.readouterr().err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["group"], g["keep"], g["duplicate_of"]) for g in got[1:3]] == [(None,) * 3] * 2
    assert got[0]["keep"] and got[3]["duplicate_of"] == 0 and got[3]["group"] == got[0]["group"]
    assert got[4]["keep"] and got[4]["group"] == -1
    detail = json.loads(report.read_text())
    assert detail["items"] == 3 and detail["no_text"] == 2 and detail["kept"] == 2
    assert [[m["index"] for m in g] for g in detail["groups_detail"]] == [[0, 3]]
    assert [(p["a"], p["b"]) for p in detail["pairs_detail"]] == [(0, 3)]
    assert main(["dedup", *model, *exact, "-i", blank, "-o", str(out), "--unique"]) == 0
    assert "--unique leaves them out" in capsys.readouterr().err
    assert [json.loads(x)["text"] for x in out.read_text().splitlines()] == ["alpha beta",
                                                                             "gamma"]


def test_a_table_name_lancedb_refuses_and_an_index_in_memory_are_said(tiny_dir, data, capsys  # type: ignore[no-untyped-def]
                                                                     ) -> None:
    """A review's: ``--table "Мои документы"`` on a new LanceDB folder was "damaged or
    unreadable ... rebuild it" (LanceDB takes ASCII names only); ``index add qdrant::memory:``
    said "index holds 2 chunks", exit 0, and kept nothing."""
    model = ["--model", str(tiny_dir), "--device", "cpu", "--no-progress"]
    rows = str(data / "rows.jsonl")
    assert main(["index", "add", str(data / "kb"), rows, *model, "--id-field", "id",
                 "--table", "Мои документы"]) == 2
    err = capsys.readouterr().err
    assert "a LanceDB table name holds only ASCII letters, digits" in err, err
    assert "damaged" not in err and not (data / "kb").exists()
    for where in ("qdrant::memory:", "memory:"):
        assert main(["index", "add", where, rows, *model, "--id-field", "id"]) == 0
        assert "keeps the index in this process's memory: it is gone when the command ends" \
            in capsys.readouterr().err
