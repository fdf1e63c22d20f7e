import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gliomatch.database import (
    BuildConfig,
    Database,
    SamplingConfig,
    SizeFilter,
    build_database,
    verify,
)
from gliomatch.database.manifest import read_manifest, write_manifest
from gliomatch.errors import GliomatchError
from gliomatch.masks import decode, encode, masks_from_codes

CFG = BuildConfig(resolution=32, seed=7, shard_size=3)


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    return build_database(tmp_path_factory.mktemp("db") / "a", 30, CFG, workers=1)


def _same(db1, db2):
    pd.testing.assert_frame_equal(db1.params, db2.params)
    for i in range(len(db1)):
        assert np.array_equal(db1.codes(i), db2.codes(i))


def test_encoding_keeps_thresholds_exact(rng):
    u = rng.random(100_000).astype(np.float32)
    u[:6] = [0.2, np.nextafter(np.float32(0.2), 0), 0.6, np.nextafter(np.float32(0.6), 0), 0, 1]
    q = encode(u)
    flair, t1gd = masks_from_codes(q)
    assert np.array_equal(flair, u >= np.float32(0.2))
    assert np.array_equal(t1gd, u >= np.float32(0.6))
    assert np.abs(decode(q) - u).max() <= 1 / 250 + 1e-6


def test_build_counts_and_filter(tiny_db):
    db = tiny_db
    assert len(db) == 30
    p = db.params
    f = SizeFilter()
    assert (p.flair_cm3 >= f.flair_min_cm3).all() and (p.flair_cm3 <= f.flair_max_cm3).all()
    assert (p.t1gd_cm3 >= f.t1gd_min_cm3).all()
    assert p.dw.between(0.02, 1.5).all() and p.rho.between(0.002, 0.2).all()
    assert p.t_end.between(50, 1500).all()
    assert list(p.id) == list(range(30))
    # the stored masks are exactly those of the table's volumes
    vox = db.manifest["atlas"]["spacing_mm"] ** 3 / 1000
    for i in (0, 13, 29):
        flair, t1gd = db.masks(i)
        assert flair.sum() * vox == pytest.approx(p.flair_cm3[i])
        assert t1gd.sum() * vox == pytest.approx(p.t1gd_cm3[i])
        assert flair.shape == (32, 32, 32)
    assert verify(db)["ok"]


def test_density_matches_a_fresh_simulation(tiny_db):
    from gliomatch.atlas import mni152_atlas
    from gliomatch.solver import simulate

    row = tiny_db.params.iloc[5]
    sim = simulate(mni152_atlas(32), row.x, row.y, row.z, row.dw, row.rho, [row.t_end])
    assert np.array_equal(encode(sim.densities[0]), tiny_db.codes(5))


def test_determinism(tmp_path, tiny_db):
    again = build_database(tmp_path / "b", 30, CFG, workers=1)
    _same(tiny_db, again)
    # the same content has the same fingerprint, however long each shard took (every cache
    # keyed by it survives a rebuild)
    assert again.fingerprint == tiny_db.fingerprint
    assert again.manifest["shards"] == tiny_db.manifest["shards"]
    other = build_database(
        tmp_path / "c",
        30,
        BuildConfig(resolution=32, seed=8, shard_size=3),
        workers=1,
    )
    assert not np.allclose(other.params.dw, tiny_db.params.dw)


def test_growing_n_resumes(tmp_path, tiny_db):
    small = build_database(tmp_path / "g", 10, CFG, workers=1)
    assert len(small) == 10
    big = build_database(tmp_path / "g", 30, CFG, workers=1)
    _same(tiny_db, big)


def test_dask_equals_local(tmp_path, tiny_db):
    db = build_database(tmp_path / "d", 30, CFG, workers=2)
    _same(tiny_db, db)
    assert db.fingerprint == tiny_db.fingerprint


