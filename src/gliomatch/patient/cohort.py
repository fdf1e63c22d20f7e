"""Cohorts: a CSV of patients or a folder of BraTS cases, read row by row, and ``infer`` over
all of them (resumable).

A cohort CSV has a ``patient_id`` column, one anatomy column (``t1``, ``t1c`` or ``wm``), the
tumor as ``seg`` (a label map, with an optional ``labels`` column naming its convention) or as
``flair_mask`` + ``t1gd_mask``; relative paths are relative to the CSV's folder. An optional
``followup_seg`` column (with ``followup_labels``) gives a later label map on the anatomy's
grid: ``gliomatch evaluate --real`` scores the plans by how much of that recurrence they cover.

A BraTS case folder holds ``<id>-t1n/-t1c/-t2f/-t2w/-seg.nii.gz`` (BraTS 2023 naming) or
``<id>_t1/_t1ce/_flair/_t2/_seg.nii.gz`` (BraTS 2017-2021): the native T1 is the anatomy (the
T1c when there is no T1), the ``seg`` the tumor. A folder of such folders is a cohort.

A problem with one row (an unusable patient id, a duplicate id, a missing file) is recorded for
that row and the others go on; only a CSV that cannot be read at all, or that holds no patient
row, is an error.

Each patient's folder holds only the outputs of its last run: a patient that is run again
starts from an empty folder, and a failed run leaves none (the earlier outputs belonged to
other inputs or settings), so no stale result can be mistaken for the new one. A run cut off
midway leaves a folder without the ``cache_key`` that marks a finished one (``matches.json``
is written last), which the next run redoes.
"""

from __future__ import annotations

import json
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gliomatch.errors import GliomatchError
from gliomatch.files import (
    atomic_path,
    cache_key,
    confined_child,
    sha256_file,
    write_json_atomic,
)
from gliomatch.patient.inputs import load_patient
from gliomatch.patient.pipeline import infer
from gliomatch.patient.plans import MARGIN_MM
from gliomatch.patient.refine import cache_tag

__all__ = [
    "PLAN_COLUMNS",
    "CohortRow",
    "brats_case",
    "infer_cohort",
    "input_digest",
    "load_case",
    "read_cohort",
]

FILE_COLUMNS = ("t1", "t1c", "wm", "seg", "flair_mask", "t1gd_mask")
#: A follow-up label map (the recurrence) for ``evaluate --real``; not an input of ``infer``.
FOLLOWUP_COLUMN = "followup_seg"
#: What ``infer_cohort`` writes beside the patients' folders; no patient may be named so.
RESERVED = ("summary.csv",)


@dataclass
class CohortRow:
    """One patient of a cohort: its files, or the reason it cannot be run."""

    patient_id: str
    files: dict = field(default_factory=dict)
    labels: str = "auto"
    error: str | None = None
    followup_labels: str = "auto"

    def patient_kwargs(self) -> dict:
        return {**{c: self.files.get(c) for c in FILE_COLUMNS}, "labels": self.labels}


#: BraTS file suffixes: ours (the cohort's column) -> (BraTS 2023 name, BraTS 2017-2021 name).
BRATS_SUFFIXES = {
    "t1": ("-t1n", "_t1"),
    "t1c": ("-t1c", "_t1ce"),
    "seg": ("-seg", "_seg"),
}
NIFTI_ENDINGS = (".nii.gz", ".nii")


def _brats_files(folder: Path) -> dict[str, Path]:
    found = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        ending = next((e for e in NIFTI_ENDINGS if name.endswith(e)), None)
        if ending is None or not p.is_file():
            continue
        stem = name[: -len(ending)]
        for column, suffixes in BRATS_SUFFIXES.items():
            if any(stem.endswith(sfx) and stem != sfx for sfx in suffixes):
                found.setdefault(column, []).append(p)
    return found


def brats_case(folder: Path, labels: str = "auto") -> CohortRow:
    """The patient of one BraTS case folder (its id is the folder's name).

    The anatomy is the native T1 (``-t1n``/``_t1``), else the T1c; the tumor is the ``-seg``
    label map read with ``labels``. A folder that is not a BraTS case gives a row with an error.
    """
    folder = Path(folder)
    row = CohortRow(folder.name, labels=labels)
    files = _brats_files(folder)
    for column, paths in files.items():
        if len(paths) > 1:
            row.error = (
                f"case {folder}: several {column} files ({', '.join(p.name for p in paths)})"
            )
            return row
    if "seg" not in files:
        row.error = f"case {folder}: no segmentation (<id>-seg.nii.gz or <id>_seg.nii.gz)"
        return row
    anatomy = "t1" if "t1" in files else "t1c" if "t1c" in files else None
    if anatomy is None:
        row.error = f"case {folder}: no T1 or T1c image (<id>-t1n / -t1c.nii.gz)"
        return row
    row.files = {anatomy: files[anatomy][0], "seg": files["seg"][0]}
    return row


