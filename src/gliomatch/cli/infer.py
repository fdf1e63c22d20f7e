"""`gliomatch infer | infer-batch | demo`: personalize the model for patients."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    MarginOpt,
    PlanLevelOpt,
    PlanVolumeOpt,
    RegOpt,
    ResolutionOpt,
    StrategyOpt,
    as_json,
    check_k,
    handle_errors,
    print_estimates,
    print_plans,
)
from gliomatch.errors import GliomatchError


def _print_result(res, json_out: bool, extra: dict | None = None):
    from gliomatch.patient.report import describe_quality

    if json_out:
        typer.echo(
            as_json(
                {
                    "out": str(res.out),
                    "matches": res.matches[:5],
                    "parameters": res.parameters,
                    "timing": res.timing,
                    "registration_quality": res.quality,
                    "registration_quality_figures": res.quality_figures,
                    "plans": res.plans,
                    **(extra or {}),
                }
            )
        )
        return
    b = res.matches[0]
    typer.echo(
        f"best match: tumor {b['id']}, score {b['score']:.4f} "
        f"(Dice T1Gd {b['dice_t1gd']:.3f}, FLAIR {b['dice_flair']:.3f})"
    )
    print_estimates(res.parameters)
    print_plans(res.plans)
    typer.echo(
        f"registration quality: {describe_quality(res.quality_figures)}; timing: "
        + ", ".join(f"{k_[:-2]} {v_:.1f} s" for k_, v_ in res.timing.items())
    )
    typer.echo(f"outputs in {res.out} (report: {res.out / 'report.html'})")


@app.command()
@handle_errors
def infer(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    t1: Annotated[Path | None, typer.Option(help="Patient T1 (registration reference).")] = None,
    t1c: Annotated[Path | None, typer.Option(help="Patient T1Gd (registration reference).")] = None,
    wm: Annotated[
        Path | None, typer.Option(help="White-matter map (registration reference).")
    ] = None,
    seg: Annotated[Path | None, typer.Option(help="BraTS label map (1/2/4 or 1/2/3).")] = None,
    flair_mask: Annotated[Path | None, typer.Option(help="Binary whole-tumor mask.")] = None,
    t1gd_mask: Annotated[Path | None, typer.Option(help="Binary tumor-core mask.")] = None,
    case: Annotated[
        Path | None,
        typer.Option(
            help="A BraTS case folder (<id>-t1n/-t1c/-seg.nii.gz) instead of the files above."
        ),
    ] = None,
    labels: Annotated[
        str,
        typer.Option(
            help="Label convention of --seg: auto, brats2013, brats2021, brats2023, brats2024 "
            "or predictgbm (see the README's table)."
        ),
    ] = "auto",
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    k: Annotated[int, typer.Option(help="Number of matches.")] = 15,
    strategy: StrategyOpt = "exact",
    registration: RegOpt = "syn",
    skull: Annotated[str, typer.Option(help="auto, on or off: is the skull still on?")] = "auto",
    age_days: Annotated[
        float | None,
        typer.Option(
            help="The tumor's age in days, if known: then rho and D_w are estimated too "
            "(one scan determines only D_w/rho and rho*T)."
        ),
    ] = None,
    followup_seg: Annotated[
        Path | None,
        typer.Option(
            help="A later label map of the same untreated tumor, on the anatomy's grid: with "
            "--interval-days, estimates rho, D_w and the age from both scans."
        ),
    ] = None,
    interval_days: Annotated[
        float | None, typer.Option(help="Days between the first scan and --followup-seg.")
    ] = None,
    margin: MarginOpt = 15.0,
    plan_volume: PlanVolumeOpt = None,
    plan_level: PlanLevelOpt = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            help="Plan from the posterior mean density of the top matches (written as "
            "density_ensemble_patient.nii.gz) instead of the best match's."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Personalize the growth model for one patient: register, search, warp back, plan,
    report."""
    from gliomatch.database import Database
    from gliomatch.patient.cohort import load_case
    from gliomatch.patient.inputs import load_patient
    from gliomatch.patient.pipeline import infer as run_infer

    check_k(k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = dict(t1=t1, t1c=t1c, wm=wm, seg=seg, flair_mask=flair_mask, t1gd_mask=t1gd_mask)
        if case is not None:
            if any(v is not None for v in files.values()):
                raise GliomatchError("give either --case or the patient's files, not both")
            inputs = load_case(case, labels, followup_seg=followup_seg)
        else:
            inputs = load_patient(**files, labels=labels, followup_seg=followup_seg)
        from gliomatch.evaluation.demo import demo_database

        database = Database.open(db) if db else demo_database(log=None if json_out else typer.echo)
        res = run_infer(
            inputs,
            database,
            out,
            k=k,
            strategy=strategy,
            registration=registration,
            skull=skull,
            age_days=age_days,
            interval_days=interval_days,
            margin_mm=margin,
            plan_volume_cm3=plan_volume,
            plan_level=plan_level,
            ensemble=ensemble,
            progress=None if json_out else (lambda i, n, stage: typer.echo(f"[{stage}]")),
        )
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    _print_result(res, json_out)


@app.command("infer-batch")
@handle_errors
def infer_batch(
    csv: Annotated[
        Path,
        typer.Argument(
            help="Cohort CSV (patient_id, t1|t1c|wm, seg + optional labels, or "
            "flair_mask+t1gd_mask; paths relative to it), a BraTS case folder "
            "(<id>-t1n/-t1c/-seg.nii.gz) or a folder of them."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (one subfolder per patient).")],
    db: Annotated[Path, typer.Option(help="Database folder.")],
    k: Annotated[int, typer.Option(help="Number of matches.")] = 15,
    strategy: StrategyOpt = "exact",
    registration: RegOpt = "syn",
    labels: Annotated[
        str, typer.Option(help="Label convention of the BraTS folders' segmentations.")
    ] = "auto",
):
    """Run `infer` for every patient of a cohort (resumable) and write summary.csv; a failed
    row is recorded there and the others go on (exit code 1 if any failed)."""
    from gliomatch.database import Database
    from gliomatch.patient.cohort import infer_cohort, read_cohort
    from gliomatch.search import get_strategy

    check_k(k)
    rows = read_cohort(csv, labels)
    database = Database.open(db)
    get_strategy(strategy, database)  # a bad name fails now
    table = infer_cohort(
        rows, database, out, k=k, strategy=strategy, registration=registration, log=typer.echo
    )
    typer.echo(table.to_string(index=False))
    typer.echo(f"summary: {out / 'summary.csv'}")
    if (table["status"] != "ok").any():
        raise typer.Exit(1)


@app.command()
@handle_errors
def demo(
    n: Annotated[
        int | None, typer.Option(help="Tumors in the demo database (default: 1000).")
    ] = None,
    resolution: ResolutionOpt = 128,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patient.")] = 0,
    registration: RegOpt = "syn",
    db: Annotated[
        Path | None, typer.Option(help="Database (default: build/reuse the demo one).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Build (or reuse) a demo database, make a synthetic patient, infer, compare with truth."""

    from gliomatch.evaluation.demo import run_demo

    d = run_demo(
        out=out,
        **({} if n is None else {"n": n}),
        resolution=resolution,
        seed=seed,
        registration=registration,
        db_path=db,
        log=None if json_out else typer.echo,
        progress=None,
    )
    res, truth, dice_f, dice_t = d.result, d.truth, d.dice_flair, d.dice_t1gd
    if json_out:
        _print_result(
            res, True, {"truth": truth, "dice_flair_patient": dice_f, "dice_t1gd_patient": dice_t}
        )
        return
    _print_result(res, False)
    est = res.parameters["estimates"]
    from gliomatch.database.sampling import identifiable

    true_id = identifiable(truth["dw"], truth["rho"], truth["t_end"])
    typer.echo("recovered (posterior median and interval) vs true (hidden):")
    for key, unit in (("infiltration_mm", "mm"), ("rho_t", "")):
        e = est[key]
        typer.echo(
            f"  {e['label']:>13}: {e['median']:8.3g} [{e['interval'][0]:.3g}, "
            f"{e['interval'][1]:.3g}] vs {true_id[key]:8.3g} {unit}"
        )
    seed_err = (
        sum(
            (m - truth[a]) ** 2
            for m, a in zip(est["seed_mm"]["mean"], ("x_mm", "y_mm", "z_mm"), strict=True)
        )
        ** 0.5
    )
    typer.echo(f"           seed: {seed_err:.1f} mm from the true seed (atlas space)")
    typer.echo(
        f"patient-space prediction vs hidden tumor: Dice FLAIR (u >= 0.2) {dice_f:.3f}, "
        f"Dice T1Gd (u >= 0.6) {dice_t:.3f}"
    )
