"""The ``gliomatch`` command (``gliomatch <noun> <verb>``)."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from gliomatch.errors import GliomatchError

app = typer.Typer(
    help="Personalize brain-tumor growth models by database query. Units: mm, days, mm^2/day.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
atlas_app = typer.Typer(help="The tissue atlas.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks: fast paths against their references.", no_args_is_help=True
)
db_app = typer.Typer(help="Tumor databases: build, inspect, verify, export.", no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")


def _fail(msg: str, code: int = 1):
    typer.echo(f"error: {' '.join(str(msg).split())}", err=True)
    raise typer.Exit(code)


#: Where users report a failure gliomatch did not expect.
REPORT_TO = "the gliomatch issue tracker"


def _os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    return f"{what.lower()}: {where}" if where else what.lower()


def handle_errors(fn):
    """Every failure becomes one ``error:`` line and exit code 1, never a traceback.

    Expected failures (bad input, I/O, a corrupt or foreign file) say what was wrong; an
    unexpected one says so and where to report it (``GLIOMATCH_DEBUG=1`` shows the traceback).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except GliomatchError as exc:
            _fail(str(exc))
        except FileNotFoundError as exc:
            _fail(f"file not found: {exc.filename or exc}")
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename or exc}")
        except OSError as exc:  # read-only file system, disk full, a file in the way, ...
            _fail(_os_error(exc))
        except MemoryError:
            _fail("out of memory")
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            if os.environ.get("GLIOMATCH_DEBUG"):
                raise
            _fail(
                f"unexpected internal error ({type(exc).__name__}: {exc}). This is a bug: please "
                f"report it to {REPORT_TO} with the command you ran "
                "(GLIOMATCH_DEBUG=1 shows the traceback)"
            )

    return wrapper


def _finite(obj):
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json(obj) -> str:
    """JSON for --json output: an undefined number (NaN, infinity) is ``null``, so the output
    is always valid JSON."""
    return json.dumps(_finite(obj), allow_nan=False)


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
    from gliomatch.masks import threshold
    from gliomatch.solver import simulate as run

    out = _out_path(out)
    a = load_atlas(atlas, resolution)
    sim = run(a, x, y, z, dw, rho, [t_end], ratio=ratio)
    u = sim.densities[0]
    nib.save(a.to_nifti(u), str(out))
    files = [str(out)]
    if masks:
        for name, m in zip(("flair", "t1gd"), threshold(u), strict=True):
            p = _sibling(out, name)
            nib.save(a.to_nifti(m), str(p))
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
        typer.echo(_json(summary))
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
        typer.echo(_json(info))
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
    typer.echo(
        f"problem: {r['resolution']}^3 ({r['spacing_mm']:.2f} mm), D_w {dw} mm^2/d, "
        f"rho {rho} /d, T {t_end} d: {r['steps']} steps of {r['dt_days']:.3f} d"
    )
    typer.echo(
        f"fast (numba):       {r['fast_s']:8.3f} s  (first call {r['warmup_s']:.2f} s "
        "incl. compile/cache load)"
    )
    typer.echo(f"reference (numpy):  {r['reference_s']:8.3f} s")
    typer.echo(f"speed-up:           {r['speedup']:8.1f} x")
    typer.echo(f"max |diff|:         {r['max_abs_diff']:.2e}")
    typer.echo(
        f"kernel: {r['kernel_ns_per_cell']:.2f} ns per tissue cell, "
        f"{r['kernel_gb_per_s']:.1f} GB/s of compulsory traffic (20 B/cell) vs "
        f"{r['copy_gb_per_s']:.1f} GB/s memory copy on this machine"
    )
    if json_out:
        typer.echo(_json(r))


@bench_app.command("build")
@handle_errors
def bench_build_cmd(
    n: Annotated[int, typer.Option(help="Tumors to keep.")] = 500,
    resolution: ResolutionOpt = 128,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all cores).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the database here (default: temp).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Last line is a JSON object.")] = False,
):
    """Build a database and report tumors/min, simulations/min, rejection rate, bytes/tumor."""
    from gliomatch.evaluation.bench import bench_build

    r = bench_build(n=n, resolution=resolution, workers=workers, out=out, progress=not json_out)
    typer.echo(
        f"{r['n']} tumors at {resolution}^3 in {r['wall_s']:.1f} s: "
        f"{r['tumors_per_min']:.1f} tumors/min, {r['simulations_per_min']:.1f} "
        f"simulations/min, rejection rate {100 * r['rejection_rate']:.1f} %, "
        f"{r['bytes_per_tumor'] / 1e3:.1f} kB per tumor"
    )
    if json_out:
        typer.echo(_json(r))


