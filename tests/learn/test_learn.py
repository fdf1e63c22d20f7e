import numpy as np
import pytest
import torch

from gliomatch.database import BuildConfig, build_database
from gliomatch.errors import GliomatchError
from gliomatch.learn.bihalf import BiHalf, bihalf
from gliomatch.learn.config import TrainConfig
from gliomatch.learn.models import MaskAutoencoder
from gliomatch.learn.train import encode_masks, load_model, masks_at, model_dir, train
from gliomatch.search import Query, get_strategy


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(24, seed=31)


@pytest.mark.parametrize("kind, latent", [("ae", 1024), ("vae", 8), ("vae", 1024), ("hash", 64)])
@pytest.mark.parametrize("res", [16, 32])
def test_shapes(kind, latent, res):
    m = MaskAutoencoder(kind, res, latent)
    x = torch.zeros(3, 1, res, res, res)
    logits, mu, logvar = m(x)
    assert logits.shape == x.shape and mu.shape == (3, latent)
    assert (logvar is not None) == (kind == "vae")
    m.eval()
    code = m.code(x[:1])
    assert code.shape == (1, latent)
    if kind == "hash":
        assert set(code.unique().tolist()) <= {-1.0, 1.0}
        assert "bihalf.threshold" in m.state_dict()


def test_bad_resolution():
    with pytest.raises(GliomatchError, match="resolution"):
        MaskAutoencoder("ae", 48)
    with pytest.raises(GliomatchError, match="kind"):
        MaskAutoencoder("gan", 32)


