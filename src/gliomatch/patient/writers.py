"""Writing a patient's result: NIfTI images, ``parameters.json``, ``matches.json`` and the
report, from a :class:`gliomatch.patient.pipeline.Personalization` (compute first, write
last: the pipeline never writes a file).

Every file is written atomically (:func:`gliomatch.files.atomic_path`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib

from gliomatch.files import atomic_path, output_folder, write_text_atomic
from gliomatch.patient.report import write_report

__all__ = ["save_image", "write_outputs"]


def save_image(img: nib.Nifti1Image, path: Path) -> Path:
    """Save a NIfTI image atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_outputs(result, out, *, report: bool = True) -> dict:
    """Write ``result`` (a ``Personalization``) into ``out``: each of its images as
    ``<name>.nii.gz``, ``parameters.json``, the report (figures and ``report.html``, timed into
    ``result.timing["report_s"]``) and, last, ``matches.json`` (its presence marks a finished
    result). Returns ``{name: path}`` of the files written."""
    out = output_folder(out)
    files = {name: str(save_image(img, out / f"{name}.nii.gz")) for name, img in
             result.images.items()}  # fmt: skip
    files["parameters"] = str(
        write_text_atomic(out / "parameters.json", json.dumps(result.parameters, indent=2))
    )
    t = time.perf_counter()
    if report:
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
            )
        )
    timing = result.timing
    timing.pop("total_s", None)
    timing["report_s"] = time.perf_counter() - t
    timing["total_s"] = float(sum(timing.values()))
    summary = json.dumps(result.summary(), indent=2)
    files["matches"] = str(write_text_atomic(out / "matches.json", summary))
    return files
