"""Tables, figures, summary.json and report.html of ``gliomatch evaluate``."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["PAPERS", "papers_table", "plan_coverage_figure", "write_outputs"]

PARAM_LABELS = {
    "infiltration_mm": "√(D_w/ρ) (mm), identifiable",
    "rho_t": "ρT, identifiable",
    "dw_over_rho": "D_w/ρ (mm²), identifiable",
    "dw": "D_w (mm²/d)",
    "rho": "ρ (1/d)",
    "t_end": "T (d)",
    "x_mm": "seed x (mm)",
    "y_mm": "seed y (mm)",
    "z_mm": "seed z (mm)",
}


#: The papers' figures on their 50,000-tumor database (top-1 / top-5 / top-15 %, None where
#: not published): Table 1 on real patients (62; radiomics 61) and Table 2 on synthetic
#: queries. Reference values shown beside ours, never used in a computation.
PAPERS = {
    "real": {
        "ae": (33.8, None, 77.4),
        "vae8": (19.3, None, 67.7),
        "vae1024": (41.9, None, 80.6),
        "hash": (32.2, None, 82.2),
        "ds64": (88.7, None, None),
        "ds32": (66.1, None, None),
        "radiomics": (4.92, 4.92, 9.83),
    },
    "synthetic": {"ds64": (93.5, 100.0, 100.0), "ds32": (78.9, 99.6, 100.0)},
}


def _fmt(value, scale=1.0, digits=1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{scale * value:.{digits}f}"


def _table(out: Path, summary: dict) -> pd.DataFrame:
    t = pd.DataFrame(summary["table"])
    for col in ("index_bytes", "build_seconds", "encode_median_s"):
        if col not in t:
            t[col] = np.nan
    shown = t.assign(
        top1=lambda d: (100 * d.top1).round(1),
        top5=lambda d: (100 * d.top5).round(1),
        top15=lambda d: (100 * d.top15).round(1),
        median_ms=lambda d: (1000 * d.median_s).round(2),
        p95_ms=lambda d: (1000 * d.p95_s).round(2),
        index_mb=lambda d: (d.index_bytes.astype(float) / 1e6).round(3),
        index_build_s=lambda d: d.build_seconds.astype(float).round(0),
        encode_ms=lambda d: (1000 * d.encode_median_s.astype(float)).round(2),
    )[
        ["strategy", "queries", "n", "top1", "top5", "top15", "median_ms", "p95_ms",
         "median_rank_of_best", "index_mb", "index_build_s", "encode_ms"]
    ]  # fmt: skip
    shown.to_csv(out / "table_strategies.csv", index=False)
    lines = [
        "| strategy | queries | n | top-1 % | top-5 % | top-15 % | median / p95 ms per query |"
        " median rank of best | index MB | index build s | query encoding ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shown.itertuples():
        lines.append(
            f"| {r.strategy} | {r.queries} | {r.n} | {r.top1} | {r.top5} | {r.top15} "
            f"| {r.median_ms} / {r.p95_ms} | {r.median_rank_of_best:g} | {_fmt(r.index_mb)} "
            f"| {_fmt(r.index_build_s, digits=0)} | {_fmt(r.encode_ms, digits=2)} |"
        )
    (out / "table_strategies.md").write_text("\n".join(lines) + "\n")
    (out / "table_papers.md").write_text(papers_table(summary))
    return shown


def papers_table(summary: dict) -> str:
    """One row per strategy: our top-1/5/15 on synthetic and on real queries beside the
    papers' (Table 2 synthetic, Table 1 real), latency, index size, build time (for a learned
    strategy, the database's encoding) and the median time to encode one query (learned)."""
    rows = {}
    for r in summary["table"]:
        rows.setdefault(r["strategy"], {})[r["queries"]] = r

    def ours(r):
        if r is None:
            return "–"
        return " / ".join(_fmt(100 * r[f"top{k}"]) for k in (1, 5, 15)) + f" ({r['n']})"

    def theirs(kind, name):
        v = PAPERS[kind].get(name)
        return "–" if v is None else " / ".join(_fmt(x, digits=2 if x and x < 10 else 1) for x in v)

    lines = [
        "| strategy | synthetic top-1 / 5 / 15 % (n) | papers, synthetic | real top-1 / 5 / 15 % "
        "(n) | papers, real | median / p95 ms | index MB | index build s | query encoding ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, kinds in rows.items():
        any_row = kinds.get("synthetic") or kinds.get("real")
        lines.append(
            f"| {name} | {ours(kinds.get('synthetic'))} | {theirs('synthetic', name)} "
            f"| {ours(kinds.get('real'))} | {theirs('real', name)} "
            f"| {_fmt(1000 * any_row['median_s'], digits=1)} / "
            f"{_fmt(1000 * any_row['p95_s'], digits=1)} "
            f"| {_fmt((any_row.get('index_bytes') or 0) / 1e6)} "
            f"| {_fmt(any_row.get('build_seconds'), digits=0)} "
            f"| {_fmt(any_row.get('encode_median_s'), scale=1000, digits=1)} |"
        )
    return "\n".join(lines) + "\n"


def _dice_distribution(out, queries, truth_rows):
    kinds = [k for k in ("real", "synthetic") if any(q.kind == k for q in queries)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [truth_rows[q.qid] for q in queries if q.kind == kind]
        t = np.array([r["best_dice_t1gd"] for r in rows])
        f = np.array([r["best_dice_flair"] for r in rows])
        c = (t + f) / 2
        order = np.argsort(c)
        for arr, color, label in ((t, "r", "T1Gd"), (f, "b", "FLAIR"), (c, "k", "mean")):
            ax.plot(arr[order], color + ".", ms=3, label=f"{label} (mean {arr.mean():.3f})")
            ax.axhline(arr.mean(), color=color, lw=0.8, ls="--")
        ax.set_title(f"{kind}: best-match Dice per query ({len(rows)} queries)")
        ax.set_xlabel("query (sorted by mean Dice)")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "dice_distribution.png", dpi=80)
    plt.close(fig)


def _rank_of_best(out, res, n_db):
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, g in res.groupby("strategy", sort=False):
        r = np.sort(g.rank_of_best.to_numpy())
        ax.step(r, np.arange(1, len(r) + 1) / len(r), where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(n_db, 2))
    for x in (1, 5, 15):
        ax.axvline(x, color="gray", lw=0.5, ls=":")
    ax.set_xlabel("rank of the strategy's best match in the exact ranking")
    ax.set_ylabel("fraction of queries")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rank_of_best.png", dpi=80)
    plt.close(fig)


def _examples(out, db, res, queries, n_examples=4):
    atlas_t1 = db.atlas().t1
    strategies = list(dict.fromkeys(res.strategy))
    qs = queries[:n_examples]
    fig, axes = plt.subplots(
        len(qs), len(strategies), figsize=(3 * len(strategies), 3 * len(qs)), squeeze=False
    )
    for r, q in enumerate(qs):
        z = int(np.rint(np.argwhere(q.query.flair).mean(0))[2])
        for c, name in enumerate(strategies):
            ax = axes[r, c]
            best = int(res[(res.strategy == name) & (res.qid == q.qid)].best.iloc[0])
            bf, bt = db.masks(best)
            ax.imshow(atlas_t1[:, :, z].T, cmap="gray", origin="lower")
            for m, color, style in (
                (q.query.flair, "deepskyblue", "solid"),
                (q.query.t1gd, "red", "solid"),
                (bf, "deepskyblue", "dashed"),
                (bt, "red", "dashed"),
            ):
                sl = m[:, :, z].T.astype(float)
                if sl.any():
                    ax.contour(
                        sl, [0.5], colors=color, linestyles=style, linewidths=1, origin="lower"
                    )
            ax.set_title(f"{q.qid} · {name} → {best}", fontsize=8)
            ax.axis("off")
    fig.suptitle("query (solid) vs each strategy's best match (dashed); FLAIR blue, T1Gd red")
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=70)
    plt.close(fig)


