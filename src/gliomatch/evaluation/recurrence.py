"""gliomatch on a real recurrence cohort, scored as PREDICT-GBM scores a growth model
(``gliomatch evaluate-recurrence``).

For every patient of a cohort (:mod:`gliomatch.patient.layouts`): :func:`personalize` on the
pre-operative maps and segmentation (registration included, plans on the patient's grid), then
the coverage of the recurrence by the standard CTV (core + margin, in the brain) and by the
personalized CTVs of the same volume from the best match and from the ensemble: enhancing
recurrence and any recurrence (a cavity label belongs to neither), as PREDICT-GBM's
``evaluate_tumor_model`` does. A patient without a recurrence of a kind is counted, and left
out of that kind's mean. Results are cached per patient, keyed by the files' checksums, the
database and the settings; a failed patient is recorded with its error and the others go on.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.plans import ALL_PLANS, paired_coverage, plan_coverage
from gliomatch.files import (
    atomic_path,
    cache_key,
    cached_record,
    sha256_file,
    write_text_atomic,
)
from gliomatch.patient.layouts import RecurrenceCase, load_recurrence_case
from gliomatch.patient.pipeline import personalize
from gliomatch.patient.plans import MARGIN_MM, TOP_V
from gliomatch.patient.refine import cache_tag
from gliomatch.progress import report
from gliomatch.search import get_strategy

__all__ = ["evaluate_recurrence_cohort", "recurrence_summary"]

#: Bump when a patient's evaluation changes: cached rows of another version are redone.
RECURRENCE_VERSION = 2  # 2: the default (GTV-containing) plans scored too


def _digest(case: RecurrenceCase) -> dict:
    out = {}
    for role, f in sorted(case.files.items()):
        try:
            out[role] = sha256_file(Path(f))
        except OSError:
            out[role] = None
    return out


def _one(case, db, registration, margin_mm, strategy) -> dict:
    row = {"patient_id": case.pid}
    t = time.perf_counter()
    try:
        inputs, rec = load_recurrence_case(case)
        with tempfile.TemporaryDirectory(prefix="gliomatch-rec-") as work:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = personalize(
                    inputs, db, strategy=strategy, registration=registration, skull="off",
                    ensemble=True, margin_mm=margin_mm, contain=TOP_V, workdir=Path(work),
                )  # fmt: skip
        if res.plans is None or "skipped" in res.plans:
            why = (res.plans or {}).get("skipped", "no plans")
            return {**row, "status": f"failed: {why}"}
        cov, n = plan_coverage(res, rec, gtv=True)
    except GliomatchError as exc:
        return {**row, "status": f"failed: {exc}"}
    vox = float(abs(np.linalg.det(inputs.anatomy.affine[:3, :3]))) / 1000.0  # cm^3 per voxel
    return {
        **row,
        "status": "ok",
        "plan_cm3": n * vox,
        "recurrence_enhancing_cm3": float(rec["enhancing"].sum() * vox),
        "recurrence_any_cm3": float(rec["any"].sum() * vox),
        **cov,
        "best_id": res.best_id,
        "best_score": float(res.matches[0]["score"]),
        "registration_quality": res.registration.quality,
        "warnings": " | ".join(str(w.message) for w in caught),
        "seconds": time.perf_counter() - t,
    }


def evaluate_recurrence_cohort(
    cases: list[RecurrenceCase],
    db,
    out,
    *,
    registration: str = "syn",
    margin_mm: float = MARGIN_MM,
    strategy: str = "exact",
    progress=None,
    log=None,
) -> tuple[pd.DataFrame, dict]:
    """Evaluate every case; write ``patients.csv`` and ``summary.json`` into ``out``; return
    the per-patient table and the summary (resumable: see the module notes)."""
    if not cases:
        raise GliomatchError("no patient to evaluate")
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    get_strategy(strategy, db).ensure_ready()  # the explicit build step personalize reads
    rows = []
    for n, case in enumerate(cases, 1):
        key = cache_key(
            version=RECURRENCE_VERSION, db=db.fingerprint, files=_digest(case),
            problem=case.problem, layout=case.layout, registration=registration,
            margin=margin_mm, strategy=strategy, refine=cache_tag(True),
        )  # fmt: skip
        row = cached_record(
            cache / f"{key}.json", lambda c=case: _one(c, db, registration, margin_mm, strategy)
        )
        rows.append(row)
        report(progress, n, len(cases), "patients")
        if log is not None:
            log(_line(row))
    table = pd.DataFrame.from_records(rows)
    summary = recurrence_summary(table)
    summary.update(
        {
            "database": str(db.path),
            "n_db": len(db),
            "registration": registration,
            "margin_mm": margin_mm,
            "strategy": strategy,
            "layout": cases[0].layout,
        }
    )
    with atomic_path(out / "patients.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return table, summary


def _line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['patient_id']}: {row['status']}"
    plans = [p for p in ALL_PLANS if f"{p}_enhancing" in row]
    cells = ", ".join(f"{p} {100 * row[f'{p}_enhancing']:.1f} %" for p in plans)
    return f"{row['patient_id']}: enhancing recurrence covered by {cells}"


def recurrence_summary(table: pd.DataFrame) -> dict:
    """Patients (ok / failed) and, per recurrence kind over the patients that have it: the
    mean coverage of each plan and the paired difference to the standard plan (mean, s.e.)."""
    ok = table[table["status"] == "ok"] if "status" in table else table.iloc[:0]
    out = {"patients": int(len(table)), "ok": int(len(ok)), "failed": int(len(table) - len(ok))}
    for rec in ("enhancing", "any"):
        col = f"recurrence_{rec}_cm3"
        out[rec] = paired_coverage(ok[ok[col] > 0] if col in ok else ok, rec)
    return out
