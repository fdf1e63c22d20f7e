import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app

runner = CliRunner()


def _simulate(x, t_end, out, *extra):
    """`gliomatch simulate` at 32^3 with D_w 0.3 mm^2/d, rho 0.05 /d, seed (x, 0.55, 0.5)."""
    args = [
        "simulate",
        "--x",
        str(x),
        "--y",
        "0.55",
        "--z",
        "0.5",
        "--dw",
        "0.3",
        "--rho",
        "0.05",
        "--t-end",
        str(t_end),
        "--resolution",
        "32",
        "--out",
        str(out),
    ]
    return runner.invoke(app, [*args, *extra])


def test_simulate_writes_nifti(tmp_path, atlas32):
    out = tmp_path / "t.nii.gz"
    r = _simulate(0.4, 300, str(out), "--masks", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    img = nib.load(out)
    assert img.shape == (32, 32, 32)
    assert np.allclose(img.affine, atlas32.affine)
    u = img.get_fdata()
    flair = nib.load(tmp_path / "t_flair.nii.gz").get_fdata()
    assert np.array_equal(flair > 0, u >= 0.2)
    assert summary["flair_cm3"] == np.float64((u >= 0.2).sum() * atlas32.voxel_volume_cm3)


def test_simulate_bad_seed_is_clear(tmp_path):
    r = _simulate(0.01, 300, str(tmp_path / "t.nii.gz"))
    assert r.exit_code == 1
    assert "not brain tissue" in r.output
    assert "Traceback" not in r.output


def test_simulate_bad_out_folder(tmp_path):
    r = _simulate(0.4, 30, str(tmp_path / "missing" / "t.nii.gz"))
    assert r.exit_code == 1 and "does not exist" in r.output


def test_atlas_info():
    r = runner.invoke(app, ["atlas", "info", "--resolution", "32", "--json"])
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert info["shape"] == [32, 32, 32] and info["spacing_mm"] == 6.0


def test_bench_solver_json():
    r = runner.invoke(app, ["bench", "solver", "--resolution", "32", "--t-end", "100", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    for key in ("fast_s", "reference_s", "speedup", "max_abs_diff", "steps", "resolution"):
        assert key in res
    assert res["max_abs_diff"] <= 1e-4


def test_db_commands(tmp_path):
    db = tmp_path / "db"
    r = runner.invoke(
        app,
        [
            "db",
            "build",
            "--out",
            str(db),
            "--n",
            "6",
            "--resolution",
            "32",
            "--workers",
            "1",
            "--shard-size",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["tumors"] == 6
    r = runner.invoke(app, ["db", "info", str(db), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["tumors"] == 6
    r = runner.invoke(app, ["db", "info", str(db)])
    assert r.exit_code == 0 and "6 tumors" in r.output
    r = runner.invoke(app, ["db", "verify", str(db)])
    assert r.exit_code == 0 and "ok" in r.output
    out = tmp_path / "t.nii.gz"
    r = runner.invoke(app, ["db", "show", str(db), "2", "--out", str(out), "--masks"])
    assert r.exit_code == 0, r.output
    assert nib.load(out).shape == (32, 32, 32)
    r = runner.invoke(app, ["db", "show", str(db), "99", "--out", str(out)])
    assert r.exit_code == 1 and "out of range" in r.output
    r = runner.invoke(app, ["db", "info", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no such folder" in r.output
    r = runner.invoke(app, ["db", "build", "--out", str(db), "--n", "0", "--resolution", "32"])
    assert r.exit_code == 1 and "positive" in r.output
    r = runner.invoke(
        app,
        [
            "db",
            "build",
            "--out",
            str(tmp_path / "e"),
            "--n",
            "3",
            "--resolution",
            "32",
            "--dw",
            "1.0,0.5",
        ],
    )
    assert r.exit_code == 1 and "empty" in r.output


def test_bench_build_json():
    args = ["bench", "build", "--n", "5", "--resolution", "32", "--workers", "1"]
    r = runner.invoke(app, [*args, "--designs", "plain:8,scaled:16", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()[-2:]]
    assert [row["design"] for row in rows] == ["plain:8", "scaled:16"]
    for res in rows:
        assert res["n"] == 5 and res["tumors_per_min"] > 0 and 0 <= res["rejection_rate"] < 1
        assert res["kept_per_simulation"] > 0
    assert rows[0]["speedup_vs_first"] == 1.0
    r = runner.invoke(app, [*args, "--designs", "scaled:x"])
    assert r.exit_code == 1 and "snapshots must be an integer" in r.output
    r = runner.invoke(app, [*args, "--designs", "fancy"])
    assert r.exit_code == 1 and "sampler must be" in r.output


def test_search_and_bench_search(tmp_path):
    db = tmp_path / "db"
    r = runner.invoke(
        app,
        [
            "db",
            "build",
            "--out",
            str(db),
            "--n",
            "12",
            "--resolution",
            "32",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["db", "index", str(db), "--strategy", "exact"])
    assert r.exit_code == 0 and "exact index" in r.output
    out = tmp_path / "q.nii.gz"
    assert (
        runner.invoke(app, ["db", "show", str(db), "3", "--out", str(out), "--masks"]).exit_code
        == 0
    )
    args = [
        "search",
        str(db),
        "--flair",
        str(tmp_path / "q_flair.nii.gz"),
        "--t1gd",
        str(tmp_path / "q_t1gd.nii.gz"),
        "--k",
        "4",
    ]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["matches"][0]["id"] == 3 and res["matches"][0]["score"] == 2.0
    assert len(res["matches"]) == 4
    # what one scan determines, over the whole 12-tumor database; never D_w, rho, T alone
    par = res["parameters"]
    assert par["posterior_k"] == 12 and par["calibrated"] is False
    assert set(par["estimates"]) == {"seed_mm", "infiltration_mm", "rho_t", "dw_over_rho"}
    assert "simulated_with" in res["matches"][0] and "theta" not in res["matches"][0]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "rank" in r.output
    assert "what this scan determines" in r.output and "does not determine" in r.output
    assert "NOT calibrated" in r.output
    r = runner.invoke(app, ["db", "calibrate", str(db), "--queries", "5"])
    assert r.exit_code == 1 and ">= 20" in r.output
    # a mask on another grid is refused with a clear message
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), str(tmp_path / "s.nii.gz"))
    r = runner.invoke(
        app,
        [
            "search",
            str(db),
            "--flair",
            str(tmp_path / "s.nii.gz"),
            "--t1gd",
            str(tmp_path / "s.nii.gz"),
        ],
    )
    assert r.exit_code == 1 and "atlas space" in r.output
    r = runner.invoke(
        app,
        [
            "search",
            str(db),
            "--flair",
            str(tmp_path / "missing.nii.gz"),
            "--t1gd",
            str(tmp_path / "s.nii.gz"),
        ],
    )
    assert r.exit_code == 1 and "not found" in r.output
    # two masks on different grids (one shifted by 5 mm) are refused, not paired voxel by voxel
    flair_img = nib.load(str(tmp_path / "q_flair.nii.gz"))
    moved = flair_img.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(flair_img.dataobj), moved), str(tmp_path / "m.nii.gz"))
    r = runner.invoke(app, [*args[:5], str(tmp_path / "m.nii.gz")])
    assert r.exit_code == 1 and "lie on other grids" in r.output
    r = runner.invoke(app, ["bench", "search", "--db", str(db), "--queries", "0"])
    assert r.exit_code == 1 and "queries must be >= 1" in r.output
    r = runner.invoke(
        app,
        [
            "bench",
            "search",
            "--db",
            str(db),
            "--queries",
            "3",
            "--scale",
            "30",
            "--strategies",
            "loop,exact,ds32",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    by = {row["strategy"]: row for row in rows}
    assert by["exact"]["top1"] == 1.0 and by["loop"]["exact_equals_loop"] is True
    for row in rows:
        for key in (
            "strategy",
            "n_db",
            "queries",
            "median_s",
            "speedup_vs_loop",
            "top1",
            "top5",
            "top15",
        ):
            assert key in row
        assert row["peak_rss_bytes"] >= row["rss_added_bytes"] >= 0
        assert row["peak_rss_bytes"] > 50e6  # a Python process with numpy: tens of MB at least
    assert by["exact"]["scaled_to"] == 30


def test_bench_design_compares_designs_on_the_same_queries(tmp_path):
    args = ["bench", "design", "--out", str(tmp_path), "--designs", "plain:4,scaled:8"]
    args += ["--budget", "0.03", "--resolution", "32", "--queries", "6", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [row["design"] for row in rows] == ["plain:4", "scaled:8"]
    for row in rows:
        assert row["tumors"] > 0 and row["queries"] == 6
        assert 0 < row["mean_best_combined"] <= 2
    assert rows[0]["diff_vs_first"] == 0.0
    assert "| scaled:8 |" in (tmp_path / "design_table.md").read_text()
    # a rerun reuses the databases (same answer, no new build)
    again = [json.loads(line) for line in runner.invoke(app, args).output.strip().splitlines()]
    assert [a["mean_best_combined"] for a in again] == [b["mean_best_combined"] for b in rows]
    # real patients too: registered once, scored on every design's database
    from gliomatch.database import Database
    from gliomatch.patient.synthetic import make_patient

    db = Database.open(tmp_path / "plain-4")
    row = db.params.iloc[0]
    theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
    pat = make_patient(db.atlas(), tmp_path / "pat", density=db.density(0), theta=theta)
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"patient_id,t1,seg,labels\nP1,{pat.t1},{pat.seg},brats2021\n")
    r = runner.invoke(app, [*args, "--real", str(csv)])
    assert r.exit_code == 0, r.output
    with_real = [json.loads(line) for line in r.output.strip().splitlines()]
    for row in with_real:
        combined, d_t1gd, d_flair = row["real"]["P1"]
        assert 0 < combined <= 2 and combined == pytest.approx(d_t1gd + d_flair)
    assert "P1 best combined" in (tmp_path / "design_table.md").read_text()


def test_bench_infer_case_needs_a_database(tmp_path):
    r = runner.invoke(app, ["bench", "infer", "--case", str(tmp_path)])
    assert r.exit_code == 1 and "--case needs --db" in r.output
