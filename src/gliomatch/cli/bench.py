"""`gliomatch bench`: solver, build, design, search, infer, two-scan, registration, plans."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import bench_app
from gliomatch.cli.common import (
    AtlasOpt,
    RegOpt,
    ResolutionOpt,
    as_json,
    handle_errors,
    progress_bar,
    strategy_names,
)
from gliomatch.errors import GliomatchError
from gliomatch.files import output_folder, write_text_atomic


@bench_app.command("solver")
@handle_errors
def bench_solver_cmd(
    resolution: ResolutionOpt = 128,
    dw: Annotated[float, typer.Option(help="D_w (mm^2/day).")] = 0.3,
    rho: Annotated[float, typer.Option(help="rho (1/day).")] = 0.05,
    t_end: Annotated[float, typer.Option(help="T_end (days).")] = 300.0,
    atlas: AtlasOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Last line is a JSON object.")] = False,
):
    """Time the numba solver against the whole-grid NumPy reference on the same problem."""
    from gliomatch.evaluation.bench import bench_solver

    r = bench_solver(resolution=resolution, dw=dw, rho=rho, t_end=t_end, atlas=atlas)
    typer.echo(
        f"problem: {r['resolution']}^3 ({r['spacing_mm']:.2f} mm), D_w {dw} mm^2/d, "
        f"rho {rho} /d, T {t_end} d: {r['steps']} steps of {r['dt_days']:.3f} d"
    )
    typer.echo(
        f"fast (numba):       {r['fast_s']:8.3f} s  (first call {r['warmup_s']:.2f} s "
        "incl. compile/cache load)"
    )
    typer.echo(f"reference (numpy):  {r['reference_s']:8.3f} s")
    typer.echo(f"speed-up:           {r['speedup']:8.1f} x")
    typer.echo(f"max |diff|:         {r['max_abs_diff']:.2e}")
    typer.echo(
        f"kernel: {r['kernel_ns_per_cell']:.2f} ns per tissue cell, "
        f"{r['kernel_gb_per_s']:.1f} GB/s of compulsory traffic (20 B/cell) vs "
        f"{r['copy_gb_per_s']:.1f} GB/s memory copy on this machine"
    )
    if json_out:
        typer.echo(as_json(r))


@bench_app.command("build")
@handle_errors
def bench_build_cmd(
    n: Annotated[int, typer.Option(help="Tumors to keep per design.")] = 500,
    resolution: ResolutionOpt = 128,
    designs: Annotated[
        str,
        typer.Option(
            help="Comma list of sampler[:snapshots per simulation], e.g. plain:8,scaled:32 "
            "(the first is the reference of the speed-up)."
        ),
    ] = "plain,scaled",
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all cores).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the databases here (default: temp).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per design.")] = False,
):
    """Build a database per sampler design; report tumors/min, simulations/min, tumors kept per
    simulation, rejection rate and bytes/tumor, and the speed-up over the first design."""
    from gliomatch.evaluation.bench import bench_build

    with progress_bar(not json_out) as bar:
        rows = bench_build(
            n=n,
            resolution=resolution,
            designs=[d for d in designs.split(",") if d.strip()],
            workers=workers,
            out=out,
            progress=bar,
        )
    for r in rows:
        if json_out:
            typer.echo(as_json(r))
            continue
        typer.echo(
            f"{r['design']:>10}: {r['n']} tumors at {resolution}^3 in {r['wall_s']:.1f} s: "
            f"{r['tumors_per_min']:.1f} tumors/min ({r['speedup_vs_first']:.2f}x), "
            f"{r['simulations_per_min']:.1f} simulations/min, {r['kept_per_simulation']:.2f} "
            f"kept per simulation, rejection rate {100 * r['rejection_rate']:.1f} %, "
            f"{r['bytes_per_tumor'] / 1e3:.1f} kB per tumor"
        )


@bench_app.command("design")
@handle_errors
def bench_design_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the databases (reused when rerun).")],
    designs: Annotated[
        str, typer.Option(help="Comma list of sampler[:snapshots]; the first is the reference.")
    ] = "plain:8,scaled:16,scaled:32,scaled:64",
    budget: Annotated[float, typer.Option(help="Build minutes per design.")] = 5.0,
    resolution: ResolutionOpt = 128,
    queries: Annotated[int, typer.Option(help="Held-out synthetic queries.")] = 1000,
    real: Annotated[
        Path | None,
        typer.Option(help="Also real patients: a cohort CSV, a BraTS case folder or a folder."),
    ] = None,
    labels: Annotated[str, typer.Option(help="Label convention of BraTS folders.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per design.")] = False,
):
    """Equal build time per sampler design; mean best-match Dice on the same held-out queries."""
    from gliomatch.evaluation.bench import bench_design

    with progress_bar(not json_out, transient=True) as bar:
        rows = bench_design(
            out,
            [d for d in designs.split(",") if d.strip()],
            budget_s=budget * 60,
            resolution=resolution,
            queries=queries,
            real=real,
            labels=labels,
            progress=bar,
            log=(lambda m: None) if json_out else typer.echo,
        )
    cases = sorted(rows[0]["real"]) if rows else []
    lines = [
        "| design | tumors | simulations | build s | tumors/min | mean best combined Dice | "
        "vs first (paired) | mean best Dice T1Gd | mean best Dice FLAIR |"
        + "".join(f" {c} best combined (T1Gd / FLAIR) |" for c in cases),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(cases),
    ]
    for r in rows:
        if json_out:
            typer.echo(as_json({k: v for k, v in r.items() if k != "per_query"}))
        lines.append(
            f"| {r['design']} | {r['tumors']} | {r['simulations']} | {r['build_s']:.0f} | "
            f"{r['tumors_per_min']:.0f} | {r['mean_best_combined']:.4f} ± "
            f"{r['sem_best_combined']:.4f} | {r['diff_vs_first']:+.4f} ± "
            f"{r['sem_diff_vs_first']:.4f} | {r['mean_best_dice_t1gd']:.3f} | "
            f"{r['mean_best_dice_flair']:.3f} |"
            + "".join(
                f" {r['real'][c][0]:.3f} ({r['real'][c][1]:.3f} / {r['real'][c][2]:.3f}) |"
                for c in cases
            )
        )
    (out / "design_table.md").write_text("\n".join(lines) + "\n")
    if not json_out:
        typer.echo("\n".join(lines))


@bench_app.command("search")
@handle_errors
def bench_search_cmd(
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = (
        "loop,exact,ds64,ds32"
    ),
    queries: Annotated[int, typer.Option(help="Held-out query tumors.")] = 20,
    k: Annotated[int, typer.Option(help="k of the top-k.")] = 15,
    scale: Annotated[
        int | None, typer.Option(help="Also time indexes padded to this many entries.")
    ] = None,
    loop_max: Annotated[
        int, typer.Option(help="Time loop on at most this many tumors (scaled linearly).")
    ] = 2000,
    rerank: Annotated[
        int, typer.Option(help="Also run code-based strategies re-ranking this many candidates.")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per strategy.")] = False,
):
    """Latency and top-1/5/15 preservation of search strategies on held-out tumors."""
    from gliomatch.database import Database
    from gliomatch.evaluation.bench import bench_search

    db = Database.open(db_path)
    with progress_bar(not json_out, transient=True) as bar:
        rows = bench_search(
            db,
            strategy_names(strategies),
            queries=queries,
            rerank=rerank,
            k=k,
            scale=scale,
            loop_max=loop_max,
            progress=bar,
            log=(lambda m: None) if json_out else typer.echo,
        )
    if json_out:
        for r in rows:
            typer.echo(as_json(r))
        return
    typer.echo(f"{len(db)} tumors at {db.resolution}^3, {rows[0]['queries']} held-out queries")
    typer.echo(
        f"{'strategy':>10} {'median':>10} {'p95':>10} {'speed-up':>9} {'top1':>6} "
        f"{'top5':>6} {'top15':>6} {'index':>9}"
    )
    for r in rows:
        sp = f"{r['speedup_vs_loop']:.0f}x" if r["speedup_vs_loop"] else "-"
        typer.echo(
            f"{r['strategy']:>10} {r['median_s'] * 1e3:8.2f}ms {r['p95_s'] * 1e3:8.2f}ms "
            f"{sp:>9} {100 * r['top1']:5.1f}% {100 * r['top5']:5.1f}% "
            f"{100 * r['top15']:5.1f}% {r['index_bytes'] / 1e6:7.1f}MB"
        )
        typer.echo(
            f"{'':>10} memory: +{r['rss_added_bytes'] / 1e6:.0f} MB resident for this strategy, "
            f"process peak {r['peak_rss_bytes'] / 1e6:.0f} MB"
        )
        if r.get("index_build_s"):
            typer.echo(f"{'':>10} index built in {r['index_build_s']:.1f} s")
        if "scaled_to" in r:
            sp = r.get("scaled_speedup_vs_loop")
            typer.echo(
                f"{'':>10} at {r['scaled_to']} entries: median "
                f"{r['scaled_median_s'] * 1e3:.2f} ms, p95 {r['scaled_p95_s'] * 1e3:.2f} ms, "
                f"index {r['scaled_index_bytes'] / 1e6:.0f} MB"
                + (f", {sp:.0f}x faster than loop scaled to that size" if sp else "")
            )
        if r["note"]:
            typer.echo(f"{'':>10} note: {r['note']}")
        if "exact_equals_loop" in r:
            typer.echo(
                f"{'':>10} exact top-{k} identical to loop on every query: {r['exact_equals_loop']}"
            )


@bench_app.command("infer")
@handle_errors
def bench_infer_cmd(
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    resolution: ResolutionOpt = 128,
    registration: RegOpt = "syn",
    case: Annotated[
        Path | None,
        typer.Option(help="A real BraTS case folder instead of a synthetic patient (needs --db)."),
    ] = None,
    labels: Annotated[str, typer.Option(help="Label convention of --case.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Last line is a JSON object.")] = False,
):
    """Time each stage of `infer` on a synthetic patient (load, register, warp, search, ...),
    or on a real BraTS case folder (--case)."""
    extra = {}
    with tempfile.TemporaryDirectory() as tmp:
        if case is not None:
            from gliomatch.database import Database
            from gliomatch.patient.cohort import load_case
            from gliomatch.patient.pipeline import infer

            if db is None:
                raise GliomatchError("--case needs --db (the database to search)")
            res = infer(
                load_case(case, labels), Database.open(db), Path(tmp), registration=registration
            )
            extra = {"case": str(case), "best_score": res.matches[0]["score"]}
        else:
            from gliomatch.evaluation.demo import run_demo

            d = run_demo(
                out=Path(tmp), resolution=resolution, seed=1, registration=registration,
                db_path=db,
            )  # fmt: skip
            res = d.result
            extra = {"dice_flair": d.dice_flair, "dice_t1gd": d.dice_t1gd}
    t = res.timing
    typer.echo(" | ".join(f"{k_[:-2]} {v_:.2f} s" for k_, v_ in t.items()))
    typer.echo(f"end to end {t['total_s']:.1f} s (goal <= 30 s); " + ", ".join(
        f"{k_} {v_:.3f}" if isinstance(v_, float) else f"{k_} {v_}" for k_, v_ in extra.items()
    ))  # fmt: skip
    q = res.quality_figures
    typer.echo(
        "registration quality: "
        + ", ".join(f"{k_} {v_:.3f}" for k_, v_ in q.items() if isinstance(v_, float))
    )
    if json_out:
        typer.echo(as_json({**t, "registration": registration, "registration_quality": q, **extra}))


@bench_app.command("two-scan")
@handle_errors
def bench_two_scan_cmd(
    db: Annotated[Path, typer.Option(help="Database folder.")],
    patients: Annotated[int, typer.Option(help="Synthetic two-scan patients.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patients.")] = 0,
    strategy: Annotated[str, typer.Option(help="Search strategy for the candidates.")] = "exact",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Recover rho, D_w and the age from synthetic two-scan patients (atlas space)."""
    from gliomatch.database import Database
    from gliomatch.evaluation.twoscan import bench_two_scan

    database = Database.open(db)
    with progress_bar(not json_out) as bar:
        res = bench_two_scan(
            database, patients=patients, seed=seed, strategy=strategy, progress=bar
        )
    if json_out:
        typer.echo(as_json(res))
        return
    typer.echo(
        f"{res['patients']} synthetic two-scan patients, {res['n_db']} tumors, {strategy}; "
        f"median {res['median_seconds']:.1f} s per patient"
    )
    typer.echo("| quantity | median relative error | 90th percentile | within 25 % | r (log) |")
    typer.echo("|---|---|---|---|---|")
    for q, e in res["errors"].items():
        typer.echo(
            f"| {q} | {100 * e['median_rel_error']:.1f} % | {100 * e['p90_rel_error']:.1f} % | "
            f"{100 * e['within_25pct']:.0f} % | {e['corr_log']:.2f} |"
        )


