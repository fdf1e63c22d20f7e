"""`gliomatch atlas info`."""

from __future__ import annotations

from typing import Annotated

import typer

from gliomatch.cli.apps import atlas_app
from gliomatch.cli.common import (
    AtlasOpt,
    ResolutionOpt,
    as_json,
    handle_errors,
)


@atlas_app.command("info")
@handle_errors
def atlas_info(
    resolution: ResolutionOpt = 128,
    atlas: AtlasOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Print the atlas grid, voxel spacing and tissue volumes."""
    from gliomatch.atlas import load_atlas

    info = load_atlas(atlas, resolution).info()
    if json_out:
        typer.echo(as_json(info))
        return
    typer.echo(f"source:      {info['source']}")
    typer.echo(f"grid:        {' x '.join(map(str, info['shape']))} voxels")
    typer.echo(
        f"spacing:     {info['spacing_mm']:.3f} mm (field of view "
        f"{info['field_of_view_mm']:.0f} mm)"
    )
    typer.echo(f"origin:      {[round(c, 2) for c in [r[3] for r in info['affine'][:3]]]} mm")
    typer.echo(f"white matter {info['wm_cm3']:8.1f} cm^3")
    typer.echo(f"grey matter  {info['gm_cm3']:8.1f} cm^3")
    typer.echo(f"CSF          {info['csf_cm3']:8.1f} cm^3")
    typer.echo(
        f"tissue       {info['tissue_cm3']:8.1f} cm^3 ({info['tissue_voxels']} voxels, "
        "WM + GM >= 0.5)"
    )
