"""The demo end to end on a tiny database that has no index yet (as the demo builds it)."""

from gliomatch.evaluation.demo import run_demo


def test_demo_builds_its_index_and_infers(make_db, tmp_path):
    db = make_db(12, resolution=32, seed=2, indexes=())
    assert not (db.path / "index" / "exact").exists()
    d = run_demo(out=tmp_path, n=len(db), resolution=32, registration="affine", db_path=db.path)
    assert (db.path / "index" / "exact").is_dir()  # the explicit build step, once
    assert d.result.matches and 0 <= d.dice_flair <= 1
    assert "evidence" in d.result.plans and (tmp_path / "result" / "report.html").is_file()
