"""One training loop for every network of gliomatch (the mask autoencoders and the multitask
embedding): seeded, resumable and early-stopped the same way.

Each epoch shuffles with a generator seeded by ``(rng_seed, epoch)``, so a resumed training
replays the uninterrupted one; the model's own code supplies one epoch of training and one
validation pass, each returning mean losses by name. :func:`gliomatch.learn.train.end_epoch`
keeps the best weights and the checkpoint (weights, optimizer, lr schedule, counters,
history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path
from gliomatch.progress import Progress, report

__all__ = [
    "end_epoch",
    "fit",
    "load_checkpoint",
    "load_state",
    "require_device",
    "save_checkpoint",
]


def require_device(device: str) -> None:
    """A clear error when training is asked to run on a CUDA GPU this machine lacks."""
    if device == "cuda" and not torch.cuda.is_available():
        raise GliomatchError("device 'cuda': no CUDA GPU is available here")


def fit(
    model,
    opt,
    *,
    folder: Path,
    meta: dict,
    epochs: int,
    patience: int,
    rng_seed: int,
    train_epoch: Callable[[np.random.Generator], dict],
    validate: Callable[[], dict],
    monitor: str,
    device: str = "cpu",
    sched=None,
    record_lr: bool = False,
    resume: bool = True,
    progress: Progress | None = None,
    label: str = "",
    time_limit_s: float | None = None,
) -> tuple[float, list[dict], str]:
    """Train ``model`` for up to ``epochs`` (resuming a checkpoint made with the same
    settings), stopping after ``patience`` epochs without a better validation ``monitor``
    loss, or after the epoch that brings the training time (all epochs, resumed ones
    included) to ``time_limit_s``. Returns ``(best validation loss, history, why it
    stopped)``: ``"epochs"``, ``"early stopping"`` or ``"time limit"``. The history rows hold
    ``epoch``, ``train_<name>``/``val_<name>`` for each loss, ``lr`` (if ``record_lr``) and
    ``seconds``.
    """
    history, start, best, since_best = [], 0, np.inf, 0
    if resume and (
        state := load_checkpoint(folder / "checkpoint.pt", meta, model, opt, device, sched)
    ):
        start, best, since_best, history = state
    if since_best >= patience and history:
        return best, history, "early stopping"
    if time_limit_s is not None and sum(h["seconds"] for h in history) >= time_limit_s:
        return best, history, "time limit"
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([rng_seed, epoch])  # resumed epochs replay exactly
        model.train()
        train = train_epoch(rng)
        model.eval()
        val = validate()
        row = {"epoch": epoch + 1}
        for name in train:
            row[f"train_{name}"] = train[name]
            row[f"val_{name}"] = val[name]
        if record_lr:
            row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        loss = val[monitor]
        if sched is not None:
            sched.step(loss)
        best, since_best = end_epoch(
            folder, model, opt, epoch + 1, loss, best, since_best, history, meta, sched
        )
        report(progress, epoch + 1, epochs, f"{label}: val {loss:.4f}")
        if since_best >= patience:
            return best, history, "early stopping"
        if time_limit_s is not None and sum(h["seconds"] for h in history) >= time_limit_s:
            return best, history, "time limit"
    return best, history, "epochs"


def load_state(path: Path, what: str = "model file", map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one clear error for a broken or hostile
    file (an empty file, a pickle that would run code, a truncated archive...)."""
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise GliomatchError(f"{what} {path}: not found") from None
    except Exception as exc:  # UnpicklingError, EOFError, RuntimeError, zip errors, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GliomatchError(
            f"{what} {path}: not a loadable weights file ({type(exc).__name__}: {reason[:200]}); "
            "it was refused without running any of its code. Retrain the model"
        ) from exc


def save_checkpoint(
    path: Path, model, opt, epoch, best, since_best, history, meta, sched=None
) -> None:
    """The last epoch's state (weights, optimizer, lr schedule, early-stopping counters,
    history)."""
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict() if sched else {},
        "epoch": epoch,
        "best": best,
        "since_best": since_best,
        "history": json.dumps(history),
        "meta_json": json.dumps(meta, sort_keys=True),
    }
    with atomic_path(path) as tmp:  # a failed save never leaves a truncated checkpoint
        torch.save(state, tmp)


def _resume_key(meta) -> str:
    if not isinstance(meta, dict):
        return ""
    budget = ("epochs", "patience", "time_limit")  # the budget may change; the training not
    train = {k: v for k, v in meta.get("train", {}).items() if k not in budget}
    return json.dumps({**meta, "train": train}, sort_keys=True)


def end_epoch(folder: Path, model, opt, epoch, val, best, since_best, history, meta, sched=None):
    """Keep the best weights (``model.pt``), count the epochs without improvement, checkpoint;
    returns the new ``(best, since_best)``."""
    if val < best:
        best, since_best = val, 0
        with atomic_path(folder / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
    else:
        since_best += 1
    save_checkpoint(
        folder / "checkpoint.pt", model, opt, epoch, best, since_best, history, meta, sched
    )
    return best, since_best


def load_checkpoint(path: Path, meta: dict, model, opt, device: str, sched=None):
    """Restore a checkpoint made with the same settings: ``(epoch, best, since_best,
    history)``, or None when there is none or it belongs to other settings (start afresh).

    The epoch budget and the patience may differ: asking for more (or fewer) epochs continues
    the same training."""
    if not path.is_file():
        return None
    state = load_state(path, "training checkpoint", map_location=device)
    try:
        saved = json.loads(state.get("meta_json", "null"))
    except (json.JSONDecodeError, AttributeError, TypeError):
        return None
    if _resume_key(saved) != _resume_key(meta):
        return None
    missing = {k: v for k, v in model.state_dict().items() if k not in state["model"]}
    model.load_state_dict({**missing, **state["model"]})
    opt.load_state_dict(state["opt"])
    if sched and state.get("sched"):
        sched.load_state_dict(state["sched"])
    return (
        int(state["epoch"]),
        float(state["best"]),
        int(state["since_best"]),
        json.loads(state["history"]),
    )
