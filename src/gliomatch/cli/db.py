"""`gliomatch db build | info | verify | show | index | features`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import db_app
from gliomatch.cli.common import (
    AtlasOpt,
    ResolutionOpt,
    StrategyOpt,
    as_json,
    given,
    handle_errors,
    out_path,
    prepared_strategy,
    progress_bar,
    sibling,
)
from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path


def _range(text: str | None, name: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise GliomatchError(f"--{name} must be LOW,HIGH (two numbers), got {text!r}") from None
    return lo, hi


@db_app.command("build")
@handle_errors
def db_build(
    out: Annotated[Path, typer.Option(help="Database folder (created; resumed if it exists).")],
    n: Annotated[int, typer.Option(help="Number of kept tumors.")],
    resolution: ResolutionOpt = 128,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same database.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Dask worker processes (default: one per core; 1 on <= 2 cores = in-process)."
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address tcp://HOST:PORT.")
    ] = None,
    atlas: AtlasOpt = None,
    dw: Annotated[
        str | None, typer.Option(help="D_w range LOW,HIGH (mm^2/day; default 0.02,1.5).")
    ] = None,
    rho: Annotated[
        str | None, typer.Option(help="rho range LOW,HIGH (1/day; default 0.002,0.2).")
    ] = None,
    t_end: Annotated[
        str | None, typer.Option(help="T_end range LOW,HIGH (days; default 50,1500).")
    ] = None,
    log_uniform: Annotated[
        bool | None, typer.Option(help="Draw D_w, rho, T log-uniformly (default: uniformly).")
    ] = None,
    seed_box: Annotated[
        str | None,
        typer.Option(
            help="'tissue' (uniform over WM+GM voxels; default) or 'paper' (fraction box)."
        ),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="'scaled' (one simulation per seed and D_w/rho, in rho*t; default) or 'plain' "
            "(one per seed, D_w and rho, in days)."
        ),
    ] = None,
    snapshots: Annotated[
        int | None,
        typer.Option(help="Candidate stages per simulation (default: scaled 64, plain 8)."),
    ] = None,
    flair_min: Annotated[float, typer.Option(help="Min whole-tumor volume (cm^3).")] = 5.0,
    flair_max: Annotated[float, typer.Option(help="Max whole-tumor volume (cm^3).")] = 300.0,
    t1gd_min: Annotated[float, typer.Option(help="Min tumor-core volume (cm^3).")] = 0.5,
    shard_size: Annotated[int, typer.Option(help="Trajectories per shard.")] = 8,
    time_limit: Annotated[
        float | None,
        typer.Option(
            help="Minutes: start no shard after this; keep the tumors finished by then "
            "(the same command resumes)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the manifest counts as JSON.")
    ] = False,
):
    """Simulate a database of tumors (resumable: run the same command again after a kill)."""
    from gliomatch.database import (
        BuildConfig,
        SamplingConfig,
        SizeFilter,
        build_database,
    )

    cfg = BuildConfig(
        resolution=resolution,
        atlas=None if atlas is None else str(atlas),
        seed=seed,
        sampling=SamplingConfig(
            **given(
                dw=_range(dw, "dw"),
                rho=_range(rho, "rho"),
                t_end=_range(t_end, "t-end"),
                log_uniform=log_uniform,
                seed_box=seed_box,
                sampler=sampler,
                snapshots=snapshots,
            )
        ),
        size_filter=SizeFilter(
            flair_min_cm3=flair_min, flair_max_cm3=flair_max, t1gd_min_cm3=t1gd_min
        ),
        shard_size=shard_size,
    )
    with progress_bar(not json_out) as bar:
        db = build_database(
            out,
            n,
            cfg,
            workers=workers,
            scheduler=scheduler,
            progress=bar,
            time_limit_s=None if time_limit is None else time_limit * 60,
        )
    t0 = time.perf_counter()
    exact = prepared_strategy(db, "exact", quiet=True)  # search reads it, never builds it
    index_s = time.perf_counter() - t0
    c = db.counts
    if json_out:
        typer.echo(as_json({**c, "disk_bytes": db.disk_bytes, "seconds": db.build_seconds}))
        return
    typer.echo(
        f"{c['tumors']} tumors from {c['trajectories']} trajectories "
        f"({c['rejected_snapshots']} snapshots rejected by size) in {out}; "
        f"{db.disk_bytes / 1e6:.1f} MB, {db.build_seconds:.1f} s; exact index in "
        f"{exact.index_path} ({index_s:.1f} s)"
    )


@db_app.command("features")
@handle_errors
def db_features(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Output CSV.")],
):
    """Export the radiomics shape features (mm, mm^2, mm^3) and centre of mass of every tumor."""
    import pandas as pd

    from gliomatch.database import (
        Database,
    )
    from gliomatch.search import get_strategy

    if not out.parent.exists():
        raise GliomatchError(f"output folder {out.parent} does not exist")
    db = Database.open(db_path)
    with progress_bar(transient=True) as bar:  # computed once, in parallel, then stored
        strat = get_strategy("radiomics", db, progress=bar).ensure_ready()
    table = pd.read_parquet(strat.index_path / "features.parquet")
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    typer.echo(f"{len(table)} tumors x {table.shape[1] - 1} features -> {out}")


@db_app.command("index")
@handle_errors
def db_index(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    strategy: StrategyOpt = "exact",
):
    """Build a strategy's search index (the explicit step before searching with it; `db build`
    builds exact's, `train` a model's codes)."""
    from gliomatch.database import (
        Database,
    )
    from gliomatch.search import get_strategy

    db = Database.open(db_path)
    strat = get_strategy(strategy, db)
    strat = getattr(strat, "base", strat)  # NAME+rrM: the index is NAME's (and exact's)
    if strategy != strat.name:
        get_strategy("exact", db).ensure_ready()
    if not strat.needs_index:
        typer.echo(f"{strat.name} needs no index")
        return
    t0 = time.perf_counter()
    strat.build()
    size = sum(p.stat().st_size for p in strat.index_path.rglob("*") if p.is_file())
    typer.echo(
        f"{strat.name} index: {size / 1e6:.1f} MB in {strat.index_path} "
        f"({time.perf_counter() - t0:.1f} s)"
    )


@db_app.command("info")
@handle_errors
def db_info(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Counts, parameter ranges, disk size and parameter histograms."""
    import numpy as np

    from gliomatch.database import (
        Database,
    )
    from gliomatch.database.info import describe

    db = Database.open(db_path)
    info = describe(db)
    if json_out:
        typer.echo(as_json(info))
        return
    typer.echo(
        f"{info['path']}: {info['tumors']} tumors at {info['resolution']}^3 "
        f"({info['atlas']}), seed {info['seed']}"
    )
    c = info["counts"]
    typer.echo(
        f"{c['trajectories']} trajectories, {c['rejected_snapshots']} snapshots rejected; "
        f"{info['disk_bytes'] / 1e6:.1f} MB on disk "
        f"({info['bytes_per_tumor'] / 1e3:.1f} kB per tumor)"
    )
    bars = " ▁▂▃▄▅▆▇█"
    for col, unit in info["units"].items():
        lo, hi = info["ranges"][col]
        hist, _ = np.histogram(db.params[col], bins=20, range=(lo, hi if hi > lo else lo + 1))
        spark = "".join(bars[int(round(8 * h / max(hist.max(), 1)))] for h in hist)
        typer.echo(f"{col:>10} [{lo:9.4g}, {hi:9.4g}] {unit:7} {spark}")


