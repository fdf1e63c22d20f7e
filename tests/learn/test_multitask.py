import json

import numpy as np
import pandas as pd
import pytest
import torch

from gliomatch.errors import GliomatchError
from gliomatch.learn.config import MultitaskConfig, multitask_name, parse_tasks
from gliomatch.learn.labels import REGIONS, TASKS, linear_size_mm, seed_region, task_labels
from gliomatch.learn.multitask import (
    MultitaskNet,
    embed_masks,
    load_multitask,
    train_multitask,
    tumor_arrays,
)
from gliomatch.learn.roi import RoIMaxPool3d, box_cells, distort_boxes


def test_roi_pool_fixed_size_and_max_over_box():
    torch.manual_seed(0)
    feats = torch.randn(3, 5, 8, 8, 8)
    boxes = np.array(
        [
            [0, 0, 0, 32, 32, 32],  # whole grid
            [4, 8, 12, 6, 9, 13],  # inside one cell
            [-10, 30, 5, -2, 50, 40],  # outside the grid on two axes
        ],
        dtype=float,
    )
    out = RoIMaxPool3d(stride=4)(feats, boxes)
    assert out.shape == (3, 5)
    cells = box_cells(boxes, 4, 8)
    for n, (i0, j0, k0, i1, j1, k1) in enumerate(cells):
        assert i1 > i0 and j1 > j0 and k1 > k0
        want = feats[n, :, i0:i1, j0:j1, k0:k1].amax(dim=(1, 2, 3))
        assert torch.equal(out[n], want)
    assert torch.equal(out[0], feats[0].amax(dim=(1, 2, 3)))
    two = RoIMaxPool3d(stride=4, output_size=2)(feats, boxes)
    assert two.shape == (3, 5 * 8)


def test_box_distortion_follows_stated_distributions():
    rng = np.random.default_rng(0)
    n = 20000
    lo = rng.uniform(0, 50, (n, 3))
    size = rng.uniform(5, 40, (n, 3))
    boxes = np.concatenate([lo, lo + size], axis=1)
    new = distort_boxes(boxes, np.random.default_rng(1))
    new_size = new[:, 3:] - new[:, :3]
    log_ratio = np.log2(new_size / size)
    shift = ((new[:, :3] + new[:, 3:]) / 2 - (lo + size / 2)) / size
    assert abs(log_ratio.mean()) < 0.01 and abs(log_ratio.std() - 1 / 3) < 0.01
    assert abs(shift.mean()) < 0.003 and abs(shift.std() - 0.1) < 0.003
    # independent per axis
    assert abs(np.corrcoef(log_ratio[:, 0], log_ratio[:, 1])[0, 1]) < 0.03


def test_labels():
    assert REGIONS[seed_region(-40, 30, 30)] == "frontal"
    assert REGIONS[seed_region(40, -50, 40)] == "parietal"
    assert REGIONS[seed_region(20, -85, 10)] == "occipital"
    assert REGIONS[seed_region(-50, -20, -15)] == "temporal"
    assert REGIONS[seed_region(15, -5, 5)] == "deep"
    assert REGIONS[seed_region(10, -60, -35)] == "infratentorial"
    assert linear_size_mm(4 / 3 * np.pi) == pytest.approx(20.0)  # radius 1 cm
    rng = np.random.default_rng(0)
    n = 300
    params = pd.DataFrame(
        {
            "x_mm": rng.uniform(-60, 60, n),
            "y_mm": rng.uniform(-90, 60, n),
            "z_mm": rng.uniform(-40, 70, n),
            "dw": rng.uniform(0.02, 1.5, n),
            "rho": rng.uniform(0.002, 0.2, n),
            "t_end": rng.uniform(50, 1500, n),
            "flair_cm3": rng.uniform(5, 300, n),
        }
    )
    labels, edges = task_labels(params)
    assert set(TASKS) <= set(labels.columns)
    for t in ("size", "infiltration", "growth"):
        assert np.bincount(labels[t]).tolist() == [100, 100, 100]
    assert (labels.hemisphere == (params.x_mm >= 0)).all()
    again, _ = task_labels(params.iloc[:10], edges)  # held-out rows with the database's edges
    pd.testing.assert_frame_equal(again, labels.iloc[:10])
    with pytest.raises(GliomatchError, match="lacks columns"):
        task_labels(params.drop(columns="rho"))