def test_a_database_of_the_old_shard_layout_gets_todays_fingerprint(tmp_path, tiny_db):
    """Shards written when shard.json held the build time (every rebuild then had another
    fingerprint) are brought to today's layout by resuming the build: the fingerprint of any
    build of the same seed."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_db.path, old)
    for d in (old / "shards").glob("s*"):
        stats = json.loads((d / "shard.json").read_text())
        (d / "timing.json").unlink()
        (d / "shard.json").write_text(json.dumps({**stats, "elapsed_s": 1.2345 + len(d.name)}))
    resumed = build_database(old, 30, CFG, workers=1)
    _same(tiny_db, resumed)
    assert resumed.fingerprint == tiny_db.fingerprint
    assert verify(resumed)["ok"]
    for d in (old / "shards").glob("s*"):
        assert "elapsed_s" not in json.loads((d / "shard.json").read_text())
        assert "elapsed_s" in json.loads((d / "timing.json").read_text())


def test_resume_after_kill(tmp_path):
    out = tmp_path / "k"
    # 120 tumors: ~7 shards at ~18 kept per shard, so a kill after 2 shards is mid-build
    whole = build_database(tmp_path / "whole", 120, CFG, workers=1)
    cmd = [
        sys.executable,
        "-m",
        "gliomatch.cli",
        "db",
        "build",
        "--out",
        str(out),
        "--n",
        "120",
        "--resolution",
        "32",
        "--seed",
        "7",
        "--shard-size",
        "3",
        "--workers",
        "1",
        "--json",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # kill it once a few shards are on disk, mid-build
    deadline = time.time() + 120
    while time.time() < deadline:
        shards = list((out / "shards").glob("s*")) if (out / "shards").exists() else []
        if len(shards) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the manifest records the build settings from the start; the database opens only once done
    assert read_manifest(out)["status"] == "building"
    assert not (out / "config.json").exists()
    with pytest.raises(GliomatchError, match="has not finished"):
        Database.open(out)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same(whole, Database.open(out))


def test_corrupt_shard_detected(tmp_path):
    db = build_database(tmp_path / "x", 8, CFG, workers=1)
    chunk = next(
        p
        for p in (db.path / "shards" / "s00000" / "densities.zarr").rglob("*")
        if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")
    )
    chunk.write_bytes(chunk.read_bytes()[:-7] + b"garbage")
    with pytest.raises(GliomatchError, match="s00000"):
        verify(Database.open(db.path))


def test_foreign_and_old_folders(tmp_path):
    with pytest.raises(GliomatchError, match="no such folder"):
        Database.open(tmp_path / "none")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("hello")
    with pytest.raises(GliomatchError, match="not a gliomatch database"):
        Database.open(tmp_path / "f")
    with pytest.raises(GliomatchError, match="not empty"):
        build_database(tmp_path / "f", 5, CFG, workers=1)
    (tmp_path / "f" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(GliomatchError, match="manifest"):
        Database.open(tmp_path / "f")
    (tmp_path / "f" / "manifest.json").write_text(
        json.dumps({"format": "gliomatch-tumor-db", "format_version": 0})
    )
    with pytest.raises(GliomatchError, match="version"):
        Database.open(tmp_path / "f")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "positive"),
        (dict(n=-3), "positive"),
        (dict(config=BuildConfig(resolution=32, seed=9)), "other settings"),
    ],
)
def test_bad_build_arguments(tiny_db, kwargs, message):
    args = dict(n=5, config=CFG)
    args.update(kwargs)
    with pytest.raises(GliomatchError, match=message):
        build_database(tiny_db.path, args["n"], args["config"], workers=1)


def test_manifest_is_the_one_record_of_build_settings(tmp_path):
    """A finished database keeps its settings only in the sealed manifest; an older database's
    config.json is migrated into it when a build resumes, and a mismatch is refused."""
    db = build_database(tmp_path / "db", 6, CFG, workers=1)
    assert not (db.path / "config.json").exists()
    assert db.manifest["status"] == "complete"
    assert db.manifest["build_config"] == CFG.to_dict()
    # an older gliomatch left config.json beside the manifest: migrated, not consulted twice
    (db.path / "config.json").write_text(json.dumps(CFG.to_dict()))
    build_database(db.path, 6, CFG, workers=1)
    assert not (db.path / "config.json").exists()
    # an older gliomatch's unfinished build (config.json, no manifest) resumes from config.json
    (db.path / "manifest.json").unlink()
    (db.path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(GliomatchError, match="unfinished build"):
        Database.open(db.path)
    other = BuildConfig(resolution=32, seed=11, shard_size=3)
    with pytest.raises(GliomatchError, match="seed differ"):
        build_database(db.path, 6, other, workers=1)
    again = build_database(db.path, 6, CFG, workers=1)
    assert again.manifest["shards"] == db.manifest["shards"]
    assert not (db.path / "config.json").exists()
    # editing the recorded settings breaks the manifest's seal
    m = read_manifest(db.path)
    m["build_config"]["seed"] = 99
    (db.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GliomatchError, match="checksum mismatch"):
        build_database(db.path, 6, CFG, workers=1)
    # a resealed edit is a different build: refused, not silently mixed
    write_manifest(db.path, {k: v for k, v in m.items() if k != "manifest_sha256"})
    with pytest.raises(GliomatchError, match="other settings"):
        build_database(db.path, 6, CFG, workers=1)


def test_time_limited_build_keeps_the_finished_prefix_and_resumes(tmp_path):
    # a tiny limit still gives a database: shards run until one tumor is kept
    one = build_database(tmp_path / "one", 50, CFG, workers=1, time_limit_s=1e-9)
    assert 0 < len(one) < 50  # the shards up to the first kept tumor
    db = build_database(tmp_path / "t", 10_000, CFG, workers=1, time_limit_s=2.0)
    assert 0 < len(db) < 10_000
    verify(db)
    grown = build_database(tmp_path / "t", len(db) + 4, CFG, workers=1)
    assert len(grown) == len(db) + 4
    assert grown.params.iloc[: len(db)].equals(db.params)


def test_bad_ranges():
    with pytest.raises(GliomatchError, match="empty"):
        SamplingConfig(dw=(1.0, 0.5))
    with pytest.raises(GliomatchError, match="empty"):
        SamplingConfig(t_end=(100, 100))
    with pytest.raises(GliomatchError, match="positive"):
        SamplingConfig(rho=(0.0, 0.1))
    with pytest.raises(GliomatchError, match="minimum"):
        SizeFilter(flair_min_cm3=10, flair_max_cm3=5)


def test_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_text("x")
        with pytest.raises(GliomatchError, match="not a folder"):
            build_database(target, 5, CFG, workers=1)
        with pytest.raises(GliomatchError, match="cannot create"):
            build_database(target / "sub", 5, CFG, workers=1)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(GliomatchError, match="cannot create|not writable"):
        build_database(ro / "db", 5, CFG, workers=1)


def test_database_api(tiny_db):
    batches = list(tiny_db.iter_batches(batch_size=7))
    assert [len(b[0]) for b in batches] == [7, 7, 7, 7, 2]
    assert np.array_equal(batches[1][1][0], tiny_db.codes(7))
    u = tiny_db.density(3)
    assert u.dtype == np.float32 and u.max() <= 1
    with pytest.raises(GliomatchError, match="out of range"):
        tiny_db.codes(30)
    with pytest.raises(GliomatchError, match="integer"):
        tiny_db.codes(1.5)


def test_database_is_the_only_reader_of_its_manifest(make_db):
    """Typed properties answer what other layers used to look up in the manifest."""
    import re
    from pathlib import Path

    import gliomatch
    from gliomatch.database import BuildConfig

    db = make_db(6, resolution=32, seed=9, indexes=())
    assert isinstance(db.build_config, BuildConfig) and db.build_config.seed == 9
    assert db.counts["tumors"] == len(db) == 6 and db.disk_bytes > 0 and db.build_seconds >= 0
    assert db.spacing_mm == pytest.approx(db.atlas().spacing)
    names = [r["name"] for r in db.shard_records]
    assert names == [f"s{i:05d}" for i in range(len(names))]
    assert db.recorded_keys() == []
    from gliomatch.search import get_strategy

    get_strategy("exact", db).ensure_ready()  # the explicit build step records its files
    assert db.recorded_keys() == ["exact"]
    root = Path(gliomatch.__file__).parent
    outside = [
        f"{p.relative_to(root)}:{n}"
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] != "database"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"manifest\[|\w\.manifest\b(?!\s+import)", line)
    ]
    assert not outside, outside
