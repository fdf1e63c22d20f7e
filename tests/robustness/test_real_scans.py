"""Issue 23's probe: real scans as they come (intensity conventions, binary masks, repeatable
registration) and the last unexpected errors, each reproduced on a tiny database.

Every case failed (a silently wrong answer, a traceback or an unexpected-error line) before
its fix; the number in each test's name is the issue's item.
"""

import hashlib
import json
import os
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gliomatch.errors import GliomatchError
from gliomatch.patient.inputs import LABEL_SCHEMES
from scans import CONVENTIONS, in_convention

from .conftest import one_error_line, run

# ------------------------------------------------- 1-3. intensity conventions, repeatability


@pytest.fixture(scope="module")
def scanner_patient(patient, tmp_path_factory):
    """The synthetic patient's T1 as a scanner stores it (int16 levels, zero background)."""
    img = nib.load(str(patient.t1))
    data = np.asarray(img.dataobj, dtype=np.float64)
    levels = np.round(np.clip(data, 0, None) / data.max() * 2000).astype(np.int16)
    path = tmp_path_factory.mktemp("scanner") / "t1.nii.gz"
    nib.save(nib.Nifti1Image(levels, img.affine), str(path))
    return path, levels, img.affine


def _infer(t1, seg, db, out):
    """``infer`` through the Python API; (best id, standard CTV, personalized CTV, matches,
    transform files' digest)."""
    from gliomatch.patient.inputs import load_patient
    from gliomatch.patient.pipeline import infer

    inputs = load_patient(t1=t1, seg=seg, labels="brats2021")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny database: poor-match warnings are expected
        res = infer(inputs, db, out, k=3, report=False)
    ctv = {n: np.asarray(nib.load(str(out / f"ctv_{n}.nii.gz")).dataobj) for n in
           ("standard", "personalized")}  # fmt: skip
    h = hashlib.sha256()
    for p in sorted((out / "transforms").iterdir()):
        h.update(p.read_bytes())
    return res.matches[0]["id"], ctv, res.matches, h.hexdigest()


@pytest.fixture(scope="module")
def reference(scanner_patient, patient, base_db, tmp_path_factory):
    return _infer(scanner_patient[0], patient.seg, base_db, tmp_path_factory.mktemp("ref"))


def test_3_registration_is_repeatable(reference, scanner_patient, patient, base_db, tmp_path):
    """The same infer twice: the same transform files, bit for bit, and the same answer."""
    again = _infer(scanner_patient[0], patient.seg, base_db, tmp_path)
    assert again[3] == reference[3]
    assert again[2] == reference[2]


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    convention=st.sampled_from(CONVENTIONS),
    scale=st.floats(1e-3, 1e20),
    offset=st.floats(-1e3, 1e3),
)
def test_1_2_any_intensity_convention_gives_the_same_answer(
    reference, scanner_patient, patient, base_db, tmp_path_factory, convention, scale, offset
):
    """Rescaled, offset, z-scored with a zero or a negative background: the same brain mask,
    the same registration, best match and CTVs as the scan as stored (SyN registration)."""
    from gliomatch.patient.registration import brain_support

    _, levels, affine = scanner_patient
    data = in_convention(levels, convention, scale, offset * scale)
    assert np.array_equal(brain_support(data), brain_support(levels))
    folder = tmp_path_factory.mktemp("conv")
    t1 = folder / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(t1))
    best, ctv, matches, transforms = _infer(t1, patient.seg, base_db, folder / "out")
    assert transforms == reference[3]
    assert best == reference[0] and matches == reference[2]
    for name in ("standard", "personalized"):
        assert np.array_equal(ctv[name], reference[1][name]), name


