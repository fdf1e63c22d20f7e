"""`gliomatch infer | infer-batch`: personalize the model for patients."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    GtvOpt,
    MarginOpt,
    MinMarginOpt,
    PlanLevelOpt,
    PlanVolumeOpt,
    RegOpt,
    StrategyOpt,
    check_k,
    handle_errors,
    plan_rule,
    prepared_strategy,
    print_result,
    progress_bar,
)
from gliomatch.errors import GliomatchError


@app.command()
@handle_errors
def infer(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    t1: Annotated[
        Path | None,
        typer.Option(
            help="Patient T1 (registration reference): NIfTI, or a DICOM series (its folder or "
            "one of its files: converted, and the plans written as an RT Structure Set too)."
        ),
    ] = None,
    t1c: Annotated[
        Path | None, typer.Option(help="Patient T1Gd (registration reference); NIfTI or DICOM.")
    ] = None,
    wm: Annotated[
        Path | None,
        typer.Option(
            help="White-matter map (registration reference; with --gm, the patient's own tissue "
            "for the refinement)."
        ),
    ] = None,
    gm: Annotated[
        Path | None, typer.Option(help="Grey-matter probability map (with --wm).")
    ] = None,
    csf: Annotated[Path | None, typer.Option(help="CSF probability map (with --wm, --gm).")] = None,
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
            help="Label convention of --seg: auto, brats2013, brats2021, brats2023, brats2024, "
            "predictgbm or gliodil (see the README's table)."
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
    gtv: GtvOpt = "core",
    min_margin: MinMarginOpt = 0.0,
    ensemble: Annotated[
        bool,
        typer.Option(
            help="Plan from the posterior mean density of the top matches (written as "
            "density_ensemble_patient.nii.gz) instead of the best match's."
        ),
    ] = False,
    refine: Annotated[
        bool,
        typer.Option(
            help="Refine the top matches with the growth model in the patient's own anatomy "
            "(about 10 s) and plan from the refined density; --no-refine: plan from the atlas "
            "match warped back."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Personalize the growth model for one patient: register, search, warp back, refine in
    the patient's anatomy, plan, report."""
    from gliomatch.database import Database
    from gliomatch.patient.cohort import load_case
    from gliomatch.patient.inputs import load_patient, positive_days
    from gliomatch.patient.pipeline import infer as run_infer

    check_k(k)
    rule = plan_rule(margin, plan_volume, plan_level, gtv, min_margin)
    if age_days is not None:
        positive_days(age_days, "--age-days")
    if (followup_seg is None) != (interval_days is None):
        raise GliomatchError(
            "two-scan inference needs both --followup-seg and --interval-days (days between "
            "the scans)"
        )
    if interval_days is not None:
        positive_days(interval_days, "--interval-days")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = dict(t1=t1, t1c=t1c, wm=wm, seg=seg, flair_mask=flair_mask, t1gd_mask=t1gd_mask)
        series = _dicom_anatomy(files, out, quiet=json_out)
        if case is not None:
            if any(v is not None for v in (*files.values(), gm, csf)):
                raise GliomatchError("give either --case or the patient's files, not both")
            inputs = load_case(case, labels, followup_seg=followup_seg)
        else:
            inputs = load_patient(**files, gm=gm, csf=csf, labels=labels, followup_seg=followup_seg)
        from gliomatch.database.demo import demo_database

        database = Database.open(db) if db else demo_database(log=None if json_out else typer.echo)
        if db is None:
            warnings.warn(
                f"no --db: the demo database ({len(database):,} tumors at "
                f"{database.atlas().shape[0]}^3, {database.path}) was used; for a patient, "
                "build and give a 50,000-tumor database (`gliomatch db build --n 50000`)",
                stacklevel=1,
            )
        prepared_strategy(database, strategy, quiet=json_out)
        with progress_bar(not json_out, transient=True) as bar:
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
                contain=rule["contain"],
                min_margin_mm=min_margin,
                ensemble=ensemble,
                refine=refine,
                progress=bar,
                dicom=series,
            )
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    print_result(res, json_out)


def _dicom_anatomy(files: dict, out: Path, *, quiet: bool):
    """A DICOM series given as --t1 or --t1c: converted into ``out/dicom/anatomy.nii.gz``
    (the file then used), its series returned for the RT Structure Set; else None."""
    from gliomatch.files import output_folder
    from gliomatch.patient.dicom import is_dicom, read_series

    for name in ("t1", "t1c"):
        path = files[name]
        if path is not None and is_dicom(path):
            series = read_series(path, output_folder(out) / "dicom")
            files[name] = series.nifti
            if not quiet:
                typer.echo(
                    f"--{name}: DICOM series {series.series_uid} ({len(series.slices)} slices) "
                    f"converted to {series.nifti}"
                )
            return series
    return None


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
    refine: Annotated[
        bool, typer.Option(help="Refine each patient in its own anatomy (as `infer`).")
    ] = True,
    margin: MarginOpt = 15.0,
    plan_volume: PlanVolumeOpt = None,
    plan_level: PlanLevelOpt = None,
    gtv: GtvOpt = "core",
    min_margin: MinMarginOpt = 0.0,
    ensemble: Annotated[
        bool,
        typer.Option(help="Plan from the posterior mean density of the top matches (as `infer`)."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (one object per patient).")
    ] = False,
):
    """Run `infer` for every patient of a cohort (resumable) and write summary.csv (best match,
    refinement, each CTV's volume and what it holds of the visible tumor, the CTV the
    benchmarks support); a failed row is recorded there and the others go on (exit code 1 if
    any failed)."""
    from gliomatch.database import Database
    from gliomatch.patient.cohort import infer_cohort, read_cohort

    check_k(k)
    rule = plan_rule(margin, plan_volume, plan_level, gtv, min_margin)
    rows = read_cohort(csv, labels)
    database = Database.open(db)
    prepared_strategy(database, strategy, quiet=json_out)  # a bad name fails now
    table = infer_cohort(
        rows, database, out, k=k, strategy=strategy, registration=registration, refine=refine,
        margin_mm=margin, plan_volume_cm3=plan_volume, plan_level=plan_level,
        contain=rule["contain"], min_margin_mm=min_margin, ensemble=ensemble,
        log=None if json_out else typer.echo,
    )  # fmt: skip
    if json_out:
        typer.echo(table.to_json(orient="records", indent=2))
    else:
        typer.echo(table.to_string(index=False))
        typer.echo(f"summary: {out / 'summary.csv'}")
    if (table["status"] != "ok").any():
        raise typer.Exit(1)
