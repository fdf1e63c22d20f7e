"""`gliomatch evaluate`: the papers' comparison of search strategies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    RegOpt,
    as_json,
    handle_errors,
    progress_bar,
    strategy_names,
)
from gliomatch.errors import GliomatchError


@app.command()
@handle_errors
def evaluate(
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Output folder (resumable: per-query cache).")],
    synthetic: Annotated[int, typer.Option(help="Held-out synthetic query tumors.")] = 1000,
    real: Annotated[Path | None, typer.Option(help="Cohort CSV of real patients.")] = None,
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategies, or 'all'.")
    ] = "exact,ds64,ds32",
    k: Annotated[int, typer.Option(help="k of the top-k.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic queries.")] = 0,
    registration: RegOpt = "syn",
    loop_check: Annotated[
        int, typer.Option(help="Queries on which exact is cross-checked against loop.")
    ] = 3,
    multitask: Annotated[
        bool,
        typer.Option(
            "--multitask",
            help="Also validate every trained multitask embedding (KNN, task sets, boxes, t-SNE).",
        ),
    ] = False,
    multitask_test: Annotated[
        int, typer.Option(help="Held-out tumors for the multitask validation.")
    ] = 500,
    json_out: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
):
    """Compare search strategies: top-1/5/15 preservation, runtime, best-match Dice, recovery."""
    from gliomatch.database import Database
    from gliomatch.evaluation.harness import evaluate as run
    from gliomatch.evaluation.harness import real_queries, synthetic_queries
    from gliomatch.search import available_strategies, get_strategy, ready_strategies

    db = Database.open(db_path)
    if strategies == "all":  # every registered strategy that is ready (trained models only)
        ready = ready_strategies(db, [s for s in available_strategies() if s != "loop"])
        for name, why in ready.items():
            if why is not None:
                typer.echo(f"skipping {name}: {why}", err=True)
        names = [name for name, why in ready.items() if why is None]
    else:
        names = strategy_names(strategies)
        for name in names:  # a bad name fails now, before any slow work
            get_strategy(name, db)
    if synthetic < 0:
        raise GliomatchError(f"--synthetic must be >= 0, got {synthetic}")
    if synthetic == 0 and real is None and not multitask:
        raise GliomatchError(
            "nothing to evaluate: give --synthetic N > 0, --real CSV and/or --multitask"
        )
    out.mkdir(parents=True, exist_ok=True)
    if multitask:
        from gliomatch.evaluation.embedding import validate_embeddings

        with progress_bar(not json_out) as bar:
            mt = validate_embeddings(db, out, n_test=multitask_test, seed=seed, progress=bar)
        if not json_out:
            typer.echo((out / "task_sets.md").read_text())
            typer.echo((out / "robustness.md").read_text())
            typer.echo(f"KNN curves: {out / 'knn.png'}; t-SNE: {out / 'tsne.png'}")
        if synthetic == 0 and real is None:
            if json_out:
                typer.echo(as_json(mt))
            return
    with progress_bar(not json_out) as progress:
        qs = []
        if synthetic:
            progress(0, 1, "simulating held-out queries")
            qs += synthetic_queries(db, synthetic, seed)
            progress(1, 1, "simulating held-out queries")
        if real is not None:
            qs += real_queries(
                db, real, out / "cache" / "real", registration=registration, progress=progress
            )
        summary = run(
            db,
            out,
            queries=qs,
            strategies=names,
            k=k,
            loop_check=loop_check,
            progress=progress,
            log=lambda m: None,
        )
    if json_out:
        typer.echo(as_json(summary))
        return
    typer.echo((out / "table_strategies.md").read_text())
    for kind, v in summary["plausibility"].items():
        typer.echo(
            f"model plausibility ({kind}, {v['n']} queries): mean best-match Dice T1Gd "
            f"{v['mean_best_dice_t1gd']:.3f}, FLAIR {v['mean_best_dice_flair']:.3f}"
        )
    if "seed_distance_mm_best" in summary["parameter_errors"]:
        e = summary["parameter_errors"]
        typer.echo(
            f"parameter recovery (synthetic): seed position error median "
            f"{e['seed_distance_mm_best']['median']:.1f} mm; D_w MAE "
            f"{e['dw_best']['mae']:.3g} mm^2/d; rho MAE {e['rho_best']['mae']:.3g} /d; "
            f"T MAE {e['t_end_best']['mae']:.0f} d"
        )
    typer.echo(f"report: {out / 'report.html'}")
