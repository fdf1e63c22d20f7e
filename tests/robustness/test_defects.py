"""The twelve defect classes of issue 13, each reproduced on a tiny database.

Every command must answer bad input, faults and foreign files with one ``error:`` line and exit
code 1 (or record the failure per row in a batch), never a traceback, a hang, a stale or a
silently wrong answer.
"""

import errno
import json
import pickle

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliomatch.errors import GliomatchError

from .conftest import one_error_line, run

# ----------------------------------------------------------------- 1. path traversal


@pytest.mark.parametrize("pid", ["../../escaped", "ABSOLUTE", "a/b", ".hidden", "..", "x" * 200])
def test_1_patient_id_cannot_leave_out(base_db, patient, tmp_path, pid):
    absolute = tmp_path / "abs-escape"
    pid = str(absolute) if pid == "ABSOLUTE" else pid
    csv = tmp_path / "c.csv"
    csv.write_text(f"patient_id,t1,seg,labels\n{pid},{patient.t1},{patient.seg},brats2021\n")
    out = tmp_path / "deep" / "out"
    code, output = run("infer-batch", csv, "--out", out, "--db", base_db.path)
    assert code == 1 and "Traceback" not in output
    summary = pd.read_csv(out / "summary.csv")
    assert summary.status[0].startswith("error:") and "patient_id" in summary.status[0]
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert not absolute.exists()


# ------------------------------------------------------- 2. a loop that cannot progress


def test_2_unmeetable_size_filter_stops_with_an_error(tmp_path):
    out = tmp_path / "db"
    args = ["db", "build", "--out", out, "--n", 5, "--resolution", 32]
    code, output = run(*args, "--flair-min", 0, "--flair-max", 0.001)
    one_error_line(code, output, "no tumor kept", "--flair-min")
    assert len(list((out / "shards").iterdir())) <= 8 + 1  # 64 trajectories, 8 per shard


# --------------------------------------------------------------- 3. stale results


def test_3_duplicate_patient_ids_and_changed_settings(base_db, patient, tmp_path):
    csv = tmp_path / "c.csv"
    row = f"{patient.t1},{patient.seg},brats2021"
    csv.write_text(f"patient_id,t1,seg,labels\np,{row}\np,{row}\n")
    out = tmp_path / "out"
    common = ["--out", out, "--db", base_db.path, "--registration", "affine"]
    code, output = run("infer-batch", csv, *common, "--k", 3)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.status.str[:5]) == ["ok", "error"], output
    assert "more than once" in summary.status[1]
    assert len(json.loads((out / "p" / "matches.json").read_text())["matches"]) == 3
    csv.write_text(f"patient_id,t1,seg,labels\np,{row}\n")
    code, output = run("infer-batch", csv, *common, "--k", 2)  # other k: redone, not reused
    assert code == 0 and "reused" not in output
    assert len(json.loads((out / "p" / "matches.json").read_text())["matches"]) == 2
    code, output = run("infer-batch", csv, *common, "--k", 2)  # same everything: reused
    assert code == 0 and "reused" in output


def test_3_evaluate_cache_depends_on_seed_k_and_database(base_db, make_db, tmp_path):
    from gliomatch.evaluation.harness import evaluate, synthetic_queries

    quiet = dict(strategies=["exact"], loop_check=2, log=lambda m: None)
    a = evaluate(base_db, tmp_path / "ev", queries=synthetic_queries(base_db, 3, 0), **quiet)
    b = evaluate(base_db, tmp_path / "ev", queries=synthetic_queries(base_db, 3, 7), **quiet)
    fresh = evaluate(base_db, tmp_path / "ev7", queries=synthetic_queries(base_db, 3, 7), **quiet)
    assert b["plausibility"] == fresh["plausibility"] != a["plausibility"]
    assert b["exact_equals_loop_on_sample"] is True
    k3 = evaluate(base_db, tmp_path / "ev", queries=synthetic_queries(base_db, 3, 0), k=3, **quiet)
    assert k3["k"] == 3 and a["k"] == 15
    other = make_db(6, resolution=32, seed=11)
    c = evaluate(other, tmp_path / "ev", queries=synthetic_queries(other, 3, 0), **quiet)
    d = evaluate(other, tmp_path / "ev-other", queries=synthetic_queries(other, 3, 0), **quiet)
    assert c["plausibility"] == d["plausibility"]


