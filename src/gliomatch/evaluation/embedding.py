"""Validation of multitask embeddings as in the seed paper (Sun et al., Fig. 4, Tables 3-4, Fig. 5).

For each trained multitask model of a database, held-out tumors (not used for its training or
validation) are embedded and their K nearest *training* tumors (FAISS, L2) vote on each label:

* ``knn.csv`` / ``knn.png`` -- accuracy per label for K = 1..15 and the RMSE of the linear tumor
  size (mean of the K neighbours' sizes), for exact and for distorted bounding boxes;
* ``task_sets.md`` / ``.csv`` -- one row per model (full multitask vs single-task networks) at
  the reporting K, beside the majority-class baseline;
* ``robustness.md`` / ``.csv`` -- accuracy with exact vs distorted boxes (log2 scale ~ N(0, 1/3),
  shift ~ size * N(0, 1/10) per axis) of the query tumors;
* ``tsne.png`` -- t-SNE of the held-out embeddings, coloured by size, marked by region.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from gliomatch.errors import GliomatchError, require_extra
from gliomatch.learn.labels import REGIONS, TASKS, task_labels
from gliomatch.progress import report

__all__ = ["knn_predict", "multitask_models", "validate_embeddings"]


def multitask_models(db) -> list[str]:
    """Names of the trained multitask models of ``db`` (the full model first)."""
    folder = db.index_dir / "models"
    names = sorted(
        p.name
        for p in folder.glob("multitask*")
        if (p / "model.pt").is_file() and (p / "config.json").is_file()
    )
    return sorted(names, key=lambda n: (n != "multitask", n))


def knn_predict(neighbours: np.ndarray, ref_labels: np.ndarray, k: int, n_classes: int):
    """Majority vote of the first ``k`` neighbours; ties go to the class met first (nearest)."""
    votes = ref_labels[neighbours[:, :k]]
    rows = np.arange(len(votes))
    counts = np.zeros((len(votes), n_classes), np.int64)
    first = np.full((len(votes), n_classes), k, np.int64)
    for r in range(k - 1, -1, -1):
        counts[rows, votes[:, r]] += 1
        first[rows, votes[:, r]] = r
    return (counts * (k + 1) - first).argmax(axis=1)  # most votes, then the nearest


def _neighbours(ref: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(np.ascontiguousarray(ref, dtype=np.float32))
    return index.search(np.ascontiguousarray(test, dtype=np.float32), k)[1]


def _scores(nb, labels, ref_ids, test_ids, ks) -> list[dict]:
    rows = []
    size_ref = labels["size_mm"].to_numpy()[ref_ids]
    size_test = labels["size_mm"].to_numpy()[test_ids]
    for k in ks:
        for t, classes in TASKS.items():
            y = labels[t].to_numpy()
            pred = knn_predict(nb, y[ref_ids], k, len(classes))
            rows.append({"task": t, "k": k, "value": float(np.mean(pred == y[test_ids]))})
        est = size_ref[nb[:, :k]].mean(axis=1)
        rmse = float(np.sqrt(np.mean((est - size_test) ** 2)))
        rows.append({"task": "size_rmse_mm", "k": k, "value": rmse})
    return rows


def validate_embeddings(
    db,
    out: Path,
    models: list[str] | None = None,
    n_test: int = 500,
    max_k: int = 15,
    report_k: int = 5,
    seed: int = 0,
    progress=None,
) -> dict:
    """Run the KNN / task-set / robustness / t-SNE validation; returns ``summary`` (also saved
    as ``multitask_summary.json``)."""
    require_extra("learn", "the embedding validation")
    from gliomatch.learn.multitask import (
        embed_masks,
        load_multitask,
        model_atlas,
        tumor_arrays,
    )
    from gliomatch.learn.roi import distort_boxes

    models = models or multitask_models(db)
    if not models:
        raise GliomatchError(
            f"no trained multitask model in {db.index_dir / 'models'}; run "
            f"`gliomatch train multitask --db {db.path}` first"
        )
    if not 1 <= report_k <= max_k:
        raise GliomatchError(f"report K must be within 1..{max_k}, got {report_k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels, _ = task_labels(db.params)
    ks = list(range(1, max_k + 1))
    rows, tsne_data, summary = [], None, {"models": {}, "report_k": report_k}
    for mi, name in enumerate(models):
        model, meta = load_multitask(db, name)
        split = np.load(db.index_dir / "models" / name / "split.npz")
        ref_ids = split["train"]
        used = np.zeros(len(db), bool)
        used[ref_ids] = used[split["val"]] = True
        held = np.flatnonzero(~used)
        if len(held) == 0:
            raise GliomatchError(f"{name}: every tumor was used in training; nothing held out")
        rng = np.random.default_rng(seed)
        test_ids = np.sort(rng.choice(held, size=min(n_test, len(held)), replace=False))
        atlas = model_atlas(db, model)
        r = model.resolution
        ref_masks, _, ref_boxes = tumor_arrays(db, ref_ids, r, density=False)
        ref = embed_masks(model, ref_masks, ref_boxes, atlas)
        del ref_masks
        test_masks, _, test_boxes = tumor_arrays(db, test_ids, r, density=False)
        test = embed_masks(model, test_masks, test_boxes, atlas)
        test_dist = embed_masks(model, test_masks, distort_boxes(test_boxes, rng), atlas)
        k = min(max_k, len(ref_ids))
        for boxes, emb in (("exact", test), ("distorted", test_dist)):
            for row in _scores(_neighbours(ref, emb, k), labels, ref_ids, test_ids, ks[:k]):
                rows.append({"model": name, "boxes": boxes, **row})
        summary["models"][name] = {
            "tasks": meta["model"]["tasks"],
            "lambda_seg": meta["train"]["lambda_seg"],
            "n_reference": int(len(ref_ids)),
            "n_test": int(len(test_ids)),
        }
        if tsne_data is None:
            tsne_data = (name, test, test_ids)
        report(progress, mi + 1, len(models), "multitask validation")
    summary["baseline"] = _baseline(labels, ref_ids, test_ids)
    _write_csv(out / "knn.csv", rows)
    table = _tables(out, rows, summary, report_k)
    _plot_knn(out / "knn.png", rows, models[0])
    _plot_tsne(out / "tsne.png", *tsne_data, labels)
    summary["table"] = table
    (out / "multitask_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _baseline(labels, ref_ids, test_ids) -> dict:
    """Majority class of the reference set, and the reference mean size: what no embedding
    at all achieves."""
    base = {}
    for t in TASKS:
        y = labels[t].to_numpy()
        major = np.bincount(y[ref_ids], minlength=len(TASKS[t])).argmax()
        base[t] = float(np.mean(y[test_ids] == major))
    size = labels["size_mm"].to_numpy()
    base["size_rmse_mm"] = float(np.sqrt(np.mean((size[test_ids] - size[ref_ids].mean()) ** 2)))
    return base


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _tables(out: Path, rows, summary, k) -> dict:
    cols = [*TASKS, "size_rmse_mm"]
    pick = {(r["model"], r["boxes"], r["task"]): r["value"] for r in rows if r["k"] == k}
    models = list(summary["models"])
    table = {m: {c: pick.get((m, "exact", c)) for c in cols} for m in models}

    def fmt(c, v):
        if v is None:
            return "–"
        return f"{v:.1f}" if c == "size_rmse_mm" else f"{100 * v:.1f}"

    head = "| model | tasks trained | " + " | ".join(cols) + " |\n"
    head += "|" + "---|" * (len(cols) + 2) + "\n"
    md = f"KNN accuracy (%) at K = {k} on held-out tumors; size RMSE in mm.\n\n" + head
    for m in models:
        tasks = summary["models"][m]["tasks"]
        trained = ("seg + " if summary["models"][m]["lambda_seg"] > 0 else "") + (
            ", ".join(tasks) or "—"
        )
        md += f"| {m} | {trained} | " + " | ".join(fmt(c, table[m][c]) for c in cols) + " |\n"
    md += (
        "| majority baseline | — | "
        + " | ".join(fmt(c, summary["baseline"][c]) for c in cols)
        + " |\n"
    )
    (out / "task_sets.md").write_text(md)
    _write_csv(
        out / "task_sets.csv",
        [{"model": m, **table[m]} for m in models] + [{"model": "baseline", **summary["baseline"]}],
    )
    rob, rmd = [], f"Exact vs distorted boxes, KNN at K = {k} (accuracy %, size RMSE mm).\n\n"
    rmd += "| model | label | exact | distorted | change |\n|---|---|---|---|---|\n"
    for m in models:
        for c in cols:
            a, b = pick.get((m, "exact", c)), pick.get((m, "distorted", c))
            if a is None:
                continue
            rob.append({"model": m, "label": c, "exact": a, "distorted": b})
            scale = 1 if c == "size_rmse_mm" else 100
            rmd += f"| {m} | {c} | {fmt(c, a)} | {fmt(c, b)} | {scale * (b - a):+.1f} |\n"
    (out / "robustness.md").write_text(rmd)
    _write_csv(out / "robustness.csv", rob)
    return table


def _plot_knn(path: Path, rows, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, t in enumerate(TASKS):
        for boxes, style in (("exact", "-"), ("distorted", ":")):
            pts = [
                (r["k"], r["value"])
                for r in rows
                if (r["model"], r["task"], r["boxes"]) == (model, t, boxes)
            ]
            if pts:
                k, v = zip(*pts, strict=True)
                label = t if boxes == "exact" else None
                ax.plot(k, 100 * np.array(v), style, color=f"C{colour}", label=label)
    ax.set_xlabel("K")
    ax.set_ylabel("KNN accuracy (%)")
    ax.set_title(f"{model}: label accuracy (dotted: distorted boxes)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    for boxes, style in (("exact", "-"), ("distorted", ":")):
        pts = [
            (r["k"], r["value"])
            for r in rows
            if (r["model"], r["task"], r["boxes"]) == (model, "size_rmse_mm", boxes)
        ]
        k, v = zip(*pts, strict=True)
        ax2.plot(k, v, style, label=boxes)
    ax2.set_xlabel("K")
    ax2.set_ylabel("RMSE of linear size (mm)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_tsne(path: Path, model: str, emb: np.ndarray, ids: np.ndarray, labels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(emb)
    xy = TSNE(
        2, perplexity=min(30.0, max(2.0, (n - 1) / 3)), random_state=0, init="pca"
    ).fit_transform(emb)
    size = labels["size_mm"].to_numpy()[ids]
    region = labels["region"].to_numpy()[ids]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    markers = "os^vDP"
    sc = None
    for r, name in enumerate(REGIONS):
        sel = region == r
        if sel.any():
            sc = ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                c=size[sel],
                cmap="viridis",
                marker=markers[r],
                s=14,
                vmin=size.min(),
                vmax=size.max(),
                label=name,
            )
    fig.colorbar(sc, ax=ax, label="linear size (mm)")
    ax.legend(fontsize=7, markerscale=1.2)
    ax.set_title(f"t-SNE of {model} embeddings (held-out tumors)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
