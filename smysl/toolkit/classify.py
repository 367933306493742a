"""Classification on embeddings: zero-shot against label descriptions, or supervised
(logistic regression or kNN, scikit-learn) with a model saved as a plain ``.npz`` (no pickle).
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smysl.base import BaseEmbedder
from smysl.files import replacing
from smysl.toolkit._deps import require_sklearn

FORMAT = "smysl-classifier/1"


def check_training_labels(labels: Sequence[str]) -> None:
    """ValueError unless ``labels`` hold two classes or more: with one, kNN predicts it for
    every text without a word (logistic regression fails in scikit-learn's words)."""
    classes = sorted({str(v) for v in labels})
    if len(classes) < 2:
        raise ValueError(f"training needs texts of at least two labels, got {classes}")



@dataclass(frozen=True)
class ClassifyConfig:
    """Supervised classifier settings.

    Attributes:
        method: ``"logreg"`` (multinomial logistic regression) or ``"knn"`` (cosine kNN vote).
        instruction: Instruction texts are embedded with; None uses the ``classification``
            preset on instruction-aware models (Qwen3) and none otherwise; ``""`` forces none.
        dimensions: Matryoshka size; None is the model's native size.
        c: Inverse regularisation strength of the logistic regression.
        max_iter: Solver iterations for the logistic regression.
        neighbors: k of kNN.
        truncate: Cut texts longer than the model takes (else an error names the first).
    """

    method: Literal["logreg", "knn"] = "logreg"
    instruction: str | None = None
    dimensions: int | None = None
    c: float = 1.0
    max_iter: int = 1000
    neighbors: int = 10
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("logreg", "knn"):
            raise ValueError(f"unknown method {self.method!r} (logreg or knn)")
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be >= 1, got {self.neighbors}")
        if not self.c > 0:
            raise ValueError(f"c must be > 0, got {self.c}")

    def votes(self, examples: int) -> int:
        """The neighbours kNN asks among ``examples`` training texts: ``neighbors``, or all
        of them where there are fewer."""
        return min(self.neighbors, examples)


def embed_for(embedder: BaseEmbedder, texts: Sequence[str], instruction: str | None,
              dimensions: int | None, preset: str = "classification",
              progress: bool = False, truncate: bool = False) -> np.ndarray:
    """Toolkit texts as queries: ``instruction`` when given (``""``: none), else ``preset`` on
    instruction-aware models. A text longer than the model takes is an error
    (:class:`~smysl.tokenize.InputTooLongError`) unless ``truncate``: cut silently, two long
    texts that differ after the cut would look alike."""
    task = embedder.choose_instruction(instruction, role="query", default=preset)
    return embedder.embed(list(texts), instruction=task,
                          dimensions=dimensions, truncate=truncate, progress=progress)


class ZeroShotClassifier:
    """Each text goes to the label whose description embedding is most similar.

    ``labels``: label -> description (a blank one is the label itself), or a list of labels,
    each its own description (as ``smysl classify --labels a,b`` takes them)."""

    def __init__(self, embedder: BaseEmbedder, labels: Mapping[str, str] | Sequence[str], *,
                 instruction: str | None = None, dimensions: int | None = None,
                 truncate: bool = False) -> None:
        if isinstance(labels, str):  # "a,b" is one label's text, not two labels
            raise TypeError("labels: a mapping of label -> description, or a list of labels, "
                            f"not the string {labels!r}")
        if not isinstance(labels, Mapping):
            if len(set(labels)) < len(labels):
                raise ValueError(f"labels: a label is given twice in {list(labels)!r}")
            labels = {name: name for name in labels}
        if len(labels) < 2:
            raise ValueError(f"zero-shot classification needs at least two labels, got "
                             f"{len(labels)}")
        self.embedder = embedder
        self.labels = list(labels)
        self.instruction = instruction
        self.dimensions = dimensions
        #: Cut texts (and descriptions) longer than the model takes; else an error.
        self.truncate = truncate
        # Descriptions are the documents; texts are the queries (with the instruction).
        self.label_vectors = embedder.embed([labels[name] or name for name in self.labels],
                                            dimensions=dimensions, truncate=truncate)

    def scores(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Cosine similarity ``[len(texts), len(labels)]``."""
        x = embed_for(self.embedder, texts, self.instruction, self.dimensions,
                      progress=progress, truncate=self.truncate)
        return np.asarray(x @ self.label_vectors.T)

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[str]:
        return [self.labels[int(i)] for i in self.scores(texts, progress).argmax(axis=1)]


class SupervisedClassifier:
    """Logistic regression or kNN on embeddings; :meth:`save`/:meth:`load` keep it."""

    def __init__(self, model: str, config: ClassifyConfig, classes: np.ndarray,
                 estimator: Any, arrays: dict[str, np.ndarray],
                 fingerprint: str | None = None) -> None:
        self.model = model
        #: :meth:`~smysl.base.BaseEmbedder.fingerprint` of the model it was trained on.
        self.fingerprint = fingerprint
        self.config = config
        self.classes = classes
        self.estimator = estimator
        self._arrays = arrays  # what save() writes to rebuild the estimator

    @classmethod
    def fit_vectors(cls, vectors: np.ndarray, labels: Sequence[str], config: ClassifyConfig,
                    model: str = "", fingerprint: str | None = None) -> SupervisedClassifier:
        require_sklearn("supervised classification")
        x = np.asarray(vectors, np.float32)
        y = np.asarray([str(v) for v in labels])
        if len(x) != len(y) or len(y) == 0:
            raise ValueError("need as many labels as texts, and at least one")
        check_training_labels(y.tolist())
        if config.method == "logreg":
            from sklearn.linear_model import LogisticRegression

            est = LogisticRegression(C=config.c, max_iter=config.max_iter).fit(x, y)
            arrays = {"coef": est.coef_, "intercept": est.intercept_}
        elif config.method == "knn":
            from sklearn.neighbors import KNeighborsClassifier

            est = KNeighborsClassifier(n_neighbors=config.votes(len(y)),
                                       metric="cosine", algorithm="brute").fit(x, y)
            arrays = {"vectors": x, "labels": y}
        else:
            raise ValueError(f"unknown method {config.method!r} (logreg or knn)")
        return cls(model, config, np.asarray(est.classes_), est, arrays, fingerprint)

    @classmethod
    def fit(cls, embedder: BaseEmbedder, texts: Sequence[str], labels: Sequence[str],
            config: ClassifyConfig = ClassifyConfig(), progress: bool = False
            ) -> SupervisedClassifier:
        x = embed_for(embedder, texts, config.instruction, config.dimensions, progress=progress,
                      truncate=config.truncate)
        return cls.fit_vectors(x, labels, config, model=embedder.name,
                               fingerprint=embedder.fingerprint())

    def predict_vectors(self, vectors: np.ndarray) -> list[str]:
        x = np.asarray(vectors, np.float32)
        if len(x) == 0:  # no texts, no labels (scikit-learn refuses an empty array)
            return []
        return [str(v) for v in self.estimator.predict(x)]

    def predict_proba_vectors(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, np.float32)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.estimator.predict_proba(x))

    def predict(self, embedder: BaseEmbedder, texts: Sequence[str], progress: bool = False,
                truncate: bool | None = None) -> list[str]:
        """Labels of ``texts``; ``truncate``: cut over-long texts (None: as trained)."""
        self.check_model(embedder)
        cut = self.config.truncate if truncate is None else truncate
        return self.predict_vectors(embed_for(embedder, texts, self.config.instruction,
                                              self.config.dimensions, progress=progress,
                                              truncate=cut))

    def check_model(self, embedder: BaseEmbedder) -> None:
        """Refuse another model's embeddings: by fingerprint (by name for files without one)."""
        if self.fingerprint is not None:
            if embedder.fingerprint() != self.fingerprint:
                raise ValueError(f"classifier was trained on {self.model!r} embeddings "
                                 f"(fingerprint {self.fingerprint}), not on those of "
                                 f"{embedder.name!r} (fingerprint {embedder.fingerprint()})")
        elif self.model and embedder.name != self.model:
            raise ValueError(f"classifier was trained on {self.model!r} embeddings, "
                             f"not {embedder.name!r}")

    def save(self, path: str | Path) -> None:
        """Write ``path`` (.npz): arrays plus JSON settings; loads without pickle."""
        meta = {"format": FORMAT, "model": self.model, "fingerprint": self.fingerprint,
                "config": self.config.__dict__}
        with replacing(Path(path), binary=True) as f:
            arrays: dict[str, Any] = {"meta": np.asarray(json.dumps(meta)),
                                      "classes": self.classes, **self._arrays}
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SupervisedClassifier:
        """A classifier :meth:`save` wrote; any other file is a ValueError saying so (a bare
        KeyError, or numpy's advice to load it with pickle, named nothing)."""
        require_sklearn("supervised classification")
        what = (f"{path}: not a smysl classifier (a .npz that `smysl classify --train ... "
                "--save` wrote)")
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile) as e:  # not numpy's, pickled, cut
            if isinstance(e, ValueError) and "allow_pickle" in str(e):
                raise ValueError(what) from None  # numpy's advice is no help here
            raise ValueError(f"{what}: {e}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy array
            raise ValueError(what)
        try:
            with z:
                meta = json.loads(str(z["meta"])) if "meta" in z.files else None
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise ValueError(what)
                arrays = {k: z[k] for k in z.files if k not in ("meta", "classes")}
                classes = z["classes"]
            config, model = ClassifyConfig(**meta["config"]), str(meta["model"])
            needs = ("coef", "intercept") if config.method == "logreg" else ("vectors", "labels")
            missing = [k for k in needs if k not in arrays]
            if missing:
                raise KeyError(missing[0])
        except (KeyError, TypeError, json.JSONDecodeError, zipfile.BadZipFile, zlib.error,
                EOFError, OSError) as e:  # a bad CRC, a cut or flipped member
            raise ValueError(f"{path}: a damaged smysl classifier ({type(e).__name__}: "
                             f"{e})") from None
        if config.method == "logreg":
            from sklearn.linear_model import LogisticRegression

            est = LogisticRegression(C=config.c, max_iter=config.max_iter)
            est.classes_ = classes
            est.coef_ = arrays["coef"]
            est.intercept_ = arrays["intercept"]
            est.n_features_in_ = arrays["coef"].shape[1]
        else:
            from sklearn.neighbors import KNeighborsClassifier

            est = KNeighborsClassifier(n_neighbors=config.votes(len(arrays["labels"])),
                                       metric="cosine", algorithm="brute").fit(
                arrays["vectors"], arrays["labels"])
        return cls(model, config, classes, est, arrays, meta.get("fingerprint"))


def norm_label(label: str) -> str:
    """A label as gold labels are matched to candidates: case and spacing ignored, and a whole
    number's ``.0`` (``1.0``, a CSV's gold, or pandas' JSON of whole-number floats, is the
    class ``1``; nothing else of a number's spelling: ``01`` and ``1.10`` are codes)."""
    text = " ".join(str(label).split()).casefold()
    whole = _WHOLE_FLOAT.fullmatch(text)
    return whole[1] if whole else text


#: ``1.0``, ``-3.00``: a whole number written as a float (ASCII digits only).
_WHOLE_FLOAT = re.compile(r"(-?[0-9]+)\.0+")


@dataclass(frozen=True)
class GoldMatch:
    """Gold labels set against a classifier's candidate labels (:func:`match_gold`)."""

    #: Gold labels mapped onto candidates (``Billing `` -> ``billing``); a gold label no
    #: candidate matches stays None (no prediction can be right for its row). None where
    #: half the rows or more match none: unrelated vocabularies, no accuracy to give.
    gold: list[str | None] | None
    #: Gold labels (distinct, as written) that match no candidate.
    unmatched: list[str]
    #: Rows whose gold label matches no candidate.
    unmatched_rows: int = 0

    def message(self, candidates: Sequence[str], field: str = "label") -> str:
        """Why no accuracy is reported, or what it counts wrong."""
        named = (f"{', '.join(map(repr, self.unmatched[:10]))}"
                 f"{' ...' if len(self.unmatched) > 10 else ''}")
        if self.gold is not None:
            rows = ("1 row has" if self.unmatched_rows == 1
                    else f"{self.unmatched_rows} rows have")
            return (f"{rows} a gold label in {field!r} that no candidate label matches "
                    f"({named}), counted wrong in the accuracy")
        return (f"no accuracy: gold labels in {field!r} do not match the candidate labels "
                f"(unmatched: {named}; candidates: "
                f"{', '.join(map(repr, list(candidates)[:10]))}); map them to the candidates, "
                f"or name the gold column with --label-field")


def check_spellings(labels: Sequence[str], what: str) -> None:
    """ValueError for two ``labels`` that differ only in case or spacing (:func:`norm_label`):
    gold labels are
    matched to them without either (:func:`match_gold`), so one class's gold would count
    against the other (the CLI's accuracy; a Python caller may keep such classes apart)."""
    spelt: dict[str, str] = {}
    for c in dict.fromkeys(str(v) for v in labels):
        other = spelt.setdefault(norm_label(c), c)
        if other != c:
            raise ValueError(f"{what} {other!r} and {c!r} differ only in case or spacing (or "
                             "a number's spelling), which gold labels are matched without: "
                             "spell them alike (one class) or apart")


def match_gold(gold: Sequence[str], candidates: Sequence[str]) -> GoldMatch:
    """Map gold labels onto ``candidates`` ignoring case and spacing. Where half the rows or
    more match none, the vocabularies are unrelated and there is no accuracy (it would be a
    silent 0.0); a few rows of a class the classifier never saw (a test split's rare label)
    count wrong, said (they gave no accuracy at all for the other rows)."""
    by_norm: dict[str, str] = {}
    for c in candidates:
        by_norm.setdefault(norm_label(c), c)
    mapped = [by_norm.get(norm_label(g)) for g in gold]
    unmatched = list(dict.fromkeys(g for g, m in zip(gold, mapped, strict=True) if m is None))
    missing = sum(m is None for m in mapped)
    return GoldMatch(None if 2 * missing >= len(gold) and missing else mapped, unmatched,
                     missing)


def accuracy(pred: Sequence[str], gold: Sequence[str | None]) -> float:
    if len(pred) != len(gold) or not gold:
        raise ValueError("predictions and gold labels must be non-empty and aligned")
    return float(np.mean([p == g for p, g in zip(pred, gold, strict=True)]))
