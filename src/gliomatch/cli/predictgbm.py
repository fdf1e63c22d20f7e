"""`gliomatch predict-gbm`: run as a PREDICT-GBM growth model (their folder layout in and out)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import StrategyOpt, handle_errors, prepared_strategy, progress_bar


@app.command("predict-gbm")
@handle_errors
def predict_gbm(
    input_dir: Annotated[
        Path,
        typer.Option(
            "--input", help="PREDICT-GBM input: Patient-<id>/<id>-gm/-wm/-csf/-tumorseg.nii.gz."
        ),
    ],
    output_dir: Annotated[Path, typer.Option("--output", help="Folder for <id>.nii.gz.")],
    db: Annotated[
        Path | None,
        typer.Option(help="Database (default: $GLIOMATCH_DB, else the demo database)."),
    ] = None,
    strategy: StrategyOpt = "exact",
    ensemble: Annotated[
        bool, typer.Option(help="Write the posterior mean density instead of the best match's.")
    ] = False,
    refine: Annotated[
        bool,
        typer.Option(
            help="Refine the matches with the growth model on the patient's own tissue maps "
            "(--no-refine: the atlas match warped back)."
        ),
    ] = True,
):
    """Write each patient's full tumor-cell density on its input grid (``<id>.nii.gz``)."""
    from gliomatch.database import Database
    from gliomatch.database.demo import demo_database
    from gliomatch.patient.predictgbm import run_predict_gbm

    db = db or (Path(os.environ["GLIOMATCH_DB"]) if os.environ.get("GLIOMATCH_DB") else None)
    database = Database.open(db) if db else demo_database(log=typer.echo)
    prepared_strategy(database, strategy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with progress_bar(transient=True) as bar:
            written = run_predict_gbm(
                input_dir, output_dir, database, strategy=strategy, ensemble=ensemble,
                refine=refine, log=typer.echo, progress=bar,
            )  # fmt: skip
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    typer.echo(f"wrote {len(written)} densities into {output_dir}")
