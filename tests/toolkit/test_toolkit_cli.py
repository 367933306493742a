"""The toolkit commands end to end on the tiny model: files in, CSV/JSONL out."""

from __future__ import annotations

import csv
import json

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


def test_index_add_search_delete(tiny_dir, data, capsys) -> None:
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
    assert main(["index", "search", kb, "cats", "--where", "chunk>=0", "-o",
                 str(data / "hits.csv"), "--device", "cpu", "--mmr"]) == 0
    with open(data / "hits.csv", encoding="utf-8") as f:
        out = list(csv.DictReader(f))
    assert len(out) == 7 and {"query", "rank", "id", "score", "text"} <= set(out[0])
    assert main(["index", "search", kb, "cats", "--device", "cpu"]) == 0
    assert "score" in capsys.readouterr().out
    assert main(["index", "delete", kb, "--doc-id", "r0", "--doc-id", "r1"]) == 0
    assert "deleted 2 chunks; 5 left" in capsys.readouterr().err
    assert main(["index", "delete", kb]) == 2  # nothing to delete by: an error, not a wipe


def test_classify_cluster_dedup(tiny_dir, data, capsys) -> None:
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    rows = str(data / "rows.csv")
    assert main(["classify", *model, "-i", rows, "--train", rows, "--save",
                 str(data / "m.npz"), "--method", "knn", "--neighbors", "1",
                 "-o", str(data / "p.jsonl")]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().err  # 1-NN on its own training data
    assert main(["classify", *model, "-i", rows, "--load", str(data / "m.npz"),
                 "-o", str(data / "p2.csv")]) == 0
    with open(data / "p2.csv", encoding="utf-8") as f:
        assert [r["predicted"] for r in csv.DictReader(f)] == ["x", "y"] * 3
    assert main(["classify", *model, "-i", rows, "--labels", "x,y"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(out) == 6 and {o["predicted"] for o in out} <= {"x", "y"} and "score" in out[0]

    assert main(["cluster", *model, "-i", str(data / "rows.jsonl"), "--k", "2",
                 "--summary", str(data / "s.json"), "-o", str(data / "c.csv")]) == 0
    summary = json.loads((data / "s.json").read_text(encoding="utf-8"))
    assert summary["k"] == 2 and sum(c["size"] for c in summary["clusters"]) == 6

    dup = data / "dup.jsonl"
    dup.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["same words", "same words", "entirely different"]), encoding="utf-8")
    assert main(["dedup", *model, "-i", str(dup), "--threshold", "0.999", "--unique",
                 "--report", str(data / "r.json")]) == 0
    kept = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [k["text"] for k in kept] == ["same words", "entirely different"]
    report = json.loads((data / "r.json").read_text(encoding="utf-8"))
    assert report["groups"] == 1 and report["groups_detail"][0][1]["index"] == 1