@pytest.mark.parametrize("convention", ["affine", "z_zero", "z_negative"])
def test_1_plan_standard_ctv_does_not_shrink_on_a_z_scored_anatomy(
    scanner_patient, patient, tmp_path, convention
):
    """`gliomatch plan --anatomy`: the brain that clips the CTVs is the same for a z-scored
    copy (the positive half of a z-scored brain was taken for the brain before)."""
    from gliomatch.patient.plans import load_plan_inputs

    _, levels, affine = scanner_patient
    outs = {}
    for name, data in (("stored", levels), (convention, in_convention(levels, convention))):
        a = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(a))
        brain = load_plan_inputs(patient.density_true, patient.seg, labels="brats2021",
                                 anatomy=a).brain  # fmt: skip
        out = tmp_path / f"out-{name}"
        code, output = run(
            "plan", "--density", patient.density_true, "--seg", patient.seg,
            "--labels", "brats2021", "--anatomy", a, "--out", out,
        )  # fmt: skip
        assert code == 0, output
        outs[name] = {
            n: np.asarray(nib.load(str(out / f"ctv_{n}.nii.gz")).dataobj)
            for n in ("standard", "personalized")
        }
        outs[name]["brain"] = brain
    for n in ("brain", "standard", "personalized"):
        assert np.array_equal(outs["stored"][n], outs[convention][n]), n