# --------------------------------------------------------- 4. damaged data is detected


def _chunks(db):
    root = db.path / "shards" / "s00000" / "densities.zarr" / "c"
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_4_flipped_density_bytes_are_detected(db_copy):
    chunk = _chunks(db_copy)[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xA5 for b in data[len(data) // 2 :][:8])
    chunk.write_bytes(bytes(data))
    with pytest.raises(GliomatchError, match="cannot read tumor 0"):
        db_copy.density(0)
    code, output = run("db", "show", db_copy.path, 0, "--out", db_copy.path / "t.nii.gz")
    one_error_line(code, output, "tumor 0")
    code, output = run("db", "verify", db_copy.path)
    one_error_line(code, output, "checksum mismatch")


def test_4_deleted_density_chunk_is_detected(db_copy):
    _chunks(db_copy)[0].unlink()
    with pytest.raises(GliomatchError, match="missing"):
        db_copy.density(0)


def test_4_swapped_index_files_are_refused(db_copy, masks):
    folder = db_copy.path / "index" / "exact"
    f, t = (folder / "bits_f.npy").read_bytes(), (folder / "bits_t.npy").read_bytes()
    (folder / "bits_f.npy").write_bytes(t)
    (folder / "bits_t.npy").write_bytes(f)
    code, output = run("search", db_copy.path, "--flair", masks[0], "--t1gd", masks[1])
    one_error_line(code, output, "bits_f.npy", "checksum mismatch")
    code, output = run("db", "verify", db_copy.path)
    one_error_line(code, output, "checksum mismatch")


def test_4_unlisted_index_is_refused_by_verify(db_copy):
    (db_copy.path / "index" / "foreign").mkdir()
    code, output = run("db", "verify", db_copy.path)
    one_error_line(code, output, "not listed in the manifest")


# ------------------------------------------------------- 5. binary mask given as --seg


def test_5_binary_mask_as_seg_is_refused(base_db, patient, tmp_path):
    seg = nib.load(patient.seg)
    binary = (np.asarray(seg.dataobj) > 0).astype(np.uint8)
    p = tmp_path / "wt.nii.gz"
    nib.save(nib.Nifti1Image(binary, seg.affine), str(p))
    code, output = run(
        "infer", "--t1", patient.t1, "--seg", p, "--db", base_db.path, "--out", tmp_path / "o"
    )
    one_error_line(code, output, "binary mask", "--flair-mask")


# -------------------------------------------------------------- 6. training settings


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--lr", "-1"], "lr (learning rate)"),
        (["--lr", "nan"], "lr (learning rate)"),
    ],
)
@pytest.mark.parametrize("kind", ["ae", "multitask"])
def test_6_and_11_zero_or_negative_training_settings(base_db, kind, args, fragment):
    code, output = run("train", kind, "--db", base_db.path, *args)
    one_error_line(code, output, fragment)


# --------------------------------------------------- 7. re-ranking any strategy


@pytest.mark.parametrize("name", ["exact+rr3", "ds32+rr5", "loop+rr2", "ds64+rr8", "radiomics+rr5"])
def test_7_rerank_wraps_every_strategy(base_db, masks, name):
    code, output = run(
        "search", base_db.path, "--flair", masks[0], "--t1gd", masks[1], "--k", 2,
        "--strategy", name, "--json",
    )  # fmt: skip
    assert code == 0, output
    rows = json.loads(output.strip().splitlines()[-1])["matches"]
    assert rows[0]["id"] == 2 and len(rows) == 2  # the query is tumor 2 itself


@pytest.mark.parametrize("name", ["exact+rr", "exact+rr0", "+rr3", "exact+rrx", "nope+rr3"])
def test_7_malformed_rerank_names(base_db, masks, name):
    code, output = run(
        "search", base_db.path, "--flair", masks[0], "--t1gd", masks[1], "--strategy", name
    )
    one_error_line(code, output, "strategy")


