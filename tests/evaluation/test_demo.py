"""The demo end to end on a tiny database that has no index yet (as the demo builds it)."""

import inspect

import nibabel as nib

from gliomatch.database.demo import DEMO_N, DEMO_RESOLUTION
from gliomatch.evaluation.demo import run_demo


def test_demo_builds_its_index_and_infers_a_patient_on_a_finer_grid(make_db, tmp_path):
    """The demo's patient is scanned finer than a coarse database's grid (1.5 mm against the
    demo database's 3 mm): the database is searched through the registration."""
    db = make_db(12, resolution=32, seed=2, indexes=())
    assert not (db.path / "index" / "exact").exists()
    d = run_demo(
        out=tmp_path, n=len(db), resolution=32, registration="affine", db_path=db.path,
        patient_resolution=48,
    )  # fmt: skip
    assert (db.path / "index" / "exact").is_dir()  # the explicit build step, once
    assert d.result.matches and 0 <= d.dice_flair <= 1
    assert "evidence" in d.result.plans and (tmp_path / "result" / "report.html").is_file()
    scan = nib.load(tmp_path / "patient" / "t1.nii.gz")
    assert scan.shape == (48, 48, 48)  # the patient's grid, not the database's 32^3
    assert nib.load(d.result.files["density_patient"]).shape == (48, 48, 48)


def test_the_cli_defaults_are_the_demo_design():
    from gliomatch.cli.bench_patient import bench_infer_cmd
    from gliomatch.cli.demo import demo

    assert (DEMO_N, DEMO_RESOLUTION) == (10_000, 64)
    for command in (demo, bench_infer_cmd):
        assert inspect.signature(command).parameters["resolution"].default == DEMO_RESOLUTION