def test_1_brain_dice_of_a_z_scored_scan_is_not_poor(scanner_patient, base_db):
    """brain_dice read 0.70-0.77 on z-scored real cases (the positive half of the brain)."""
    from gliomatch.patient.registration import register

    _, levels, affine = scanner_patient
    figures = {}
    for name, data in (("stored", levels), ("z", in_convention(levels, "z_zero"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg = register(nib.Nifti1Image(data, affine), base_db.atlas(), kind="affine")
        figures[name] = reg.quality_figures
    assert figures["z"] == figures["stored"]


def test_2_the_registration_copy_keeps_a_z_scored_brain(scanner_patient):
    """``working_copy`` clipped negative values to 0: half of a z-scored brain went black."""
    from gliomatch.patient.registration import working_copy

    _, levels, affine = scanner_patient
    a = working_copy(nib.Nifti1Image(levels, affine), 6.0)
    b = working_copy(nib.Nifti1Image(in_convention(levels, "z_zero"), affine), 6.0)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert np.allclose(a.affine, b.affine)


# ------------------------------------------------------------------- 4. masks are not labels


def _binary_seg(patient, tmp_path):
    seg = nib.load(str(patient.seg))
    binary = (np.asarray(seg.dataobj) > 0).astype(np.uint8)
    p = tmp_path / "whole_tumor.nii.gz"
    nib.save(nib.Nifti1Image(binary, seg.affine), str(p))
    return p


@pytest.mark.parametrize("labels", sorted(LABEL_SCHEMES))
def test_4_a_binary_mask_is_refused_under_everyin_convention(
    base_db, patient, tmp_path, labels, monkeypatch
):
    import gliomatch.patient.pipeline as pipeline

    monkeypatch.setattr(pipeline, "register", None)  # refused before registering
    code, output = run(
        "infer", "--t1", patient.t1, "--seg", _binary_seg(patient, tmp_path), "--labels", labels,
        "--db", base_db.path, "--out", tmp_path / "o",
    )  # fmt: skip
    one_error_line(code, output, "only 0 and 1", "binary mask", "--flair-mask")


def test_4_plan_refuses_a_binary_mask_too(patient, tmp_path):
    code, output = run(
        "plan", "--density", patient.density_true, "--seg", _binary_seg(patient, tmp_path),
        "--labels", "brats2021", "--anatomy", patient.t1, "--out", tmp_path / "o",
    )  # fmt: skip
    one_error_line(code, output, "binary mask")


def test_4_predict_gbm_refuses_a_binary_tumorseg(base_db, tmp_path):
    from gliomatch.patient.predictgbm import run_predict_gbm

    atlas = base_db.atlas()
    folder = tmp_path / "in" / "Patient-00001"
    folder.mkdir(parents=True)
    for name in ("wm", "gm", "csf"):
        nib.save(atlas.to_nifti(getattr(atlas, name).astype(np.float32)),
                 str(folder / f"00001-{name}.nii.gz"))  # fmt: skip
    f, _ = base_db.masks(2)
    nib.save(atlas.to_nifti(f.astype(np.uint8)), str(folder / "00001-tumorseg.nii.gz"))
    with pytest.raises(GliomatchError, match="binary mask"):
        run_predict_gbm(tmp_path / "in", tmp_path / "out", base_db)


# ----------------------------------------------------------------- 5, 7, 9. arguments


@pytest.mark.parametrize("k", [-3, 0])
def test_5_7_search_k_is_validated(base_db, masks, k):
    code, output = run("search", base_db.path, "--flair", masks[0], "--t1gd", masks[1],
                       "--k", k, "--json")  # fmt: skip
    one_error_line(code, output, "--k must be >= 1")


@pytest.mark.parametrize("k", [-3, 0, 2.5, True, "3"])
def test_5_the_api_refuses_the_same_k(base_db, masks, k):
    from gliomatch.patient.inputs import atlas_query
    from gliomatch.search import get_strategy

    q = atlas_query(masks[0], masks[1], base_db.shape)
    with pytest.raises(GliomatchError, match="k must be >= 1"):
        get_strategy("exact", base_db).search_one(q, k)


@pytest.mark.parametrize("address", ["notaurl", "tcp://host", "tcp://h:99999", "http://h:1"])
def test_7_scheduler_addresses_are_validated(base_db, masks, tmp_path, address):
    code, output = run("search", base_db.path, "--flair", masks[0], "--t1gd", masks[1],
                       "--scheduler", address)  # fmt: skip
    one_error_line(code, output, "not a Dask scheduler address")
    code, output = run("db", "build", "--out", tmp_path / "db", "--n", 2, "--resolution", 32,
                       "--scheduler", address)  # fmt: skip
    one_error_line(code, output, "not a Dask scheduler address")
    assert not (tmp_path / "db").exists()  # refused before any work


def test_7_scheduler_check_accepts_real_addresses():
    from gliomatch.cluster import check_scheduler

    for ok in ("tcp://127.0.0.1:8786", "127.0.0.1:8786", "tls://node-3.cluster:8786",
               "tcp://[::1]:8786", None):  # fmt: skip
        assert check_scheduler(ok) == ok


def test_9_loop_check_is_validated(base_db, tmp_path):
    code, output = run("evaluate", "--db", base_db.path, "--out", tmp_path / "e",
                       "--synthetic", 2, "--loop-check", -1)  # fmt: skip
    one_error_line(code, output, "--loop-check must be >= 0")


# ------------------------------------------------------------- 6. skull_stripped in JSON


def test_6_skull_stripped_reads_the_right_way_round(base_db, patient):
    from gliomatch.patient.registration import register

    # the synthetic patient is the atlas head seen through a deformation: the skull is on
    img = nib.load(str(patient.t1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = register(img, base_db.atlas(), kind="affine")
        off = register(img, base_db.atlas(), kind="affine", skull="off")
    assert auto.skull_stripped is False and off.skull_stripped is True


@pytest.mark.parametrize("skull, stripped", [("on", False), ("off", True)])
def test_6_matches_json_says_skull_stripped(base_db, patient, tmp_path, skull, stripped):
    out = tmp_path / "o"
    code, output = run("infer", "--t1", patient.t1, "--seg", patient.seg, "--labels",
                       "brats2021", "--db", base_db.path, "--out", out, "--registration",
                       "affine", "--k", 2, "--skull", skull)  # fmt: skip
    assert code == 0, output
    assert json.loads((out / "matches.json").read_text())["skull_stripped"] is stripped


# ---------------------------------------------------------- 7, 9. cohorts without surprises


def test_7_header_only_cohort_csv(base_db, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("patient_id,t1,seg,labels\n")
    out = tmp_path / "out"
    code, output = run("infer-batch", csv, "--out", out, "--db", base_db.path)
    one_error_line(code, output, "no patient rows")
    assert not (out / "summary.csv").exists()
    code, output = run("evaluate", "--db", base_db.path, "--out", tmp_path / "e",
                       "--synthetic", 0, "--real", csv)  # fmt: skip
    one_error_line(code, output, "no patient rows")


def test_9_a_patient_named_summary_csv(base_db, patient, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text(f"patient_id,t1,seg,labels\nsummary.csv,{patient.t1},{patient.seg},brats2021\n")
    out = tmp_path / "out"
    code, output = run("infer-batch", csv, "--out", out, "--db", base_db.path)
    assert code == 1 and "Traceback" not in output
    summary = pd.read_csv(out / "summary.csv")
    assert "name of the cohort's summary file" in summary.status[0]


def test_9_a_failed_row_leaves_no_stale_outputs(base_db, patient, tmp_path):
    out = tmp_path / "out"
    csv = tmp_path / "c.csv"
    common = ["--out", out, "--db", base_db.path, "--registration", "affine", "--k", 2]
    csv.write_text(f"patient_id,t1,seg,labels\np,{patient.t1},{patient.seg},brats2021\n")
    code, output = run("infer-batch", csv, *common)
    assert code == 0, output and (out / "p" / "matches.json").is_file()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    csv.write_text(f"patient_id,t1,seg,labels\np,{patient.t1},{bad},brats2021\n")
    code, output = run("infer-batch", csv, *common)
    assert code == 1
    assert not (out / "p").exists()  # the earlier run's outputs do not sit beside the error


# ----------------------------------------------------------- 7, 8, 9. database integrity


TINY_TRAINING = ["--epochs", 1, "--input-resolution", 16, "--n-train", 8, "--n-val", 4,
                 "--batch", 4, "--modality", "flair"]  # fmt: skip


def _reseal(db_path, edit):
    from gliomatch.database.manifest import read_manifest, write_manifest

    manifest = read_manifest(db_path)
    edit(manifest)
    write_manifest(db_path, manifest)


def test_7_manifest_resealed_without_the_atlas_affine(db_copy):
    _reseal(db_copy.path, lambda m: m["atlas"].pop("affine"))
    code, output = run("db", "info", db_copy.path)
    one_error_line(code, output, "atlas lacks affine")


def test_8_an_edited_resealed_atlas_affine_fails_verify(db_copy):
    def shift(m):
        m["atlas"]["affine"][0][3] += 7.0

    _reseal(db_copy.path, shift)
    code, output = run("db", "verify", db_copy.path)
    one_error_line(code, output, "affine differs from the atlas' own")


def test_8_swapped_resealed_index_arrays_fail_verify(db_copy):
    from gliomatch.database import Database

    folder = db_copy.path / "index" / "exact"
    a, b = np.load(folder / "bits_f.npy"), np.load(folder / "bits_t.npy")
    np.save(folder / "bits_f.npy", b)
    np.save(folder / "bits_t.npy", a)
    Database.open(db_copy.path).record_files("exact", folder)  # resealed: checksums pass
    code, output = run("db", "verify", db_copy.path)
    one_error_line(code, output, "index", "exact", "differ from its density")


def test_8_verify_reports_how_each_index_was_checked(base_db):
    code, output = run("db", "verify", base_db.path)
    assert code == 0, output
    assert "index exact: entries re-derived" in output


def test_7_9_train_on_a_full_disk_leaves_no_truncated_model(base_db, tmp_path, monkeypatch):
    """torch.save fails midway: one error line, no model.pt, and `db verify` names the
    unfinished model folder (it ignored index/models before)."""
    import shutil

    import torch

    from gliomatch.database import Database

    dst = tmp_path / "db"
    shutil.copytree(base_db.path, dst)
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        with open(f, "r+b") as fh:  # what a full disk leaves: a truncated file
            fh.truncate(100)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    code, output = run("train", "ae", "--db", dst, *TINY_TRAINING)
    one_error_line(code, output, "cannot write", "model.pt")
    models = list((dst / "index" / "models").rglob("*.pt"))
    assert not [p for p in models if p.name == "model.pt"], models
    assert not [p for p in models if ".tmp-" in p.name], models
    monkeypatch.undo()
    code, output = run("db", "verify", Database.open(dst).path)
    one_error_line(code, output, "not listed in the manifest")


def test_9_verify_flags_unexpected_files_in_a_model_folder(base_db, tmp_path):
    import shutil

    dst = tmp_path / "db"
    shutil.copytree(base_db.path, dst)
    code, output = run("train", "ae", "--db", dst, *TINY_TRAINING)
    assert code == 0, output
    folder = next((dst / "index" / "models").iterdir())
    (folder / "extra.pt").write_bytes(b"x")
    code, output = run("db", "verify", dst)
    one_error_line(code, output, "unexpected files", "extra.pt")


# ------------------------------------------------------------------------- 9. messages


def test_9_swapped_seg_and_anatomy_give_a_short_error(base_db, scanner_patient, patient, tmp_path):
    code, output = run("infer", "--t1", patient.seg, "--seg", scanner_patient[0],
                       "--db", base_db.path, "--out", tmp_path / "o")  # fmt: skip
    line = one_error_line(code, output, "values)")
    assert len(line) < 400


def test_9_library_warnings_are_plain_warning_lines(base_db, masks, monkeypatch):
    """A library's UserWarning (torch, ANTs) is a `warning:` line without a source path."""
    import gliomatch.search.base as base

    real = base.Strategy.search

    def noisy(self, *a, **kw):
        warnings.warn("a library says something\nover two lines", UserWarning, stacklevel=1)
        return real(self, *a, **kw)

    monkeypatch.setattr(base.Strategy, "search", noisy)
    code, output = run("search", base_db.path, "--flair", masks[0], "--t1gd", masks[1])
    assert code == 0, output
    assert "warning: a library says something" in output
    assert "UserWarning" not in output and ".py:" not in output


_REGISTER_ONCE = """
import hashlib, sys
import nibabel as nib
from gliomatch.atlas import mni152_atlas
from gliomatch.patient import registration
if sys.argv[3]:  # ANTs (imported below, by the registration) compiled afresh: no bytecode yet
    sys.pycache_prefix = sys.argv[3]
reg = registration.register(nib.load(sys.argv[1]), mni152_atlas(32), workdir=sys.argv[2])
h = hashlib.sha256(b"".join(open(p, "rb").read() for p in reg.forward + reg.inverse))
print(h.hexdigest())
"""


def test_3_9_registration_repeats_in_fresh_processes_and_quietly(patient, tmp_path):
    """The production path, not only this test suite (whose conftest fixes ITK's threads and
    ANTs' seed), repeats a registration bit for bit: two fresh processes without those
    settings give the same transforms (item 3). And ANTs' mni2tal.py holds an invalid escape
    sequence, reported when Python compiles it: on a fresh install (no bytecode yet) every
    infer printed it (item 9)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITK_", "ANTS_"))}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-W",
                "default",
                "-c",
                _REGISTER_ONCE,
                str(patient.t1),
                str(tmp_path / f"w{i}"),
                str(tmp_path / "pycache") if i == 0 else "",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [r.communicate() for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err
        assert "invalid escape sequence" not in err
    assert outs[0][0].strip() == outs[1][0].strip() != ""


def test_9_header_noise_message_reads_well(patient, tmp_path):
    from gliomatch.patient.inputs import load_nifti, on_grid

    a = load_nifti(patient.t1, "T1")
    s = nib.load(str(patient.seg))
    moved = nib.Nifti1Image(np.asarray(s.dataobj), s.affine + np.diag([0.01, 0, 0, 0]))
    with pytest.warns(UserWarning) as caught:
        on_grid(moved, a, "segmentation", "the anatomy")
    assert "the the" not in str(caught[0].message)


def test_9_poor_quality_is_rounded_down():
    from gliomatch.patient.registration import poor_quality

    text = poor_quality({"measure": "brain_dice", "brain_dice": 0.9395})
    assert "brain_dice 0.939, below 0.94" in text
    assert poor_quality({"measure": "brain_dice", "brain_dice": 0.94}) is None
