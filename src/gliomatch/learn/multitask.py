"""A multitask-learned tumor embedding with RoI max pooling.

After Sun et al., "Brain Tumor Image Retrieval via Multitask Learning" (arXiv:1810.09369): a
3-D residual network is trained on several tasks at once -- a segmentation head and
classification heads for heterogeneous labels -- and the classification heads read a
**RoI max pooling** of the shared features over the tumor's bounding box. Those pooled features
(64 channels) are a fixed-size embedding in which near tumors share location, size and growth
regime; it is searched with FAISS like the other learned codes.

Architecture (``resolution`` R, a multiple of 4):

* input: 2 channels, the FLAIR (u >= 0.2) and T1Gd (u >= 0.6) masks at R^3 (order-0 zoom),
  optionally the atlas T1 as a third channel;
* backbone: two convolutions (3^3 at R, then 4^3 with stride 4: down-sampling by 4 near the
  input), ``blocks`` MONAI residual blocks with 64 channels at (R/4)^3;
* segmentation head: transposed convolution up-sampling by 4, convolution to one channel, the
  logits of the **cell density** u (binary cross-entropy against the soft density: the masks
  are the input, so the head is asked for what they do not show -- the infiltration tail);
* RoI max pooling of the backbone features over the FLAIR bounding box -> 64-D embedding;
  one small MLP head per task of :data:`~gliomatch.learn.labels.TASKS`.

Loss = lambda_s * BCE(density) + sum_p lambda_p * CE_p (paper: lambda_s = 1, lambda_p = 1e-3;
with Adam the heads still learn at full speed, the small weight only limits how much the
classification pulls on the shared features). Training jitters the boxes with the distortion of
the paper's robustness test (:func:`distort_boxes`) unless ``box_jitter=False``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path
from gliomatch.learn.config import TASK_SETS, MultitaskConfig
from gliomatch.learn.labels import TASKS, task_labels
from gliomatch.learn.roi import RoIMaxPool3d, distort_boxes
from gliomatch.learn.train import (
    finish,
    load_weights,
    read_json,
    split_ids,
)
from gliomatch.learn.trainer import fit, require_device
from gliomatch.masks import decode, downsample, mask_bbox, masks_from_codes

__all__ = [
    "MultitaskNet",
    "embed_masks",
    "load_multitask",
    "model_atlas",
    "multitask_dir",
    "query_arrays",
    "tumor_arrays",
    "train_multitask",
    "tumor_boxes",
]

STRIDE = 4
# ------------------------------------------------------------------------------------ model


class MultitaskNet(nn.Module):
    def __init__(
        self,
        tasks=TASK_SETS["all"],
        resolution: int = 32,
        in_channels: int = 2,
        features: int = 64,
        blocks: int = 2,
    ):
        super().__init__()
        from monai.networks.blocks import UnetResBlock

        if resolution % STRIDE or resolution < 2 * STRIDE:
            raise GliomatchError(
                f"input resolution must be a multiple of 4 (>= 8), got {resolution}"
            )
        self.tasks, self.resolution = tuple(tasks), resolution
        self.config = dict(
            tasks=list(self.tasks),
            resolution=resolution,
            in_channels=in_channels,
            features=features,
            blocks=blocks,
        )
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, 16, 3, padding=1),
            nn.InstanceNorm3d(16),
            nn.LeakyReLU(0.01),
            nn.Conv3d(16, features, STRIDE, stride=STRIDE),
            nn.LeakyReLU(0.01),
        )
        self.body = nn.Sequential(
            *[
                UnetResBlock(3, features, features, 3, 1, norm_name="instance")
                for _ in range(blocks)
            ]
        )
        self.seg = nn.Sequential(
            nn.ConvTranspose3d(features, 16, STRIDE, stride=STRIDE),
            nn.LeakyReLU(0.01),
            nn.Conv3d(16, 1, 3, padding=1),
        )
        self.roi = RoIMaxPool3d(STRIDE)
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, len(TASKS[t])))
                for t in self.tasks
            }
        )

    def forward(self, x: torch.Tensor, boxes, seg: bool = True):
        """(density logits (n, R, R, R) or None, embedding (n, 64), {task: class logits})."""
        h = self.body(self.stem(x))
        emb = self.roi(h, boxes)
        density = self.seg(h)[:, 0] if seg else None
        return density, emb, {t: head(emb) for t, head in self.heads.items()}

    def embed(self, x: torch.Tensor, boxes) -> torch.Tensor:
        return self.roi(self.body(self.stem(x)), boxes)


# ------------------------------------------------------------------------------------- data


def _density_at(u: np.ndarray, resolution: int) -> np.ndarray:
    f = u.shape[0] // resolution
    if f * resolution == u.shape[0]:
        return u.reshape(resolution, f, resolution, f, resolution, f).mean(axis=(1, 3, 5))
    from scipy import ndimage

    return ndimage.zoom(u, resolution / u.shape[0], order=1)


def query_arrays(flair: np.ndarray, t1gd: np.ndarray, resolution: int):
    """Network input masks (1, 2, R, R, R) and box (1, 6) of a pair of atlas-grid masks."""

    flair = np.asarray(flair, dtype=bool)
    t1gd = np.asarray(t1gd, dtype=bool) & flair
    box = mask_bbox(flair) * resolution / flair.shape[0]
    chans = [downsample(flair, resolution), downsample(t1gd, resolution)]
    return np.stack(chans).astype(np.uint8)[None], box[None]


def tumor_arrays(db, ids, resolution: int, density: bool = True):
    """(masks (n, 2, R, R, R) uint8, density (n, R, R, R) uint8 = round(255 u) or None,
    boxes (n, 6) float in R-voxels) of database tumors."""

    ids = np.asarray(ids, dtype=np.int64)
    n, r = len(ids), resolution
    masks = np.zeros((n, 2, r, r, r), np.uint8)
    dens = np.zeros((n, r, r, r), np.uint8) if density else None
    for row, i in enumerate(ids):
        codes = db.codes(int(i))
        flair, t1gd = masks_from_codes(codes)  # exact masks, as every strategy sees them
        masks[row, 0] = downsample(flair, r)
        masks[row, 1] = downsample(t1gd, r)
        if density:
            dens[row] = np.rint(255 * np.clip(_density_at(decode(codes), r), 0, 1))
    return masks, dens, tumor_boxes(db, ids, r)


def tumor_boxes(db, ids, resolution: int) -> np.ndarray:
    """FLAIR bounding boxes (n, 6) of database tumors, in voxels of a ``resolution``^3 input."""
    p = db.params.iloc[np.asarray(ids, dtype=np.int64)]
    cols = ["bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1"]
    return p[cols].to_numpy(np.float64) * resolution / db.resolution


def _atlas_channel(db, resolution: int) -> np.ndarray:
    from scipy import ndimage

    t1 = db.atlas.t1
    return ndimage.zoom(t1, resolution / t1.shape[0], order=1).astype(np.float32)


# --------------------------------------------------------------------------------- training


def _losses(model, x, dens, boxes, y, cfg):
    seg, _, logits = model(x, boxes, seg=cfg.lambda_seg > 0)
    parts = {}
    if cfg.lambda_seg > 0:
        parts["seg"] = F.binary_cross_entropy_with_logits(seg, dens)
    for t in cfg.task_list:
        parts[t] = F.cross_entropy(logits[t], y[t])
    total = cfg.lambda_seg * parts.get("seg", 0.0) + cfg.lambda_cls * sum(
        parts[t] for t in cfg.task_list
    )
    return total, parts


def _batch(masks, dens, boxes, labels, idx, cfg, atlas, device):
    x = torch.from_numpy(masks[idx]).float()
    if atlas is not None:
        x = torch.cat([x, torch.from_numpy(atlas)[None, None].expand(len(idx), -1, -1, -1, -1)], 1)
    d = torch.from_numpy(dens[idx]).float() / 255.0
    y = {t: torch.from_numpy(labels[t][idx]) for t in cfg.task_list}
    return x.to(device), d.to(device), boxes[idx], {t: v.to(device) for t, v in y.items()}


def train_multitask(db, cfg: MultitaskConfig, *, progress=None, resume: bool = True) -> dict:
    """Train the multitask network on ``db``; resumable; returns (and saves) its summary."""
    require_device(cfg.device)
    torch.manual_seed(cfg.seed)
    folder = multitask_dir(db, cfg.name)
    folder.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, _ = split_ids(len(db), cfg.n_train, cfg.n_val, cfg.seed)
    labels_df, edges = task_labels(db.params)
    labels = {t: labels_df[t].to_numpy(np.int64) for t in TASKS}
    r = cfg.input_resolution
    atlas = _atlas_channel(db, r) if cfg.atlas_channel else None
    t_load = time.perf_counter()
    tr = tumor_arrays(db, train_ids, r)
    va = tumor_arrays(db, val_ids, r)
    load_s = time.perf_counter() - t_load
    lab_tr = {t: v[train_ids] for t, v in labels.items()}
    lab_va = {t: v[val_ids] for t, v in labels.items()}
    model = MultitaskNet(cfg.task_list, r, 3 if cfg.atlas_channel else 2, blocks=cfg.blocks)
    model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    meta = {
        "train": asdict(cfg),
        "model": model.config,
        "db": db.fingerprint,
        "name": cfg.name,
        "label_edges": edges,
    }
    with atomic_path(folder / "split.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, train=train_ids, val=val_ids)
    part_names = (["seg"] if cfg.lambda_seg > 0 else []) + list(cfg.task_list)

    def train_epoch(rng):
        sums = dict.fromkeys(["total", *part_names], 0.0)
        perm = rng.permutation(len(train_ids))
        for s in range(0, len(perm), cfg.batch):
            idx = perm[s : s + cfg.batch]
            x, d, boxes, y = _batch(*tr, lab_tr, idx, cfg, atlas, cfg.device)
            if cfg.box_jitter:
                boxes = distort_boxes(boxes, rng)
            total, parts = _losses(model, x, d, boxes, y, cfg)
            opt.zero_grad()
            total.backward()
            opt.step()
            sums["total"] += float(total.detach()) * len(idx)
            for k, v in parts.items():
                sums[k] += float(v.detach()) * len(idx)
        return {k: v / len(train_ids) for k, v in sums.items()}

    def validate():
        vsums = dict.fromkeys(["total", *part_names], 0.0)
        with torch.no_grad():
            for s in range(0, len(val_ids), 16):
                idx = np.arange(s, min(s + 16, len(val_ids)))
                total, parts = _losses(
                    model, *_batch(*va, lab_va, idx, cfg, atlas, cfg.device), cfg
                )
                vsums["total"] += float(total) * len(idx)
                for k, v in parts.items():
                    vsums[k] += float(v) * len(idx)
        return {k: v / len(val_ids) for k, v in vsums.items()}

    fitted = fit(
        model,
        opt,
        folder=folder,
        meta=meta,
        epochs=cfg.epochs,
        patience=cfg.patience,
        time_limit_s=None if cfg.time_limit is None else 60 * cfg.time_limit,
        rng_seed=cfg.seed,
        train_epoch=train_epoch,
        validate=validate,
        monitor="total",
        device=cfg.device,
        resume=resume,
        progress=progress,
        label=cfg.name,
    )
    return finish(db, folder, meta, fitted, load_s, final=fitted[1][-1])


# -------------------------------------------------------------------------------- inference


def multitask_dir(db, name: str) -> Path:
    return db.index_dir / "models" / name


def load_multitask(db, name: str = "multitask") -> tuple[MultitaskNet, dict]:
    """A trained multitask model of ``db`` and its metadata (weights only: no code runs)."""

    folder = multitask_dir(db, name)
    weights, cfg_path = folder / "model.pt", folder / "config.json"
    if not weights.is_file() or not cfg_path.is_file():
        raise GliomatchError(
            f"no trained {name} model in {folder.parent}; run "
            f"`gliomatch train multitask --db {db.path}` first"
        )

    meta = read_json(cfg_path, "model settings")
    try:
        net = MultitaskNet(**meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GliomatchError(f"model settings {cfg_path}: unusable ({exc}); retrain it") from exc
    return load_weights(db, folder, meta, net), meta


def embed_masks(model: MultitaskNet, masks, boxes, atlas=None, batch: int = 32) -> np.ndarray:
    """Embeddings (n, 64) float32 of network inputs ``masks`` (n, 2, R, R, R) with boxes."""
    out = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(masks), batch):
            x = torch.from_numpy(np.asarray(masks[s : s + batch], dtype=np.float32))
            if atlas is not None:
                a = torch.from_numpy(atlas)[None, None].expand(len(x), -1, -1, -1, -1)
                x = torch.cat([x, a], 1)
            out.append(model.embed(x, boxes[s : s + batch]).numpy())
    return np.concatenate(out).astype(np.float32)


def model_atlas(db, model: MultitaskNet):
    """The atlas input channel the model was trained with, or None."""
    return _atlas_channel(db, model.resolution) if model.config["in_channels"] == 3 else None
