"""`gliomatch plan` and `evaluate-plan` on files: outputs, coverage and bad inputs."""

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app

runner = CliRunner()
AFF = np.diag([1.2, 1.0, 2.0, 1.0])  # anisotropic voxels


def _save(arr, path, affine=AFF):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return str(path)


@pytest.fixture
def case(tmp_path):
    shape = (40, 44, 24)
    g = np.indices(shape).astype(float)
    mm = [g[i] * AFF[i, i] for i in range(3)]
    r = np.sqrt((mm[0] - 24) ** 2 + (mm[1] - 22) ** 2 + (mm[2] - 24) ** 2)
    brain = r < 21
    seg = np.zeros(shape, np.uint8)
    seg[r < 8] = 2  # edema
    seg[r < 4] = 3  # enhancing
    seg[r < 2] = 1  # necrotic
    # a density elongated along x: the personalized plan follows it
    u = np.exp(-(((mm[0] - 24) / 14) ** 2) - ((mm[1] - 22) / 5) ** 2 - ((mm[2] - 24) / 5) ** 2)
    follow = np.zeros(shape, np.uint8)
    follow[(np.abs(mm[0] - 40) < 3) & (np.abs(mm[1] - 22) < 3) & (np.abs(mm[2] - 24) < 3)] = 3
    follow[r < 2] = 4  # a resection cavity: never recurrence
    return {
        "density": _save(u.astype(np.float32), tmp_path / "u.nii.gz"),
        "seg": _save(seg, tmp_path / "seg.nii.gz"),
        "brain": _save(brain.astype(np.uint8), tmp_path / "brain.nii.gz"),
        "followup": _save(follow, tmp_path / "post.nii.gz"),
        "tmp": tmp_path,
        "shape": shape,
    }


