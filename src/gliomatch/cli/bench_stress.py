"""`gliomatch bench stress` and `bench edema-proxy`: the plans outside the database's own world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import bench_app
from gliomatch.cli.common import (
    RegOpt,
    as_json,
    check_margin,
    handle_errors,
    progress_bar,
)
from gliomatch.errors import GliomatchError
from gliomatch.files import output_folder


@bench_app.command("stress")
@handle_errors
def bench_stress_cmd(
    db: Annotated[Path, typer.Option(help="Database folder.")],
    out: Annotated[
        Path, typer.Option(help="Folder for rows.csv, summary.json, stress.png and the cache.")
    ],
    settings: Annotated[
        str,
        typer.Option(
            help="Comma list of: none (the database's world, through the whole pipeline), "
            "anatomy, model, imaging, treatment (one factor each), all (every factor)."
        ),
    ] = "none,anatomy,model,imaging,treatment,all",
    patients: Annotated[int, typer.Option(help="Patients per single-factor setting.")] = 50,
    combined: Annotated[int, typer.Option(help="Patients with every factor (all).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the patients.")] = 0,
    registration: RegOpt = "syn",
    margin: Annotated[float, typer.Option(help="Standard CTV margin around the core (mm).")] = 15.0,
    refine: Annotated[
        bool,
        typer.Option(
            help="Also score the plans of the refinement in the patient's anatomy (best fit and "
            "refined ensemble)."
        ),
    ] = True,
    cached_only: Annotated[
        bool,
        typer.Option(
            help="Summarize the patients already computed in --out (a run in progress or "
            "interrupted) without computing more."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No line per patient.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Standard vs personalized plans (equal volume) on synthetic patients whose truth departs
    from the database's world (anatomy, growth model, imaging, treatment), each run through
    the whole patient pipeline and scored on its own grid; resumable."""
    from gliomatch.database import Database
    from gliomatch.evaluation.stress import SETTINGS, bench_stress

    chosen = [s.strip() for s in settings.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SETTINGS] if chosen else ["(none given)"]
    if bad:
        raise GliomatchError(f"--settings: unknown {', '.join(bad)}; use {', '.join(SETTINGS)}")
    check_margin(margin)
    folder = output_folder(out)
    database = Database.open(db)
    log = None if quiet or json_out else typer.echo
    with progress_bar(not json_out and quiet) as bar:
        res = bench_stress(
            database, folder, settings=chosen, patients=patients, combined=combined, seed=seed,
            registration=registration, margin_mm=margin, refine=refine, cached_only=cached_only,
            progress=bar, log=log,
        )  # fmt: skip
    if json_out:
        typer.echo(as_json(res))
        return
    typer.echo(stress_table(res))
    typer.echo(
        f"wrote {folder / 'summary.json'}, {folder / 'rows.csv'} and {folder / 'stress.png'}"
    )