def _recovery(out, summary):
    rec = pd.DataFrame(summary["recovery"])
    if rec.empty:
        return False
    rec.to_csv(out / "parameter_recovery.csv", index=False)
    fig, axes = plt.subplots(3, 3, figsize=(12, 11))
    for ax, p in zip(axes.ravel(), PARAM_LABELS, strict=True):
        t = rec[f"{p}_true"]
        ax.plot(t, rec[f"{p}_best"], "k.", ms=3, label="best match")
        if f"{p}_posterior_median" in rec:
            ax.plot(
                t, rec[f"{p}_posterior_median"], "r.", ms=3, alpha=0.6, label="posterior median"
            )
        else:
            ax.plot(t, rec[f"{p}_topk_median"], "r.", ms=3, alpha=0.6, label="top-k median")
        lo, hi = (
            float(min(t.min(), rec[f"{p}_best"].min())),
            float(max(t.max(), rec[f"{p}_best"].max())),
        )
        ax.plot([lo, hi], [lo, hi], "gray", lw=0.8)
        e = summary["parameter_errors"][f"{p}_best"]
        title = f"{PARAM_LABELS[p]}: MAE {e['mae']:.3g}, r = {e['corr']:.2f}"
        if f"{p}_covered" in rec:
            title += f"\n90 % interval covers {100 * rec[f'{p}_covered'].mean():.0f} %"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("true")
        ax.set_ylabel("recovered")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "parameter_recovery.png", dpi=80)
    plt.close(fig)
    return True