@db_app.command("verify")
@handle_errors
def db_verify(db_path: Annotated[Path, typer.Argument(help="Database folder.")]):
    """Check checksums, table/array consistency and that every mask is recoverable."""
    from gliomatch.database import (
        Database,
        verify,
    )
    from gliomatch.search.verify import verify_indexes

    db = Database.open(db_path)
    with progress_bar(transient=True) as bar:
        res = verify(db, progress=bar)
        indexes = verify_indexes(db, progress=bar)
    typer.echo(f"ok: {res['tumors']} tumors in {res['shards']} shards verified")
    for name, how in indexes.items():
        typer.echo(f"ok: index {name}: {how}")


@db_app.command("show")
@handle_errors
def db_show(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    tumor_id: Annotated[int, typer.Argument(help="Tumor id.")],
    out: Annotated[Path, typer.Option(help="Output density NIfTI (atlas space).")],
    masks: Annotated[bool, typer.Option(help="Also write <out>_flair and <out>_t1gd.")] = False,
):
    """Export one tumor's density (and masks) as NIfTI with the atlas affine."""
    import nibabel as nib

    from gliomatch.database import (
        Database,
    )

    out = out_path(out)
    db = Database.open(db_path)
    u = db.density(tumor_id)
    with atomic_path(out) as tmp:
        nib.save(nib.Nifti1Image(u, db.affine), str(tmp))
    if masks:
        flair, t1gd = db.masks(tumor_id)
        for name, m in (("flair", flair), ("t1gd", t1gd)):
            with atomic_path(sibling(out, name)) as tmp:
                nib.save(nib.Nifti1Image(m.astype("uint8"), db.affine), str(tmp))
    row = db.params.iloc[tumor_id]
    typer.echo(
        f"tumor {tumor_id}: D_w {row.dw:.4g} mm^2/d, rho {row.rho:.4g} /d, "
        f"T {row.t_end:.1f} d, seed ({row.x_mm:.1f}, {row.y_mm:.1f}, {row.z_mm:.1f}) mm; "
        f"FLAIR {row.flair_cm3:.2f} cm^3, T1Gd {row.t1gd_cm3:.2f} cm^3 -> {out}"
    )