def test_7_rerank_in_index_evaluate_and_bench(base_db, tmp_path):
    code, output = run("db", "index", base_db.path, "--strategy", "ds32+rr3")
    assert code == 0 and "ds32" in output, output
    code, output = run(
        "evaluate", "--db", base_db.path, "--out", tmp_path / "e", "--synthetic", 2,
        "--strategies", "exact+rr3,ds32+rr4", "--loop-check", 0,
    )  # fmt: skip
    assert code == 0, output
    code, output = run(
        "bench", "search", "--db", base_db.path, "--strategies", "ds32+rr4", "--queries", 2
    )
    assert code == 0, output
    # the exact search says where its time goes
    code, output = run("bench", "search", "--db", base_db.path, "--strategies", "exact",
                       "--queries", 2)  # fmt: skip
    assert code == 0 and "median per stage (ms): pack" in output and "verified" in output, output


# ------------------------------------------------------------- 8. filesystem errors


def _raise(err):
    def f(*a, **kw):
        raise OSError(err, __import__("os").strerror(err), "/some/where")

    return f


def test_8_read_only_and_full_disks(base_db, masks, db_copy, tmp_path, monkeypatch):
    import gliomatch.database.build as build

    monkeypatch.setattr(nib, "save", _raise(errno.EROFS))
    code, output = run("db", "show", base_db.path, 0, "--out", tmp_path / "t.nii.gz")
    one_error_line(code, output, "read-only file system")
    monkeypatch.undo()

    monkeypatch.setattr(build, "write_shard", _raise(errno.ENOSPC))
    code, output = run("db", "build", "--out", tmp_path / "full", "--n", 3, "--resolution", 32)
    one_error_line(code, output, "no space left on device")
    monkeypatch.undo()

    import shutil

    shutil.rmtree(db_copy.path / "index")  # a database without an index, on a read-only disk
    path_type = type(db_copy.path)
    real_mkdir = path_type.mkdir

    def read_only_mkdir(self, *a, **kw):
        if str(self).startswith(str(db_copy.path)) or str(self).startswith(str(tmp_path / "ro")):
            _raise(errno.EROFS)()
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(path_type, "mkdir", read_only_mkdir)
    code, output = run("search", db_copy.path, "--flair", masks[0], "--t1gd", masks[1])
    one_error_line(code, output, "cannot write the exact index", "db index")
    code, output = run("evaluate", "--db", base_db.path, "--out", tmp_path / "ro", "--synthetic", 1)
    one_error_line(code, output, "read-only file system")


