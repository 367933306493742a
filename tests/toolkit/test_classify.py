"""Classification: supervised matches scikit-learn on the same vectors; save/load; zero-shot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from smysl.toolkit.classify import (
    ClassifyConfig,
    SupervisedClassifier,
    ZeroShotClassifier,
    accuracy,
)
from toolkit.helpers import DATASETS, Counting, OtherWeights, unit_rows

pytest.importorskip("sklearn")


def intents(split: str, labels: list[str], n: int) -> tuple[list[str], list[str]]:
    path = DATASETS / "intents" / f"intents_{split}.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in labels][:n]
    return [r["answer"] for r in rows], [r["label"] for r in rows]


@pytest.mark.parametrize("method", ["logreg", "knn"])
def test_supervised_matches_sklearn_and_survives_save(method, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    x = unit_rows(300, 24, seed=1, clusters=4)
    y = [f"c{int(v)}" for v in rng.integers(0, 3, 300)]
    config = ClassifyConfig(method=method, neighbors=7)
    clf = SupervisedClassifier.fit_vectors(x[:200], y[:200], config, model="m")
    ref = (LogisticRegression(max_iter=1000) if method == "logreg" else
           KNeighborsClassifier(7, metric="cosine", algorithm="brute")).fit(x[:200], y[:200])
    pred = clf.predict_vectors(x[200:])
    assert pred == ref.predict(x[200:]).tolist()
    clf.save(tmp_path / "c.npz")
    loaded = SupervisedClassifier.load(tmp_path / "c.npz")
    assert loaded.predict_vectors(x[200:]) == pred and loaded.model == "m"
    np.testing.assert_allclose(loaded.predict_proba_vectors(x[200:]),
                               ref.predict_proba(x[200:]), atol=1e-6)


def test_intents_with_minilm(minilm, tmp_path) -> None:
    labels = ["weather__query", "alarm__set", "play__music", "calendar__set", "qa__factoid"]
    train, ytrain = intents("train", labels, 100)
    test, ytest = intents("test", labels, 50)
    clf = SupervisedClassifier.fit(minilm, train, ytrain)
    x = minilm.embed(test)  # MiniLM takes no instruction: texts are embedded bare
    assert clf.predict(minilm, test[:10]) == clf.predict_vectors(x[:10])
    assert accuracy(clf.predict_vectors(x), ytest) > 0.8
    clf.save(tmp_path / "intents.npz")
    loaded = SupervisedClassifier.load(tmp_path / "intents.npz")
    assert loaded.predict(minilm, test[:10]) == clf.predict_vectors(x[:10])
    # zero-shot against descriptions: well above chance (0.2) with no training at all
    zs = ZeroShotClassifier(minilm, {lab: lab.replace("__", ": ").replace("_", " ")
                                     for lab in labels})
    zero = [zs.labels[i] for i in (x @ zs.label_vectors.T).argmax(1)]
    assert zs.predict(test[:10]) == zero[:10]
    assert accuracy(zero, ytest) > 0.4
    renamed = Counting(minilm)
    renamed.name = "someone-else"  # same weights under another name: the same model
    assert loaded.predict(renamed, test[:3]) == clf.predict_vectors(x[:3])
    with pytest.raises(ValueError, match="trained on"):
        clf.predict(OtherWeights(minilm), test[:1])


def test_zero_shot_picks_nearest_description(tiny) -> None:
    zs = ZeroShotClassifier(tiny, {"a": "first label", "b": "second label"})
    s = zs.scores(["some text", "other text"])
    expected = tiny.embed(["some text", "other text"], instruction="classification") @ \
        tiny.embed(["first label", "second label"]).T
    np.testing.assert_allclose(s, expected, atol=1e-5)
    assert zs.predict(["some text", "other text"]) == [["a", "b"][i] for i in s.argmax(1)]
    for labels in ({}, {"only": "one label: every text would get it"}):
        with pytest.raises(ValueError, match="at least two labels"):
            ZeroShotClassifier(tiny, labels)
    # a list of labels, each its own description (as the CLI's --labels a,b): it was a
    # TypeError ("list indices must be integers")
    listed = ZeroShotClassifier(tiny, ["first label", "second label"])
    np.testing.assert_allclose(listed.scores(["some text", "other text"]), s, atol=1e-6)
    with pytest.raises(ValueError, match="given twice"):
        ZeroShotClassifier(tiny, ["a", "b", "a"])
    with pytest.raises(TypeError, match="not the string 'a,b'"):
        ZeroShotClassifier(tiny, "a,b")


def test_empty_input_predicts_nothing(tmp_path) -> None:
    """No texts to classify with a loaded classifier: no labels (scikit-learn refused the
    empty array: "Found array with 0 sample(s)")."""
    x = unit_rows(20, 8, seed=3)
    clf = SupervisedClassifier.fit_vectors(x, ["a", "b"] * 10, ClassifyConfig())
    assert clf.predict_vectors(np.zeros((0, 8), np.float32)) == []
    assert clf.predict_proba_vectors(np.zeros((0, 8), np.float32)).shape == (0, 2)
    for kwargs, says in (({"method": "svm"}, "unknown method"), ({"neighbors": 0}, ">= 1"),
                         ({"c": 0.0}, "c must be > 0")):
        with pytest.raises(ValueError, match=says):
            ClassifyConfig(**kwargs)  # type: ignore[arg-type]


def test_over_long_texts_are_an_error_unless_truncation_is_asked_for(minilm) -> None:
    """Classification and clustering cut texts at the model's limit without a word; now the
    text is named (as everywhere else in smysl) and truncate=True cuts it."""
    from smysl.tokenize import InputTooLongError
    from smysl.toolkit.cluster import ClusterConfig, cluster_texts

    texts = ["short", "word " * 400, "another"]
    labels = {"a": "about a", "b": "about b"}
    with pytest.raises(InputTooLongError, match="input 1 has"):
        ZeroShotClassifier(minilm, labels).predict(texts)
    assert len(ZeroShotClassifier(minilm, labels, truncate=True).predict(texts)) == 3
    with pytest.raises(InputTooLongError, match="input 1 has"):
        SupervisedClassifier.fit(minilm, texts, ["a", "b", "a"])
    clf = SupervisedClassifier.fit(minilm, texts, ["a", "b", "a"], ClassifyConfig(truncate=True))
    assert len(clf.predict(minilm, texts)) == 3  # as trained: cut
    with pytest.raises(InputTooLongError):
        clf.predict(minilm, texts, truncate=False)
    with pytest.raises(InputTooLongError, match="input 1 has"):
        cluster_texts(minilm, texts, ClusterConfig(k=2))
    assert cluster_texts(minilm, texts, ClusterConfig(k=2, truncate=True)).k == 2
