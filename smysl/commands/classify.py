"""``smysl classify``: zero-shot against label descriptions, or train/apply a saved classifier."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smysl.commands import given
from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_table_arguments,
    blank_rows,
    check_apart,
    flags_for,
    labels_in,
    progress,
    read_input,
    refuse_overwrite,
    rows_of,
    with_text,
)
from smysl.tokenize import InputTooLongError

if TYPE_CHECKING:
    from smysl.toolkit.classify import SupervisedClassifier

HELP = "classify texts (zero-shot with --labels, or --train/--load a logreg/kNN model)"

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl classify --model qwen3-embedding:0.6b -i tickets.csv --labels "
     "\"billing,bug report,feature request\"",
     "zero-shot"),
    ("smysl classify --model qwen3-embedding:0.6b -i new.csv --train labelled.csv "
     "--save t.npz -o out.csv",
     "trained on labelled rows"),
    ("smysl classify --model qwen3-embedding:0.6b -i new.jsonl --load t.npz -o out.jsonl",
     "a saved classifier"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_table_arguments(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--labels", help="zero-shot labels: 'a,b,c', or a .csv/.jsonl/.json file "
                                       "of label -> description")
    mode.add_argument("--train", help="labelled .csv/.jsonl/.json (array) to train on")
    mode.add_argument("--load", help="saved classifier (.npz) to apply")
    p.add_argument("--label-field", default=None,
                   help="column with gold labels (default label; given, it must exist)")
    p.add_argument("--description-field", default=None,
                   help="column with label descriptions (a --labels file; default description)")
    p.add_argument("--save", help="where to save the trained classifier (.npz; with --train)")
    p.add_argument("--method", choices=["logreg", "knn"], default=None,
                   help="with --train: logreg (default) or knn")
    p.add_argument("--neighbors", type=int, default=None, help="k for kNN (default 10)")
    p.add_argument("-C", type=float, default=None, help="logistic regression C (default 1.0)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model takes (else an error; a --load'ed "
                        "classifier trained with --truncate cuts them without it)")


#: Files --labels reads; any other value is a comma-separated list of labels.
LABEL_FILES = (".csv", ".jsonl", ".json")


def _labels(spec: str, args: argparse.Namespace) -> dict[str, str]:
    """Label -> description from a --labels file or list; a file that is not there, a repeated
    label or a single one is an error (each would classify silently wrong)."""
    from smysl.toolkit.classify import norm_label
    from smysl.toolkit.io import iter_rows

    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # a long inline list is no file name (ENAMETOOLONG)
        is_file = False
    looks_like_file = path.suffix.lower() in (*LABEL_FILES, ".txt", ".tsv") or "/" in spec
    if "," not in spec and looks_like_file and not is_file:
        raise ValueError(f"--labels {spec}: no such file (labels given inline are separated "
                         f"by commas: --labels billing,bug)")
    if is_file and path.suffix.lower() not in LABEL_FILES:
        raise ValueError(f"--labels {spec}: a labels file is .csv, .jsonl or .json "
                         f"(label -> description); inline labels are separated by commas")
    data: Any = None
    if path.suffix.lower() == ".json" and is_file:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--labels {spec}: not a JSON file ({e})") from None
    # a .json array of objects is a table as a .csv/.jsonl file is (the toolkit's .json tables)
    rows_json = isinstance(data, list) and bool(data) and all(isinstance(x, dict) for x in data)
    table = (path.suffix.lower() in (".csv", ".jsonl") and is_file) or rows_json
    if args.description_field is not None and not table:
        raise ValueError("--description-field names a column of a --labels table (.csv, "
                         ".jsonl, or a .json array of objects); a .json object maps each "
                         "label to its description")
    if data is not None and not table:
        if not isinstance(data, list | dict):
            raise ValueError(f"--labels {spec}: a .json labels file is a list of labels, an "
                             "array of {label, description} objects or an object of label "
                             f"-> description, not {type(data).__name__}")
        # a list's labels are their own descriptions (a number too: star ratings)
        names = labels_in([{"label": x} for x in data], "label", spec, "--labels")
        texts = names if isinstance(data, list) else list(data.values())
        for name, text in zip(names, texts, strict=True):  # null was the description "None"
            if not isinstance(text, str):
                raise ValueError(f"--labels {spec}: label {name!r} needs a text "
                                 f"description, got {text!r}")
        # a blank description is the label itself, as in a table (one rule for both)
        items = [(n, t if t.strip() else n) for n, t in zip(names, texts, strict=True)]
    elif table:
        rows = data if rows_json else list(iter_rows(path))
        # the file's own columns, as documented: --label-field names the input's gold column
        for n, r in enumerate(rows, 1):
            if "label" not in r:
                raise ValueError(f"{spec}: row {n} has no 'label' column (columns: "
                                 f"{sorted(r)}); a labels file has the columns label and "
                                 "description (or --description-field)")
        names = labels_in(rows, "label", spec, "--labels")
        field = args.description_field or "description"
        if args.description_field is not None and not any(field in r for r in rows):
            raise ValueError(f"--labels {spec}: no row has the column --description-field "
                             f"{field!r} (columns: {sorted(rows[0]) if rows else []})")
        # a blank description is the label's own name, as an absent one is (it was embedded
        # as it stood: a vector of no meaning; a .json object's is refused, there is no row)
        items = [(n, str(d) if d and (not isinstance(d, str) or d.strip()) else n)
                 for n, r in zip(names, rows, strict=True) for d in [r.get(field)]]
    else:
        items = [(x.strip(), x.strip()) for x in spec.split(",")]
        if blank := [n for n, (x, _) in enumerate(items, 1) if not x]:  # was left out, unsaid
            raise ValueError(f"--labels {spec!r}: label #{blank[0]} is blank; separate the "
                             "labels with single commas")
    seen: dict[str, int] = {}
    for n, (name, _) in enumerate(items, 1):
        # as gold labels are matched (case and spacing ignored): Billing and billing would
        # split one class's gold between them
        key = norm_label(name)
        if key in seen:
            case = "" if items[seen[key] - 1][0] == name else ", in another case"
            raise ValueError(f"--labels {spec}: label {name!r} is given twice (#{seen[key]} "
                             f"and #{n}{case}); give each label once, with one description")
        seen[key] = n
    if len(items) < 2:
        raise ValueError(f"--labels {spec}: zero-shot classification needs at least two "
                         f"labels, got {len(items)}")
    return dict(items)


def _refuse_unused(args: argparse.Namespace, mode: str) -> None:
    """Flags the chosen mode would ignore are an error: an option never silently does
    nothing."""
    if mode == "--train":
        # the other method's setting: kNN takes --neighbors, logistic regression -C
        knn = args.method == "knn"
        other = ("-C", "C") if knn else ("--neighbors", "neighbors")
        if vars(args)[other[1]] is not None:
            raise ValueError(f"{other[0]} does nothing with --method "
                             f"{args.method or 'logreg'}; it applies to --method "
                             f"{'logreg' if knn else 'knn'}")
        return
    unused = {"--save": "save", "--method": "method", "--neighbors": "neighbors", "-C": "C"}
    if mode == "--load":
        unused |= {"--dimensions": "dimensions", "--instruction": "instruction"}
    named = [flag for flag, dest in unused.items() if vars(args)[dest] is not None]
    if named:
        also = (" (the classifier keeps the settings it was trained with)"
                if mode == "--load" else "")
        one = len(named) == 1
        raise ValueError(f"{', '.join(named)} {'does' if one else 'do'} nothing with {mode}"
                         f"{also}; {'it applies' if one else 'they apply'} to --train")


def _load_classifier(path: str) -> SupervisedClassifier:
    from smysl.toolkit.classify import SupervisedClassifier

    try:
        return SupervisedClassifier.load(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ValueError(f"--load {path}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    from smysl.toolkit.classify import (
        ClassifyConfig,
        SupervisedClassifier,
        ZeroShotClassifier,
        accuracy,
        check_spellings,
        check_training_labels,
        match_gold,
    )
    from smysl.toolkit.io import check_file, check_output, csv_header, write_rows

    mode = ("--labels" if args.labels is not None else
            "--train" if args.train is not None else "--load")
    if not vars(args)[mode[2:]].strip():  # '' is given, not absent: name the flag
        raise ValueError("--labels is empty: give two labels or more ('billing,bug') or a "
                         ".csv/.jsonl/.json file of them" if mode == "--labels" else
                         f"{mode} is empty: give a file")
    _refuse_unused(args, mode)
    check_output(args.output)
    check_apart({"-i": args.input, "-o": args.output, "--save": args.save,
                 "--train": args.train, "--load": args.load})
    if args.save:
        check_file(args.save, "--save")
    labels_by_name = _labels(args.labels, args) if mode == "--labels" else None
    label_field = args.label_field or "label"
    texts, rows = read_input(args.input, args.text_field)
    if not rows:  # its output is as empty: said, not left to look like a result
        print(f"smysl classify: warning: {args.input} holds no rows; nothing to classify",
              file=sys.stderr)
    refuse_overwrite(rows, ["predicted", *(["score"] if mode == "--labels" else [])],
                     args.input)
    # Gold labels (when any row has the column) are read before any work, so a row without
    # one fails the command before its output exists; a --label-field given must be there
    # (with --train it names the training file's column: the input may have no gold labels)
    has_gold = any(label_field in r for r in rows)
    if args.label_field is not None and mode != "--train" and rows and not has_gold:
        raise ValueError(f"--label-field {label_field!r}: {args.input} has no such column "
                         f"(columns: {sorted(rows[0])})")
    gold = labels_in(rows, label_field, args.input, "--label-field") if has_gold else None
    loaded = _load_classifier(args.load) if mode == "--load" else None  # before the model
    training = None
    if mode == "--train":  # read and checked before the model loads (minutes for a large one)
        train, train_rows = read_input(args.train, args.text_field, "--train")
        labels = labels_in(train_rows, label_field, args.train, "--label-field")
        if blank := blank_rows(train):  # it would teach its label a vector of nothing
            raise ValueError(f"--train {args.train}: row {blank[0]} has no text "
                             f"({args.text_field!r}); a training example needs one")
        try:
            check_training_labels(labels)
            check_spellings(labels, "training labels")  # the gold below is matched so
        except ValueError as e:
            raise ValueError(f"--train {args.train}: {e}") from None
        with flags_for({"neighbors": "--neighbors", "c": "-C"}):
            config = ClassifyConfig(instruction=args.instruction, dimensions=args.dimensions,
                                    truncate=args.truncate,
                                    **given(args, method="method", c="C", neighbors="neighbors"))
        if config.method == "knn" and config.votes(len(train)) < config.neighbors:
            print(f"smysl classify: warning: kNN's {config.neighbors} neighbours (--neighbors) "
                  f"are more than the {len(train)} training texts; it votes among all "
                  f"{len(train)}", file=sys.stderr)
        training = train, labels, config
    kept = with_text(texts, args.input, "classify", "their prediction is null")
    model = load_model(args.model, args)
    show = progress(args)
    scores: list[float] | None = None
    candidates: list[str]
    texts = [texts[i] for i in kept]
    if labels_by_name is not None:
        try:
            zs = ZeroShotClassifier(model, labels_by_name, instruction=args.instruction,
                                    dimensions=args.dimensions, truncate=args.truncate)
        except InputTooLongError as e:  # a description, not "input N"
            name = list(labels_by_name)[e.index]
            raise ValueError(e.describe(f"--labels {args.labels}: the description of label "
                                        f"{name!r}", audience="cli")) from None
        with rows_of(args.input, kept):
            sims = zs.scores(texts, progress=show)
        pred = [zs.labels[int(i)] for i in sims.argmax(axis=1)]
        scores = [float(x) for x in sims.max(axis=1)]
        candidates = zs.labels
    else:
        if loaded is None:
            assert training is not None  # --train
            train, labels, config = training
            with rows_of(args.train):
                clf = SupervisedClassifier.fit(model, train, labels, config, progress=show)
            if args.save:
                clf.save(args.save)
                print(f"saved classifier to {args.save}", file=sys.stderr)
        else:
            clf = loaded
        with rows_of(args.input, kept):
            # without --truncate, as trained (a classifier trained with it then refused long
            # texts under --load, where the Python API cuts them as trained)
            pred = clf.predict(model, texts, progress=show, truncate=args.truncate or None)
        candidates = [str(c) for c in clf.classes]
    zero_shot = scores is not None  # adds a score column
    results: list[dict[str, Any]] = [{"predicted": None} | ({"score": None} if zero_shot else {})
                                     for _ in rows]
    for n, (i, p) in enumerate(zip(kept, pred, strict=True)):
        results[i] = {"predicted": p} | ({"score": round(scores[n], 6)} if scores else {})
    write_rows(args.output, [{**r, **x} for r, x in zip(rows, results, strict=True)],
               [*csv_header(args.input), "predicted", *(["score"] if zero_shot else [])])
    if gold is not None and rows and not kept:
        print("smysl classify: no row has text, so no accuracy", file=sys.stderr)
    elif gold is not None:
        match = match_gold([gold[i] for i in kept], candidates)
        if match.unmatched:
            print(f"smysl classify: {match.message(candidates, label_field)}",
                  file=sys.stderr)
        if match.gold is not None:
            left = len(rows) - len(kept)
            print(f"accuracy {accuracy(pred, match.gold):.4f} on {len(pred)} texts"
                  + (f" ({left} without text left out)" if left else ""), file=sys.stderr)
    return 0
