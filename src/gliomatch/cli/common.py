"""What every command shares: one error line for every failure, JSON output, options, paths,
progress bars (rich lives only in the command line)."""

from __future__ import annotations

import functools
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from gliomatch.errors import GliomatchError, check_count


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
        shown = warnings.showwarning
        warnings.showwarning = _show_warning  # library warnings as warning: lines
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
        finally:
            warnings.showwarning = shown

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning from any library (torch, ANTs, ours) as one ``warning:`` line on stderr: its
    first line, without the source path and line that Python's own format adds."""
    text = str(message).strip().splitlines()
    typer.echo(f"warning: {text[0] if text else category.__name__}", err=True)


def _finite(obj):
    import numpy as np

    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def as_json(obj) -> str:
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


def out_path(path: Path) -> Path:
    if not path.parent.exists():
        raise GliomatchError(f"output folder {path.parent} does not exist")
    if not str(path).endswith((".nii", ".nii.gz")):
        raise GliomatchError(f"output {path} must end in .nii or .nii.gz")
    return path


def sibling(path: Path, suffix: str) -> Path:
    name = path.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4]
    return path.with_name(f"{stem}_{suffix}.nii.gz")


StrategyOpt = Annotated[str, typer.Option(help="Search strategy: loop, exact, ds64, ds32, ...")]


RegOpt = Annotated[
    str,
    typer.Option(
        help="syn (rigid+affine+SyN), affine (faster), none (scans already on the "
        "database's atlas grid) or resample (scans already in the atlas' world space, on "
        "another grid)."
    ),
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def check_k(k: int) -> None:
    check_count(k, "--k")


#: The plan rule's parameters as the command line names them.
PLAN_FLAGS = {
    "margin_mm": "--margin",
    "volume_cm3": "--plan-volume",
    "level": "--plan-level",
    "contain": "--gtv",
    "min_margin_mm": "--min-margin",
}


def check_margin(margin: float) -> None:
    """The library names its parameter (``margin_mm``); the command line its flag."""
    from gliomatch.patient.plans import check_rule

    check_rule(margin, names=PLAN_FLAGS)


def strategy_names(text: str) -> list[str]:
    """Comma-separated strategy names; an empty list is an error."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise GliomatchError(f"--strategies {text!r} names no strategy")
    return names


@contextmanager
def progress_bar(enabled: bool = True, transient: bool = False):
    """Rich progress bars behind the library's callback ``progress(done, total, description)``:
    one bar per *what* of a ``"what: detail"`` description (see :mod:`gliomatch.progress`)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled, transient=transient) as bar:
        tasks = {}

        def update(done, total, description=""):
            what = description.split(":", 1)[0]
            if what not in tasks:
                tasks[what] = bar.add_task(description, total=total)
            bar.update(tasks[what], completed=done, total=total, description=description)

        yield update


def given(**options) -> dict:
    """The options a user gave (not None): the rest take the configuration's defaults."""
    return {k: v for k, v in options.items() if v is not None}


def print_estimates(par: dict) -> None:
    """The posterior summary of ``parameters.json`` (what the scan determines), as text."""
    est = par["estimates"]
    pct = f"{100 * par['level']:.0f} %"
    cal = "calibrated" if par["calibrated"] else "NOT calibrated for this database"
    typer.echo(
        f"what this scan determines (posterior median, {pct} interval, {cal}; top "
        f"{par['posterior_k']}, temperature {par['temperature']:g}):"
    )
    for key, unit in (("infiltration_mm", "mm"), ("rho_t", ""), ("dw_over_rho", "mm^2")):
        e = est[key]
        typer.echo(
            f"  {e['label']:>13} = {e['median']:8.3g} {unit:5} "
            f"[{e['interval'][0]:.3g}, {e['interval'][1]:.3g}]"
        )
    seed = est["seed_mm"]
    typer.echo(
        "           seed = (" + ", ".join(f"{v:.1f}" for v in seed["mean"]) + ") mm atlas, "
        f"within {seed['radius']:.1f} mm"
    )
    given = par.get("given_age")
    if given:
        for key, unit in (("rho", "1/day"), ("dw", "mm^2/day")):
            e = given[key]
            typer.echo(
                f"  {key:>13} = {e['median']:8.3g} {unit:8} [{e['interval'][0]:.3g}, "
                f"{e['interval'][1]:.3g}] given the age {given['age_days']:g} days"
            )
        for w in given["warnings"]:
            typer.echo(f"warning: {w}", err=True)
    both = par.get("two_scan")
    if both:
        b = both["best"]
        typer.echo(
            f"two scans {both['interval_days']:g} days apart: rho = {b['rho']:.4g} /day, "
            f"D_w = {b['dw']:.4g} mm^2/day, age at the first scan {b['t_first_days']:.0f} days "
            f"(stages rho*T {b['tau_first']:.2f} -> {b['tau_followup']:.2f}, "
            f"Dice-sum {b['score']:.3f} of 4)"
        )
        for w in both["warnings"]:
            typer.echo(f"warning: {w}", err=True)
    if not given and not both:
        typer.echo("D_w, rho, T_end: " + par["not_identifiable"])


