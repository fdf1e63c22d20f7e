"""PNG figures and an HTML report of one patient's inference."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gliomatch.files import atomic_path, write_text_atomic  # noqa: E402

__all__ = ["CONVENTION", "describe_quality", "provenance_html", "write_report"]


def describe_quality(q: dict) -> str:
    """One line: the headline registration quality figure and the others."""
    parts = [f"{q['measure']} {q[q['measure']]:.2f} (headline)"]
    if q.get("brain_dice") is not None and q["measure"] != "brain_dice":
        parts.append(f"brain Dice {q['brain_dice']:.2f}")
    if q["measure"] != "tissue_eta":
        parts.append(f"tissue correlation ratio {q['tissue_eta']:.2f}")
    parts.append(f"T1 correlation {q['t1_correlation']:.2f} (contrast-dependent)")
    return "; ".join(parts)


#: Every panel is drawn in neurological convention: the images are turned to the closest
#: canonical (RAS+) orientation first, so the patient's left is on the panel's left, anterior
#: up (axial), superior up (coronal, sagittal) and anterior right (sagittal), whatever the
#: voxel order on disk (BraTS' LPS files included); each panel says so with its letters.
CONVENTION = "neurological convention (the patient's left on the image's left)"
#: (name, RAS axis held fixed, axis label, (left, right, bottom, top) edge letters)
_PLANES = (
    ("sagittal", 0, "x", ("P", "A", "I", "S")),
    ("coronal", 1, "y", ("L", "R", "I", "S")),
    ("axial", 2, "z", ("L", "R", "P", "A")),
)


def _canonical(arr, affine):
    """``(array, affine)`` turned to the closest canonical RAS+ voxel order (flips and axis
    swaps only: no resampling)."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    affine = np.asarray(affine, dtype=np.float64)
    t = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    arr = np.asarray(arr)
    return apply_orientation(arr, t), affine @ inv_ornt_aff(t, arr.shape[:3])