def load_case(folder: Path, labels: str = "auto", *, followup_seg=None):
    """The checked inputs of one BraTS case folder (``gliomatch infer --case``), with an
    optional follow-up segmentation on the same grid."""
    if not Path(folder).is_dir():
        raise GliomatchError(f"case {folder}: no such folder")
    row = brats_case(folder, labels)
    if row.error:
        raise GliomatchError(row.error)
    return load_patient(**row.patient_kwargs(), followup_seg=followup_seg)


def is_brats_case(folder: Path) -> bool:
    return Path(folder).is_dir() and "seg" in _brats_files(Path(folder))


def read_cohort(source: Path, labels: str = "auto") -> list[CohortRow]:
    """The patients of a cohort CSV (paths resolved against its folder), of a BraTS case
    folder, or of a folder of BraTS case folders (``labels``: their label convention; a CSV
    names its own in a ``labels`` column).

    Raises :class:`GliomatchError` only when the source itself is unusable (unreadable, columns
    missing, a folder without cases); a bad row carries its ``error`` instead.
    """
    source = Path(source)
    if source.is_dir():
        if is_brats_case(source):
            return [brats_case(source, labels)]
        cases = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        rows = [brats_case(p, labels) for p in cases if is_brats_case(p)]
        if not rows:
            raise GliomatchError(
                f"folder {source}: no BraTS case in it (folders with <id>-t1n/-t1c and "
                "<id>-seg.nii.gz files); give a cohort CSV or a case folder"
            )
        return rows
    return _read_csv(source)


def _read_csv(csv: Path) -> list[CohortRow]:
    csv = Path(csv)
    if not csv.is_file():
        raise GliomatchError(f"cohort CSV {csv}: file not found")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise GliomatchError(f"cohort CSV {csv}: cannot read ({exc})") from exc
    if "patient_id" not in table.columns:
        raise GliomatchError(f"cohort CSV {csv}: missing column patient_id")
    if not any(c in table.columns for c in ("t1", "t1c", "wm")):
        raise GliomatchError(f"cohort CSV {csv}: needs a t1, t1c or wm column")
    if "seg" not in table.columns and not {"flair_mask", "t1gd_mask"} <= set(table.columns):
        raise GliomatchError(f"cohort CSV {csv}: needs a seg column or flair_mask and t1gd_mask")
    rows, seen = [], set()
    for n, r in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        pid = str(r.get("patient_id", "")).strip()
        row = CohortRow(
            pid or f"<line {n}>",
            labels=str(r.get("labels", "") or "auto").strip(),
            followup_labels=str(r.get("followup_labels", "") or "auto").strip(),
        )
        rows.append(row)
        try:
            confined_child(Path("."), pid, "patient_id")
        except GliomatchError as exc:
            row.error = f"line {n}: {exc}"
            continue
        if pid in seen:
            row.error = f"line {n}: patient_id {pid!r} appears more than once"
            continue
        seen.add(pid)
        for c in (*FILE_COLUMNS, FOLLOWUP_COLUMN):
            v = str(r.get(c, "") or "").strip()
            if not v:
                continue
            p = Path(v) if Path(v).is_absolute() else csv.parent / v
            if not p.is_file():
                row.error = f"{c} file {p} not found"
                break
            row.files[c] = p
    if not rows:
        raise GliomatchError(f"cohort CSV {csv}: no patient rows (only a header)")
    return rows


def input_digest(row: CohortRow) -> dict:
    """SHA-256 of each of the row's input files (a result is reused only for the same files)."""
    return {c: sha256_file(p) for c, p in sorted(row.files.items())}


