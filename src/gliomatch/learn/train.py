"""Training of the mask autoencoders (one per modality), resumable, with loss curves.

Models live in the database's index folder, ``index/models/<name>-<modality>/``:
``model.pt`` (the best weights, a plain state dict: loadable with ``weights_only=True``),
``config.json`` (architecture, training settings, the database fingerprint), ``history.csv``
and ``loss.png``, and ``checkpoint.pt`` (last epoch, optimizer state) for resuming.

Defaults are the published settings (1,500 training and 150 validation tumors, Adam, lr 1e-5 --
3e-5 for the VAE --, batch 2, 120 epochs, VAE beta = 0.001) at a CPU-friendly input resolution
(masks downsampled with order-0 zoom; ``--input-resolution 128`` trains at full resolution).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path
from gliomatch.learn.config import MODALITIES, TrainConfig
from gliomatch.learn.models import MaskAutoencoder, build_model
from gliomatch.learn.trainer import fit, load_state, require_device
from gliomatch.masks import dice as dice_np
from gliomatch.resources import peak_rss_bytes

__all__ = [
    "cost",
    "encode_masks",
    "finish",
    "load_model",
    "load_weights",
    "model_dir",
    "split_ids",
    "train",
    "write_curves",
]


def read_json(path: Path, what: str):
    """JSON from ``path``; one clear error when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GliomatchError(f"{what} {path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GliomatchError(f"{what} {path}: not valid JSON ({exc})") from exc


def record_model(db, folder: Path) -> None:
    """List a finished model's weights and settings with their checksums in the manifest."""
    db.record_files(f"models/{folder.name}", folder, names=["model.pt", "config.json"])


def split_ids(n: int, n_train: int, n_val: int, seed: int):
    """Training, validation and held-out ids: a seeded permutation of the database."""
    if n < 4:
        raise GliomatchError(f"database has {n} tumors; training needs at least 4")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n_val, max(1, n // 10))
    n_train = min(n_train, n - n_val)
    return (
        np.sort(order[:n_train]),
        np.sort(order[n_train : n_train + n_val]),
        np.sort(order[n_train + n_val :]),
    )


def model_dir(db, name: str, modality: str) -> Path:
    return db.index_dir / "models" / f"{name}-{modality}"


def masks_at(db, ids, modality: str, resolution: int) -> np.ndarray:
    """uint8 masks (n, R, R, R) of one modality, downsampled (order 0) to ``resolution``: from
    the database's mask cache when it is built (the same masks), else read tumor by tumor."""
    from gliomatch.database.downsampled import MaskCache, downsampled_masks

    if resolution < db.resolution and (cache := MaskCache(db, resolution)).is_built():
        return cache.ensure().masks(ids, modality)
    return downsampled_masks(db, ids, modality, resolution)


def _loss(model, x, cfg, dice):
    logits, mu, logvar = model(x)
    loss = dice(logits, x)
    if cfg.kind == "vae":
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        loss = loss + cfg.beta * kl
    return loss


def recon_dice(model, masks: np.ndarray, device="cpu", batch=8) -> float:
    """Mean Dice of the thresholded reconstructions (the papers' Fig. 12/14)."""

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(masks), batch):
            x = torch.from_numpy(masks[s : s + batch]).float().unsqueeze(1).to(device)
            logits, _, _ = model(x)
            rec = (logits > 0).cpu().numpy()[:, 0]
            out += [
                dice_np(r, m.astype(bool)) for r, m in zip(rec, masks[s : s + batch], strict=True)
            ]
    return float(np.mean(out))


def train(db, cfg: TrainConfig, modality: str, *, progress=None, resume: bool = True) -> dict:
    """Train one modality's model; returns its summary (also written to config.json)."""
    from monai.losses import DiceLoss

    if modality not in MODALITIES:
        raise GliomatchError(f"modality must be t1gd or flair, got {modality!r}")
    require_device(cfg.device)
    torch.manual_seed(cfg.seed)
    folder = model_dir(db, cfg.name, modality)
    folder.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, _ = split_ids(len(db), cfg.n_train, cfg.n_val, cfg.seed)
    t_load = time.perf_counter()
    x_train = masks_at(db, train_ids, modality, cfg.input_resolution)
    x_val = masks_at(db, val_ids, modality, cfg.input_resolution)
    load_s = time.perf_counter() - t_load
    model = MaskAutoencoder(cfg.kind, cfg.input_resolution, cfg.code_size, gamma=cfg.gamma).to(
        cfg.device
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.2, patience=cfg.lr_patience)
        if cfg.lr_patience
        else None
    )
    dice = DiceLoss(sigmoid=True)
    meta = {
        "train": asdict(cfg),
        "model": model.config,
        "db": db.fingerprint,
        "modality": modality,
        "name": cfg.name,
    }

    def train_epoch(rng):
        perm = rng.permutation(len(x_train))
        losses = []
        for s in range(0, len(perm), cfg.batch):
            idx = perm[s : s + cfg.batch]
            if cfg.kind == "hash" and len(idx) < 2:
                continue  # bi-half balances bits over a batch
            x = torch.from_numpy(x_train[idx]).float().unsqueeze(1).to(cfg.device)
            loss = _loss(model, x, cfg, dice)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return {"loss": float(np.mean(losses))}

    def validate():
        if cfg.kind == "hash":  # validate (and save) with the thresholds inference will use
            _calibrate(model, x_train, cfg.device)
        with torch.no_grad():
            vl = []
            for s in range(0, len(x_val), 8):
                x = torch.from_numpy(x_val[s : s + 8]).float().unsqueeze(1).to(cfg.device)
                vl.append(float(_loss(model, x, cfg, dice)) * len(x))
        return {"loss": sum(vl) / len(x_val)}

    fitted = fit(
        model,
        opt,
        folder=folder,
        meta=meta,
        epochs=cfg.epochs,
        patience=cfg.patience,
        time_limit_s=None if cfg.time_limit is None else 60 * cfg.time_limit,
        rng_seed=cfg.seed + 1,
        train_epoch=train_epoch,
        validate=validate,
        monitor="loss",
        device=cfg.device,
        sched=sched,
        record_lr=True,
        resume=resume,
        progress=progress,
        label=f"{cfg.name} {modality}",
    )
    best_model = load_weights(db, folder, meta, build_model(meta["model"]), verify=False)
    return finish(
        db, folder, meta, fitted, load_s,
        recon_dice_val=recon_dice(best_model, x_val),
        recon_dice_train_sample=recon_dice(best_model, x_train[:150]),
    )  # fmt: skip