@bench_app.command("registration")
@handle_errors
def bench_registration_cmd(
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    patients: Annotated[int, typer.Option(help="Synthetic patients (each registered 6 ways).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patients.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Do the registration quality figures track the true accuracy, in any contrast?
    Synthetic patients (known deformation) in T1 and inverted contrast, registered by SyN,
    affine only or not at all."""
    from gliomatch.database import Database
    from gliomatch.evaluation.demo import demo_database
    from gliomatch.evaluation.regstudy import FIGURES, bench_registration

    database = Database.open(db) if db else demo_database(log=None if json_out else typer.echo)
    with progress_bar(not json_out) as bar:
        res = bench_registration(database, patients=patients, seed=seed, progress=bar)
    if json_out:
        typer.echo(as_json(res))
        return
    s = res["summary"]
    cells = [(c, k) for c in ("t1", "inverted") for k in ("syn", "affine", "none")]
    typer.echo(f"{res['patients']} synthetic patients; means per contrast and registration:")
    typer.echo("| figure | " + " | ".join(f"{c} {k}" for c, k in cells) + " | Spearman vs true |")
    typer.echo("|---|" + "---|" * (len(cells) + 1))
    for f in ("true_dice_flair", *FIGURES):
        rho = s[f].get("spearman_with_true_dice")
        typer.echo(
            f"| {f} | "
            + " | ".join(f"{s[f][f'mean_{c}_{k}']:.3f}" for c, k in cells)
            + f" | {'–' if rho is None else f'{rho:.2f}'} |"
        )


@bench_app.command("plans")
@handle_errors
def bench_plans_cmd(
    db: Annotated[
        list[Path],
        typer.Option(help="Database folder; repeat to compare sizes on the same patients."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for plans.json and plans.png.")],
    patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patients.")] = 0,
    margin: Annotated[float, typer.Option(help="Standard CTV margin around the core (mm).")] = 15.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Recurrence coverage of the standard and personalized plans (equal volume) on synthetic
    patients whose recurrence is their hidden simulation 90-365 days later (atlas space)."""
    from gliomatch.database import Database
    from gliomatch.evaluation.figures import plan_coverage_figure
    from gliomatch.evaluation.plans import PLANS, RECURRENCES, bench_plans

    folder = output_folder(out)
    databases = [Database.open(d) for d in db]
    with progress_bar(not json_out) as bar:
        res = bench_plans(databases, patients=patients, seed=seed, margin_mm=margin, progress=bar)
    write_text_atomic(folder / "plans.json", as_json(res))
    plan_coverage_figure(res, folder / "plans.png")
    if json_out:
        typer.echo(as_json(res))
        return
    typer.echo(
        f"{res['patients']} synthetic patients, recurrence {res['interval_range_days'][0]:g}-"
        f"{res['interval_range_days'][1]:g} days later; plans of equal volume (core + "
        f"{margin:g} mm); mean coverage %"
    )
    head = " | ".join(f"{p} {r}" for r in RECURRENCES for p in PLANS)
    typer.echo(f"| tumors | patients | median plan cm3 | {head} |")
    typer.echo("|" + "---|" * (3 + len(PLANS) * len(RECURRENCES)))
    for n, s in res["summary"].items():
        cells = " | ".join(f"{100 * s[f'{p}_{r}']:.1f}" for r in RECURRENCES for p in PLANS)
        typer.echo(f"| {int(n):,} | {s['patients']} | {s['median_plan_cm3']:.0f} | {cells} |")
    typer.echo("personalized minus standard (points, ± standard error):")
    for n, s in res["summary"].items():
        parts = [
            f"{p} {r} {100 * s[f'{p}_minus_standard_{r}']:+.1f} ± "
            f"{100 * s[f'{p}_minus_standard_{r}_se']:.1f}"
            for p in PLANS[1:]
            for r in RECURRENCES
        ]
        typer.echo(f"  {int(n):,} tumors: " + "; ".join(parts))
    typer.echo(f"wrote {folder / 'plans.json'} and {folder / 'plans.png'}")
