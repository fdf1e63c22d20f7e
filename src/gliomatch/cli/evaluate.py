"""`gliomatch evaluate` (the papers' comparison of search strategies) and
`gliomatch db calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app, db_app
from gliomatch.cli.common import (
    RegOpt,
    as_json,
    check_k,
    handle_errors,
    progress_bar,
    strategy_names,
)
from gliomatch.errors import GliomatchError, check_count


@app.command()
@handle_errors
def evaluate(
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Output folder (resumable: per-query cache).")],
    synthetic: Annotated[int, typer.Option(help="Held-out synthetic query tumors.")] = 1000,
    real: Annotated[
        Path | None,
        typer.Option(help="Real patients: a cohort CSV, a BraTS case folder or a folder of them."),
    ] = None,
    labels: Annotated[
        str, typer.Option(help="Label convention of the BraTS folders' segmentations.")
    ] = "auto",
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
    from gliomatch.evaluation.harness import choose_strategies, evaluate_queries

    check_k(k)  # the flags' names; the library checks its parameters again
    check_count(synthetic, "--synthetic", minimum=0)
    check_count(loop_check, "--loop-check", minimum=0)
    db = Database.open(db_path)
    names, skipped = choose_strategies(
        db, "all" if strategies == "all" else strategy_names(strategies)
    )
    for name, why in skipped.items():
        typer.echo(f"skipping {name}: {why}", err=True)
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
    with progress_bar(not json_out) as bar:
        summary = evaluate_queries(
            db, out, synthetic=synthetic, real=real, seed=seed, registration=registration,
            labels=labels, strategies=names, k=k, loop_check=loop_check, progress=bar,
        )  # fmt: skip
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
        e, c = summary["parameter_errors"], summary["interval_coverage"]
        typer.echo(
            "parameter recovery (synthetic), what one scan determines: seed error median "
            f"{e['seed_distance_mm_best']['median']:.1f} mm; sqrt(D_w/rho) MAE "
            f"{e['infiltration_mm_posterior_median']['mae']:.2f} mm "
            f"(r = {e['infiltration_mm_posterior_median']['corr']:.2f}); rho*T MAE "
            f"{e['rho_t_posterior_median']['mae']:.2f} "
            f"(r = {e['rho_t_posterior_median']['corr']:.2f})"
        )
        typer.echo(
            f"  {100 * c['level']:.0f} % intervals (temperature {c['temperature']:g}, top "
            f"{c['posterior_k']}) cover the truth: seed {100 * c['seed_mm']:.1f} %, "
            f"sqrt(D_w/rho) {100 * c['infiltration_mm']:.1f} %, rho*T {100 * c['rho_t']:.1f} %"
        )
        typer.echo(
            "  not identifiable from one scan (r of the best match): "
            f"D_w {e['dw_best']['corr']:.2f}, rho {e['rho_best']['corr']:.2f}, "
            f"T {e['t_end_best']['corr']:.2f}"
        )
    rc = [r for r in summary.get("recurrence_coverage", []) if r["status"] == "ok"]
    if rc:
        typer.echo(
            "recurrence coverage (real follow-ups, atlas space, plans of equal volume; "
            "enhancing / any tumor):"
        )
        for r in rc:
            typer.echo(
                f"  {r['patient_id']}: plan {r['plan_cm3']:.0f} cm3; "
                + "; ".join(
                    f"{p} {100 * r[f'{p}_enhancing']:.1f} / {100 * r[f'{p}_any']:.1f} %"
                    for p in ("standard", "best", "ensemble")
                )
            )
    for r in summary.get("recurrence_coverage", []):
        if r["status"] != "ok":
            typer.echo(f"  {r['patient_id']}: {r['status']}")
    typer.echo(f"report: {out / 'report.html'}")


# `db calibrate` runs held-out queries through the posterior: an evaluation, registered
# under `gliomatch db` but kept here so that the production commands never import the
# evaluation layer (the second import-linter contract).
@db_app.command("calibrate")
@handle_errors
def db_calibrate(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    queries: Annotated[int, typer.Option(help="Held-out synthetic tumors to calibrate on.")] = 400,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Calibrate the 90 % intervals of what one scan determines (seed, sqrt(D_w/rho), rho*T)
    on held-out synthetic tumors; writes DB/calibration.json, used by infer and search."""
    from gliomatch.database import Database
    from gliomatch.evaluation.recovery import calibrate

    db = Database.open(db_path)
    with progress_bar(not json_out) as bar:
        rec = calibrate(db, queries=queries, progress=bar)
    if json_out:
        typer.echo(as_json(rec))
        return
    raw = rec["raw_coverage"]
    typer.echo(
        f"calibrated on {rec['queries']} held-out tumors (temperature {rec['temperature']:g}, "
        f"top {rec['posterior_k']}): raw 90 % intervals covered seed {100 * raw['seed_mm']:.1f} %, "
        f"sqrt(D_w/rho) {100 * raw['infiltration_mm']:.1f} %, rho*T {100 * raw['rho_t']:.1f} %"
    )
    m = rec["log_margin"]
    typer.echo(
        f"margins: sqrt(D_w/rho) x e^{m['infiltration_mm']:+.3f}, rho*T x e^{m['rho_t']:+.3f}, "
        f"D_w/rho x e^{m['dw_over_rho']:+.3f}, seed radius {rec['seed_margin_mm']:+.1f} mm"
    )
    typer.echo(f"wrote {db.path / 'calibration.json'}")