def write_outputs(out, db, res, queries, truth_rows, summary, k) -> None:
    out = Path(out)
    shown = _table(out, summary)
    _dice_distribution(out, queries, truth_rows)
    _rank_of_best(out, res, len(db))
    _examples(out, db, res, queries)
    has_rec = _recovery(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plaus = summary["plausibility"]
    pl = "".join(
        f"<li>{kind}: mean best-match Dice T1Gd {v['mean_best_dice_t1gd']:.3f}, FLAIR "
        f"{v['mean_best_dice_flair']:.3f} ({v['n']} queries)</li>"
        for kind, v in plaus.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gliomatch evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head>
<body><h1>Search strategies on {len(db)} tumors ({db.resolution}³)</h1>
<p>Ground truth: the exact ranking of the whole database (exact equals loop on the checked
sample: {summary["exact_equals_loop_on_sample"]}).</p>
{shown.to_html(index=False)}
<h2>Model plausibility</h2><p>How well the growth model explains the queries (the papers'
measure): mean best-match Dice.</p><ul>{pl}</ul>
<img src="dice_distribution.png" width="100%">
<h2>Rank of each strategy's best match</h2><img src="rank_of_best.png">
<h2>Examples</h2><img src="examples.png" width="100%">
{
        "<h2>Parameter recovery (synthetic)</h2><p>Top row: what one scan determines (seed, "
        "√(D_w/ρ), ρT), with the posterior's 90 % interval coverage. The other rows: D_w, ρ, T "
        "and the seed, which one scan does not determine separately (D_w, ρ, T).</p>"
        '<img src="parameter_recovery.png" width="100%">'
        if has_rec
        else ""
    }
<p>All numbers: <a href="summary.json">summary.json</a>.
{html.escape("Tables: table_strategies.md / .csv.")}</p></body></html>"""
    (out / "report.html").write_text(page)


def _db_tick(label: str) -> str:
    """``"12000@64"`` -> ``"12,000 tumors\n64^3"`` (:func:`~gliomatch.evaluation.plans.
    database_labels`)."""
    n, _, grid = label.partition("@")
    return f"{int(n):,} tumors" + (f"\n{grid}³" if grid else "")


def plan_coverage_figure(res: dict, path) -> Path:
    """``bench plans``: mean recurrence coverage (± standard error) of the standard, best-match
    and ensemble plans, per recurrence and database size."""
    from gliomatch.evaluation.plans import PLANS, RECURRENCES

    sizes = list(res["summary"])
    fig, axes = plt.subplots(1, len(RECURRENCES), figsize=(4 * len(RECURRENCES), 3.4), sharey=True)
    width = 0.8 / len(PLANS)
    for ax, r in zip(axes, RECURRENCES, strict=True):
        for j, name in enumerate(PLANS):
            vals, errs = [], []
            for s in sizes:
                sub = [x[f"{name}_{r}"] for x in res["rows"] if x["database"] == s]
                vals.append(100 * np.mean(sub))
                errs.append(100 * np.std(sub, ddof=1) / np.sqrt(len(sub)) if len(sub) > 1 else 0)
            x = np.arange(len(sizes)) + (j - 1) * width
            ax.bar(x, vals, width, yerr=errs, label=name, capsize=2)
        ax.set_xticks(np.arange(len(sizes)), [_db_tick(s) for s in sizes])
        ax.set_title(f"{r.replace('_', ' ')} recurrence")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("recurrence covered (%)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"{res['patients']} synthetic patients, plans of equal volume (core + "
        f"{res['margin_mm']:g} mm), follow-up {res['interval_range_days'][0]:g}-"
        f"{res['interval_range_days'][1]:g} days later",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
