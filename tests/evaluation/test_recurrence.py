"""Real recurrence cohorts in PREDICT-GBM's and GliODIL's layouts, on fabricated folders."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError
from gliomatch.evaluation import recurrence as rec_mod
from gliomatch.evaluation.recurrence import evaluate_recurrence_cohort
from gliomatch.patient.layouts import find_recurrence_cases, load_recurrence_case

#: (necrotic, edema, enhancing, cavity) labels of each layout
LABELS = {"predict-gbm": (1, 2, 3, 4), "gliodil": (4, 3, 1, None)}


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, resolution=32, seed=14)


def _maps(db, tumor: int, layout: str):
    """A patient on the atlas grid: the atlas' maps, database tumor ``tumor`` as its
    pre-operative segmentation, the same tumor grown by 2 voxels as its recurrence."""
    atlas = db.atlas()
    nec, ede, enh, cav = LABELS[layout]
    flair, core = db.masks(tumor)
    seg = np.zeros(atlas.shape, np.uint8)
    seg[flair] = ede
    seg[core] = enh
    seg[ndimage.binary_erosion(core, iterations=2)] = nec
    grown = ndimage.binary_dilation(core, iterations=2) & atlas.brain
    rec = np.zeros(atlas.shape, np.uint8)
    rec[ndimage.binary_dilation(grown, iterations=1) & atlas.brain] = ede
    rec[grown] = enh
    if cav is not None:
        rec[core] = cav  # the resected core: never tumor
    return atlas, {"wm": atlas.wm, "gm": atlas.gm, "csf": atlas.csf, "seg": seg, "rec": rec}


def _save(arr, atlas, path):
    nib.save(nib.Nifti1Image(np.asarray(arr), atlas.affine), str(path))


def _pgbm_folder(db, root, pid, tumor, *, drop=None):
    atlas, m = _maps(db, tumor, "predict-gbm")
    d = root / f"Patient-{pid}"
    d.mkdir(parents=True)
    names = {"wm": "wm", "gm": "gm", "csf": "csf", "seg": "tumorseg", "rec": "recurrence"}
    for k, name in names.items():
        if k != drop:
            _save(m[k].astype(np.float32 if k in ("wm", "gm", "csf") else np.uint8), atlas,
                  d / f"{pid}-{name}.nii.gz")  # fmt: skip
    return d


def _gliodil_folder(db, root, pid, tumor):
    atlas, m = _maps(db, tumor, "gliodil")
    d = root / pid
    d.mkdir(parents=True)
    names = {"wm": f"{pid}_wm_.nii.gz", "gm": f"{pid}_gm_.nii.gz",
             "seg": f"{pid}_segm_.nii.gz", "rec": f"{pid}_rec_segm.nii"}  # fmt: skip
    for k, name in names.items():
        _save(m[k], atlas, d / name)
    return d


def test_layouts_are_read_with_their_label_conventions(db, tmp_path):
    _pgbm_folder(db, tmp_path / "pg", "a1", 3)
    _pgbm_folder(db, tmp_path / "pg", "b2", 5, drop="rec")
    cases = find_recurrence_cases(tmp_path / "pg", "predict-gbm")
    assert [c.pid for c in cases] == ["a1", "b2"]
    assert cases[0].problem is None and "missing recurrence" in cases[1].problem
    inputs, rec = load_recurrence_case(cases[0])
    flair, core = db.masks(3)
    assert np.array_equal(inputs.flair, flair) and np.array_equal(inputs.t1gd, core)
    assert rec["enhancing"].any() and not (rec["any"] & core).any()  # the cavity: no tumor
    assert inputs.brain is not None and inputs.label_scheme == "predictgbm"

    _gliodil_folder(db, tmp_path / "gl", "P7", 4)
    (g,) = find_recurrence_cases(tmp_path / "gl", "gliodil")
    assert g.pid == "P7" and g.labels == "gliodil" and g.problem is None
    assert g.files["recurrence"].name == "P7_rec_segm.nii"  # "rec" wins over "segm"
    inputs, rec = load_recurrence_case(g)
    flair, core = db.masks(4)
    assert np.array_equal(inputs.flair, flair) and np.array_equal(inputs.t1gd, core)
    assert (rec["enhancing"] & core).any()  # GliODIL's recurrence has no cavity label

    with pytest.raises(GliomatchError, match="unknown layout"):
        find_recurrence_cases(tmp_path / "gl", "brats")


def test_predict_gbm_dataset_json_with_a_moved_root(db, tmp_path):
    d = _pgbm_folder(db, tmp_path / "moved", "c3", 6)
    old = "/mnt/somewhere/predict_gbm"
    deriv = {"tumor_seg": "tumorseg", "gm_pbmap": "gm", "wm_pbmap": "wm", "csf_pbmap": "csf",
             "recurrence_seg": "recurrence"}  # fmt: skip
    data = {
        "dataset_id": "x",
        "root_dir": old,
        "patients": [
            {
                "patient_id": "c3",
                "patient_dir": f"{old}/Patient-c3",
                "derivatives": {k: f"{old}/Patient-c3/c3-{v}.nii.gz" for k, v in deriv.items()},
            }
        ],
    }
    (tmp_path / "ds.json").write_text(json.dumps(data))
    (case,) = find_recurrence_cases(tmp_path / "ds.json", "predict-gbm", data_root=d.parent)
    assert case.problem is None, case.problem
    (unmoved,) = find_recurrence_cases(tmp_path / "ds.json", "predict-gbm")
    assert "file not found" in unmoved.problem
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GliomatchError, match="not a PREDICT-GBM dataset JSON"):
        find_recurrence_cases(tmp_path / "bad.json", "predict-gbm")


def test_cohort_runs_records_failures_and_resumes(db, tmp_path, monkeypatch):
    _pgbm_folder(db, tmp_path / "pg", "a1", 3)
    _pgbm_folder(db, tmp_path / "pg", "b2", 5, drop="rec")
    cases = find_recurrence_cases(tmp_path / "pg", "predict-gbm")
    table, summary = evaluate_recurrence_cohort(cases, db, tmp_path / "o", registration="none")
    assert (summary["ok"], summary["failed"]) == (1, 1)
    row = table.set_index("patient_id").loc["a1"]
    assert row["status"] == "ok" and row["plan_cm3"] > 0
    for plan in ("standard", "best", "ensemble", "refined", "best_gtv", "refined_gtv"):
        assert 0 <= row[f"{plan}_enhancing"] <= 1
    assert "refined_gtv_minus_standard" in summary["enhancing"]  # infer's default CTV, scored
    # the tumor grown by 2 voxels lies within the 15 mm margin
    assert row["standard_enhancing"] == 1.0
    assert summary["enhancing"]["n"] == 1
    assert "missing recurrence" in table.set_index("patient_id").loc["b2", "status"]

    monkeypatch.setattr(rec_mod, "_one", lambda *a, **k: pytest.fail("recomputed"))
    again, s2 = evaluate_recurrence_cohort(cases, db, tmp_path / "o", registration="none")
    assert s2 == summary
    # a cached record damaged by hand is computed again, not a traceback
    monkeypatch.undo()
    for f in (tmp_path / "o" / "cache").glob("*.json"):
        f.write_text("{not json")
    _, s3 = evaluate_recurrence_cohort(cases, db, tmp_path / "o", registration="none")
    assert s3 == summary


def test_cli_prints_predict_gbm_table(db, tmp_path):
    _gliodil_folder(db, tmp_path / "gl", "P7", 4)
    _gliodil_folder(db, tmp_path / "gl", "P8", 9)
    r = CliRunner().invoke(app, ["evaluate-recurrence", str(tmp_path / "gl"), "--layout",
                                 "gliodil", "--db", str(db.path), "--out", str(tmp_path / "o"),
                                 "--registration", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| P7 | ok |" in r.output and "| P8 | ok |" in r.output and "**mean**" in r.output
    assert "gliomatch − standard" in r.output and "refined_gtv enh." in r.output
    r = CliRunner().invoke(
        app,
        [
            "evaluate-recurrence",
            str(tmp_path / "gl"),
            "--layout",
            "nifti",
            "--db",
            str(db.path),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code != 0 and "predict-gbm or gliodil" in r.output