def cost(history: list[dict], stopped: str, load_s: float) -> dict:
    """What a training cost: its epochs' seconds (resumed ones included), the seconds this run
    spent reading its tumors, why it stopped, and the process' peak resident memory (one
    model per ``gliomatch train`` process: the model's own peak)."""
    return {
        "train_seconds": float(sum(h["seconds"] for h in history)),
        "load_seconds": float(load_s),
        "stopped": stopped,
        "peak_rss_mb": peak_rss_bytes() / 1e6,
    }


def finish(db, folder: Path, meta: dict, fitted: tuple, load_s: float, **figures) -> dict:
    """A trained model's record, shared by every trainer: the curves (history.csv,
    loss.png), the fit's outcome (``fitted``: :func:`gliomatch.learn.trainer.fit`'s best
    validation loss, history and why it stopped), its :func:`cost` and ``figures`` into
    ``config.json``, and the model listed in the manifest. Returns ``meta``."""
    best, history, stopped = fitted
    write_curves(folder, history)
    meta["history_epochs"] = len(history)
    meta["best_val_loss"] = best
    meta.update(cost(history, stopped, load_s))
    meta.update(figures)
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    record_model(db, folder)
    return meta


def _calibrate(model: MaskAutoencoder, x_train: np.ndarray, device: str) -> None:
    """Set a hash model's per-bit thresholds to the training-set medians of its latent.

    Training balances bits only within a batch (bi-half); validation and search encode single
    tumors, so the saved model must carry the dataset-level thresholds of *its* weights --
    validating with stale thresholds made early stopping keep an early, poor epoch."""
    with torch.no_grad():
        mu = torch.cat(
            [
                model.encode(torch.from_numpy(x_train[s : s + 16]).float().unsqueeze(1).to(device))[
                    0
                ]
                for s in range(0, len(x_train), 16)
            ]
        )
    model.bihalf.calibrate(mu)


def write_curves(folder: Path, history: list[dict]) -> None:
    """history.csv and loss.png (every ``train_*``/``val_*`` column against the epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(folder / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    parts = sorted({k.split("_", 1)[1] for k in history[0] if k.startswith("train_")})
    fig, axes = plt.subplots(1, len(parts), figsize=(4 * len(parts), 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, part in zip(axes[0], parts, strict=True):
        ax.plot(epochs, [h[f"train_{part}"] for h in history], label="train")
        ax.plot(epochs, [h[f"val_{part}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(f"{folder.name}: {part}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(folder / "loss.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def load_model(db, name: str, modality: str) -> MaskAutoencoder:
    """A trained model of ``db`` (weights only: a foreign file cannot run code)."""
    folder = model_dir(db, name, modality)
    cfg_path, weights = folder / "config.json", folder / "model.pt"
    if not weights.is_file():
        raise GliomatchError(
            f"no trained {name} model for {modality} in {folder.parent}; run "
            f"`gliomatch train {name.rstrip('0123456789')} --db {db.path}` first"
        )
    if cfg_path.is_file():
        meta = read_json(cfg_path, "model settings")
        verify = True
    else:  # training still running: the checkpoint holds the configuration
        state = load_state(folder / "checkpoint.pt", "training checkpoint")
        meta = json.loads(state["meta_json"])
        verify = False
    return load_weights(db, folder, meta, build_model(meta["model"]), verify=verify)


def load_weights(
    db, folder: Path, meta: dict, model: torch.nn.Module, *, verify: bool = True
) -> torch.nn.Module:
    """``folder/model.pt`` into ``model`` (in eval mode), after checking that it was trained on
    ``db`` and (``verify``) that its files match the checksums in the database manifest; a
    plain state dict read with ``weights_only=True``, so a foreign file cannot run code."""
    if not isinstance(meta, dict) or meta.get("db") != db.fingerprint:
        raise GliomatchError(
            f"model {folder} was trained on another database (fingerprint {meta.get('db')}, "
            f"this one is {db.fingerprint}); retrain it for this database"
        )
    if verify:
        db.check_files(f"models/{folder.name}", folder, complete=False)
    weights = folder / "model.pt"
    state = load_state(weights)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GliomatchError(
            f"model {weights}: unreadable or incompatible with this gliomatch ({exc}); retrain it"
        ) from exc
    model.eval()
    return model


def encode_masks(model: MaskAutoencoder, masks: np.ndarray, batch: int = 16) -> np.ndarray:
    """Codes (n, latent) float32 of uint8/bool masks (n, R, R, R) at the model's resolution."""
    out = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(masks), batch):
            x = torch.from_numpy(np.asarray(masks[s : s + batch], dtype=np.float32)).unsqueeze(1)
            out.append(model.code(x).cpu().numpy())
    return np.concatenate(out).astype(np.float32)