MarginOpt = Annotated[
    float, typer.Option("--margin", help="Standard CTV: mm around the tumor core (default 15).")
]
PlanVolumeOpt = Annotated[
    float | None,
    typer.Option(help="Personalized CTV of this volume (cm3) instead of the standard's."),
]
PlanLevelOpt = Annotated[
    float | None,
    typer.Option(help="Personalized CTV = the isodensity region u >= this level, instead."),
]
GtvOpt = Annotated[
    str,
    typer.Option(
        "--gtv",
        help="What the personalized CTV always contains (the GTV): core (the tumor core, "
        "default), whole (the whole visible tumor) or none (PREDICT-GBM's top-V rule, which "
        "may leave out visible tumor).",
    ),
]
MinMarginOpt = Annotated[
    float,
    typer.Option(
        "--min-margin", help="Personalized CTV: mm around the GTV it holds too (default 0)."
    ),
]


def plan_rule(margin, plan_volume, plan_level, gtv, min_margin) -> dict:
    """The plan options of the command line as the library's rule (checked now, before any
    slow step runs, with the flags' names)."""
    from gliomatch.patient.plans import check_rule

    rule = {
        "margin_mm": margin, "volume_cm3": plan_volume, "level": plan_level, "contain": gtv,
        "min_margin_mm": min_margin,
    }  # fmt: skip
    check_rule(**rule, names=PLAN_FLAGS)
    return rule


def print_plans(plans: dict | None) -> None:
    """The plans' lines of ``infer``/``plan``: volume, healthy brain, visible-tumor coverage."""
    if not plans:
        return
    if "skipped" in plans:
        typer.echo(plans["skipped"])
        return
    for name, f in plans["figures"].items():
        typer.echo(
            f"{name} CTV: {f['volume_cm3']:.1f} cm3, {f['outside_visible_tumor_cm3']:.1f} cm3 of "
            f"it outside the visible tumor; covers {100 * f['covers_whole_tumor']:.1f} % of the "
            f"visible whole tumor, {100 * f['covers_core']:.1f} % of the core"
        )
    if "evidence" in plans:
        typer.echo(plans["evidence"]["text"])


def print_result(res, json_out: bool, extra: dict | None = None):
    """Print an ``infer`` result (or its JSON, with ``extra`` entries)."""
    from gliomatch.patient.report import describe_quality

    if json_out:
        typer.echo(
            as_json(
                {
                    "out": str(res.out),
                    "matches": res.matches[:5],
                    "parameters": res.parameters,
                    "timing": res.timing,
                    "registration_quality": res.quality,
                    "registration_quality_figures": res.quality_figures,
                    "plans": res.plans,
                    "files": res.files,
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
    print_estimates(res.parameters)
    if "refinement" in res.parameters:
        r = res.parameters["refinement"]
        typer.echo(
            f"refined in the patient's anatomy ({r['tissue']['source']} tissue): score "
            f"{r['score_before']:.3f} atlas-only -> {r['score_after']:.3f} refined "
            f"(Dice T1Gd {r['best']['dice_t1gd']:.3f}, FLAIR {r['best']['dice_flair']:.3f}) in "
            f"{r['seconds']:.1f} s"
        )
    print_plans(res.plans)
    if "rtstruct" in res.files:
        typer.echo(
            f"RT Structure Set (GTV, CTV standard, CTV personalized; unapproved): "
            f"{res.files['rtstruct']}"
        )
    typer.echo(
        f"registration quality: {describe_quality(res.quality_figures)}; timing: "
        + ", ".join(f"{k_[:-2]} {v_:.1f} s" for k_, v_ in res.timing.items())
    )
    typer.echo(f"outputs in {res.out} (report: {res.out / 'report.html'})")


def prepared_strategy(db, name: str, *, quiet: bool = False, **options):
    """The explicit build step of the commands that search: strategy ``name`` for ``db`` with
    its index built (saying so, once per database) and loaded. The library's ``search`` never
    builds an index."""
    from gliomatch.search import get_strategy

    strat = get_strategy(name, db, **options)
    base = getattr(strat, "base", strat)  # NAME+rrM: NAME's index and exact's
    missing = [base.name] if base.needs_index and not base.is_built() else []
    if "+rr" in strat.name and not get_strategy("exact", db).is_built():
        missing.append("exact")
    if missing and not quiet:
        typer.echo(
            f"building the {' and '.join(dict.fromkeys(missing))} index of {db.path} once "
            "(`gliomatch db index` does it ahead)",
            err=True,
        )
    return strat.ensure_ready()
