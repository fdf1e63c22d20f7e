"""`gliomatch simulate`: one tumor, saved as NIfTI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    AtlasOpt,
    ResolutionOpt,
    as_json,
    handle_errors,
    out_path,
    sibling,
)
from gliomatch.files import atomic_path


@app.command()
@handle_errors
def simulate(
    x: Annotated[float, typer.Option(help="Seed position, fraction of the grid extent [0, 1].")],
    y: Annotated[float, typer.Option(help="Seed position, fraction of the grid extent [0, 1].")],
    z: Annotated[float, typer.Option(help="Seed position, fraction of the grid extent [0, 1].")],
    dw: Annotated[float, typer.Option(help="White-matter diffusivity D_w (mm^2/day).")],
    rho: Annotated[float, typer.Option(help="Proliferation rate rho (1/day).")],
    t_end: Annotated[float, typer.Option(help="Growth time T_end (days).")],
    out: Annotated[Path, typer.Option(help="Output density NIfTI (atlas space).")],
    resolution: ResolutionOpt = 128,
    atlas: AtlasOpt = None,
    ratio: Annotated[float, typer.Option(help="D_WM / D_GM.")] = 10.0,
    masks: Annotated[
        bool, typer.Option(help="Also write <out>_flair (u >= 0.2) and <out>_t1gd (u >= 0.6).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Simulate one tumor with the Fisher–Kolmogorov model and save its density as NIfTI."""
    import nibabel as nib

    from gliomatch.atlas import load_atlas
    from gliomatch.masks import threshold
    from gliomatch.solver import TumorParams
    from gliomatch.solver import simulate as run

    out = out_path(out)
    a = load_atlas(atlas, resolution)
    sim = run(a, TumorParams(x, y, z, dw, rho, t_end), ratio=ratio)
    u = sim.densities[0]
    with atomic_path(out) as tmp:
        nib.save(a.to_nifti(u), str(tmp))
    files = [str(out)]
    if masks:
        for name, m in zip(("flair", "t1gd"), threshold(u), strict=True):
            p = sibling(out, name)
            with atomic_path(p) as tmp:
                nib.save(a.to_nifti(m), str(tmp))
            files.append(str(p))
    v = a.voxel_volume_cm3
    summary = {
        "seed_mm": [round(float(c), 2) for c in sim.seed_mm],
        "dw_mm2_per_day": dw,
        "rho_per_day": rho,
        "t_end_days": t_end,
        "flair_cm3": float(threshold(u)[0].sum() * v),
        "t1gd_cm3": float(threshold(u)[1].sum() * v),
        "steps": sim.steps,
        "run_s": sim.elapsed_s,
        "files": files,
    }
    if json_out:
        typer.echo(as_json(summary))
        return
    typer.echo(f"seed (mm, world): {summary['seed_mm']}")
    typer.echo(f"whole tumor (u >= 0.2): {summary['flair_cm3']:.2f} cm^3")
    typer.echo(f"tumor core  (u >= 0.6): {summary['t1gd_cm3']:.2f} cm^3")
    typer.echo(f"{sim.steps} steps of {sim.dt:.3f} d in {sim.elapsed_s:.2f} s")
    for f in files:
        typer.echo(f"wrote {f}")