def infer_cohort(
    rows: list[CohortRow],
    db,
    out: Path,
    *,
    k: int = 15,
    strategy: str = "exact",
    registration: str = "syn",
    refine: bool = True,
    margin_mm: float = MARGIN_MM,
    plan_volume_cm3: float | None = None,
    plan_level: float | None = None,
    contain: str = "core",
    min_margin_mm: float = 0.0,
    ensemble: bool = False,
    log=None,
) -> pd.DataFrame:
    """Run ``infer`` for every row into ``out/<patient_id>`` and write ``out/summary.csv``:
    per patient the best match, the refinement's fit and the plans (:data:`PLAN_COLUMNS`:
    each CTV's volume and what it holds of the visible tumor, and the CTV the benchmarks
    support). The plan options are ``infer``'s.

    Resumable: a patient whose folder holds a result made from the same input files, database,
    strategy, k, registration, refinement and plan settings is not run again; any other result
    there is redone. Every failure is recorded in its row (``status``) and the cohort goes on.
    """

    say = log or (lambda msg: None)
    if not rows:
        raise GliomatchError("the cohort holds no patient")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for n, row in enumerate(rows, 1):
        head = f"[{n}/{len(rows)}] {row.patient_id}"
        rec = {"patient_id": row.patient_id}
        pdir = None
        try:
            if row.error:
                raise GliomatchError(row.error)
            if row.patient_id.lower() in RESERVED:
                raise GliomatchError(
                    f"patient_id {row.patient_id!r} is the name of the cohort's summary file; "
                    "rename the patient"
                )
            pdir = confined_child(out, row.patient_id, "patient_id")
            key = cache_key(
                inputs=input_digest(row),
                labels=row.labels,
                db=db.fingerprint,
                strategy=strategy,
                k=k,
                registration=registration,
                refine=cache_tag(refine),
                plans=[margin_mm, plan_volume_cm3, plan_level, ensemble, contain, min_margin_mm],
            )
            summary = _previous(pdir, key)
            if summary is not None:
                say(f"{head}: done before with the same inputs and settings, reused")
            else:
                say(head)
                inputs = load_patient(**row.patient_kwargs())
                shutil.rmtree(pdir, ignore_errors=True)  # an earlier run's outputs
                infer(inputs, db, pdir, k=k, strategy=strategy, registration=registration,
                      refine=refine, margin_mm=margin_mm, plan_volume_cm3=plan_volume_cm3,
                      plan_level=plan_level, contain=contain, min_margin_mm=min_margin_mm,
                      ensemble=ensemble)  # fmt: skip
                summary = json.loads((pdir / "matches.json").read_text())
                summary["cache_key"] = key
                write_json_atomic(pdir / "matches.json", summary)
            best = summary["matches"][0]
            rec.update(
                status="ok",
                best_id=best["id"],
                score=best["score"],
                dice_t1gd=best["dice_t1gd"],
                dice_flair=best["dice_flair"],
                **best["seed_mm"],
                **best["identifiable"],
                registration_quality=summary["registration_quality"],
                **_refined(summary.get("refinement")),
                **_plan_columns(summary.get("plans")),
                seconds=summary["timing"]["total_s"],
            )
        except (GliomatchError, OSError) as exc:
            rec["status"] = f"error: {exc}"
        except Exception as exc:  # e.g. an ANTs failure: record it, keep the cohort going
            where = traceback.extract_tb(exc.__traceback__)[-1]
            rec["status"] = (
                f"error: unexpected {type(exc).__name__}: {exc} "
                f"(at {Path(where.filename).name}:{where.lineno})"
            )
        if rec["status"] != "ok":
            say(f"{head}: {rec['status']}")
            if pdir is not None:  # no stale outputs beside the error
                shutil.rmtree(pdir, ignore_errors=True)
        records.append(rec)
    table = pd.DataFrame(records)
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def _refined(r: dict | None) -> dict:
    """The refinement's columns of ``summary.csv`` (none when it was off)."""
    if not r:
        return {}
    return {"refined_score_before": r["score_before"], "refined_score": r["score_after"]}


#: The plan columns of ``summary.csv`` (``<ctv>_cm3``, ``<ctv>_covers_core``,
#: ``<ctv>_covers_whole_tumor`` for the standard and the personalized CTV), then
#: ``personalized_plan`` (its kind: refined, refined_ensemble, best or ensemble) and
#: ``supported_plan``: the CTV the benchmarks support for this database (patient/evidence.py).
PLAN_COLUMNS = tuple(
    f"{ctv}_{col}"
    for ctv in ("standard", "personalized")
    for col in ("cm3", "covers_core", "covers_whole_tumor")
) + ("personalized_plan", "supported_plan")


def _plan_columns(plans: dict | None) -> dict:
    """The plans' columns of ``summary.csv`` (empty when no plan was made: no visible core)."""
    if not plans or "figures" not in plans:
        return {}
    out = {}
    for ctv in ("standard", "personalized"):
        f = plans["figures"][ctv]
        out[f"{ctv}_cm3"] = f["volume_cm3"]
        out[f"{ctv}_covers_core"] = f["covers_core"]
        out[f"{ctv}_covers_whole_tumor"] = f["covers_whole_tumor"]
    evidence = plans.get("evidence", {})
    out["personalized_plan"] = evidence.get("personalized_plan")
    out["supported_plan"] = evidence.get("supported_plan")
    return out


def _previous(pdir: Path, key: str) -> dict | None:
    """The earlier result in ``pdir`` if it was made with ``key``, else None."""
    path = pdir / "matches.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("cache_key") == key else None
