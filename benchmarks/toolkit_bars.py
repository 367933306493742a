"""The toolkit bars of issue 5 on ../shared/datasets with all-MiniLM-L6-v2 (``st:`` backend).

1. XQuAD en retrieval: nDCG@10 of smysl's exact index search == a numpy brute force on the same
   vectors; recall@10 of the LanceDB ANN index against exact search.
2. Ingesting >= 10,000 chunks twice: the second run embeds nothing.
3. Killing an ingestion midway (SIGKILL) loses nothing reported stored; a rerun completes it.
4. Dedup on ParaPhraser pairs: precision/recall, equal to a scikit-learn reference on the same
   vectors. 5. Intents classification accuracy, equal to scikit-learn on the same vectors.

Run: ``.venv/bin/python benchmarks/toolkit_bars.py [--out results.json] [--threads 1]``. Scratch
data goes to a temporary folder; nothing is copied into the project. On a shared 2-core machine
one torch thread is several times faster than two (oversubscription), hence the default.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
MODEL = "st:all-minilm-l6-v2"


class Counting:
    """Counts texts that reach the model (wraps ``_embed`` of any BaseEmbedder)."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.n = 0
        inner = model._embed

        def counted(texts, **kw):  # type: ignore[no-untyped-def]
            self.n += len(texts)
            return inner(texts, **kw)

        model._embed = counted


def ndcg10(ranked: list[list[str]], gold: list[str]) -> float:
    return float(np.mean([1 / np.log2(r.index(g) + 2) if g in r[:10] else 0.0
                          for r, g in zip(ranked, gold, strict=True)]))


def docs_of(chunk_ids: list[str]) -> list[str]:
    return list(dict.fromkeys(i.rsplit("#", 1)[0] for i in chunk_ids))


def xquad() -> tuple[list[dict], list[str], list[str]]:
    data = json.loads((DATASETS / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))["data"]
    paras, qs, gold = [], [], []
    for a, art in enumerate(data):
        for p, par in enumerate(art["paragraphs"]):
            pid = f"xq-{a}-{p}"
            paras.append({"id": pid, "text": par["context"], "kind": "xquad",
                          "title": art["title"]})
            for q in par["qas"]:
                qs.append(q["question"])
                gold.append(pid)
    return paras, qs, gold


