"""`gliomatch plan | evaluate-plan`: radiotherapy target volumes from a density, and their
recurrence coverage (PREDICT-GBM's protocol)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    GtvOpt,
    JsonOpt,
    MarginOpt,
    MinMarginOpt,
    PlanLevelOpt,
    PlanVolumeOpt,
    as_json,
    handle_errors,
    plan_rule,
    print_plans,
)
from gliomatch.files import atomic_path, output_folder, write_text_atomic

DensityOpt = Annotated[
    Path, typer.Option(help="Predicted tumor-cell density (NIfTI, values in [0, 1]).")
]
SegOpt = Annotated[Path, typer.Option(help="Pre-treatment tumor label map (same grid).")]
LabelsOpt = Annotated[
    str, typer.Option(help="Label convention of --seg (auto, brats2021, predictgbm, ...).")
]
BrainOpt = Annotated[Path | None, typer.Option(help="Binary brain mask (same grid).")]
AnatomyOpt = Annotated[
    Path | None, typer.Option(help="A skull-stripped scan whose support is the brain.")
]


@contextlib.contextmanager
def _warnings_as_lines():
    """Library warnings (e.g. a header that differs slightly, resampled) as `warning:` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)


@app.command()
@handle_errors
def plan(
    density: DensityOpt,
    seg: SegOpt,
    out: Annotated[Path, typer.Option(help="Output folder for the two plans.")],
    labels: LabelsOpt = "auto",
    brain_mask: BrainOpt = None,
    anatomy: AnatomyOpt = None,
    margin: MarginOpt = 15.0,
    plan_volume: PlanVolumeOpt = None,
    plan_level: PlanLevelOpt = None,
    gtv: GtvOpt = "core",
    min_margin: MinMarginOpt = 0.0,
    json_out: JsonOpt = False,
):
    """Standard CTV (core + margin, in the brain) and the personalized CTV of the same volume
    (the GTV, then the highest-density voxels), from any density and segmentation on one
    grid."""
    import nibabel as nib

    from gliomatch.patient.plans import load_plan_inputs, plans_for
    from gliomatch.patient.registration import on_grid_of

    with _warnings_as_lines():
        inp = load_plan_inputs(density, seg, labels=labels, brain_mask=brain_mask, anatomy=anatomy)
        plans, figures = plans_for(inp, **plan_rule(margin, plan_volume, plan_level, gtv,
                                                     min_margin))  # fmt: skip
    output_folder(out)
    files = {}
    for name, p in (("standard", plans.standard), ("personalized", plans.personalized)):
        path = out / f"ctv_{name}.nii.gz"
        with atomic_path(path) as tmp:
            nib.save(on_grid_of(p, inp.reference), str(tmp))  # the input's header kept
        files[name] = str(path)
    summary = {
        "figures": figures, "rule": plans.rule, "margin_mm": margin, "gtv": gtv,
        "min_margin_mm": min_margin, "notes": list(plans.notes), "files": files,
    }  # fmt: skip
    for note in plans.notes:
        typer.echo(f"warning: {note}", err=True)
    write_text_atomic(out / "plans.json", as_json(summary))
    if json_out:
        typer.echo(as_json(summary))
        return
    print_plans({"figures": figures})
    typer.echo(f"personalized: {plans.rule}; wrote {files['standard']}, {files['personalized']}")


@app.command("evaluate-plan")
@handle_errors
def evaluate_plan_cmd(
    density: DensityOpt,
    seg: SegOpt,
    followup: Annotated[
        Path, typer.Option(help="Follow-up label map (the recurrence), on the same grid.")
    ],
    labels: LabelsOpt = "auto",
    followup_labels: Annotated[
        str, typer.Option(help="Label convention of --followup (a cavity label is excluded).")
    ] = "auto",
    brain_mask: BrainOpt = None,
    anatomy: AnatomyOpt = None,
    margin: MarginOpt = 15.0,
    plan_volume: PlanVolumeOpt = None,
    plan_level: PlanLevelOpt = None,
    gtv: GtvOpt = "core",
    min_margin: MinMarginOpt = 0.0,
    json_out: JsonOpt = False,
):
    """How much of the recurrence each plan covers (PREDICT-GBM's recurrence coverage, for the
    enhancing recurrence and for any tumor label)."""
    from gliomatch.patient.plans import evaluate_plan, load_plan_inputs

    with _warnings_as_lines():
        inp = load_plan_inputs(density, seg, labels=labels, brain_mask=brain_mask, anatomy=anatomy)
        res = evaluate_plan(
            inp, followup, followup_labels=followup_labels,
            **plan_rule(margin, plan_volume, plan_level, gtv, min_margin),
        )  # fmt: skip
    if json_out:
        typer.echo(as_json(res))
        return
    rc = res["recurrence_cm3"]
    typer.echo(
        f"recurrence: enhancing {rc['enhancing']:.1f} cm3, any tumor {rc['any']:.1f} cm3 "
        f"(follow-up labels: {res['followup_labels']})"
    )
    typer.echo("| plan | volume cm3 | covers enhancing recurrence | covers any recurrence |")
    typer.echo("|---|---|---|---|")
    for name, c in res["coverage"].items():
        typer.echo(
            f"| {name} | {res['figures'][name]['volume_cm3']:.1f} | "
            f"{100 * c['enhancing']:.1f} % | {100 * c['any']:.1f} % |"
        )
    typer.echo(f"personalized: {res['rule']}. {res['definition']}.")