def _centre(mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    return np.rint(idx.mean(0)).astype(int) if len(idx) else np.asarray(mask.shape) // 2


def _slice(arr, axis, i):
    return np.take(arr, i, axis=axis).T


def _three_planes(path, background, affine, centre_mask, overlays=(), density=None, title="",
                  density_label="tumor-cell density"):  # fmt: skip
    """Three orthogonal slices through the centre of ``centre_mask``: ``background`` in grey,
    ``density`` (optional) in a heat map with its colorbar, ``overlays`` (``(mask, colour,
    line style, label)``) as outlines with a legend of those present; orientation letters on
    every edge, each slice's position in mm (scanner RAS), voxel aspect kept."""
    bg, aff = _canonical(background, affine)
    cm, _ = _canonical(centre_mask, affine)
    dens = None if density is None else _canonical(density, affine)[0]
    over = [(_canonical(m, affine)[0], c, st, lab) for m, c, st, lab in overlays]
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    centre = _centre(cm)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    lo, hi = np.percentile(bg[bg > 0], [1, 99.5]) if np.any(bg > 0) else (0, 1)
    heat = None
    for ax, (name, axis, coord, (left, right, bottom, top)) in zip(axes, _PLANES, strict=True):
        i = int(np.clip(centre[axis], 0, bg.shape[axis] - 1))
        h_axis, v_axis = [a for a in range(3) if a != axis]
        aspect = zooms[v_axis] / zooms[h_axis]
        ax.imshow(_slice(bg, axis, i), cmap="gray", origin="lower", vmin=lo, vmax=hi,
                  aspect=aspect)  # fmt: skip
        if dens is not None:
            heat = ax.imshow(np.ma.masked_less(_slice(dens, axis, i), 0.01), cmap="hot",
                             origin="lower", alpha=0.6, vmin=0, vmax=1, aspect=aspect)  # fmt: skip
        for mask, color, style, _label in over:
            m = _slice(mask.astype(float), axis, i)
            if m.any():
                ax.contour(m, levels=[0.5], colors=color, linestyles=style, linewidths=1.2,
                           origin="lower")  # fmt: skip
        voxel = np.zeros(3)
        voxel[axis] = i
        mm = float((aff[:3, :3] @ voxel + aff[:3, 3])[axis])
        ax.set_title(f"{name}, {coord} = {mm:.1f} mm")
        for text, xy, ha, va in ((left, (0.01, 0.5), "left", "center"),
                                 (right, (0.99, 0.5), "right", "center"),
                                 (bottom, (0.5, 0.01), "center", "bottom"),
                                 (top, (0.5, 0.99), "center", "top")):  # fmt: skip
            ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="yellow",
                    fontsize=11, fontweight="bold")  # fmt: skip
        ax.axis("off")
    handles = [
        Line2D([], [], color=c, linestyle=st, label=lab) for m, c, st, lab in over if m.any()
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if heat is not None:
        fig.colorbar(heat, ax=list(axes), fraction=0.02, pad=0.01, label=density_label)
    fig.suptitle(f"{title}\n{CONVENTION}; positions in scanner (RAS) mm", fontsize=10)
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
    provenance=None,
    viewer=None,
) -> Path:
    """Write the figures and ``report.html`` into ``out``; returns the HTML path.
    ``refinement``: a :class:`gliomatch.patient.refine.Refinement` (its tissue maps and fit
    are shown), with ``density_refined`` its density on the patient's grid. ``plans``: its
    ``density`` (the one the plans were made from) is the density shown, beside the best
    match's when they differ. ``provenance``: the block of :func:`provenance_html`; ``viewer``:
    the interactive page to link."""
    out = Path(out)
    scan = np.asarray(inputs.anatomy.dataobj, dtype=np.float32)
    aff = inputs.anatomy.affine
    tumor = [(inputs.flair, "deepskyblue", "solid", "whole tumor (FLAIR)")]
    if inputs.t1gd.any():
        tumor.append((inputs.t1gd, "red", "solid", "tumor core (T1Gd)"))
    _three_planes(out / "patient.png", scan, aff, inputs.flair, tumor,
                  title="patient scan and its segmentation")  # fmt: skip
    best = density_patient.get_fdata()
    planned = None if plans is None or "density" not in plans else np.asarray(plans["density"])
    source = plans.get("source", "planned") if plans else "best match"
    shown = best if planned is None else planned
    _three_planes(out / "density.png", scan, aff, inputs.flair, tumor, density=shown,
                  title=f"predicted tumor-cell density: {source}")  # fmt: skip
    density_imgs = '<img src="density.png" width="100%">'
    if planned is not None and not np.array_equal(planned, best):
        _three_planes(out / "density_best.png", scan, aff, inputs.flair, tumor, density=best,
                      title="predicted tumor-cell density: the best match warped back "
                      "(atlas-only)")  # fmt: skip
        density_imgs += '<img src="density_best.png" width="100%">'
    bf, bt = best_masks
    atlas_over = [(f_atlas, "deepskyblue", "solid", "query whole tumor"),
                  (bf, "deepskyblue", "dashed", "best match whole tumor")]  # fmt: skip
    if np.any(t_atlas) or np.any(bt):
        atlas_over += [(t_atlas, "red", "solid", "query core"),
                       (bt, "red", "dashed", "best match core")]  # fmt: skip
    _three_planes(out / "atlas_match.png", atlas.t1, atlas.affine, f_atlas, atlas_over,
                  title="atlas space: the query (solid) and the best match (dashed)")  # fmt: skip
    refine_html = ""
    if refinement is not None:
        refine_html = _refinement_section(out, refinement, density_refined, inputs, scan, tumor)
    plan_html = ""
    if plans is not None and "figures" in plans:
        _three_planes(
            out / "plans.png", scan, aff, inputs.t1gd if inputs.t1gd.any() else inputs.flair,
            [
                (inputs.t1gd, "red", "solid", "tumor core (GTV)"),
                (plans["standard"], "lime", "dashed", "standard CTV"),
                (plans["personalized"], "yellow", "solid", "personalized CTV"),
            ],
            density=plans["density"],
            title=f"radiotherapy plans over the density they were made from ({source})",
        )  # fmt: skip
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
    viewer_html = (
        f'<p><b><a href="{html.escape(viewer)}">Interactive view</a></b> of the scan, the '
        "density and both plans (works offline; NiiVue). Every figure below is in "
        f"{CONVENTION}.</p>"
        if viewer
        else f"<p>Every figure below is in {CONVENTION}.</p>"
    )
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
{viewer_html}
{f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else ""}
<h2>Patient</h2><img src="patient.png" width="100%">
<h2>Predicted density</h2>{density_imgs}
{refine_html}
{plan_html}
<h2>Atlas space</h2><img src="atlas_match.png" width="100%">
<h2>Top-{len(matches)} matches</h2><img src="scores.png">
<table><tr><th>rank</th><th>id</th><th>score</th><th>Dice T1Gd</th><th>Dice FLAIR</th>
<th>seed (mm)</th><th>√(D<sub>w</sub>/ρ) (mm)</th><th>ρT</th></tr>{rows}</table>
{provenance_html(provenance) if provenance else ""}
</body></html>"""
    return write_text_atomic(out / "report.html", page)


def _refinement_section(out: Path, refinement, density_refined, inputs, scan, tumor) -> str:
    """The refinement's figures (the patient's tissue on the working grid, the refined
    density) and its table of members before and after."""
    tissue = refinement.tissue
    _three_planes(
        out / "tissue.png",
        tissue.wm + 0.6 * tissue.gm + 0.2 * tissue.csf,  # a T1's order: WM > GM > CSF
        tissue.affine,
        tissue.tumor,
        [(tissue.tumor, "deepskyblue", "solid", "whole tumor")],
        title=f"patient tissue ({tissue.source}), {tissue.spacing:g} mm working grid: "
        "WM bright, GM grey, CSF dark",
    )
    _three_planes(
        out / "density_refined.png", scan, inputs.anatomy.affine, inputs.flair, tumor,
        density=density_refined.get_fdata(),
        title="refined density in the patient's anatomy",
    )  # fmt: skip
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


def provenance_html(p: dict) -> str:
    """The report's provenance block: the database, gliomatch's version, the inputs with their
    checksums, the labels, the date and the command line."""
    db = p["database"]
    calib = "calibrated" if db["calibrated"] else "not calibrated (`gliomatch db calibrate`)"
    rows = [
        ("gliomatch", p["gliomatch_version"]),
        ("date", p["date"]),
        ("command line", p["command_line"]),
        ("database", f"{db['path']}: {db['tumors']:,} tumors on a {db['grid']}³ atlas grid, "
                     f"fingerprint {db['fingerprint']}, posterior intervals {calib}"),
        ("search / registration", f"{p['strategy']} / {p['registration']}"),
        ("labels", str(p["labels"])),
    ]  # fmt: skip
    if p.get("dicom_series"):
        d = p["dicom_series"]
        rows.append(
            ("DICOM series", f"{d['folder']} (SeriesInstanceUID {d['series_instance_uid']})")
        )
    for role, f in p["inputs"].items():
        rows.append((f"input: {role}", f"{f['path']} (SHA-256 {f['sha256']})"))
    cells = "".join(
        f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v))}</code></td></tr>"
        for k, v in rows
    )
    return f"<h2>Provenance</h2><table>{cells}</table>"
