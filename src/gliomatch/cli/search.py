"""`gliomatch search`: the best matches of two atlas-space masks."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    StrategyOpt,
    as_json,
    check_k,
    handle_errors,
    prepared_strategy,
    print_estimates,
    progress_bar,
)


@app.command()
@handle_errors
def search(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    flair: Annotated[Path, typer.Option(help="FLAIR (whole tumor) mask in atlas space, NIfTI.")],
    t1gd: Annotated[Path, typer.Option(help="T1Gd (tumor core) mask in atlas space, NIfTI.")],
    k: Annotated[int, typer.Option(help="Number of matches.")] = 15,
    strategy: StrategyOpt = "exact",
    w_t1gd: Annotated[float, typer.Option(help="Weight of Dice_T1Gd in the score.")] = 1.0,
    w_flair: Annotated[float, typer.Option(help="Weight of Dice_FLAIR in the score.")] = 1.0,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Spread the search over this Dask scheduler (tcp://HOST:PORT)."),
    ] = None,
    dask_workers: Annotated[
        int | None,
        typer.Option(help="Spread the search over a local Dask cluster of this many processes."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Find the database tumors that best match two atlas-space masks (Dice_T1Gd + Dice_FLAIR)."""
    from gliomatch.database import Database
    from gliomatch.patient.estimates import POSTERIOR_K, parameter_summary
    from gliomatch.patient.inputs import atlas_query
    from gliomatch.search import describe_matches
    from gliomatch.search.sharded import maybe_sharded

    check_k(k)
    db = Database.open(db_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = atlas_query(flair, t1gd, db.shape)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    with progress_bar(not json_out, transient=True) as bar:
        strat = prepared_strategy(
            db, strategy, quiet=json_out, w_t1gd=w_t1gd, w_flair=w_flair, progress=bar
        )
    with maybe_sharded(strat, scheduler, dask_workers) as strat:
        t0 = time.perf_counter()
        # the posterior of what the scan determines is taken over the best POSTERIOR_K
        scores, ids = strat.search_one(q, min(max(k, POSTERIOR_K), len(db)))
        elapsed = time.perf_counter() - t0
        rows = describe_matches(db, q, scores[:k], ids[:k])  # both Dice at full resolution
        params = parameter_summary(db, q, strat, scores, ids, rows)
    if json_out:
        typer.echo(
            as_json(
                {
                    "strategy": strategy,
                    "metric": strat.metric,
                    "seconds": elapsed,
                    "parameters": params,
                    "matches": rows,
                }
            )
        )
        return
    typer.echo(
        f"{strategy}: top {len(scores)} of {len(db)} in {elapsed * 1000:.1f} ms, "
        f"the first {len(rows)} shown "
        f"(score = the strategy's {strat.metric}; Dice at full resolution)"
    )
    typer.echo(
        f"{'rank':>4} {'id':>7} {'score':>7} {'T1Gd':>6} {'FLAIR':>6} "
        f"{'seed x,y,z (mm)':>22} {'sqrt(D_w/rho)':>13} {'rho*T':>7}"
    )
    for r in rows:
        th, ident = r["seed_mm"], r["identifiable"]
        seed = f"{th['x_mm']:.0f},{th['y_mm']:.0f},{th['z_mm']:.0f}"
        typer.echo(
            f"{r['rank']:>4} {r['id']:>7} {r['score']:7.4f} {r['dice_t1gd']:6.3f} "
            f"{r['dice_flair']:6.3f} {seed:>22} {ident['infiltration_mm']:10.2f} mm "
            f"{ident['rho_t']:7.2f}"
        )
    print_estimates(params)
