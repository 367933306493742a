"""The reranking contract (smysl/rerank.py): what every backend inherits from ``_scores``."""

from __future__ import annotations

import numpy as np
import pytest

import smysl
from smysl.rerank import BaseReranker, order


class Lengthy(BaseReranker):
    """Scores each document by its length; records every call."""

    name, backend = "lengthy", "test"

    def __init__(self, *, aware: bool = False, broken: bool = False) -> None:
        self.instruction_aware = aware
        self.broken = broken
        self.calls: list[tuple[str, list[str], str | None, bool]] = []

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        self.calls.append((query, documents, instruction, truncate))
        if self.broken:
            return np.array([np.nan] * len(documents))
        return np.array([float(len(d)) for d in documents])


def test_rerank_orders_best_first_with_stable_ties_and_top_n() -> None:
    r = Lengthy()
    assert r.rerank("q", ["aa", "b", "cc", "dddd"]) == [(3, 4.0), (0, 2.0), (2, 2.0), (1, 1.0)]
    assert r.rerank("q", ["aa", "b", "cc"], top_n=1) == [(0, 2.0)]
    assert r.rerank("q", []) == [] and len(r.calls) == 2  # nothing to score: no call
    assert order([1.0, 3.0, 3.0]) == [1, 2, 0]
    # float32 logit differences that tie where P("yes") from float64 ones does not: the
    # scores break the tie, so the scores shown are in order; a tie in both keeps input order
    keys = np.float32([-16.0000009, -16.0000001, 2.0])
    scores = np.float32([1.12535062e-07, 1.12535147e-07, 0.88])
    assert keys[0] == keys[1] and order(keys, scores) == [2, 1, 0]
    assert order([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) == [0, 1, 2]


def test_score_groups_pairs_by_query_and_keeps_input_order() -> None:
    r = Lengthy()
    assert r.score([("q1", "aaa"), ("q2", "b"), ("q1", "cc")]) == [3.0, 1.0, 2.0]
    assert [(q, docs) for q, docs, _, _ in r.calls] == [("q1", ["aaa", "cc"]), ("q2", ["b"])]
    # a numpy array of pairs (rows), and of documents, as the local reranker takes them
    assert r.score(np.array([("q1", "aaa"), ("q2", "b")])) == [3.0, 1.0]  # type: ignore[arg-type]
    assert r.rerank("q", np.array(["aa", "b"])) == [(0, 2.0), (1, 1.0)]


def test_bad_input_is_refused_before_any_call() -> None:
    r = Lengthy()
    for call, error in [(lambda: r.rerank(" ", ["d"]), ValueError),
                        (lambda: r.rerank("q", "one string"), TypeError),
                        (lambda: r.rerank("q", ["d", 5]), ValueError),  # type: ignore[list-item]
                        (lambda: r.rerank("q", ["d"], top_n=0), ValueError),
                        (lambda: r.rerank("q", ["d"], top_n=True), ValueError),
                        (lambda: r.rerank("q", ["d"], instruction="x"), ValueError),
                        (lambda: r.score([("q", "d", "e")]), ValueError),  # type: ignore[list-item]
                        (lambda: r.score("q"), ValueError)]:  # type: ignore[arg-type]
        with pytest.raises(error):
            call()
    assert r.calls == []
    aware = Lengthy(aware=True)
    aware.rerank("q", ["d"], instruction="find it", truncate=True)
    assert aware.calls == [("q", ["d"], "find it", True)]


def test_a_backend_answer_is_checked() -> None:
    with pytest.raises(RuntimeError, match="non-finite"):
        Lengthy(broken=True).rerank("q", ["d"])


def test_fingerprint_and_info_of_the_default() -> None:
    r = Lengthy()
    assert r.info().name == "lengthy" and r.token_level() is None and r.usage_report() is None
    assert r.fingerprint() == Lengthy().fingerprint() != Lengthy(aware=True).fingerprint()
    # where it runs (an engine process's pid) is no part of what it is
    import dataclasses

    class Elsewhere(Lengthy):
        def info(self):  # type: ignore[no-untyped-def]
            return dataclasses.replace(super().info(), process=4242)

    assert Elsewhere().fingerprint() == r.fingerprint()


def test_load_reranker_routes_by_scheme() -> None:
    with pytest.raises(ValueError, match="does not use the option"):
        smysl.load_reranker("siliconflow:BAAI/bge-reranker-v2-m3", device="cpu")
    with pytest.raises(ValueError, match="non-empty"):
        smysl.load_reranker(" ")


class Saturated(Lengthy):
    """P("yes")-like scores that tie at 1.0, with finer keys (a logit difference)."""

    def _scores_and_keys(self, query: str, documents: list[str], *, instruction: str | None,
                         truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        keys = np.array([float(len(d)) for d in documents])
        return np.minimum(keys, 3.0), keys


def test_rerank_orders_by_the_backends_keys_and_reports_its_scores() -> None:
    """audit 7: scores that saturate tie; rerank orders by the finer keys and still reports
    the scores, while score() reports the scores alone."""
    r = Saturated()
    assert r.rerank("q", ["aaa", "aaaaa", "a", "aaaa"]) == [(1, 3.0), (3, 3.0), (0, 3.0),
                                                            (2, 1.0)]
    assert r.rerank("q", ["aaa", "aaaaa", "aaaa"], top_n=1) == [(1, 3.0)]
    assert Lengthy().rerank("q", ["a", "bb"]) == [(1, 2.0), (0, 1.0)]  # default: the scores


def test_top_n_takes_any_integer_type_and_a_lone_surrogate_names_its_document() -> None:
    """audit 8: numpy integers are integers (operator.index); invalid Unicode is a ValueError
    naming the document (tokenizers raise TypeError on it)."""
    r = Lengthy(aware=True)
    assert r.rerank("q", ["aa", "b", "ccc"], top_n=np.int64(2)) == [(2, 3.0), (0, 2.0)]
    for bad in (1.5, "2", np.float64(2.0)):
        with pytest.raises(ValueError, match="top_n must be an integer"):
            r.rerank("q", ["d"], top_n=bad)  # type: ignore[arg-type]
    for call, words in [(lambda: r.rerank("q", ["ok", "x\ud800"]), r"documents\[1\]"),
                        (lambda: r.rerank("\udc00", ["ok"]), "the query"),
                        (lambda: r.rerank("q", ["ok"], instruction="\ud800"), "instruction"),
                        (lambda: r.score([("q", "\ud800")]), r"documents\[0\]")]:
        with pytest.raises(ValueError, match=words + " is not valid Unicode"):
            call()
    assert len(r.calls) == 1  # the top_n call only


def test_rerank_refuses_an_output_folder_that_is_not_there_before_it_loads(
        tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The reranker ran (a paid API's cost spent) and then the output could not be opened."""
    from smysl.cli import main

    docs = tmp_path / "d.txt"
    docs.write_text("a\nb\n", encoding="utf-8")
    assert main(["rerank", "--model", str(tmp_path / "no-model"), "-q", "x", "-i", str(docs),
                 "-o", str(tmp_path / "nowhere" / "r.jsonl")]) == 2
    assert "no such folder" in capsys.readouterr().err
