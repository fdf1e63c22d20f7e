"""`gliomatch demo`: the demo database, a synthetic patient with hidden parameters, `infer`,
and the prediction compared with the truth (an evaluation command: it calls the evaluation
layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import RegOpt, handle_errors, print_result, progress_bar


@app.command()
@handle_errors
def demo(
    n: Annotated[
        int | None, typer.Option(help="Tumors in the demo database (default: 10,000).")
    ] = None,
    resolution: Annotated[
        int, typer.Option(help="Grid of the demo database (voxels per side; default 64, 3 mm).")
    ] = 64,
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

    # the database build (once, about 80 s) shows its progress; the bar goes when it is done
    with progress_bar(not json_out, transient=True) as bar:
        d = run_demo(
            out=out,
            **({} if n is None else {"n": n}),
            resolution=resolution,
            seed=seed,
            registration=registration,
            db_path=db,
            log=None if json_out else typer.echo,
            progress=bar,
        )
    res, truth, dice_f, dice_t = d.result, d.truth, d.dice_flair, d.dice_t1gd
    if json_out:
        print_result(
            res, True, {"truth": truth, "dice_flair_patient": dice_f, "dice_t1gd_patient": dice_t}
        )
        return
    print_result(res, False)
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