def intents(split: str) -> list[dict]:
    with open(DATASETS / "intents" / f"intents_{split}.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_corpus(folder: Path) -> int:
    """XQuAD paragraphs + intents utterances (train and test) as JSONL documents."""
    paras, _, _ = xquad()
    rows = [*paras]
    for split in ("train", "test"):
        rows += [{"id": f"in-{split}-{n}", "text": r["answer"], "kind": "intent",
                  "label": r["label"]} for n, r in enumerate(intents(split))]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(rows)


KILL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads({threads})
    import smysl
    from smysl.toolkit import Index, IndexConfig, IngestConfig, ReadConfig, StoreConfig
    model = smysl.load({model!r})
    ix = Index.create_or_open(model, IndexConfig(StoreConfig(uri={index!r})))
    rep = ix.add_files([{corpus!r}], ReadConfig(id_field="id"), IngestConfig(batch_size=256),
                       on_stored=lambda ids: print(json.dumps(list(ids)), flush=True))
    print("DONE", rep.summary(), flush=True)
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="also write the results JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--kill-docs", type=int, default=3000,
                    help="documents in the kill/rerun corpus (it embeds with a fresh cache)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import lancedb
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_score, recall_score
    from sklearn.neighbors import KNeighborsClassifier

    import smysl
    from smysl.toolkit import (
        ClassifyConfig,
        DedupConfig,
        Index,
        IndexConfig,
        IngestConfig,
        ReadConfig,
        SearchConfig,
        StoreConfig,
        SupervisedClassifier,
        ZeroShotClassifier,
        find_duplicates,
    )
    from smysl.toolkit.cache import CachedEmbedder, EmbeddingCache

    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "machine": {"cpu": platform.processor() or platform.machine(),
                             "cores": os.cpu_count(), "python": platform.python_version(),
                             "lancedb": lancedb.__version__, "sklearn": sklearn.__version__,
                             "torch_threads": args.threads,
                             "load_at_start": os.getloadavg()[0]},
                 "model": MODEL}
    model = smysl.load(MODEL)
    counter = Counting(model)
    tmp = Path(tempfile.mkdtemp(prefix="smysl-bars-"))
    n_docs = write_corpus(tmp / "data")
    corpus = str(tmp / "data" / "corpus.jsonl")

    # ---- 2. ingest >= 10,000 chunks twice --------------------------------------------------
    index_cfg = IndexConfig(StoreConfig(uri=str(tmp / "kb")))
    runs = []
    for _ in range(2):
        before = counter.n
        with Index.create_or_open(model, index_cfg) as ix:
            rep = ix.add_files([corpus], ReadConfig(id_field="id"), IngestConfig())
            runs.append({"chunks": rep.chunks, "embedded": counter.n - before,
                         "written": rep.written, "unchanged": rep.unchanged,
                         "seconds": round(rep.seconds, 1), "stored": ix.count()})
    res["ingest_twice"] = {"documents": n_docs, "first": runs[0], "second": runs[1]}
    print(json.dumps(res["ingest_twice"]), flush=True)

    # ---- 1. XQuAD retrieval: exact == brute force; ANN recall -----------------------------
    _, questions, gold = xquad()
    with Index.create_or_open(model, index_cfg) as ix:
        where = {"kind": "xquad"}
        t0 = time.perf_counter()
        hits = ix.search(questions, SearchConfig(k=30, where=where))
        search_s = time.perf_counter() - t0
        recs = [r for b in ix.store.scan(where=where) for r in b]
        qv = ix.embed_queries(questions)
        db = np.stack([r.vector for r in recs])
        s = qv @ db.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :30]
        ref_ranked = [docs_of([recs[j].id for j in row]) for row in order]
        our_ranked = [docs_of([h.id for h in hs]) for hs in hits]
        same_lists = sum(a[:10] == b[:10] for a, b in zip(our_ranked, ref_ranked, strict=True))
        ours, ref = ndcg10(our_ranked, gold), ndcg10(ref_ranked, gold)
        res["xquad_en"] = {"queries": len(questions), "paragraph_chunks": len(recs),
                           "ndcg@10_smysl": ours, "ndcg@10_numpy": ref, "equal": ours == ref,
                           "identical_top10_doc_lists": f"{same_lists}/{len(questions)}",
                           "search_seconds": round(search_s, 2)}
        print(json.dumps(res["xquad_en"]), flush=True)
        # ANN: the whole >= 10k-chunk table, XQuAD questions as queries
        t0 = time.perf_counter()
        ix.store.build_index()
        build_s = time.perf_counter() - t0
        exact = ix.store.search(qv, 10, exact=True)
        t0 = time.perf_counter()
        approx = ix.store.search(qv, 10, exact=False)
        ann_s = time.perf_counter() - t0
        recall = float(np.mean([len({h.id for h in a} & {h.id for h in e}) / len(e)
                                for a, e in zip(approx, exact, strict=True)]))
        res["ann"] = {"index": ix.store.config.index, "rows": ix.count(),  # type: ignore[attr-defined]
                      "nprobes": ix.store.config.nprobes,  # type: ignore[attr-defined]
                      "refine_factor": ix.store.config.refine_factor,  # type: ignore[attr-defined]
                      "recall@10_vs_exact": recall, "build_seconds": round(build_s, 1),
                      "search_seconds": round(ann_s, 2)}
        print(json.dumps(res["ann"]), flush=True)

    # ---- 3. kill midway, rerun -------------------------------------------------------------
    script = tmp / "kill.py"
    kill_index = str(tmp / "kb-kill")
    kill_corpus = tmp / "data-kill" / "corpus.jsonl"
    kill_corpus.parent.mkdir()
    with open(corpus, encoding="utf-8") as src, open(kill_corpus, "w", encoding="utf-8") as dst:
        dst.writelines(line for n, line in enumerate(src) if n < args.kill_docs)
    script.write_text(KILL.format(model=MODEL, index=kill_index, corpus=str(kill_corpus),
                                  threads=args.threads))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)
    reported: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("DONE"):
            break
        reported += json.loads(line)
        if len(reported) >= args.kill_docs // 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    before = counter.n
    with Index.create_or_open(model, IndexConfig(StoreConfig(uri=kill_index))) as ix:
        after_kill = ix.count()
        present = len(ix.store.get(reported))
        rep = ix.add_files([kill_corpus], ReadConfig(id_field="id"), IngestConfig())
        final = ix.count()
        final_vecs = {r.id: r.vector for b in ix.store.scan() for r in b}
    with Index.create_or_open(model, index_cfg) as ix:  # the uninterrupted reference
        full = {r.id: r.vector for r in ix.store.get(list(final_vecs))}
        kill_ids = [json.loads(line)["id"] for line in
                    kill_corpus.read_text(encoding="utf-8").splitlines()]
        expected = ix.count({"doc_id": kill_ids})
    same = len(full) == len(final_vecs) == expected and all(
        np.allclose(final_vecs[k], full[k], atol=1e-5) for k in full)
    res["kill_rerun"] = {"documents": args.kill_docs, "killed_by": "SIGKILL",
                         "returncode": proc.returncode,
                         "reported_stored": len(reported), "present_after_kill": present,
                         "rows_after_kill": after_kill, "rerun_embedded": counter.n - before,
                         "rerun_unchanged": rep.unchanged, "final_rows": final,
                         "final_equals_uninterrupted": same}
    print(json.dumps(res["kill_rerun"]), flush=True)

    # the index's cache already holds every intents utterance: classification embeds nothing
    cache = EmbeddingCache(tmp / "kb" / "embedding-cache.sqlite")
    emb = CachedEmbedder(model, cache)

    # ---- 5. intents classification ---------------------------------------------------------
    train, test = intents("train"), intents("test")
    xtr = emb.embed([r["answer"] for r in train])
    xte = emb.embed([r["answer"] for r in test])
    ytr, yte = [r["label"] for r in train], [r["label"] for r in test]
    cls: dict = {"train": len(ytr), "test": len(yte), "labels": len(set(ytr))}
    for method, ref_est in (("logreg", LogisticRegression(max_iter=1000)),
                            ("knn", KNeighborsClassifier(10, metric="cosine",
                                                         algorithm="brute"))):
        clf = SupervisedClassifier.fit_vectors(xtr, ytr, ClassifyConfig(method=method))
        clf.save(tmp / f"{method}.npz")
        ours = np.mean(np.asarray(SupervisedClassifier.load(tmp / f"{method}.npz")
                                  .predict_vectors(xte)) == np.asarray(yte))
        ref_acc = ref_est.fit(xtr, ytr).score(xte, yte)
        cls[method] = {"accuracy_smysl": float(ours), "accuracy_sklearn": float(ref_acc),
                       "equal": float(ours) == float(ref_acc)}
    labels = sorted(set(ytr))
    zs = ZeroShotClassifier(model, {lab: lab.replace("__", ": ").replace("_", " ")
                                    for lab in labels})
    cls["zero_shot_accuracy"] = float(np.mean(
        np.asarray(labels)[(xte @ zs.label_vectors.T).argmax(1)] == np.asarray(yte)))
    res["intents_en"] = cls
    print(json.dumps(cls), flush=True)

    # ---- 4. dedup on ParaPhraser -----------------------------------------------------------
    with open(DATASETS / "paraphraser" / "para_gold.csv", encoding="utf-8", newline="") as f:
        pairs = list(csv.DictReader(f))
    texts = list(dict.fromkeys(t for p in pairs for t in (p["text_1"], p["text_2"])))
    pos = {t: i for i, t in enumerate(texts)}
    x = emb.embed(texts)
    a = np.array([pos[p["text_1"]] for p in pairs])
    b = np.array([pos[p["text_2"]] for p in pairs])
    cos = np.einsum("ij,ij->i", x[a], x[b])
    dd: dict = {"texts": len(texts), "labelled_pairs": len(pairs),
                "gold_1_precise": int(sum(p["class"] == "1" for p in pairs)),
                "gold_0_near": int(sum(p["class"] == "0" for p in pairs)), "thresholds": {}}
    for thr in (0.7, 0.8, 0.9):
        t0 = time.perf_counter()
        found = find_duplicates(x, DedupConfig(threshold=thr, neighbors=10,
                                               store=StoreConfig(uri=str(tmp / f"dd{thr}"))))
        sec = time.perf_counter() - t0
        got = {(i, j) for i, j, _ in found.pairs}
        pred = np.array([(min(i, j), max(i, j)) in got for i, j in zip(a, b, strict=True)])
        group = found.group_of
        same_group = (group[a] == group[b]) & (group[a] >= 0)
        row: dict = {"groups": len(found.groups), "pairs_found": len(found.pairs),
                     "seconds": round(sec, 1)}
        for name, gold_mask in (("class=1", np.array([p["class"] == "1" for p in pairs])),
                                ("class>=0", np.array([p["class"] != "-1" for p in pairs]))):
            ref_pred = cos >= thr  # scikit-learn reference on the same vectors, all labelled pairs
            row[name] = {
                "precision": float(precision_score(gold_mask, pred, zero_division=0)),
                "recall": float(recall_score(gold_mask, pred)),
                "precision_sklearn_ref": float(precision_score(gold_mask, ref_pred,
                                                               zero_division=0)),
                "recall_sklearn_ref": float(recall_score(gold_mask, ref_pred)),
                "group_precision": float(precision_score(gold_mask, same_group,
                                                         zero_division=0)),
                "group_recall": float(recall_score(gold_mask, same_group))}
            row[name]["equal"] = (row[name]["precision"] == row[name]["precision_sklearn_ref"]
                                  and row[name]["recall"] == row[name]["recall_sklearn_ref"])
        dd["thresholds"][str(thr)] = row
    res["dedup_paraphraser_ru"] = dd
    print(json.dumps(dd), flush=True)
    res["machine"]["load_at_end"] = os.getloadavg()[0]
    text = json.dumps(res, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