def test_task_sets_and_names():
    assert parse_tasks("all") == tuple(TASKS)
    assert parse_tasks("seg") == ()
    assert parse_tasks("size,hemisphere") == ("hemisphere", "size")
    assert multitask_name(tuple(TASKS), 1.0) == "multitask"
    assert multitask_name(("size",), 0.0) == "multitask-size-noseg"
    assert multitask_name((), 1.0) == "multitask-seg"
    with pytest.raises(GliomatchError, match="unknown task"):
        parse_tasks("colour")
    with pytest.raises(GliomatchError, match="nothing to train"):
        MultitaskConfig(tasks="seg", lambda_seg=0)
    with pytest.raises(GliomatchError, match="multiple of 4"):
        MultitaskNet(resolution=30)


def test_model_shapes():
    net = MultitaskNet(resolution=16, blocks=1)
    x = torch.zeros(2, 2, 16, 16, 16)
    seg, emb, logits = net(x, np.array([[2, 2, 2, 10, 10, 10], [0, 0, 0, 3, 3, 3.0]]))
    assert seg.shape == (2, 16, 16, 16) and emb.shape == (2, 64)
    assert {t: v.shape[1] for t, v in logits.items()} == {t: len(c) for t, c in TASKS.items()}


@pytest.fixture(scope="module")
def trained(make_db):
    db = make_db(30, resolution=32, seed=4)
    cfg = MultitaskConfig(
        epochs=6, batch=4, n_train=20, n_val=4, input_resolution=16, blocks=1, patience=50
    )
    return db, cfg, train_multitask(db, cfg)


def test_training_reduces_each_loss(trained):
    db, cfg, meta = trained
    hist = pd.read_csv(db.index_dir / "models" / "multitask" / "history.csv")
    for part in ["total", "seg", *TASKS]:
        col = hist[f"train_{part}"]
        assert col.iloc[-1] < col.iloc[0], part
    assert meta["history_epochs"] == 6 and meta["stopped"] == "epochs"
    assert meta["train_seconds"] > 0 and meta["peak_rss_mb"] > 0
    folder = db.index_dir / "models" / "multitask"
    assert (folder / "loss.png").is_file() and (folder / "split.npz").is_file()


def test_reload_embeds_identically_and_search(trained):
    from gliomatch.search import Query, get_strategy

    db, cfg, _ = trained
    model, meta = load_multitask(db, "multitask")
    assert meta["db"] == db.fingerprint
    masks, _, boxes = tumor_arrays(db, [0, 1, 2], 16, density=False)
    a = embed_masks(model, masks, boxes)
    b = embed_masks(load_multitask(db, "multitask")[0], masks, boxes)
    assert a.shape == (3, 64) and np.array_equal(a, b)
    # weights load without executing code
    state = torch.load(
        db.index_dir / "models" / "multitask" / "model.pt", weights_only=True, map_location="cpu"
    )
    assert "stem.0.weight" in state

    s = get_strategy("multitask", db)
    with pytest.raises(GliomatchError, match="multitask index .* is not built"):
        s.search_one(Query.from_codes(db.codes(5)), k=3)  # searching never builds
    s.ensure_ready()  # the explicit step: every tumor's embedding
    q = Query.from_codes(db.codes(5))
    scores, ids = s.search_one(q, k=3)
    assert len(ids) == 3 and np.all(np.diff(scores) >= 0) and s.metric == "distance"
    assert scores[0] == pytest.approx(0.0, abs=1e-3)  # its own embedding
    # the query path embeds exactly as the database path
    emb = np.load(db.index_dir / "multitask" / "embeddings.npy")
    np.testing.assert_allclose(s.embed_queries([q])[0], emb[5], atol=1e-5)
    # re-ranking all candidates = exact search
    e_scores, e_ids = get_strategy("exact", db).search_one(q, k=5)
    r_scores, r_ids = get_strategy(f"multitask+rr{len(db)}", db).search_one(q, k=5)
    assert np.array_equal(e_ids, r_ids)