def test_8_a_file_in_the_way(base_db, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, output = run("db", "build", "--out", blocker, "--n", 3, "--resolution", 32)
    one_error_line(code, output, str(blocker))
    code, output = run("evaluate", "--db", base_db.path, "--out", blocker, "--synthetic", 1)
    one_error_line(code, output, str(blocker))
    code, output = run("db", "build", "--out", blocker / "sub", "--n", 3, "--resolution", 32)
    one_error_line(code, output, "cannot create")


# ------------------------------------------------ 9. hostile or broken model/index files


class _Evil:
    def __reduce__(self):
        return (__import__("os").system, ("touch /tmp/gliomatch-pwned",))


@pytest.mark.parametrize("content", ["empty", "pickle", "garbage"])
def test_9_broken_or_hostile_model_files(base_db, content, tmp_path):
    from gliomatch.learn.trainer import load_state

    p = tmp_path / "model.pt"
    p.write_bytes(
        {"empty": b"", "pickle": pickle.dumps(_Evil()), "garbage": b"\x80\x04junk"}[content]
    )
    with pytest.raises(GliomatchError, match="refused without running"):
        load_state(p)
    assert not __import__("pathlib").Path("/tmp/gliomatch-pwned").exists()


def test_9_model_files_are_checked_against_the_manifest(db_copy):
    """A trained model's files are listed in the manifest; a corrupted one is refused."""
    import torch

    from gliomatch.learn.config import TrainConfig
    from gliomatch.learn.train import load_model, model_dir, train

    cfg = TrainConfig(kind="ae", latent=16, epochs=1, n_train=4, n_val=2, input_resolution=16)
    train(db_copy, cfg, "flair")
    load_model(db_copy, "ae16", "flair")
    weights = model_dir(db_copy, "ae16", "flair") / "model.pt"
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1  # a valid file with other weights
    torch.save(state, weights)
    with pytest.raises(GliomatchError, match="checksum mismatch"):
        load_model(db_copy, "ae16", "flair")


def test_9_hostile_index_array_is_refused(db_copy, masks):
    folder = db_copy.path / "index" / "exact"
    np.save(folder / "nf.npy", np.array([object()] * 8, dtype=object), allow_pickle=True)
    code, output = run("search", db_copy.path, "--flair", masks[0], "--t1gd", masks[1])
    one_error_line(code, output, "nf.npy", "checksum mismatch")


# ------------------------------------------------------ 10. foreign formats, batch faults


def test_10_mgz_input_is_refused_clearly(base_db, patient, tmp_path):
    img = nib.load(patient.t1)
    mgz = tmp_path / "t1.mgz"
    nib.save(nib.MGHImage(np.asarray(img.dataobj, dtype=np.float32), img.affine), str(mgz))
    code, output = run(
        "infer", "--t1", mgz, "--seg", patient.seg, "--labels", "brats2021",
        "--db", base_db.path, "--out", tmp_path / "o",
    )  # fmt: skip
    one_error_line(code, output, "not NIfTI", "t1.mgz")


def test_10_one_bad_row_or_a_registration_crash_does_not_stop_the_cohort(
    base_db, patient, tmp_path, monkeypatch
):
    import gliomatch.patient.pipeline as pipeline  # to_atlas calls register through it

    good = f"{patient.t1},{patient.seg},brats2021"
    csv = tmp_path / "c.csv"
    csv.write_text(
        "patient_id,t1,seg,labels\n"
        f"missing,{tmp_path / 'none.nii.gz'},{patient.seg},brats2021\n"
        f"crash,{good}\n"
    )
    real = pipeline.register

    def crash_once(*a, **kw):
        monkeypatch.setattr(pipeline, "register", real)
        raise RuntimeError("itk::ExceptionObject: simulated ANTs failure")

    monkeypatch.setattr(pipeline, "register", crash_once)
    out = tmp_path / "o"
    args = ["infer-batch", csv, "--out", out, "--db", base_db.path, "--registration", "affine",
            "--no-refine"]  # fmt: skip
    code, output = run(*args)
    assert code == 1 and "Traceback" not in output
    s = pd.read_csv(out / "summary.csv")
    assert "not found" in s.status[0]
    assert "RuntimeError" in s.status[1] and "simulated ANTs failure" in s.status[1]
    csv.write_text(f"patient_id,t1,seg,labels\nok,{good}\n")
    code, output = run(*args)
    assert code == 0 and pd.read_csv(out / "summary.csv").status.tolist() == ["ok"]


# ------------------------------------------------------- 11. manifest, empty strategy list


def test_11_manifest_without_a_key(db_copy):
    from gliomatch.database.manifest import write_manifest

    original = (db_copy.path / "manifest.json").read_text()
    m = json.loads(original)
    del m["counts"]
    write_manifest(db_copy.path, m)  # sealed: only the missing key is wrong
    code, output = run("db", "info", db_copy.path)
    one_error_line(code, output, "missing entries counts")
    (db_copy.path / "manifest.json").write_text(original.replace('"tumors"', '"tumours"'))
    code, output = run("db", "info", db_copy.path)
    one_error_line(code, output, "checksum mismatch")


@pytest.mark.parametrize("names", [",", " , ", ""])
def test_11_empty_strategy_list(base_db, tmp_path, names):
    code, output = run(
        "evaluate", "--db", base_db.path, "--out", tmp_path / "e", "--strategies", names
    )
    one_error_line(code, output, "no strategy")


def test_unexpected_errors_say_where_to_report(base_db, monkeypatch):
    import gliomatch.database.storage as storage

    def boom(self):
        raise TypeError("simulated bug")

    monkeypatch.setattr(storage.Database, "__len__", boom)
    code, output = run("db", "info", base_db.path)
    one_error_line(code, output, "unexpected internal error", "TypeError", "report")


# ------------------------------------------------------------------------- 12. minor


def test_12_smaller_n_does_not_shrink_a_database(db_copy):
    code, output = run("db", "build", "--out", db_copy.path, "--n", 5, "--resolution", 32,
                       "--seed", 3, "--shard-size", 4)  # fmt: skip
    one_error_line(code, output, "holds 8 tumors", "--n 8")
    from gliomatch.database import Database

    assert len(Database.open(db_copy.path)) == 8


def test_12_killed_index_build_leaves_no_temporaries(db_copy):
    from gliomatch.search import get_strategy

    stale = db_copy.path / "index" / ".tmp-exact-999999999"
    stale.mkdir()
    (stale / "half.npy").write_bytes(b"x")
    get_strategy("ds32", db_copy).build()
    assert not stale.exists()


def test_12_infer_k0_is_refused_before_registration(base_db, patient, tmp_path, monkeypatch):
    import gliomatch.patient.pipeline as pipeline  # to_atlas calls register through it

    monkeypatch.setattr(pipeline, "register", _raise(errno.EIO))  # must not be reached
    code, output = run(
        "infer", "--t1", patient.t1, "--seg", patient.seg, "--labels", "brats2021",
        "--db", base_db.path, "--out", tmp_path / "o", "--k", 0,
    )  # fmt: skip
    one_error_line(code, output, "--k must be >= 1")


def test_12_search_warns_when_t1gd_leaves_flair(base_db, masks, tmp_path):
    f = nib.load(masks[0])
    t = np.asarray(nib.load(masks[1]).dataobj).copy()
    outside = np.argwhere(np.asarray(f.dataobj) == 0)[0]
    t[tuple(outside)] = 1
    p = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(t, f.affine), str(p))
    code, output = run("search", base_db.path, "--flair", masks[0], "--t1gd", p, "--k", 1)
    assert code == 0 and "warning:" in output and "outside the FLAIR mask" in output


