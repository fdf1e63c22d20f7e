"""The demo: a cached demo database, a synthetic patient with hidden parameters, ``infer``,
and the prediction compared with the hidden truth (``gliomatch demo``, ``bench infer``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from gliomatch.atlas import load_atlas
from gliomatch.database.demo import DEMO_N, DEMO_RESOLUTION, demo_database
from gliomatch.database.trajectories import held_out_tumors
from gliomatch.masks import dice, threshold
from gliomatch.patient.inputs import load_patient
from gliomatch.patient.pipeline import InferResult, infer
from gliomatch.patient.synthetic import make_patient
from gliomatch.progress import Progress
from gliomatch.search import get_strategy

__all__ = ["DemoResult", "run_demo"]
#: The grid of the demo patient's scan (voxels per side of the atlas box: 1.5 mm).
PATIENT_RESOLUTION = 128
#: The true parameters reported beside the recovered ones.
TRUTH = ("x", "y", "z", "dw", "rho", "t_end", "x_mm", "y_mm", "z_mm")


@dataclass
class DemoResult:
    result: InferResult
    truth: dict
    dice_flair: float  # patient-space prediction vs the hidden tumor, u >= 0.2
    dice_t1gd: float  # u >= 0.6


def run_demo(
    *,
    out,
    n: int = DEMO_N,
    resolution: int = DEMO_RESOLUTION,
    seed: int = 0,
    patient_resolution: int = PATIENT_RESOLUTION,
    registration: str = "syn",
    db_path=None,
    log=None,
    progress: Progress | None = None,
) -> DemoResult:
    """Make a synthetic patient from a held-out tumor, run ``infer`` on it, compare.

    The patient is scanned on the database atlas' grid at ``patient_resolution`` (1.5 mm at
    128, like a clinical scan resampled), whatever the database's grid: a database on a
    coarser grid is searched through the registration, as a real patient's would be."""
    say = log or (lambda msg: None)
    db = demo_database(n, resolution, db_path, log=log, progress=progress)
    get_strategy("exact", db).ensure_ready()  # the explicit build step (once per database)
    cfg = db.build_config
    atlas = load_atlas(cfg.atlas, max(patient_resolution, db.atlas().shape[0]))
    row, _ = held_out_tumors(db, 1, seed_offset=2_000_003 + seed)[0]
    truth = {k: float(row[k]) for k in TRUTH}
    # the seed in the patient grid's world coordinates (fractions of another grid's extent
    # differ from the database's by up to half a voxel)
    xyz_mm = atlas.fraction_to_world([truth["x"], truth["y"], truth["z"]])
    truth.update({f"{a}_mm": float(v) for a, v in zip("xyz", xyz_mm, strict=True)})
    patient = make_patient(atlas, Path(out) / "patient", theta=truth, seed=seed)
    say(f"synthetic patient in {patient.folder} (hidden parameters in truth.json)")
    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    res = infer(
        inputs,
        db,
        Path(out) / "result",
        registration=registration,
        progress=(lambda i, n, stage: say(f"[{stage}]")) if log else None,
    )
    (pf, pt) = threshold(nib.load(res.files["density_patient"]).get_fdata())
    (tf, tt) = threshold(nib.load(patient.density_true).get_fdata())
    return DemoResult(res, truth, dice(pf, tf), dice(pt, tt))
