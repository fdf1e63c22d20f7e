"""Writing a patient's result: NIfTI images, ``parameters.json``, ``matches.json`` and the
report, from a :class:`gliomatch.patient.pipeline.Personalization` (compute first, write
last: the pipeline never writes a file).

Every file is written atomically (:func:`gliomatch.files.atomic_path`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib

from gliomatch import __version__
from gliomatch.files import atomic_path, output_folder, sha256_file, write_text_atomic
from gliomatch.patient.report import write_report
from gliomatch.patient.viewer import write_viewer

__all__ = ["provenance", "save_image", "write_outputs"]


def provenance(result, dicom=None) -> dict:
    """Where a result came from: the database (path, size, grid, fingerprint, calibration),
    gliomatch's version, the input files with their SHA-256, the labels, the date and the
    command line; the report's provenance block and ``matches.json``'s ``provenance``."""
    files = {}
    for role, path in result.inputs.sources.items():
        try:
            files[role] = {"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path))}
        except OSError:
            files[role] = {"path": str(path), "sha256": None}
    s = result.settings
    return {
        "gliomatch_version": __version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command_line": shlex.join(
            ["gliomatch" if Path(sys.argv[0]).name == "gliomatch" else sys.argv[0], *sys.argv[1:]]
        ),  # fmt: skip
        "database": {
            "path": s["database"],
            "tumors": s["n_db"],
            "grid": s.get("grid"),
            "fingerprint": s.get("fingerprint"),
            "calibrated": bool(result.parameters.get("calibrated", False)),
        },  # fmt: skip
        "inputs": files,
        "dicom_series": None
        if dicom is None
        else {"folder": str(dicom.folder), "series_instance_uid": dicom.series_uid},
        "labels": result.inputs.label_scheme,
        "strategy": s["strategy"],
        "registration": s["registration"],
    }


def save_image(img: nib.Nifti1Image, path: Path) -> Path:
    """Save a NIfTI image atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


#: The structures of ``rtstruct.dcm``: (name, the result's image, RT ROI interpreted type,
#: display colour).
RT_STRUCTURES = (
    ("GTV", "gtv", "GTV", (255, 0, 0)),
    ("CTV standard", "ctv_standard", "CTV", (0, 255, 0)),
    ("CTV personalized", "ctv_personalized", "CTV", (255, 255, 0)),
)


def write_rt_structure_set(result, series, out: Path) -> dict:
    """The plans as ``out/rtstruct.dcm`` referencing the DICOM ``series`` the anatomy came
    from, read back and checked (:func:`gliomatch.patient.dicom.check_round_trip`); a record
    for ``matches.json``. A structure that does not read back within one pixel is a warning."""
    from gliomatch.patient.dicom import check_round_trip, write_rtstruct

    if not result.plans or "figures" not in result.plans:
        return {"written": False, "why": "no plans were made: nothing to export"}
    images = {**result.images, "gtv": result.registration.patient_image(result.inputs.t1gd)}
    rois = [(name, images[key], kind, color) for name, key, kind, color in RT_STRUCTURES]
    path = write_rtstruct(series, rois, out / "rtstruct.dcm")
    far = check_round_trip(path, series, rois)
    for name, n in far.items():
        if n:
            result.notes.append(
                f"RT Structure Set: {name} reads back with {n} pixels more than one pixel from "
                "the NIfTI plan's edge; use the NIfTI plans"
            )
    return {
        "written": True,
        "file": str(path),
        "series_instance_uid": series.series_uid,
        "structures": [r[0] for r in rois],
        "pixels_off_by_more_than_one": far,
        "approval": "UNAPPROVED: review and approve in the planning system",
    }


def write_outputs(result, out, *, report: bool = True, dicom=None) -> dict:
    """Write ``result`` (a ``Personalization``) into ``out``: each of its images as
    ``<name>.nii.gz``, ``parameters.json``, with ``dicom`` (the
    :class:`gliomatch.patient.dicom.DicomSeries` the anatomy came from) the plans as an RT
    Structure Set, the report (figures and ``report.html``, timed into
    ``result.timing["report_s"]``) and, last, ``matches.json`` (its presence marks a finished
    result). Returns ``{name: path}`` of the files written."""
    out = output_folder(out)
    files = {name: str(save_image(img, out / f"{name}.nii.gz")) for name, img in
             result.images.items()}  # fmt: skip
    if dicom is not None:
        result.settings["rt_structure_set"] = write_rt_structure_set(result, dicom, out)
        if result.settings["rt_structure_set"]["written"]:
            files["rtstruct"] = result.settings["rt_structure_set"]["file"]
    else:
        result.settings["rt_structure_set"] = {
            "written": False,
            "why": "the anatomy was NIfTI, not a DICOM series: the plans are NIfTI only",
        }
    files["parameters"] = str(
        write_text_atomic(out / "parameters.json", json.dumps(result.parameters, indent=2))
    )
    result.settings["provenance"] = provenance(result, dicom)
    t = time.perf_counter()
    if report:
        files["viewer"] = str(_viewer(result, out))
        files["report"] = str(
            write_report(
                out,
                inputs=result.inputs,
                atlas=result.atlas,
                density_patient=result.images["density_patient"],
                f_atlas=result.query.flair,
                t_atlas=result.query.t1gd,
                best_masks=result.best_masks,
                matches=result.matches,
                parameters=result.parameters,
                quality=result.quality_figures,
                timing=result.timing,
                warnings_=result.warnings,
                plans=result.plans,
                refinement=result.refinement,
                density_refined=result.images.get("density_refined_patient"),
                provenance=result.settings["provenance"],
                viewer="viewer.html",
            )
        )
    timing = result.timing
    timing.pop("total_s", None)
    timing["report_s"] = time.perf_counter() - t
    timing["total_s"] = float(sum(timing.values()))
    summary = json.dumps(result.summary(), indent=2)
    files["matches"] = str(write_text_atomic(out / "matches.json", summary))
    return files


def _viewer(result, out: Path) -> Path:
    """The interactive page (:mod:`gliomatch.patient.viewer`): the scan, the density the plans
    were made from (the best match's without plans) and the plans."""
    plans = result.plans or {}
    dens = plans.get("density_image", "density_patient")  # already on the patient's grid
    layers = [(f"density ({plans.get('source', 'best match')})", result.images[dens], "density",
               "hot", 0.6)]  # fmt: skip
    layers.append(("tumor core", result.registration.patient_image(result.inputs.t1gd), "mask",
                   "red", 0.5))  # fmt: skip
    for name, cmap in (("standard", "green"), ("personalized", "blue")):
        if f"ctv_{name}" in result.images:
            layers.append((f"{name} CTV", result.images[f"ctv_{name}"], "mask", cmap, 0.35))
    return write_viewer(out, result.inputs.anatomy, layers, title="gliomatch")
