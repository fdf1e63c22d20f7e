"""`gliomatch bench solver | build | design | search` (the patient benchmarks: `bench_patient`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import bench_app
from gliomatch.cli.common import (
    AtlasOpt,
    ResolutionOpt,
    as_json,
    handle_errors,
    progress_bar,
    strategy_names,
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
    from gliomatch.evaluation.bench_solver import bench_solver

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
        typer.echo(as_json(r))


@bench_app.command("build")
@handle_errors
def bench_build_cmd(
    n: Annotated[int, typer.Option(help="Tumors to keep per design.")] = 500,
    resolution: ResolutionOpt = 128,
    designs: Annotated[
        str,
        typer.Option(
            help="Comma list of sampler[:snapshots per simulation], e.g. plain:8,scaled:32 "
            "(the first is the reference of the speed-up)."
        ),
    ] = "plain,scaled",
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all cores).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the databases here (default: temp).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per design.")] = False,
):
    """Build a database per sampler design; report tumors/min, simulations/min, tumors kept per
    simulation, rejection rate and bytes/tumor, and the speed-up over the first design."""
    from gliomatch.evaluation.bench_build import bench_build

    with progress_bar(not json_out) as bar:
        rows = bench_build(
            n=n,
            resolution=resolution,
            designs=[d for d in designs.split(",") if d.strip()],
            workers=workers,
            out=out,
            progress=bar,
        )
    for r in rows:
        if json_out:
            typer.echo(as_json(r))
            continue
        typer.echo(
            f"{r['design']:>10}: {r['n']} tumors at {resolution}^3 in {r['wall_s']:.1f} s: "
            f"{r['tumors_per_min']:.1f} tumors/min ({r['speedup_vs_first']:.2f}x), "
            f"{r['simulations_per_min']:.1f} simulations/min, {r['kept_per_simulation']:.2f} "
            f"kept per simulation, rejection rate {100 * r['rejection_rate']:.1f} %, "
            f"{r['bytes_per_tumor'] / 1e3:.1f} kB per tumor"
        )


@bench_app.command("design")
@handle_errors
def bench_design_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the databases (reused when rerun).")],
    designs: Annotated[
        str, typer.Option(help="Comma list of sampler[:snapshots]; the first is the reference.")
    ] = "plain:8,scaled:16,scaled:32,scaled:64",
    budget: Annotated[float, typer.Option(help="Build minutes per design.")] = 5.0,
    resolution: ResolutionOpt = 128,
    queries: Annotated[int, typer.Option(help="Held-out synthetic queries.")] = 1000,
    real: Annotated[
        Path | None,
        typer.Option(help="Also real patients: a cohort CSV, a BraTS case folder or a folder."),
    ] = None,
    labels: Annotated[str, typer.Option(help="Label convention of BraTS folders.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per design.")] = False,
):
    """Equal build time per sampler design; mean best-match Dice on the same held-out queries."""
    from gliomatch.evaluation.bench_build import bench_design

    with progress_bar(not json_out, transient=True) as bar:
        rows = bench_design(
            out,
            [d for d in designs.split(",") if d.strip()],
            budget_s=budget * 60,
            resolution=resolution,
            queries=queries,
            real=real,
            labels=labels,
            progress=bar,
            log=(lambda m: None) if json_out else typer.echo,
        )
    cases = sorted(rows[0]["real"]) if rows else []
    lines = [
        "| design | tumors | simulations | build s | tumors/min | mean best combined Dice | "
        "vs first (paired) | mean best Dice T1Gd | mean best Dice FLAIR |"
        + "".join(f" {c} best combined (T1Gd / FLAIR) |" for c in cases),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(cases),
    ]
    for r in rows:
        if json_out:
            typer.echo(as_json({k: v for k, v in r.items() if k != "per_query"}))
        lines.append(
            f"| {r['design']} | {r['tumors']} | {r['simulations']} | {r['build_s']:.0f} | "
            f"{r['tumors_per_min']:.0f} | {r['mean_best_combined']:.4f} ± "
            f"{r['sem_best_combined']:.4f} | {r['diff_vs_first']:+.4f} ± "
            f"{r['sem_diff_vs_first']:.4f} | {r['mean_best_dice_t1gd']:.3f} | "
            f"{r['mean_best_dice_flair']:.3f} |"
            + "".join(
                f" {r['real'][c][0]:.3f} ({r['real'][c][1]:.3f} / {r['real'][c][2]:.3f}) |"
                for c in cases
            )
        )
    (out / "design_table.md").write_text("\n".join(lines) + "\n")
    if not json_out:
        typer.echo("\n".join(lines))


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
    from gliomatch.evaluation.bench_search import bench_search

    db = Database.open(db_path)
    with progress_bar(not json_out, transient=True) as bar:
        rows = bench_search(
            db,
            strategy_names(strategies),
            queries=queries,
            rerank=rerank,
            k=k,
            scale=scale,
            loop_max=loop_max,
            progress=bar,
            log=(lambda m: None) if json_out else typer.echo,
        )
    if json_out:
        for r in rows:
            typer.echo(as_json(r))
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
        typer.echo(
            f"{'':>10} memory: +{r['rss_added_bytes'] / 1e6:.0f} MB resident for this strategy, "
            f"process peak {r['peak_rss_bytes'] / 1e6:.0f} MB"
        )
        if r.get("index_build_s"):
            typer.echo(f"{'':>10} index built in {r['index_build_s']:.1f} s")
        if "stages_ms" in r:
            split = ", ".join(f"{st} {ms:.2f}" for st, ms in r["stages_ms"].items())
            typer.echo(
                f"{'':>10} median per stage (ms): {split}; {r['verified_median']:.0f} tumors "
                "verified"
            )
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