def test_resume_continues_training(trained):
    db, cfg, _ = trained
    more = MultitaskConfig(
        epochs=7, batch=4, n_train=20, n_val=4, input_resolution=16, blocks=1, patience=50
    )
    before = pd.read_csv(db.index_dir / "models" / "multitask" / "history.csv")
    meta = train_multitask(db, more)  # one more epoch: continues, does not start again
    hist = pd.read_csv(db.index_dir / "models" / "multitask" / "history.csv")
    assert meta["history_epochs"] == 7 and hist.epoch.tolist() == list(range(1, 8))
    pd.testing.assert_frame_equal(hist.iloc[:6], before)
    # a time limit the 7 epochs already exceed: resumes the same training, adds nothing
    limited = MultitaskConfig(
        epochs=20, batch=4, n_train=20, n_val=4, input_resolution=16, blocks=1, patience=50,
        time_limit=1e-6,
    )  # fmt: skip
    meta = train_multitask(db, limited)
    assert meta["history_epochs"] == 7 and meta["stopped"] == "time limit"


def test_errors(make_db, trained):
    from gliomatch.search import Query, get_strategy

    db, _, _ = trained
    other = make_db(6, resolution=32, seed=9)
    with pytest.raises(GliomatchError, match="no trained multitask"):
        get_strategy("multitask", other).search_one(Query.from_codes(other.codes(0)), k=1)
    # a model folder copied from another database is refused
    import shutil

    dst = other.index_dir / "models" / "multitask"
    shutil.copytree(db.index_dir / "models" / "multitask", dst)
    with pytest.raises(GliomatchError, match="another database"):
        load_multitask(other, "multitask")
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["name"] == "multitask"


def test_validation_outputs(trained, tmp_path):
    from gliomatch.evaluation.embedding import knn_predict, validate_embeddings

    # majority vote with the nearest breaking ties
    nb = np.array([[0, 1, 2, 3]])
    assert knn_predict(nb, np.array([1, 0, 0, 1]), 1, 2)[0] == 1
    assert knn_predict(nb, np.array([1, 0, 0, 1]), 3, 2)[0] == 0
    assert knn_predict(nb, np.array([1, 0, 0, 1]), 4, 2)[0] == 1  # tie: nearest is class 1
    db, _, _ = trained
    s = validate_embeddings(db, tmp_path, n_test=10, max_k=5, report_k=3)
    for f in ("knn.csv", "knn.png", "task_sets.md", "robustness.md", "tsne.png"):
        assert (tmp_path / f).is_file(), f
    knn = pd.read_csv(tmp_path / "knn.csv")
    assert set(knn.boxes) == {"exact", "distorted"}
    acc = knn[knn.task != "size_rmse_mm"].value
    assert acc.between(0, 1).all()
    assert s["models"]["multitask"]["n_test"] == len(db) - 20 - 3  # all held-out tumors
    assert (tmp_path / "task_sets.md").read_text().count("| multitask |") == 1


def test_cli_train_evaluate_and_bench(make_db, tmp_path):
    from typer.testing import CliRunner

    from gliomatch.cli import app

    runner = CliRunner()
    db = make_db(16, resolution=32, seed=6)
    args = ["--db", str(db.path), "--epochs", "1", "--input-resolution", "16", "--n-train", "10"]
    r = runner.invoke(app, ["train", "multitask", *args, "--tasks", "size", "--lambda-seg", "0"])
    assert r.exit_code == 0, r.output
    assert "multitask-size-noseg" in r.output
    r = runner.invoke(app, ["train", "multitask", *args, "--tasks", "colour"])
    assert r.exit_code != 0 and "unknown task" in r.output
    r = runner.invoke(app, ["train", "multitsak", *args])
    assert r.exit_code != 0 and "ae, vae, hash or multitask" in r.output
    out = tmp_path / "ev"
    r = runner.invoke(
        app,
        ["evaluate", "--db", str(db.path), "--out", str(out), "--synthetic", "0", "--multitask"],
    )
    assert r.exit_code == 0, r.output
    assert "multitask-size-noseg" in (out / "task_sets.md").read_text()
    r = runner.invoke(
        app,
        [
            "bench",
            "search",
            "--db",
            str(db.path),
            "--queries",
            "2",
            "--json",
            "--strategies",
            "exact,multitask-size-noseg",
            "--rerank",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "multitask-size-noseg+rr3" in r.output and "exact+rr3" not in r.output
