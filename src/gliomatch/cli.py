"""The ``gliomatch`` command (``gliomatch <noun> <verb>``)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.errors import GliomatchError

app = typer.Typer(
    help="Personalize brain-tumor growth models by database query. Units: mm, days, mm^2/day.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
atlas_app = typer.Typer(help="The tissue atlas.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: fast paths against their references.",
                        no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")
app.add_typer(bench_app, name="bench")


def _fail(msg: str, code: int = 1):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn bad-input errors into a one-line message and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GliomatchError as exc:
            _fail(str(exc))
        except FileNotFoundError as exc:
            _fail(f"file not found: {exc.filename or exc}")
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename or exc}")
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


ResolutionOpt = Annotated[
    int, typer.Option(help="Atlas grid: voxels per side (128 = 1.5 mm voxels, 64, 32).")
]
AtlasOpt = Annotated[
    Path | None,
    typer.Option(help="User atlas folder with t1, wm, gm, csf NIfTIs (default: MNI152 2009)."),
]


def _out_path(path: Path) -> Path:
    if not path.parent.exists():
        raise GliomatchError(f"output folder {path.parent} does not exist")
    if not str(path).endswith((".nii", ".nii.gz")):
        raise GliomatchError(f"output {path} must end in .nii or .nii.gz")
    return path


def _sibling(path: Path, suffix: str) -> Path:
    name = path.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4]
    return path.with_name(f"{stem}_{suffix}.nii.gz")


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
    from gliomatch.solver import simulate as run

    out = _out_path(out)
    a = load_atlas(atlas, resolution)
    sim = run(a, x, y, z, dw, rho, [t_end], ratio=ratio)
    u = sim.densities[0]
    nib.save(a.to_nifti(u), str(out))
    files = [str(out)]
    if masks:
        for level, name in ((0.2, "flair"), (0.6, "t1gd")):
            p = _sibling(out, name)
            nib.save(a.to_nifti(u >= level), str(p))
            files.append(str(p))
    v = a.voxel_volume_cm3
    summary = {
        "seed_mm": [round(float(c), 2) for c in sim.seed_mm],
        "dw_mm2_per_day": dw,
        "rho_per_day": rho,
        "t_end_days": t_end,
        "flair_cm3": float((u >= 0.2).sum() * v),
        "t1gd_cm3": float((u >= 0.6).sum() * v),
        "steps": sim.steps,
        "run_s": sim.elapsed_s,
        "files": files,
    }
    if json_out:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"seed (mm, world): {summary['seed_mm']}")
    typer.echo(f"whole tumor (u >= 0.2): {summary['flair_cm3']:.2f} cm^3")
    typer.echo(f"tumor core  (u >= 0.6): {summary['t1gd_cm3']:.2f} cm^3")
    typer.echo(f"{sim.steps} steps of {sim.dt:.3f} d in {sim.elapsed_s:.2f} s")
    for f in files:
        typer.echo(f"wrote {f}")


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
        typer.echo(json.dumps(info))
        return
    typer.echo(f"source:      {info['source']}")
    typer.echo(f"grid:        {' x '.join(map(str, info['shape']))} voxels")
    typer.echo(f"spacing:     {info['spacing_mm']:.3f} mm (field of view "
               f"{info['field_of_view_mm']:.0f} mm)")
    typer.echo(f"origin:      {[round(c, 2) for c in [r[3] for r in info['affine'][:3]]]} mm")
    typer.echo(f"white matter {info['wm_cm3']:8.1f} cm^3")
    typer.echo(f"grey matter  {info['gm_cm3']:8.1f} cm^3")
    typer.echo(f"CSF          {info['csf_cm3']:8.1f} cm^3")
    typer.echo(f"tissue       {info['tissue_cm3']:8.1f} cm^3 ({info['tissue_voxels']} voxels, "
               "WM + GM >= 0.5)")


@bench_app.command("solver")
@handle_errors
def bench_solver_cmd(
    resolution: ResolutionOpt = 128,
    dw: Annotated[float, typer.Option(help="D_w (mm^2/day).")] = 0.3,
    rho: Annotated[float, typer.Option(help="rho (1/day).")] = 0.05,
    t_end: Annotated[float, typer.Option(help="T_end (days).")] = 300.0,
    atlas: AtlasOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Last line is a JSON object.")] = False,
):
    """Time the numba solver against the whole-grid NumPy reference on the same problem."""
    from gliomatch.evaluation.bench import bench_solver

    r = bench_solver(resolution=resolution, dw=dw, rho=rho, t_end=t_end, atlas=atlas)
    typer.echo(f"problem: {r['resolution']}^3 ({r['spacing_mm']:.2f} mm), D_w {dw} mm^2/d, "
               f"rho {rho} /d, T {t_end} d: {r['steps']} steps of {r['dt_days']:.3f} d")
    typer.echo(f"fast (numba):       {r['fast_s']:8.3f} s  (first call {r['warmup_s']:.2f} s "
               "incl. compile/cache load)")
    typer.echo(f"reference (numpy):  {r['reference_s']:8.3f} s")
    typer.echo(f"speed-up:           {r['speedup']:8.1f} x")
    typer.echo(f"max |diff|:         {r['max_abs_diff']:.2e}")
    typer.echo(f"kernel: {r['kernel_ns_per_cell']:.2f} ns per tissue cell, "
               f"{r['kernel_gb_per_s']:.1f} GB/s of compulsory traffic (20 B/cell) vs "
               f"{r['copy_gb_per_s']:.1f} GB/s memory copy on this machine")
    if json_out:
        typer.echo(json.dumps(r))


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