@pytest.mark.parametrize("weight", ["1e308", "inf", "-1", "nan"])
def test_12_weights_are_bounded(base_db, masks, weight):
    code, output = run(
        "search", base_db.path, "--flair", masks[0], "--t1gd", masks[1], "--w-flair", weight,
        "--json",
    )  # fmt: skip
    one_error_line(code, output, "w_flair")
    assert "Infinity" not in output and "NaN" not in output


def test_12_absurd_simulation_is_refused_at_once(tmp_path):
    import time

    t0 = time.perf_counter()
    code, output = run(
        "simulate", "--x", 0.4, "--y", 0.55, "--z", 0.5, "--dw", 1e6, "--rho", 0.05,
        "--t-end", 300, "--resolution", 32, "--out", tmp_path / "t.nii.gz",
    )  # fmt: skip
    one_error_line(code, output, "solver stages", "check the units")
    assert time.perf_counter() - t0 < 30


def test_damaged_atlas_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    """A cached atlas whose maps were altered (yet still a valid .npz) is not used."""
    from gliomatch.atlas import cache_dir, mni152_atlas

    monkeypatch.setenv("GLIOMATCH_CACHE", str(tmp_path))
    good = mni152_atlas(32)
    entry = next((cache_dir() / "atlas").glob("mni152-2009-r32-*.npz"))
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["wm"] = arrays["wm"] * 0.5  # plausible, but not the atlas
    np.savez(entry, **arrays)
    again = mni152_atlas(32)
    assert again.checksum == good.checksum
    assert np.array_equal(again.wm, good.wm)


def test_12_killed_parent_leaves_no_orphaned_workers(tmp_path):
    """A process building with a worker pool is killed with SIGKILL: its workers end too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    pids = tmp_path / "pids.txt"
    script.write_text(
        "import os, sys, time\n"
        "from gliomatch.files import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(2)\n"
        "    futures = [pool.submit(time.sleep, 60) for _ in range(2)]\n"
        "    time.sleep(1.0)\n"
        f"    open({str(pids)!r}, 'w').write(' '.join(str(p) for p in pool._processes))\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 30
    while not (pids.is_file() and pids.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [p for p in workers if _running(p)]
    assert alive == []


def _running(pid):
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")


def test_index_files_are_hashed_once_per_process_unless_they_change(db_copy, monkeypatch):
    """Loading the same index again (evaluate, re-ranking) does not rehash it; a file changed
    since is hashed again and refused."""
    import gliomatch.database.storage as storage
    from gliomatch.search import get_strategy

    hashed = []
    real = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda p: hashed.append(p) or real(p))
    get_strategy("exact", db_copy).ensure_ready()
    first = len(hashed)
    assert first > 0
    get_strategy("exact", db_copy).ensure_ready()
    get_strategy("exact+rr3", db_copy).ensure_ready()
    assert len(hashed) == first
    nf = db_copy.path / "index" / "exact" / "nf.npy"
    data = bytearray(nf.read_bytes())
    data[-1] ^= 1
    nf.write_bytes(bytes(data))
    with pytest.raises(GliomatchError, match="checksum mismatch"):
        get_strategy("exact", db_copy).ensure_ready()
