"""PNG figures and an HTML report of one patient's inference."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gliomatch.files import atomic_path, write_text_atomic  # noqa: E402

__all__ = ["describe_quality", "write_report"]


def describe_quality(q: dict) -> str:
    """One line: the headline registration quality figure and the others."""
    parts = [f"{q['measure']} {q[q['measure']]:.2f} (headline)"]
    if q.get("brain_dice") is not None and q["measure"] != "brain_dice":
        parts.append(f"brain Dice {q['brain_dice']:.2f}")
    if q["measure"] != "tissue_eta":
        parts.append(f"tissue correlation ratio {q['tissue_eta']:.2f}")
    parts.append(f"T1 correlation {q['t1_correlation']:.2f} (contrast-dependent)")
    return "; ".join(parts)


_PLANES = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def _centre(mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    return np.rint(idx.mean(0)).astype(int) if len(idx) else np.asarray(mask.shape) // 2


def _slice(arr, axis, i):
    return np.take(arr, i, axis=axis).T


def _three_planes(path, background, centre, overlays=(), density=None, title=""):
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    lo, hi = (
        np.percentile(background[background > 0], [1, 99.5]) if np.any(background > 0) else (0, 1)
    )
    for ax, (name, axis) in zip(axes, _PLANES, strict=True):
        i = int(np.clip(centre[axis], 0, background.shape[axis] - 1))
        ax.imshow(_slice(background, axis, i), cmap="gray", origin="lower", vmin=lo, vmax=hi)
        if density is not None:
            d = _slice(density, axis, i)
            ax.imshow(
                np.ma.masked_less(d, 0.01), cmap="hot", origin="lower", alpha=0.6, vmin=0, vmax=1
            )
        for mask, color, style in overlays:
            m = _slice(mask.astype(float), axis, i)
            if m.any():
                ax.contour(
                    m, levels=[0.5], colors=color, linestyles=style, linewidths=1.2, origin="lower"
                )
        ax.set_title(f"{name} {i}")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def write_report(
    out,
    *,
    inputs,
    atlas,
    density_patient,
    f_atlas,
    t_atlas,
    best_masks,
    matches,
    parameters,
    quality,
    timing,
    warnings_=(),
    plans=None,
    refinement=None,
    density_refined=None,
) -> Path:
    """Write the figures and ``report.html`` into ``out``; returns the HTML path.
    ``refinement``: a :class:`gliomatch.patient.refine.Refinement` (its tissue maps and fit
    are shown), with ``density_refined`` its density on the patient's grid."""
    out = Path(out)
    scan = np.asarray(inputs.anatomy.dataobj, dtype=np.float32)
    c = _centre(inputs.flair)
    _three_planes(
        out / "patient.png",
        scan,
        c,
        [(inputs.flair, "deepskyblue", "solid"), (inputs.t1gd, "red", "solid")],
        title="patient scan: FLAIR (blue), T1Gd (red)",
    )
    _three_planes(
        out / "density.png",
        scan,
        c,
        [(inputs.flair, "deepskyblue", "solid")],
        density=density_patient.get_fdata(),
        title="predicted tumor cell density",
    )
    bf, bt = best_masks
    _three_planes(
        out / "atlas_match.png",
        atlas.t1,
        _centre(f_atlas),
        [
            (f_atlas, "deepskyblue", "solid"),
            (t_atlas, "red", "solid"),
            (bf, "deepskyblue", "dashed"),
            (bt, "red", "dashed"),
        ],
        title="atlas space: query (solid) vs best match (dashed)",
    )
    refine_html = ""
    if refinement is not None:
        refine_html = _refinement_section(out, refinement, density_refined, inputs, scan, c)
    plan_html = ""
    if plans is not None and "figures" in plans:
        _three_planes(
            out / "plans.png",
            scan,
            _centre(inputs.t1gd if inputs.t1gd.any() else inputs.flair),
            [
                (inputs.t1gd, "red", "solid"),
                (plans["standard"], "lime", "dashed"),
                (plans["personalized"], "yellow", "solid"),
            ],
            density=plans["density"],
            title="plans: standard CTV (green, dashed), personalized CTV (yellow); core (red)",
        )
        cells = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{f['volume_cm3']:.1f}</td>"
            f"<td>{f['outside_visible_tumor_cm3']:.1f}</td>"
            f"<td>{100 * f['covers_whole_tumor']:.1f} %</td><td>{100 * f['covers_core']:.1f} %</td>"
            "</tr>"
            for name, f in plans["figures"].items()
        )
        evidence = (
            f"<p><b>Which plan the benchmarks support:</b> "
            f"{html.escape(plans['evidence']['text'])}</p>"
            if "evidence" in plans
            else ""
        )
        plan_html = (
            f"<h2>Radiotherapy target volumes</h2><p>{html.escape(plans['description'])}</p>"
            f"{evidence}"
            "<table><tr><th>plan</th><th>volume (cm³)</th><th>brain outside the visible tumor "
            "(cm³)</th><th>covers the visible whole tumor</th><th>covers the core</th></tr>"
            f'{cells}</table><img src="plans.png" width="100%">'
        )
    elif plans is not None:
        plan_html = f"<h2>Radiotherapy target volumes</h2><p>{html.escape(plans['skipped'])}</p>"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ranks = [m["rank"] for m in matches]
    ax.plot(ranks, [m["score"] for m in matches], "k.-", label="score")
    ax.plot(ranks, [m["dice_t1gd"] for m in matches], "r.-", label="Dice T1Gd")
    ax.plot(ranks, [m["dice_flair"] for m in matches], "b.-", label="Dice FLAIR")
    ax.set_xlabel("rank")
    ax.set_ylabel("score / Dice")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out / "scores.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)

    best = matches[0]
    rows = "".join(
        f"<tr><td>{m['rank']}</td><td>{m['id']}</td><td>{m['score']:.4f}</td>"
        f"<td>{m['dice_t1gd']:.3f}</td><td>{m['dice_flair']:.3f}</td>"
        f"<td>{m['seed_mm']['x_mm']:.1f}, {m['seed_mm']['y_mm']:.1f}, "
        f"{m['seed_mm']['z_mm']:.1f}</td>"
        f"<td>{m['identifiable']['infiltration_mm']:.2f}</td>"
        f"<td>{m['identifiable']['rho_t']:.2f}</td></tr>"
        for m in matches
    )
    est = parameters["estimates"]
    pct = f"{100 * parameters['level']:.0f} %"

    def est_row(label, e, unit, fmt=".2f"):
        lo, hi = e["interval"]
        return (
            f"<tr><td>{label}</td><td>{e['median']:{fmt}}</td><td>{lo:{fmt}} – {hi:{fmt}}</td>"
            f"<td>{e['best']:{fmt}}</td><td>{unit}</td></tr>"
        )

    seed = est["seed_mm"]
    estimates = (
        est_row("infiltration length √(D<sub>w</sub>/ρ)", est["infiltration_mm"], "mm")
        + est_row("stage ρT", est["rho_t"], "(dimensionless)")
        + est_row("D<sub>w</sub>/ρ", est["dw_over_rho"], "mm²", ".1f")
        + "<tr><td>seed (atlas space)</td><td>"
        + ", ".join(f"{v:.1f}" for v in seed["mean"])
        + f"</td><td>within {seed['radius']:.1f} mm</td><td>"
        + ", ".join(f"{v:.1f}" for v in seed["best"])
        + "</td><td>mm</td></tr>"
    )
    given = parameters.get("given_age")
    if given:
        estimates += est_row(
            f"ρ (given age {given['age_days']:g} days)", given["rho"], "1/day", ".4g"
        ) + est_row(
            f"D<sub>w</sub> (given age {given['age_days']:g} days)", given["dw"], "mm²/day", ".4g"
        )
        for w in given["warnings"]:
            warnings_ = [*warnings_, w]
    both = parameters.get("two_scan")
    two = ""
    if both:
        b = both["best"]
        two = (
            f"<h2>Two scans, {both['interval_days']:g} days apart</h2><p>One trajectory (seed, "
            f"√(D<sub>w</sub>/ρ) = {b['infiltration_mm']:.2f} mm) at stages ρT = "
            f"{b['tau_first']:.2f} and {b['tau_followup']:.2f} (Dice-sum {b['score']:.3f} of 4) "
            f"gives ρ = {b['rho']:.4g} /day, D<sub>w</sub> = {b['dw']:.4g} mm²/day, and a tumor "
            f"age of {b['t_first_days']:.0f} days at the first scan. {html.escape(both['method'])}"
            ".</p>"
        )
        for w in both["warnings"]:
            warnings_ = [*warnings_, w]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings_)
    quality_text = describe_quality(quality)
    times = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timing.items() if k.endswith("_s"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gliomatch report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head>
<body><h1>gliomatch: personalized tumor growth model</h1>
<p>Best match: tumor {best["id"]}, score {best["score"]:.4f} (Dice T1Gd {best["dice_t1gd"]:.3f},
Dice FLAIR {best["dice_flair"]:.3f}).</p>
<h2>What this scan determines</h2>
<table><tr><th>quantity</th><th>posterior median</th><th>{pct} interval</th><th>best match</th>
<th>unit</th></tr>{estimates}</table>
<p>Posterior over the best {parameters["posterior_k"]} matches, weights
exp((s − s<sub>1</sub>)/{parameters["temperature"]:g}) of the combined Dice s (effective number
of matches {parameters["effective_matches"]:.1f}); the intervals' coverage on synthetic patients
is in docs/methods.md.</p>
<p><b>{html.escape(parameters["not_identifiable"])}</b></p>
{two}
<p>Registration quality: {html.escape(quality_text)}. Timing: {html.escape(times)}.</p>
{f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else ""}
<h2>Patient</h2><img src="patient.png" width="100%">
<h2>Predicted density</h2><img src="density.png" width="100%">
{refine_html}
{plan_html}
<h2>Atlas space</h2><img src="atlas_match.png" width="100%">
<h2>Top-{len(matches)} matches</h2><img src="scores.png">
<table><tr><th>rank</th><th>id</th><th>score</th><th>Dice T1Gd</th><th>Dice FLAIR</th>
<th>seed (mm)</th><th>√(D<sub>w</sub>/ρ) (mm)</th><th>ρT</th></tr>{rows}</table>
</body></html>"""
    return write_text_atomic(out / "report.html", page)


def _refinement_section(out: Path, refinement, density_refined, inputs, scan, c) -> str:
    """The refinement's figures (the patient's tissue on the working grid, the refined
    density) and its table of members before and after."""
    tissue = refinement.tissue
    _three_planes(
        out / "tissue.png",
        tissue.wm + 0.6 * tissue.gm + 0.2 * tissue.csf,  # a T1's order: WM > GM > CSF
        _centre(tissue.tumor),
        [(tissue.tumor, "deepskyblue", "solid")],
        title=f"patient tissue ({tissue.source}), {tissue.spacing:g} mm working grid: "
        "WM bright, GM grey, CSF dark; whole tumor (blue)",
    )
    _three_planes(
        out / "density_refined.png",
        scan,
        c,
        [(inputs.flair, "deepskyblue", "solid"), (inputs.t1gd, "red", "solid")],
        density=density_refined.get_fdata(),
        title="refined density in the patient's anatomy; FLAIR (blue), T1Gd (red)",
    )
    summ = refinement.summary()
    rows = "".join(
        f"<tr><td>{b['db_id']}</td><td>{b['score']:.3f}</td><td>{a['score']:.3f}</td>"
        f"<td>{a['dice_t1gd']:.3f}</td><td>{a['dice_flair']:.3f}</td>"
        f"<td>{', '.join(f'{v:.1f}' for v in a['seed_mm'])}</td>"
        f"<td>{a['infiltration_mm']:.2f}</td><td>{a['rho_t']:.2f}</td>"
        f"<td>{'refitted' if a['refined'] else 'kept (no better fit)'}</td></tr>"
        for b, a in zip(summ["members_before"], summ["members_after"], strict=True)
    )
    return (
        "<h2>Refined in the patient's anatomy</h2>"
        f"<p>{html.escape(summ['method'])}. Score (Dice T1Gd + Dice FLAIR on the patient's "
        f"masks, working grid) {summ['score_before']:.3f} atlas-only → "
        f"{summ['score_after']:.3f} refined, in {summ['seconds']:.1f} s. In-sample: a better "
        "fit to this scan is not by itself a better prediction of the recurrence (see the "
        "README's stress benchmark).</p>"
        "<table><tr><th>match</th><th>score atlas-only</th><th>score refined</th>"
        "<th>Dice T1Gd</th><th>Dice FLAIR</th><th>seed (mm, scanner)</th>"
        "<th>√(D<sub>w</sub>/ρ) (mm)</th><th>ρT</th><th></th></tr>"
        f"{rows}</table>"
        '<img src="tissue.png" width="100%"><img src="density_refined.png" width="100%">'
    )
