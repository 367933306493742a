"""``smysl classify``: zero-shot against label descriptions, or train/apply a saved classifier."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_table_arguments,
    column,
    progress,
)

HELP = "classify texts (zero-shot with --labels, or --train/--load a logreg/kNN model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_table_arguments(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--labels", help="zero-shot labels: 'a,b,c', or a .csv/.jsonl/.json file "
                                       "of label -> description")
    mode.add_argument("--train", help="labelled .csv/.jsonl to train on")
    mode.add_argument("--load", help="saved classifier (.npz) to apply")
    p.add_argument("--label-field", default="label", help="column with gold labels")
    p.add_argument("--description-field", default="description",
                   help="column with label descriptions (zero-shot files)")
    p.add_argument("--save", help="where to save the trained classifier (.npz)")
    p.add_argument("--method", choices=["logreg", "knn"], default="logreg")
    p.add_argument("--neighbors", type=int, default=10, help="k for kNN")
    p.add_argument("-C", type=float, default=1.0, help="logistic regression C")


def _labels(spec: str, args: argparse.Namespace) -> dict[str, str]:
    from smysl.toolkit.io import iter_rows

    path = Path(spec)
    if path.suffix.lower() == ".json" and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return {str(x): str(x) for x in data}
        return {str(k): str(v) for k, v in data.items()}
    if path.suffix.lower() in (".csv", ".jsonl") and path.is_file():
        rows = list(iter_rows(path))
        names = column(rows, args.label_field, spec, "--label-field")
        return {str(n): str(r.get(args.description_field) or n)
                for n, r in zip(names, rows, strict=True)}
    names = [x.strip() for x in spec.split(",") if x.strip()]
    return {n: n for n in names}


def run(args: argparse.Namespace) -> int:
    from smysl.toolkit.classify import (
        ClassifyConfig,
        SupervisedClassifier,
        ZeroShotClassifier,
        accuracy,
        match_gold,
    )
    from smysl.toolkit.io import read_column, write_rows

    texts, rows = read_column(args.input, args.text_field)
    # Gold labels (when the input has the column) are read before any work, so a row without
    # one fails the command before its output exists.
    gold = ([str(x) for x in column(rows, args.label_field, args.input, "--label-field")]
            if rows and args.label_field in rows[0] else None)
    model = load_model(args.model, args)
    show = progress(args)
    scores: list[float] | None = None
    candidates: list[str]
    if args.labels:
        zs = ZeroShotClassifier(model, _labels(args.labels, args),
                                instruction=args.instruction, dimensions=args.dimensions)
        sims = zs.scores(texts, progress=show)
        pred = [zs.labels[int(i)] for i in sims.argmax(axis=1)]
        scores = [float(x) for x in sims.max(axis=1)]
        candidates = zs.labels
    else:
        if args.train:
            train, train_rows = read_column(args.train, args.text_field)
            labels = [str(x) for x in column(train_rows, args.label_field, args.train,
                                             "--label-field")]
            config = ClassifyConfig(method=args.method, instruction=args.instruction,
                                    dimensions=args.dimensions, c=args.C,
                                    neighbors=args.neighbors)
            clf = SupervisedClassifier.fit(model, train, labels, config, progress=show)
            if args.save:
                clf.save(args.save)
                print(f"saved classifier to {args.save}", file=sys.stderr)
        else:
            clf = SupervisedClassifier.load(args.load)
        pred = clf.predict(model, texts, progress=show)
        candidates = [str(c) for c in clf.classes]
    out = [{**r, "predicted": p} | ({"score": round(s, 6)} if scores else {})
           for r, p, s in zip(rows, pred, scores or [0.0] * len(pred), strict=True)]
    write_rows(args.output, out)
    if gold is not None:
        match = match_gold(gold, candidates)
        if match.gold is None:
            print(f"smysl classify: {match.message(candidates, args.label_field)}",
                  file=sys.stderr)
        else:
            print(f"accuracy {accuracy(pred, match.gold):.4f} on {len(pred)} texts",
                  file=sys.stderr)
    return 0