StrategyOpt = Annotated[str, typer.Option(help="Search strategy: loop, exact, ds64, ds32, ...")]


def _load_mask(path: Path, name: str):
    from gliomatch.patient.inputs import load_nifti

    img = load_nifti(path, f"{name} mask")
    return np.asarray(img.dataobj), img.affine


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
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Find the database tumors that best match two atlas-space masks (Dice_T1Gd + Dice_FLAIR)."""
    import time

    from gliomatch.database import Database
    from gliomatch.search import Query, describe_matches, get_strategy

    db = Database.open(db_path)
    f, f_aff = _load_mask(flair, "FLAIR")
    t, t_aff = _load_mask(t1gd, "T1Gd")
    for name, aff, path in (("FLAIR", f_aff, flair), ("T1Gd", t_aff, t1gd)):
        if not np.allclose(aff, db.affine, atol=1e-3):
            raise GliomatchError(
                f"{name} mask {path}: its affine differs from the database atlas grid; "
                "the masks must be in atlas space (use `gliomatch infer` for patient scans)"
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = Query.from_masks(f, t, db.shape)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    strat = get_strategy(strategy, db, w_t1gd=w_t1gd, w_flair=w_flair, progress=not json_out)
    strat.ensure_ready()
    t0 = time.perf_counter()
    scores, ids = strat.search(q, k)
    elapsed = time.perf_counter() - t0
    rows = describe_matches(db, q, scores, ids)  # both Dice terms at full resolution
    if json_out:
        typer.echo(_json({"strategy": strategy, "seconds": elapsed, "matches": rows}))
        return
    typer.echo(
        f"{strategy}: top {len(rows)} of {len(db)} in {elapsed * 1000:.1f} ms "
        "(score = strategy's; Dice at full resolution)"
    )
    typer.echo(
        f"{'rank':>4} {'id':>7} {'score':>7} {'T1Gd':>6} {'FLAIR':>6} "
        f"{'seed x,y,z (mm)':>22} {'D_w':>7} {'rho':>7} {'T (d)':>7}"
    )
    for r in rows:
        th = r["theta"]
        seed = f"{th['x_mm']:.0f},{th['y_mm']:.0f},{th['z_mm']:.0f}"
        typer.echo(
            f"{r['rank']:>4} {r['id']:>7} {r['score']:7.4f} {r['dice_t1gd']:6.3f} "
            f"{r['dice_flair']:6.3f} {seed:>22} {th['dw']:7.3f} {th['rho']:7.4f} "
            f"{th['t_end']:7.0f}"
        )


@db_app.command("features")
@handle_errors
def db_features(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Output CSV.")],
):
    """Export the radiomics shape features (mm, mm^2, mm^3) and centre of mass of every tumor."""
    import pandas as pd

    from gliomatch.database import Database
    from gliomatch.search import get_strategy

    if not out.parent.exists():
        raise GliomatchError(f"output folder {out.parent} does not exist")
    db = Database.open(db_path)
    strat = get_strategy("radiomics", db)
    strat.ensure_ready()  # computes (once, in parallel, with a progress bar) and stores them
    table = pd.read_parquet(strat.index_path / "features.parquet")
    table.to_csv(out, index=False)
    typer.echo(f"{len(table)} tumors x {table.shape[1] - 1} features -> {out}")


@db_app.command("index")
@handle_errors
def db_index(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    strategy: StrategyOpt = "exact",
):
    """Build a strategy's search index explicitly (search builds it on first use otherwise)."""
    import time

    from gliomatch.database import Database
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