def stress_table(res: dict) -> str:
    """The summary as the README's Markdown table (coverage %, paired difference in points):
    a column for each plan the run scored (the refined ones when it refined)."""
    from gliomatch.evaluation.plans import ALL_PLANS

    entries = [s[rec] for s in res["settings"].values() for rec in ("enhancing", "any")]
    plans = [p for p in ALL_PLANS if any(f"{p}_mean" in e for e in entries)]
    if not plans:
        return (
            f"no stressed patient computed yet for this {res['n_db']:,}-tumor database "
            "(--cached-only summarizes only what a run has computed; run without it)"
        )
    names = {"refined_ensemble": "refined ens."}
    head = " | ".join(names.get(p, p) for p in plans)
    diffs = " | ".join(f"{names.get(p, p)} − std" for p in plans[1:])
    partial = res.get("partial")
    lines = [
        *(
            [f"PARTIAL: fewer patients than asked in {', '.join(partial)} (--cached-only)"]
            if partial
            else []
        ),  # fmt: skip
        f"{res['n_db']:,}-tumor database; patients through `personalize` "
        f"(registration {res['registration']}); plans of equal volume (core + "
        f"{res['margin_mm']:g} mm); mean recurrence coverage % over patients with that "
        "recurrence; difference personalized − standard in points ± s.e.; share ≥ standard",
        f"| setting | patients ok / skipped / failed | recurrence | n | {head} | {diffs} | "
        f"{names.get(plans[-1], plans[-1])} ≥ std |",
        "|" + "---|" * (5 + 2 * len(plans)),
    ]
    for name, s in res["settings"].items():
        for rec in ("enhancing", "any"):
            e = s[rec]
            if not e["n"]:
                lines.append(f"| {name} | {s['ok']} / {s['skipped']} / {s['failed']} | {rec} | 0 |")
                continue

            def diff(plan, e=e):
                se = e[f"{plan}_minus_standard_se"]
                d = 100 * e[f"{plan}_minus_standard"]
                return f"{d:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}")

            means = " | ".join(f"{100 * e[f'{p}_mean']:.1f}" for p in plans)
            ds = " | ".join(diff(p) for p in plans[1:])
            lines.append(
                f"| {name} | {s['ok']} / {s['skipped']} / {s['failed']} | {rec} | {e['n']} | "
                f"{means} | {ds} | {100 * e[f'{plans[-1]}_at_least_standard']:.0f} % |"
            )
    return "\n".join(lines)


@bench_app.command("edema-proxy")
@handle_errors
def bench_edema_proxy_cmd(
    real: Annotated[
        Path,
        typer.Option(help="A BraTS case folder, a folder of them, or a cohort CSV (both labels)."),
    ],
    db: Annotated[Path, typer.Option(help="Database folder.")],
    out: Annotated[Path, typer.Option(help="Folder for proxy.csv, proxy.json, the cache.")],
    labels: Annotated[str, typer.Option(help="Label convention of the segmentations.")] = "auto",
    registration: RegOpt = "syn",
    margin: Annotated[float, typer.Option(help="Standard CTV margin around the core (mm).")] = 15.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Plans from the tumor core and anatomy alone (edema hidden), scored by how much of the
    hidden FLAIR abnormality outside the core each covers (standard vs personalized, equal
    volume). Edema is a proxy for infiltration, not proof."""
    from gliomatch.database import Database
    from gliomatch.evaluation.proxy import edema_proxy

    check_margin(margin)
    folder = output_folder(out)
    database = Database.open(db)
    table, s = edema_proxy(
        real, database, folder, labels=labels, registration=registration, margin_mm=margin,
        log=None if json_out else typer.echo,
    )  # fmt: skip
    if json_out:
        typer.echo(as_json({**s, "rows": table.to_dict(orient="records")}))
        return
    typer.echo(
        f"{s['n_db']:,}-tumor database; plans from the core alone (edema hidden), equal volume "
        f"(core + {margin:g} mm); coverage % of the FLAIR abnormality outside the core"
    )
    from gliomatch.evaluation.plans import ALL_PLANS

    plans = [p for p in ALL_PLANS if f"{p}_edema" in table]
    typer.echo("| case | core cm3 | edema cm3 | plan cm3 | " + " | ".join(plans) + " |")
    typer.echo("|" + "---|" * (4 + len(plans)))
    for _, r in table.iterrows():
        if r["status"] != "ok":
            typer.echo(f"| {r['patient_id']} | {r['status']} |" + " |" * (2 + len(plans)))
            continue
        cells = " | ".join(f"{100 * r[f'{p}_edema']:.1f}" for p in plans)
        typer.echo(
            f"| {r['patient_id']} | {r['core_cm3']:.1f} | {r['edema_cm3']:.1f} | "
            f"{r['plan_cm3']:.1f} | {cells} |"
        )
    if s["ok"]:
        means = ", ".join(f"{p} {100 * s[f'{p}_mean']:.1f}" for p in plans)
        typer.echo(f"mean of {s['ok']}: {means} %")
    typer.echo(f"wrote {folder / 'proxy.csv'} and {folder / 'proxy.json'}")
