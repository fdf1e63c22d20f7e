"""`gliomatch bench infer | two-scan | registration | plans`: the patient benchmarks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import bench_app
from gliomatch.cli.common import (
    RegOpt,
    as_json,
    handle_errors,
    prepared_strategy,
    progress_bar,
)
from gliomatch.errors import GliomatchError
from gliomatch.files import output_folder, write_text_atomic


@bench_app.command("infer")
@handle_errors
def bench_infer_cmd(
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    resolution: Annotated[
        int, typer.Option(help="Grid of the demo database (voxels per side; default 64, 3 mm).")
    ] = 64,
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
            database = Database.open(db)
            prepared_strategy(database, "exact", quiet=json_out)
            res = infer(load_case(case, labels), database, Path(tmp), registration=registration)
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
    from gliomatch.database.demo import demo_database
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
        typer.Option(
            help="Database folder; repeat to compare databases on the same patients (made from "
            "the first one, on its grid; others of the same atlas at other resolutions are "
            "searched by resampling)."
        ),
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
    typer.echo(f"| tumors | grid | build s | patients | median plan cm3 | {head} |")
    typer.echo("|" + "---|" * (5 + len(PLANS) * len(RECURRENCES)))
    for s in res["summary"].values():
        cells = " | ".join(f"{100 * s[f'{p}_{r}']:.1f}" for r in RECURRENCES for p in PLANS)
        built = "–" if s["build_seconds"] is None else f"{s['build_seconds']:.0f}"
        typer.echo(
            f"| {s['n_db']:,} | {s['resolution']}³ | {built} | {s['patients']} | "
            f"{s['median_plan_cm3']:.0f} | {cells} |"
        )
    typer.echo("personalized minus standard (points, ± standard error):")
    for s in res["summary"].values():
        parts = [
            f"{p} {r} {100 * s[f'{p}_minus_standard_{r}']:+.1f} ± "
            f"{100 * s[f'{p}_minus_standard_{r}_se']:.1f}"
            for p in PLANS[1:]
            for r in RECURRENCES
        ]
        typer.echo(f"  {s['n_db']:,} tumors at {s['resolution']}³: " + "; ".join(parts))
    typer.echo(f"wrote {folder / 'plans.json'} and {folder / 'plans.png'}")
