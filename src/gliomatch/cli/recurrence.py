"""`gliomatch evaluate-recurrence`: gliomatch as a growth model on a real recurrence cohort,
scored as PREDICT-GBM scores one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    RegOpt,
    StrategyOpt,
    as_json,
    check_margin,
    handle_errors,
    prepared_strategy,
    progress_bar,
)
from gliomatch.errors import GliomatchError
from gliomatch.files import output_folder


@app.command("evaluate-recurrence")
@handle_errors
def evaluate_recurrence(
    cohort: Annotated[
        Path,
        typer.Argument(
            help="The cohort: a folder of patient folders (or one patient's), or for "
            "predict-gbm their dataset JSON."
        ),
    ],
    layout: Annotated[str, typer.Option(help="predict-gbm or gliodil (see the docs).")],
    db: Annotated[Path, typer.Option(help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Folder for patients.csv, summary.json, the cache.")],
    data_root: Annotated[
        Path | None,
        typer.Option(help="predict-gbm JSON: replaces its root_dir prefix of absolute paths."),
    ] = None,
    registration: RegOpt = "syn",
    strategy: StrategyOpt = "exact",
    margin: Annotated[float, typer.Option(help="Standard CTV margin around the core (mm).")] = 15.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Standard vs gliomatch plans (best match, ensemble; equal volume) scored by how much of
    each patient's real recurrence they cover (PREDICT-GBM's protocol); per patient and mean,
    resumable, a failed patient recorded and the others run (exit code 1 if any failed)."""
    from gliomatch.database import Database
    from gliomatch.evaluation.recurrence import evaluate_recurrence_cohort
    from gliomatch.patient.layouts import LAYOUTS, find_recurrence_cases

    if layout not in LAYOUTS:
        raise GliomatchError(f"--layout {layout!r}: use {' or '.join(LAYOUTS)}")
    check_margin(margin)
    cases = find_recurrence_cases(cohort, layout, data_root=data_root)
    folder = output_folder(out)
    database = Database.open(db)
    prepared_strategy(database, strategy, quiet=json_out)
    with progress_bar(not json_out, transient=True) as bar:
        table, summary = evaluate_recurrence_cohort(
            cases, database, folder, registration=registration, margin_mm=margin,
            strategy=strategy, progress=bar,
        )  # fmt: skip
    if json_out:
        typer.echo(as_json({**summary, "rows": table.to_dict(orient="records")}))
    else:
        typer.echo(recurrence_table(table, summary))
        typer.echo(f"wrote {folder / 'patients.csv'} and {folder / 'summary.json'}")
    if summary["failed"]:
        raise typer.Exit(1)


#: The table's plans, where scored: PREDICT-GBM's top-V plans from the best match, the
#: ensemble and the refined best fit, and ``infer``'s default CTV (the refined best fit,
#: containing the tumor core: ``refined_gtv``).
TABLE_PLANS = ("standard", "best", "ensemble", "refined", "refined_gtv")


def recurrence_table(table, summary: dict) -> str:
    """Per patient and mean, PREDICT-GBM's figures: coverage % of the enhancing and of any
    recurrence by the standard plan and gliomatch's (best match, ensemble, refined, and
    ``infer``'s default CTV that contains the core)."""
    plans = [p for p in TABLE_PLANS if p == "standard" or f"{p}_enhancing" in table]
    lines = [
        f"{summary['n_db']:,}-tumor database, registration {summary['registration']}, plans of "
        f"equal volume (core + {summary['margin_mm']:g} mm); recurrence coverage %; top-V plans "
        "(PREDICT-GBM's rule) except *_gtv, which contain the tumor core (infer's default)",
        "| patient | status | " + " | ".join(f"{p} enh." for p in plans) + " | "
        + " | ".join(f"{p} any" for p in plans) + " |",
        "|---|---|" + "---|" * (2 * len(plans)),
    ]  # fmt: skip
    for _, r in table.iterrows():
        if r["status"] != "ok":
            lines.append(f"| {r['patient_id']} | {r['status']} |" + " |" * (2 * len(plans)))
            continue
        cells = []
        for rec in ("enhancing", "any"):
            empty = not r[f"recurrence_{rec}_cm3"] > 0
            cells += ["–" if empty else f"{100 * r[f'{p}_{rec}']:.1f}" for p in plans]
        lines.append(f"| {r['patient_id']} | ok | " + " | ".join(cells) + " |")
    cells = []
    for rec in ("enhancing", "any"):
        e = summary[rec]
        cells += [f"{100 * e[f'{p}_mean']:.1f}" if e["n"] else "–" for p in plans]
    lines.append(f"| **mean** ({summary['ok']} ok, {summary['failed']} failed) | | "
                 + " | ".join(cells) + " |")  # fmt: skip
    for rec in ("enhancing", "any"):
        e = summary[rec]
        if not e["n"]:
            continue
        parts = []
        for p in plans[1:]:
            se = e[f"{p}_minus_standard_se"]
            parts.append(f"{p} {100 * e[f'{p}_minus_standard']:+.1f}"
                         + ("" if se is None else f" ± {100 * se:.1f}"))  # fmt: skip
        lines.append(f"{rec} recurrence ({e['n']} patients), gliomatch − standard, points: "
                     + "; ".join(parts))  # fmt: skip
    return "\n".join(lines)
