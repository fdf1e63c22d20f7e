"""BraTS case folders as input: one case, a folder of cases, both namings, clear errors."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError
from gliomatch.patient.cohort import brats_case, load_case, read_cohort
from gliomatch.patient.synthetic import make_patient

BRATS = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats-preprocessed"
runner = CliRunner()


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(40, resolution=64, seed=11)


@pytest.fixture(scope="module")
def cohort(db, tmp_path_factory):
    """Two synthetic patients laid out as BraTS cases: 2023 naming and 2017-2021 naming."""
    root = tmp_path_factory.mktemp("brats")
    for n, (case, t1_name, seg_name) in enumerate(
        [
            ("BraTS-0001", "BraTS-0001-t1n", "BraTS-0001-seg"),
            ("Brats18_2", "Brats18_2_t1", "Brats18_2_seg"),
        ]
    ):
        row = db.params.iloc[7 + n]
        theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
        p = make_patient(db.atlas(), root / "tmp" / case, density=db.density(7 + n), theta=theta)
        (root / case).mkdir()
        shutil.copy(p.t1, root / case / f"{t1_name}.nii.gz")
        shutil.copy(p.seg, root / case / f"{seg_name}.nii.gz")
    shutil.rmtree(root / "tmp")
    (root / "notes").mkdir()  # a folder that is not a case is skipped
    return root


def test_read_a_folder_of_cases_in_both_namings(cohort):
    rows = read_cohort(cohort, "brats2021")
    assert [r.patient_id for r in rows] == ["BraTS-0001", "Brats18_2"]
    for r in rows:
        assert r.error is None and set(r.files) == {"t1", "seg"} and r.labels == "brats2021"
    one = read_cohort(cohort / "BraTS-0001")
    assert len(one) == 1 and one[0].files["t1"].name == "BraTS-0001-t1n.nii.gz"
    assert load_case(cohort / "Brats18_2", "brats2021").flair.any()


def test_bad_case_folders(cohort, tmp_path):
    case = tmp_path / "X-1"
    case.mkdir()
    (case / "X-1-t1n.nii.gz").write_bytes(
        (cohort / "BraTS-0001" / "BraTS-0001-t1n.nii.gz").read_bytes()
    )
    assert "no segmentation" in brats_case(case).error
    with pytest.raises(GliomatchError, match="no BraTS case"):
        read_cohort(tmp_path)  # its only subfolder has no segmentation: not a case
    for name in ("X-1-seg.nii.gz", "X-1_seg.nii.gz"):
        shutil.copy(cohort / "BraTS-0001" / "BraTS-0001-seg.nii.gz", case / name)
    assert "several seg files" in brats_case(case).error
    with pytest.raises(GliomatchError, match="no such folder"):
        load_case(tmp_path / "nowhere")


def test_infer_case_and_batch_of_cases(db, cohort, tmp_path):
    # reading case folders is the subject here; the refinement has its own tests
    base = ["--db", str(db.path), "--registration", "affine", "--k", "3", "--labels", "brats2021",
            "--no-refine"]  # fmt: skip
    r = runner.invoke(
        app, ["infer", "--case", str(cohort / "BraTS-0001"), "--out", str(tmp_path / "one"), *base]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one" / "matches.json").is_file()
    r = runner.invoke(
        app,
        [
            "infer",
            "--case",
            str(cohort / "BraTS-0001"),
            "--t1",
            "x.nii.gz",
            "--out",
            str(tmp_path / "o"),
            *base,
        ],
    )
    assert r.exit_code == 1 and "either --case or" in r.output
    r = runner.invoke(app, ["infer-batch", str(cohort), "--out", str(tmp_path / "b"), *base])
    assert r.exit_code == 0, r.output
    assert "BraTS-0001" in r.output and "Brats18_2" in r.output


@pytest.mark.skipif(not BRATS.is_dir(), reason="../shared/data/brats-preprocessed not present")
def test_the_shared_real_cases_read_as_a_cohort():
    rows = read_cohort(BRATS, "brats2021")
    assert [r.patient_id for r in rows] == ["TCGA-DU-7294", "TCGA-FG-6692"]
    for r in rows:
        assert r.error is None and r.files["t1"].name.endswith("-t1n.nii.gz")
    inputs = load_case(BRATS / "TCGA-FG-6692", "brats2021")
    assert inputs.flair.sum() == 2_477 + 20_862 + 6_840 and inputs.t1gd.sum() == 2_477 + 6_840