def test_plan_writes_two_plans_of_one_volume(case):
    out = case["tmp"] / "plans"
    r = runner.invoke(
        app,
        ["plan", "--density", case["density"], "--seg", case["seg"], "--brain-mask",
         case["brain"], "--labels", "predictgbm", "--out", str(out), "--margin", "6"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    std = np.asarray(nib.load(out / "ctv_standard.nii.gz").dataobj) > 0
    per = np.asarray(nib.load(out / "ctv_personalized.nii.gz").dataobj) > 0
    assert std.sum() == per.sum() > 0
    assert nib.load(out / "ctv_standard.nii.gz").shape == case["shape"]
    assert np.allclose(nib.load(out / "ctv_personalized.nii.gz").affine, AFF)
    figs = json.loads((out / "plans.json").read_text())["figures"]
    assert figs["standard"]["covers_core"] == 1.0
    assert "standard CTV" in r.output and "personalized CTV" in r.output


def test_evaluate_plan_coverage(case):
    r = runner.invoke(
        app,
        ["evaluate-plan", "--density", case["density"], "--seg", case["seg"], "--followup",
         case["followup"], "--brain-mask", case["brain"], "--labels", "predictgbm",
         "--followup-labels", "predictgbm", "--margin", "6", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    # the recurrence lies 16 mm along x: beyond the 6 mm margin, inside the elongated density
    assert res["coverage"]["standard"]["enhancing"] == 0.0
    assert res["coverage"]["personalized"]["enhancing"] > 0.5
    assert res["recurrence_cm3"]["any"] == res["recurrence_cm3"]["enhancing"]  # cavity excluded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--margin": "0"}, "--margin must be a positive"),
        ({"--margin": "-5"}, "--margin must be a positive"),
        ({"seg": "edema_only"}, "no tumor core"),
        ({"--brain-mask": "empty"}, "brain mask"),
        ({"--density": "other_grid"}, "another grid"),
        ({"--followup": "other_grid"}, "another grid"),
        ({"--density": "out_of_range"}, "values must lie in [0, 1]"),
    ],
)
def test_bad_plan_inputs_get_one_line_errors(case, change, message):
    tmp = case["tmp"]
    files = {
        "--density": case["density"], "--seg": case["seg"], "--followup": case["followup"],
        "--brain-mask": case["brain"],
    }  # fmt: skip
    if change.get("seg") == "edema_only":
        seg = np.asarray(nib.load(case["seg"]).dataobj)
        files["--seg"] = _save(np.where(seg > 0, 2, 0).astype(np.uint8), tmp / "edema.nii.gz")
    if change.get("--brain-mask") == "empty":
        files["--brain-mask"] = _save(np.zeros(case["shape"], np.uint8), tmp / "b0.nii.gz")
    for opt in ("--density", "--followup"):
        if change.get(opt) == "other_grid":
            files[opt] = _save(np.zeros((10, 10, 10), np.uint8), tmp / f"g{opt[2:]}.nii.gz")
    if change.get("--density") == "out_of_range":
        files["--density"] = _save(np.full(case["shape"], 7.0, np.float32), tmp / "u7.nii.gz")
    margin = change.get("--margin", "15")
    args = ["evaluate-plan", *[x for kv in files.items() for x in kv], "--labels", "predictgbm",
            "--followup-labels", "predictgbm", "--margin", margin]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_brain_from_a_skull_stripped_scan_or_refused(case):
    out = case["tmp"] / "p2"
    base = ["plan", "--density", case["density"], "--seg", case["seg"], "--labels", "predictgbm",
            "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, base)
    assert r.exit_code != 0 and "--brain-mask" in r.output
    scan = np.asarray(nib.load(case["brain"]).dataobj).astype(np.float32) * 100
    r = runner.invoke(app, [*base, "--anatomy", _save(scan, case["tmp"] / "t1.nii.gz")])
    assert r.exit_code == 0, r.output


def test_header_noise_is_resampled_with_a_warning_line(case):
    noisy = AFF.copy()
    noisy[0, 3] += 0.01  # a header that differs by 0.01 mm: the same grid
    u = np.asarray(nib.load(case["density"]).dataobj)
    density = _save(u, case["tmp"] / "u_noisy.nii.gz", affine=noisy)
    r = runner.invoke(
        app,
        ["plan", "--density", density, "--seg", case["seg"], "--brain-mask", case["brain"],
         "--labels", "predictgbm", "--out", str(case["tmp"] / "pn")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning: density" in r.output and "resampled" in r.output


def test_an_ambiguous_follow_up_names_the_followup_labels_option(case):
    """A BraTS 2017-2021 follow-up (labels 1, 2, 4) fits several conventions: the error names
    --followup-labels, the option that settles it, not --labels."""
    tmp = case["tmp"]
    follow = np.asarray(nib.load(case["followup"]).dataobj)
    brats = _save(np.where(follow == 3, 4, np.where(follow == 4, 1, 0)).astype(np.uint8),
                  tmp / "post2021.nii.gz")  # fmt: skip
    r = runner.invoke(app, ["evaluate-plan", "--density", case["density"], "--seg", case["seg"],
                            "--followup", brats, "--brain-mask", case["brain"], "--labels",
                            "predictgbm"])  # fmt: skip
    assert r.exit_code != 0 and "pass --followup-labels with the right one" in r.output
    assert "--followup-labels brats2021" in r.output


def test_plans_keep_the_segmentations_header(case):
    seg = nib.load(case["seg"])
    img = nib.Nifti1Image(np.asarray(seg.dataobj), AFF)
    img.set_qform(AFF, 1)
    img.set_sform(AFF, 1)
    img.header.set_xyzt_units("mm")
    path = case["tmp"] / "seg_coded.nii.gz"
    nib.save(img, path)
    out = case["tmp"] / "coded"
    r = runner.invoke(app, ["plan", "--density", case["density"], "--seg", str(path),
                            "--brain-mask", case["brain"], "--labels", "predictgbm", "--out",
                            str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    for name in ("standard", "personalized"):
        h = nib.load(out / f"ctv_{name}.nii.gz").header
        assert (int(h["qform_code"]), int(h["sform_code"])) == (1, 1)
        assert h.get_xyzt_units()[0] == "mm"
