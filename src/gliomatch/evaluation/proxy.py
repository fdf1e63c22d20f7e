"""A real-data proxy that needs no follow-up (``gliomatch bench edema-proxy``).

On a real case with both labels, the plans are made from the tumor core and the anatomy alone:
the patient is given to :func:`personalize` with its whole-tumor mask replaced by the core (the
edema hidden) and searched by Dice_T1Gd alone (weights 1, 0). Each plan — the standard CTV
(core + 15 mm in the brain) and the personalized CTVs of the same volume from the best match,
from the ensemble, and from their refinements in the patient's anatomy — is scored by how
much of the hidden FLAIR abnormality outside the core it covers. The isotropic margin ignores
anatomy; a growth model should know that tumor spreads along white matter and not across the
falx or the ventricles.

What this is not: edema is a proxy for infiltration, not proof of it (it is partly vasogenic
fluid, and the infiltration that recurs may lie beyond it). A plan that covers more edema is
more plausible, not shown better on recurrences.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.plans import ALL_PLANS, paired_coverage, plan_coverage
from gliomatch.files import atomic_path, cache_key, cached_record, write_text_atomic
from gliomatch.patient.cohort import input_digest, read_cohort
from gliomatch.patient.inputs import load_patient
from gliomatch.patient.pipeline import personalize
from gliomatch.patient.plans import MARGIN_MM, TOP_V
from gliomatch.patient.refine import cache_tag
from gliomatch.search import get_strategy

__all__ = ["edema_proxy", "edema_proxy_case"]

PROXY_VERSION = 3  # 2: the refined plans; 3: the default (GTV-containing) plans too


def edema_proxy_case(inputs, db, *, registration="syn", margin_mm=MARGIN_MM, workdir=None):
    """One case: the plans from its core alone, and their coverage of its edema (see the
    module notes). Returns the row (coverages, volumes, the match's score)."""
    edema = inputs.flair & ~inputs.t1gd
    if not inputs.t1gd.any():
        raise GliomatchError("no tumor core: no standard plan")
    if not edema.any():
        raise GliomatchError("no FLAIR abnormality outside the core to score")
    hidden = replace(inputs, flair=inputs.t1gd.copy(), followup=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plans' own doubts are not the measure here
        res = personalize(
            hidden, db, registration=registration, ensemble=True, margin_mm=margin_mm,
            contain=TOP_V, weights=(1.0, 0.0), workdir=workdir,
        )  # fmt: skip
    cov, _ = plan_coverage(res, {"edema": edema}, gtv=True)
    vox = float(abs(np.linalg.det(inputs.anatomy.affine[:3, :3]))) / 1000.0  # cm^3 per voxel
    return {
        **cov,
        "plan_cm3": res.plans["figures"]["standard"]["volume_cm3"],
        "core_cm3": float(inputs.t1gd.sum() * vox),
        "edema_cm3": float(edema.sum() * vox),
        "best_id": res.best_id,
        "best_dice_t1gd": float(res.matches[0]["dice_t1gd"]),
        "registration_quality": res.registration.quality,
    }


def edema_proxy(source, db, out, *, labels="auto", registration="syn", margin_mm=MARGIN_MM,
                log=None) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Every case of ``source`` (a BraTS case folder, a folder of them, or a cohort CSV);
    writes ``proxy.csv`` and ``proxy.json`` into ``out``; cached per case."""
    rows_in = read_cohort(Path(source), labels)
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    get_strategy("exact", db).ensure_ready()  # the explicit build step personalize reads
    rows = []
    for row in rows_in:
        rec = {"patient_id": row.patient_id}
        if row.error:
            rows.append({**rec, "status": f"failed: {row.error}"})
            continue
        key = cache_key(version=PROXY_VERSION, db=db.fingerprint, files=input_digest(row),
                        registration=registration, margin=margin_mm,
                        refine=cache_tag(True))  # fmt: skip

        def compute(rec=rec, row=row):
            t = time.perf_counter()
            try:
                inputs = load_patient(**row.patient_kwargs())
                with tempfile.TemporaryDirectory(prefix="gliomatch-proxy-") as work:
                    got = edema_proxy_case(
                        inputs, db, registration=registration, margin_mm=margin_mm,
                        workdir=Path(work),
                    )  # fmt: skip
                rec = {**rec, **got, "status": "ok"}
            except GliomatchError as exc:
                rec = {**rec, "status": f"failed: {exc}"}
            return {**rec, "seconds": time.perf_counter() - t}

        rec = cached_record(cache / f"{key}.json", compute)
        rows.append(rec)
        if log is not None and rec["status"] == "ok":
            plans = [p for p in ALL_PLANS if f"{p}_edema" in rec]
            log(f"{rec['patient_id']}: edema covered by "
                + ", ".join(f"{p} {100 * rec[f'{p}_edema']:.1f} %" for p in plans))  # fmt: skip
        elif log is not None:
            log(f"{rec['patient_id']}: {rec['status']}")
    table = pd.DataFrame.from_records(rows)
    ok = table[table["status"] == "ok"]
    summary = {"cases": int(len(table)), "ok": int(len(ok)), "n_db": len(db),
               "registration": registration, "margin_mm": margin_mm}  # fmt: skip
    summary.update({k: v for k, v in paired_coverage(ok, "edema").items() if k != "n"})
    with atomic_path(out / "proxy.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(out / "proxy.json", json.dumps(summary, indent=2, default=float))
    return table, summary