@pytest.mark.parametrize("n", [2, 6, 7])
def test_bihalf_balanced_and_straight_through(n):
    z = torch.randn(n, 16, requires_grad=True)
    b = bihalf(z)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    ones = (b > 0).sum(0)
    assert torch.all((ones == n // 2) | (ones == (n + 1) // 2))
    # the larger half of each column gets +1
    for j in range(16):
        assert b[torch.argmax(z[:, j]), j] == 1 and b[torch.argmin(z[:, j]), j] == -1
    g = torch.randn(n, 16)
    b.backward(g)
    assert torch.equal(z.grad, g)
    # the paper's quantization pull: + gamma * (z - b) / numel
    z2 = z.detach().clone().requires_grad_(True)
    b2 = bihalf(z2, gamma=6.0)
    assert torch.equal(b2, b)
    b2.backward(g)
    assert torch.allclose(z2.grad, g + 6.0 * (z - b).detach() / z.numel())
    assert BiHalf(4).gamma == 6.0  # the published setting is the default
    layer = BiHalf(2).eval()
    assert torch.equal(layer(torch.tensor([[0.3, -0.2]])), torch.tensor([[1.0, -1.0]]))
    # calibrated thresholds make offset latents balanced over a dataset at inference
    offset = torch.randn(101, 2) + 5.0
    layer.calibrate(offset)
    bits = layer(offset)
    assert torch.all((bits > 0).sum(0) == 51)


@pytest.mark.parametrize("kind", ["ae", "vae", "hash"])
def test_training_reduces_loss_and_reloads(db, kind):
    cfg = TrainConfig(
        kind=kind,
        latent=16,
        bits=16,
        epochs=6,
        input_resolution=16,
        n_train=16,
        n_val=4,
        batch=4,
        lr=3e-3,
        patience=50,
    )
    meta = train(db, cfg, "flair")
    import pandas as pd

    h = pd.read_csv(model_dir(db, cfg.name, "flair") / "history.csv")
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    assert 0 <= meta["recon_dice_val"] <= 1
    m1 = load_model(db, cfg.name, "flair")
    m2 = load_model(db, cfg.name, "flair")
    x = masks_at(db, [0, 1, 2], "flair", 16)
    assert np.array_equal(encode_masks(m1, x), encode_masks(m2, x))
    # the weights file is a plain state dict: loadable without running code
    sd = torch.load(model_dir(db, cfg.name, "flair") / "model.pt", weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    if kind == "hash":  # saved with the thresholds of *its* weights: training-set medians
        from gliomatch.learn.train import split_ids

        train_ids = split_ids(len(db), cfg.n_train, cfg.n_val, cfg.seed)[0]
        xt = torch.from_numpy(masks_at(db, train_ids, "flair", 16)).float().unsqueeze(1)
        with torch.no_grad():
            mu = m1.encode(xt)[0]
        assert torch.allclose(m1.bihalf.threshold, mu.median(dim=0).values)


def test_resume_training(db):
    cfg = TrainConfig(
        kind="ae", latent=8, epochs=2, input_resolution=16, n_train=8, n_val=4, batch=4, lr=1e-3
    )
    import pandas as pd

    train(db, cfg, "t1gd")
    first = pd.read_csv(model_dir(db, cfg.name, "t1gd") / "history.csv")
    cfg3 = TrainConfig(
        kind="ae", latent=8, epochs=3, input_resolution=16, n_train=8, n_val=4, batch=4, lr=1e-3
    )
    cfg3_meta = train(db, cfg3, "t1gd")
    assert cfg3_meta["history_epochs"] == 3
    # resumed from epoch 2 (more epochs, same settings): the first two epochs are kept as they were
    again = pd.read_csv(model_dir(db, cfg.name, "t1gd") / "history.csv")
    pd.testing.assert_frame_equal(again.iloc[:2], first)
    # other settings start afresh
    other = TrainConfig(
        kind="ae", latent=8, epochs=1, input_resolution=16, n_train=8, n_val=4, batch=4, lr=2e-3
    )
    assert train(db, other, "t1gd")["history_epochs"] == 1


def test_time_limit_stops_training_and_a_larger_one_resumes_it(db):
    """A training stops after the epoch that reaches its time limit (resumed epochs count),
    says so with its cost, and a larger limit continues the same training."""
    import pandas as pd

    kw = dict(kind="vae", latent=4, input_resolution=16, n_train=8, n_val=4, batch=4, lr=1e-3)
    first = train(db, TrainConfig(epochs=50, time_limit=1e-6, **kw), "t1gd")
    assert first["history_epochs"] == 1 and first["stopped"] == "time limit"
    assert first["train_seconds"] > 0 and first["load_seconds"] >= 0
    assert first["peak_rss_mb"] > 50  # the process' peak resident memory, torch loaded
    h1 = pd.read_csv(model_dir(db, "vae4", "t1gd") / "history.csv")
    # the epoch budget reached first; the time-limited epoch is kept, not repeated
    again = train(db, TrainConfig(epochs=3, time_limit=60, **kw), "t1gd")
    assert again["history_epochs"] == 3 and again["stopped"] == "epochs"
    h3 = pd.read_csv(model_dir(db, "vae4", "t1gd") / "history.csv")
    pd.testing.assert_frame_equal(h3.iloc[:1], h1)
    # a limit already spent: nothing more is trained
    spent = train(db, TrainConfig(epochs=10, time_limit=1e-6, **kw), "t1gd")
    assert spent["history_epochs"] == 3 and spent["stopped"] == "time limit"
    with pytest.raises(GliomatchError, match="time limit"):
        TrainConfig(time_limit=0)
    with pytest.raises(GliomatchError, match="time limit"):
        TrainConfig(time_limit=float("nan"))


def test_lr_schedule_survives_resume(db):
    """lr x 0.2 after ``lr_patience`` epochs without improvement, the schedule's state kept
    across an interruption (lr 1e-6: the validation loss is flat, so every epoch is a bad one)."""
    import pandas as pd

    kw = dict(kind="ae", latent=8, input_resolution=16, n_train=8, n_val=4, batch=4, lr=1e-6)
    train(db, TrainConfig(epochs=2, lr_patience=1, **kw), "flair")
    train(db, TrainConfig(epochs=5, lr_patience=1, **kw), "flair")
    h = pd.read_csv(model_dir(db, "ae8", "flair") / "history.csv")
    assert np.allclose(h.lr, [1e-6, 1e-6, 1e-6, 2e-7, 2e-7], rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def trained(db):
    out = {}
    for kind, latent in (("ae", 16), ("hash", 16)):
        for m in ("t1gd", "flair"):
            cfg = TrainConfig(
                kind=kind,
                latent=latent,
                bits=16,
                epochs=2,
                input_resolution=16,
                n_train=12,
                n_val=4,
                batch=4,
                lr=1e-3,
            )
            train(db, cfg, m)
        out[kind] = cfg.name
    return out


def test_evaluation_reports_a_learned_strategys_costs(db, trained, tmp_path):
    """`evaluate` gives a learned strategy its code index's size, its build (the database's
    encoding) time and the median time to encode one query; its re-ranked form holds the
    exact index as well."""
    from gliomatch.evaluation.harness import evaluate, synthetic_queries

    name = trained["ae"]
    s = evaluate(
        db, tmp_path, queries=synthetic_queries(db, 3), strategies=[name, f"{name}+rr5"],
        loop_check=0, log=lambda m: None,
    )  # fmt: skip
    rows = {r["strategy"]: r for r in s["table"]}
    codes = get_strategy(name, db).index_path
    assert rows[name]["index_bytes"] == sum(p.stat().st_size for p in codes.iterdir())
    assert rows[name]["build_seconds"] > 0 and rows[name]["encode_median_s"] > 0
    exact = get_strategy("exact", db).index_info()["index_bytes"]
    assert rows[f"{name}+rr5"]["index_bytes"] == rows[name]["index_bytes"] + exact
    assert rows[f"{name}+rr5"]["encode_median_s"] > 0
    # the papers' table shows the query's encoding in ms (the last column)
    line = next(x for x in (tmp_path / "table_papers.md").read_text().splitlines()
                if x.startswith(f"| {name} |"))  # fmt: skip
    assert line.split("|")[-2].strip() == f"{1000 * rows[name]['encode_median_s']:.1f}"


def test_faiss_equals_bruteforce(db, trained):
    from gliomatch.search.learned import LearnedStrategy

    for kind, name in trained.items():
        s = LearnedStrategy(db, model=name).ensure_ready()
        q = Query.from_codes(db.codes(5))
        d = s.distances([q])[0]
        codes = {m: np.load(s.index_path / f"codes_{m}.npy") for m in ("t1gd", "flair")}
        qc = s.encode_queries([q])
        if kind == "hash":
            assert len(np.unique(codes["flair"] > 0, axis=0)) > 1  # calibrated: codes differ
            ref = sum(((codes[m] > 0) != (qc[m] > 0)).sum(1) for m in codes)
        else:
            ref = sum(np.sqrt(((codes[m] - qc[m]) ** 2).sum(1)) for m in codes)
        assert np.allclose(d, ref, rtol=1e-4, atol=1e-3)
        assert s.metric == "distance"
        scores, ids = s.search_one(q, 5)
        order = np.lexsort((np.arange(len(ref)), ref))[:5]
        assert np.array_equal(ids, order) or np.allclose(np.sort(ref[ids]), np.sort(ref[order]))
        assert np.allclose(scores, d[ids]) and np.all(np.diff(scores) >= 0)  # distances, rising
        # a batch answers (nq, k), row by row the same as one query at a time
        batch = [Query.from_codes(db.codes(i)) for i in (5, 2, 7)]
        b_scores, b_ids = s.search(batch, 4)
        assert b_ids.shape == b_scores.shape == (3, 4)
        for row, qq in enumerate(batch):
            one_scores, one_ids = s.search_one(qq, 4)
            assert np.array_equal(b_ids[row], one_ids)
            assert np.allclose(b_scores[row], one_scores, atol=1e-5)


def test_rerank_is_exact_among_candidates(db, trained):
    exact = get_strategy("exact", db)
    q = Query.from_codes(db.codes(9))
    rr = get_strategy(f"{trained['ae']}+rr{len(db)}", db).ensure_ready()  # the codes, once
    s1, i1 = rr.search_one(q, 5)
    s2, i2 = exact.search_one(q, 5)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)  # M = n: the exact answer


def test_untrained_and_foreign_models(db, trained, tmp_path):
    import shutil

    with pytest.raises(GliomatchError, match="gliomatch train"):
        get_strategy("vae8", db).ensure_ready()
    other = build_database(tmp_path / "o", 6, BuildConfig(resolution=32, seed=77), workers=1)
    src = model_dir(db, trained["ae"], "flair")  # the trained fixture made it: always checked
    assert (src / "model.pt").is_file()
    shutil.copytree(src, model_dir(other, trained["ae"], "flair"))
    with pytest.raises(GliomatchError, match="another database"):
        load_model(other, trained["ae"], "flair")


def test_bad_train_config():
    with pytest.raises(GliomatchError, match="kind"):
        TrainConfig(kind="gan")
    with pytest.raises(GliomatchError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(GliomatchError, match="multiple of 8"):
        TrainConfig(kind="hash", bits=12)
    with pytest.raises(GliomatchError, match="gamma"):
        TrainConfig(kind="hash", gamma=-1)
    with pytest.raises(GliomatchError, match="lr_patience"):
        TrainConfig(lr_patience=-2)


def test_cli_train_hash_options(db):
    """`gliomatch train hash --gamma/--lr-patience` reach the training, bad values a clear error."""
    import json

    from typer.testing import CliRunner

    from gliomatch.cli import app

    runner = CliRunner()
    args = ["train", "hash", "--db", str(db.path), "--epochs", "1", "--input-resolution", "16"]
    args += [
        "--n-train",
        "8",
        "--n-val",
        "4",
        "--batch",
        "4",
        "--bits",
        "16",
        "--modality",
        "flair",
    ]
    r = runner.invoke(app, [*args, "--gamma", "2.5", "--lr-patience", "3", "--json"])
    assert r.exit_code == 0, r.output
    settings = json.loads(r.output)["flair"]["train"]
    assert settings["gamma"] == 2.5 and settings["lr_patience"] == 3
    r = runner.invoke(app, [*args, "--json"])
    assert json.loads(r.output)["flair"]["train"]["gamma"] == 6.0  # the paper's default
    r = runner.invoke(app, [*args, "--gamma", "-1"])
    assert r.exit_code != 0 and "gamma and lr_patience must be >= 0" in r.output


def test_training_config_takes_defaults_once_and_refuses_misplaced_options():
    from dataclasses import fields

    from gliomatch.learn.config import MultitaskConfig, default, training_config

    # left-out (None) options take the dataclass defaults, per kind
    assert training_config("ae", latent=None) == TrainConfig(kind="ae")
    assert training_config("multitask").patience == MultitaskConfig().patience == 10
    assert training_config("vae", epochs=3).lr == 3e-5
    assert training_config("hash", bits=16, gamma=0.0).gamma == 0.0
    for f in fields(TrainConfig):
        assert default("ae", f.name) == f.default
    # an option that does not apply to the kind is an error, not silently dropped
    for kind, option in [
        ("ae", "bits"),
        ("hash", "latent"),
        ("ae", "gamma"),
        ("multitask", "bits"),
    ]:
        with pytest.raises(
            GliomatchError,
            match=f"--{option}: not a setting of a{'n' if kind[0] in 'aeiou' else ''} {kind} model",
        ):
            training_config(kind, **{option: 8})
    with pytest.raises(GliomatchError, match="--lambda-seg: not a setting of a hash model"):
        training_config("hash", lambda_seg=1.0)
    with pytest.raises(GliomatchError, match="ae, vae, hash or multitask"):
        training_config("gan")


def test_cli_train_help_shows_the_configuration_defaults():
    from typer.testing import CliRunner

    from gliomatch.cli import app

    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    assert f"default {TrainConfig().latent}" in r.output
    assert f"default {TrainConfig().gamma}" in r.output
    r = CliRunner().invoke(app, ["train", "ae", "--db", "nowhere", "--bits", "16"])
    assert r.exit_code == 1 and "--bits: not a setting of an ae model" in r.output


def test_training_masks_come_from_the_cache_when_built(make_db):
    """Training reads its tumors from the database's mask cache once it exists: the same
    masks as reading each density."""
    from gliomatch.database.downsampled import MaskCache, downsampled_masks, mask_cache

    db = make_db(8, resolution=32, seed=17, indexes=())
    ids = [6, 1, 3]
    before = masks_at(db, ids, "t1gd", 16)
    assert not MaskCache(db, 16).is_built()  # training alone does not build it
    mask_cache(db, 16)
    assert np.array_equal(masks_at(db, ids, "t1gd", 16), before)
    assert np.array_equal(before, downsampled_masks(db, ids, "t1gd", 16))