@bench_app.command("search")
@handle_errors
def bench_search_cmd(
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = (
        "loop,exact,ds64,ds32"
    ),
    queries: Annotated[int, typer.Option(help="Held-out query tumors.")] = 20,
    k: Annotated[int, typer.Option(help="k of the top-k.")] = 15,
    scale: Annotated[
        int | None, typer.Option(help="Also time indexes padded to this many entries.")
    ] = None,
    loop_max: Annotated[
        int, typer.Option(help="Time loop on at most this many tumors (scaled linearly).")
    ] = 2000,
    rerank: Annotated[
        int, typer.Option(help="Also run code-based strategies re-ranking this many candidates.")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per strategy.")] = False,
):
    """Latency and top-1/5/15 preservation of search strategies on held-out tumors."""
    from gliomatch.database import Database
    from gliomatch.evaluation.bench import bench_search

    db = Database.open(db_path)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if not names:
        raise GliomatchError(f"--strategies {strategies!r} names no strategy")
    if rerank:  # every code-based strategy (learned codes, multitask embeddings) re-ranks
        from gliomatch.search import get_strategy
        from gliomatch.search.learned import LearnedStrategy

        names += [
            f"{n}+rr{rerank}"
            for n in names
            if "+rr" not in n and isinstance(get_strategy(n, db, progress=False), LearnedStrategy)
        ]
    if queries < 1:
        raise GliomatchError(f"--queries must be >= 1, got {queries}")
    rows = bench_search(
        db,
        names,
        queries=queries,
        k=k,
        scale=scale,
        loop_max=loop_max,
        progress=not json_out,
        log=(lambda m: None) if json_out else typer.echo,
    )
    if json_out:
        for r in rows:
            typer.echo(_json(r))
        return
    typer.echo(f"{len(db)} tumors at {db.resolution}^3, {rows[0]['queries']} held-out queries")
    typer.echo(
        f"{'strategy':>10} {'median':>10} {'p95':>10} {'speed-up':>9} {'top1':>6} "
        f"{'top5':>6} {'top15':>6} {'index':>9}"
    )
    for r in rows:
        sp = f"{r['speedup_vs_loop']:.0f}x" if r["speedup_vs_loop"] else "-"
        typer.echo(
            f"{r['strategy']:>10} {r['median_s'] * 1e3:8.2f}ms {r['p95_s'] * 1e3:8.2f}ms "
            f"{sp:>9} {100 * r['top1']:5.1f}% {100 * r['top5']:5.1f}% "
            f"{100 * r['top15']:5.1f}% {r['index_bytes'] / 1e6:7.1f}MB"
        )
        if r.get("index_build_s"):
            typer.echo(f"{'':>10} index built in {r['index_build_s']:.1f} s")
        if "scaled_to" in r:
            sp = r.get("scaled_speedup_vs_loop")
            typer.echo(
                f"{'':>10} at {r['scaled_to']} entries: median "
                f"{r['scaled_median_s'] * 1e3:.2f} ms, p95 {r['scaled_p95_s'] * 1e3:.2f} ms, "
                f"index {r['scaled_index_bytes'] / 1e6:.0f} MB"
                + (f", {sp:.0f}x faster than loop scaled to that size" if sp else "")
            )
        if r["note"]:
            typer.echo(f"{'':>10} note: {r['note']}")
        if "exact_equals_loop" in r:
            typer.echo(
                f"{'':>10} exact top-{k} identical to loop on every query: {r['exact_equals_loop']}"
            )


#: Tumors in the demo database: builds in about 4 minutes at 128^3 on 2 cores.
DEMO_N = 1000


def _demo_db(n: int, resolution: int, db_path: Path | None, quiet: bool):
    """The demo database (built once, cached, resumed/grown to ``n``)."""
    from gliomatch.atlas import cache_dir
    from gliomatch.database import BuildConfig, Database, build_database
    from gliomatch.database.storage import FORMAT_VERSION

    # the cache folder names the format: an older demo database is rebuilt, not refused
    path = db_path or cache_dir() / "demo" / f"db-r{resolution}-v{FORMAT_VERSION}"
    if (path / "manifest.json").is_file():
        db = Database.open(path)
        if len(db) == n:
            return db
    if not quiet:
        typer.echo(
            f"building the demo database: {n} tumors at {resolution}^3 in {path} "
            "(once; cached and resumable)"
        )
    return build_database(path, n, BuildConfig(resolution=resolution, seed=0), progress=not quiet)


def _print_result(res, json_out: bool, extra: dict | None = None):
    if json_out:
        typer.echo(
            _json(
                {
                    "out": str(res.out),
                    "matches": res.matches[:5],
                    "parameters": res.parameters,
                    "timing": res.timing,
                    "registration_quality": res.quality,
                    **(extra or {}),
                }
            )
        )
        return
    b = res.matches[0]
    typer.echo(
        f"best match: tumor {b['id']}, score {b['score']:.4f} "
        f"(Dice T1Gd {b['dice_t1gd']:.3f}, FLAIR {b['dice_flair']:.3f})"
    )
    sp = res.parameters["spread_over_top_k"]
    for p_ in ("dw", "rho", "t_end", "x_mm", "y_mm", "z_mm"):
        v = sp[p_]
        typer.echo(
            f"  {p_:>6} = {v['best']:10.4g} {v['unit']:9} "
            f"(top-{res.parameters['top_k']}: {v['mean']:.4g} +- {v['std']:.2g})"
        )
    typer.echo(
        f"registration quality {res.quality:.2f}; timing: "
        + ", ".join(f"{k_[:-2]} {v_:.1f} s" for k_, v_ in res.timing.items())
    )
    typer.echo(f"outputs in {res.out} (report: {res.out / 'report.html'})")


RegOpt = Annotated[str, typer.Option(help="syn (rigid+affine+SyN) or affine (faster).")]


@app.command()
@handle_errors
def infer(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    t1: Annotated[Path | None, typer.Option(help="Patient T1 (registration reference).")] = None,
    t1c: Annotated[Path | None, typer.Option(help="Patient T1Gd (registration reference).")] = None,
    wm: Annotated[
        Path | None, typer.Option(help="White-matter map (registration reference).")
    ] = None,
    seg: Annotated[Path | None, typer.Option(help="BraTS label map (1/2/4 or 1/2/3).")] = None,
    flair_mask: Annotated[Path | None, typer.Option(help="Binary whole-tumor mask.")] = None,
    t1gd_mask: Annotated[Path | None, typer.Option(help="Binary tumor-core mask.")] = None,
    labels: Annotated[
        str,
        typer.Option(
            help="Label convention of --seg: auto, brats2013, brats2021, brats2023, brats2024 "
            "or predictgbm (see the README's table)."
        ),
    ] = "auto",
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    k: Annotated[int, typer.Option(help="Number of matches.")] = 15,
    strategy: StrategyOpt = "exact",
    registration: RegOpt = "syn",
    skull: Annotated[str, typer.Option(help="auto, on or off: is the skull still on?")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Personalize the growth model for one patient: register, search, warp back, report."""
    import warnings

    from gliomatch.database import Database
    from gliomatch.patient.pipeline import infer as run_infer
    from gliomatch.patient.pipeline import load_patient

    _check_k(k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = load_patient(
            t1=t1,
            t1c=t1c,
            wm=wm,
            seg=seg,
            flair_mask=flair_mask,
            t1gd_mask=t1gd_mask,
            labels=labels,
        )
        database = Database.open(db) if db else _demo_db(DEMO_N, 128, None, json_out)
        res = run_infer(
            inputs,
            database,
            out,
            k=k,
            strategy=strategy,
            registration=registration,
            skull=skull,
            progress=None if json_out else (lambda st: typer.echo(f"[{st}]")),
        )
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    _print_result(res, json_out)


@app.command("infer-batch")
@handle_errors
def infer_batch(
    csv: Annotated[
        Path,
        typer.Argument(
            help="Cohort CSV: patient_id, t1|t1c|wm, seg (+ optional labels) or "
            "flair_mask+t1gd_mask (paths relative to it)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (one subfolder per patient).")],
    db: Annotated[Path, typer.Option(help="Database folder.")],
    k: Annotated[int, typer.Option(help="Number of matches.")] = 15,
    strategy: StrategyOpt = "exact",
    registration: RegOpt = "syn",
):
    """Run `infer` for every row of a cohort CSV (resumable) and write summary.csv; a failed
    row is recorded there and the others go on (exit code 1 if any failed)."""
    from gliomatch.database import Database
    from gliomatch.patient.cohort import infer_cohort, read_cohort

    _check_k(k)
    rows = read_cohort(csv)
    database = Database.open(db)
    get_strategy_checked(strategy, database)
    table = infer_cohort(
        rows, database, out, k=k, strategy=strategy, registration=registration, log=typer.echo
    )
    typer.echo(table.to_string(index=False))
    typer.echo(f"summary: {out / 'summary.csv'}")
    if (table["status"] != "ok").any():
        raise typer.Exit(1)


def _check_k(k: int) -> None:
    if k < 1:
        raise GliomatchError(f"--k must be >= 1, got {k}")


def get_strategy_checked(name: str, db):
    """The strategy, resolved now: a bad name fails before any slow work."""
    from gliomatch.search import get_strategy

    return get_strategy(name, db, progress=False)


@app.command()
@handle_errors
def demo(
    n: Annotated[int, typer.Option(help="Tumors in the demo database.")] = DEMO_N,
    resolution: ResolutionOpt = 128,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patient.")] = 0,
    registration: RegOpt = "syn",
    db: Annotated[
        Path | None, typer.Option(help="Database (default: build/reuse the demo one).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Build (or reuse) a demo database, make a synthetic patient, infer, compare with truth."""
    res, truth, dice_f, dice_t = run_demo(
        n=n,
        resolution=resolution,
        out=out,
        seed=seed,
        registration=registration,
        db_path=db,
        quiet=json_out,
    )
    if json_out:
        _print_result(
            res, True, {"truth": truth, "dice_flair_patient": dice_f, "dice_t1gd_patient": dice_t}
        )
        return
    _print_result(res, False)
    b = res.matches[0]["theta"]
    typer.echo("recovered vs true (hidden) parameters:")
    for p_, unit in (
        ("dw", "mm^2/d"),
        ("rho", "1/d"),
        ("t_end", "d"),
        ("x_mm", "mm"),
        ("y_mm", "mm"),
        ("z_mm", "mm"),
    ):
        typer.echo(f"  {p_:>6}: {b[p_]:10.4g}  vs {truth[p_]:10.4g} {unit}")
    typer.echo(
        f"patient-space prediction vs hidden tumor: Dice FLAIR (u >= 0.2) {dice_f:.3f}, "
        f"Dice T1Gd (u >= 0.6) {dice_t:.3f}"
    )


def run_demo(*, n, resolution, out, seed, registration, db_path=None, quiet=False):
    import nibabel as nib

    from gliomatch.database.build import held_out_tumors
    from gliomatch.masks import dice, threshold
    from gliomatch.patient.pipeline import infer as run_infer
    from gliomatch.patient.pipeline import load_patient
    from gliomatch.patient.synthetic import make_patient

    db = _demo_db(n, resolution, db_path, quiet)
    atlas = db.atlas()
    row, _ = held_out_tumors(db, 1, seed_offset=2_000_003 + seed)[0]
    truth = {
        k_: float(row[k_]) for k_ in ("x", "y", "z", "dw", "rho", "t_end", "x_mm", "y_mm", "z_mm")
    }
    patient = make_patient(atlas, Path(out) / "patient", theta=truth, seed=seed)
    if not quiet:
        typer.echo(f"synthetic patient in {patient.folder} (hidden parameters in truth.json)")
    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    res = run_infer(
        inputs,
        db,
        Path(out) / "result",
        registration=registration,
        progress=None if quiet else (lambda st: typer.echo(f"[{st}]")),
    )
    pred = nib.load(res.files["density_patient"]).get_fdata()
    true = nib.load(patient.density_true).get_fdata()
    (pf, pt), (tf, tt) = threshold(pred), threshold(true)
    return res, truth, dice(pf, tf), dice(pt, tt)


@bench_app.command("infer")
@handle_errors
def bench_infer_cmd(
    db: Annotated[Path | None, typer.Option(help="Database (default: the demo database).")] = None,
    resolution: ResolutionOpt = 128,
    registration: RegOpt = "syn",
    json_out: Annotated[bool, typer.Option("--json", help="Last line is a JSON object.")] = False,
):
    """Time each stage of `infer` on a synthetic patient (load, register, warp, search, ...)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res, truth, dice_f, dice_t = run_demo(
            n=1000,
            resolution=resolution,
            out=Path(tmp),
            seed=1,
            registration=registration,
            db_path=db,
            quiet=True,
        )
    t = res.timing
    typer.echo(" | ".join(f"{k_[:-2]} {v_:.2f} s" for k_, v_ in t.items()))
    typer.echo(
        f"end to end {t['total_s']:.1f} s (goal <= 60 s); Dice vs hidden tumor: FLAIR "
        f"{dice_f:.3f}, T1Gd {dice_t:.3f}"
    )
    if json_out:
        typer.echo(
            _json(
                {
                    **t,
                    "registration": registration,
                    "dice_flair": dice_f,
                    "dice_t1gd": dice_t,
                    "registration_quality": res.quality,
                }
            )
        )


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
    from rich.progress import Progress

    from gliomatch.database import Database
    from gliomatch.evaluation.harness import evaluate as run
    from gliomatch.evaluation.harness import real_queries, synthetic_queries
    from gliomatch.search import available_strategies, get_strategy

    db = Database.open(db_path)
    if strategies == "all":  # every registered strategy that is ready (trained models only)
        names = []
        for s in available_strategies():
            try:
                if s != "loop" and get_strategy(s, db, progress=False).ensure_ready():
                    names.append(s)
            except GliomatchError as exc:
                typer.echo(f"skipping {s}: {exc}", err=True)
    else:
        names = [s.strip() for s in strategies.split(",") if s.strip()]
    if not names:
        raise GliomatchError(f"--strategies {strategies!r} names no strategy")
    if synthetic < 0:
        raise GliomatchError(f"--synthetic must be >= 0, got {synthetic}")
    if synthetic == 0 and real is None and not multitask:
        raise GliomatchError(
            "nothing to evaluate: give --synthetic N > 0, --real CSV and/or --multitask"
        )
    out.mkdir(parents=True, exist_ok=True)
    if multitask:
        from gliomatch.evaluation.embedding import validate_embeddings

        with Progress(disable=json_out) as bar:
            t = bar.add_task("multitask validation", total=None)
            mt = validate_embeddings(
                db,
                out,
                n_test=multitask_test,
                seed=seed,
                progress=lambda i, n: bar.update(t, total=n, completed=i),
            )
        if not json_out:
            typer.echo((out / "task_sets.md").read_text())
            typer.echo((out / "robustness.md").read_text())
            typer.echo(f"KNN curves: {out / 'knn.png'}; t-SNE: {out / 'tsne.png'}")
        if synthetic == 0 and real is None:
            if json_out:
                typer.echo(_json(mt))
            return
    with Progress(disable=json_out) as bar:
        tasks = {}

        def progress(stage, i, n):
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=n)
            bar.update(tasks[stage], completed=i)

        qs = []
        if synthetic:
            t = bar.add_task("simulating held-out queries", total=None)
            qs += synthetic_queries(db, synthetic, seed)
            bar.update(t, total=1, completed=1)
        if real is not None:
            qs += real_queries(
                db,
                real,
                out / "cache" / "real",
                registration=registration,
                progress=lambda i, n: progress("registering patients", i, n),
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
        typer.echo(_json(summary))
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


@app.command()
@handle_errors
def train(
    kind: Annotated[str, typer.Argument(help="ae, vae, hash or multitask.")],
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    latent: Annotated[int, typer.Option(help="Latent size (ae, vae).")] = 1024,
    bits: Annotated[int, typer.Option(help="Code bits (hash).")] = 64,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (published: 120; multitask default 30).")
    ] = None,
    input_resolution: Annotated[
        int, typer.Option(help="Masks downsampled to this (16, 32, 64, 128).")
    ] = 32,
    n_train: Annotated[int, typer.Option(help="Training tumors (published: 1500).")] = 1500,
    n_val: Annotated[int, typer.Option(help="Validation tumors (published: 150).")] = 150,
    batch: Annotated[
        int | None, typer.Option(help="Batch size (published: 2; multitask default 8).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam lr (1e-5; VAE 3e-5; multitask 1e-3).")
    ] = None,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs).")] = 20,
    lr_patience: Annotated[
        int,
        typer.Option(
            help="ae/vae/hash: lr x 0.2 after this many epochs without improvement "
            "(0: constant lr)."
        ),
    ] = 0,
    gamma: Annotated[
        float | None,
        typer.Option(
            help="hash: bi-half quantization pull (default: the paper's 6; 0: plain STE)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    modality: Annotated[str, typer.Option(help="t1gd, flair or both.")] = "both",
    tasks: Annotated[
        str,
        typer.Option(help="multitask: all, seg, location, regime or a comma list of labels."),
    ] = "all",
    lambda_seg: Annotated[float, typer.Option(help="multitask: segmentation weight.")] = 1.0,
    lambda_cls: Annotated[float, typer.Option(help="multitask: classification weight.")] = 1e-3,
    box_jitter: Annotated[
        bool, typer.Option(help="multitask: train with distorted bounding boxes.")
    ] = True,
    atlas_channel: Annotated[
        bool, typer.Option(help="multitask: the atlas T1 as a third input channel.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Train a mask autoencoder per modality, or the multitask embedding network (resumable;
    loss curves and validation figures saved with the model in the database's index folder)."""
    from rich.progress import Progress

    from gliomatch.database import Database

    if kind not in ("ae", "vae", "hash", "multitask"):
        raise GliomatchError(f"unknown model kind {kind!r}; use ae, vae, hash or multitask")
    db = Database.open(db_path)
    # options left out take the configuration's defaults (given ones, 0 included, are checked)
    given = {k: v for k, v in (("epochs", epochs), ("batch", batch), ("lr", lr)) if v is not None}
    if kind == "multitask":
        from gliomatch.learn.multitask import MultitaskConfig, multitask_dir, train_multitask

        mcfg = MultitaskConfig(
            tasks=tasks,
            **given,
            n_train=n_train,
            n_val=n_val,
            input_resolution=input_resolution,
            lambda_seg=lambda_seg,
            lambda_cls=lambda_cls,
            box_jitter=box_jitter,
            atlas_channel=atlas_channel,
            patience=patience,
            device=device,
        )
        with Progress(disable=json_out) as bar:
            task = bar.add_task(f"{mcfg.name}: loading the tumors", total=mcfg.epochs)

            def mprogress(name, epoch, total, row):
                bar.update(task, completed=epoch, description=f"{name} val {row['val_total']:.4f}")

            r = train_multitask(db, mcfg, progress=mprogress)
        if json_out:
            typer.echo(_json(r))
            return
        f = r["final"]
        parts = ", ".join(
            f"{k[4:]} {v:.3f}" for k, v in f.items() if k.startswith("val_") and k != "val_total"
        )
        typer.echo(
            f"{mcfg.name}: {r['history_epochs']} epochs, best validation loss "
            f"{r['best_val_loss']:.4g}; last epoch validation losses: {parts} "
            f"-> {multitask_dir(db, mcfg.name)}"
        )
        return

    from gliomatch.learn.train import TrainConfig, model_dir
    from gliomatch.learn.train import train as run

    cfg = TrainConfig(
        kind=kind,
        latent=latent,
        bits=bits,
        input_resolution=input_resolution,
        n_train=n_train,
        n_val=n_val,
        patience=patience,
        lr_patience=lr_patience,
        device=device,
        **given,
        **({} if gamma is None else {"gamma": gamma}),
    )
    mods = ("t1gd", "flair") if modality == "both" else (modality,)
    results = {}
    with Progress(disable=json_out) as bar:
        tasks = {}

        def progress(m, epoch, total, h):
            if m not in tasks:
                tasks[m] = bar.add_task(f"{cfg.name} {m}", total=total)
            bar.update(
                tasks[m], completed=epoch, description=f"{cfg.name} {m} val {h['val_loss']:.4f}"
            )

        for m in mods:
            results[m] = run(db, cfg, m, progress=progress)
    if json_out:
        typer.echo(_json(results))
        return
    for m, r in results.items():
        typer.echo(
            f"{cfg.name} {m}: {r['history_epochs']} epochs, best validation loss "
            f"{r['best_val_loss']:.4f}, reconstruction Dice {r['recon_dice_val']:.3f} "
            f"(validation) -> {model_dir(db, cfg.name, m)}"
        )


def _range(text: str, name: str) -> tuple[float, float]:
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
    dw: Annotated[str, typer.Option(help="D_w range LOW,HIGH (mm^2/day).")] = "0.02,1.5",
    rho: Annotated[str, typer.Option(help="rho range LOW,HIGH (1/day).")] = "0.002,0.2",
    t_end: Annotated[str, typer.Option(help="T_end range LOW,HIGH (days).")] = "50,1500",
    log_uniform: Annotated[bool, typer.Option(help="Draw D_w, rho, T log-uniformly.")] = False,
    seed_box: Annotated[
        str, typer.Option(help="'tissue' (uniform over WM+GM voxels) or 'paper' (fraction box).")
    ] = "tissue",
    snapshots: Annotated[int, typer.Option(help="T_end snapshots per trajectory.")] = 8,
    flair_min: Annotated[float, typer.Option(help="Min whole-tumor volume (cm^3).")] = 5.0,
    flair_max: Annotated[float, typer.Option(help="Max whole-tumor volume (cm^3).")] = 300.0,
    t1gd_min: Annotated[float, typer.Option(help="Min tumor-core volume (cm^3).")] = 0.5,
    shard_size: Annotated[int, typer.Option(help="Trajectories per shard.")] = 8,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the manifest counts as JSON.")
    ] = False,
):
    """Simulate a database of tumors (resumable: run the same command again after a kill)."""
    from gliomatch.database import BuildConfig, SamplingConfig, SizeFilter, build_database

    cfg = BuildConfig(
        resolution=resolution,
        atlas=None if atlas is None else str(atlas),
        seed=seed,
        sampling=SamplingConfig(
            dw=_range(dw, "dw"),
            rho=_range(rho, "rho"),
            t_end=_range(t_end, "t-end"),
            log_uniform=log_uniform,
            seed_box=seed_box,
            snapshots=snapshots,
        ),
        size_filter=SizeFilter(
            flair_min_cm3=flair_min, flair_max_cm3=flair_max, t1gd_min_cm3=t1gd_min
        ),
        shard_size=shard_size,
    )
    db = build_database(out, n, cfg, workers=workers, scheduler=scheduler, progress=not json_out)
    m = db.manifest
    if json_out:
        typer.echo(
            _json(
                {
                    **m["counts"],
                    "disk_bytes": m["disk_bytes"],
                    "seconds": m["build_seconds_this_run"],
                }
            )
        )
        return
    c = m["counts"]
    typer.echo(
        f"{c['tumors']} tumors from {c['trajectories']} trajectories "
        f"({c['rejected_snapshots']} snapshots rejected by size) in {out}; "
        f"{m['disk_bytes'] / 1e6:.1f} MB, {m['build_seconds_this_run']:.1f} s"
    )


def _db_info(db) -> dict:
    p = db.params
    m = db.manifest
    cols = {"dw": "mm^2/d", "rho": "1/d", "t_end": "d", "flair_cm3": "cm^3", "t1gd_cm3": "cm^3"}
    return {
        "path": str(db.path),
        "tumors": len(db),
        "resolution": db.resolution,
        "atlas": m["atlas"]["source"],
        "counts": m["counts"],
        "disk_bytes": m["disk_bytes"],
        "bytes_per_tumor": m["disk_bytes"] / max(len(db), 1),
        "ranges": {c: [float(p[c].min()), float(p[c].max())] for c in cols},
        "units": cols,
        "seed": m["sampling"]["seed"],
        "size_filter": m["size_filter"],
    }


@db_app.command("info")
@handle_errors
def db_info(
    db_path: Annotated[Path, typer.Argument(help="Database folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Counts, parameter ranges, disk size and parameter histograms."""
    import numpy as np

    from gliomatch.database import Database

    db = Database.open(db_path)
    info = _db_info(db)
    if json_out:
        typer.echo(_json(info))
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
    from rich.progress import Progress

    from gliomatch.database import Database, verify

    db = Database.open(db_path)
    with Progress(transient=True) as bar:
        task = bar.add_task("verifying", total=len(db))
        res = verify(db, progress=lambda i, n: bar.update(task, completed=i))
    typer.echo(f"ok: {res['tumors']} tumors in {res['shards']} shards verified")


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

    from gliomatch.database import Database

    out = _out_path(out)
    db = Database.open(db_path)
    u = db.density(tumor_id)
    nib.save(nib.Nifti1Image(u, db.affine), str(out))
    if masks:
        flair, t1gd = db.masks(tumor_id)
        for name, m in (("flair", flair), ("t1gd", t1gd)):
            nib.save(nib.Nifti1Image(m.astype("uint8"), db.affine), str(_sibling(out, name)))
    row = db.params.iloc[tumor_id]
    typer.echo(
        f"tumor {tumor_id}: D_w {row.dw:.4g} mm^2/d, rho {row.rho:.4g} /d, "
        f"T {row.t_end:.1f} d, seed ({row.x_mm:.1f}, {row.y_mm:.1f}, {row.z_mm:.1f}) mm; "
        f"FLAIR {row.flair_cm3:.2f} cm^3, T1Gd {row.t1gd_cm3:.2f} cm^3 -> {out}"
    )


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
