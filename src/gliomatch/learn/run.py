"""Train any model kind: the one entry point of ``gliomatch train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gliomatch.database import Database
from gliomatch.errors import GliomatchError
from gliomatch.learn.config import MODALITIES, MultitaskConfig, TrainConfig, training_config
from gliomatch.learn.multitask import multitask_dir, train_multitask
from gliomatch.learn.train import model_dir, train
from gliomatch.progress import Progress, report

__all__ = ["TrainingRun", "train_model"]


@dataclass(frozen=True)
class TrainingRun:
    """What one ``train`` produced: the model's name and, per part, its summary and folder.

    Parts are the modalities (``t1gd``, ``flair``) of an autoencoder, or ``multitask``.
    """

    kind: str
    name: str
    config: TrainConfig | MultitaskConfig
    summaries: dict[str, dict]
    folders: dict[str, Path]


def train_model(
    db, kind: str, *, modality: str = "both", progress: Progress | None = None, **options
) -> TrainingRun:
    """Train (or resume) a ``kind`` model on ``db`` (a Database or its folder) with ``options`` (see
    :func:`~gliomatch.learn.config.training_config`; left-out options take its defaults).

    ``modality``: t1gd, flair or both (autoencoders train one model per modality; the multitask
    network takes both masks at once and accepts only ``both``).
    """
    cfg = training_config(kind, **options)  # settings are checked before any data is read
    if not isinstance(db, Database):
        db = Database.open(db)
    if modality not in (*MODALITIES, "both"):
        raise GliomatchError(f"modality must be t1gd, flair or both, got {modality!r}")
    if isinstance(cfg, MultitaskConfig):
        if modality != "both":
            raise GliomatchError("modality: the multitask network reads both masks; use both")
        report(progress, 0, cfg.epochs, f"{cfg.name}: loading the tumors")
        summary = train_multitask(db, cfg, progress=progress)
        return TrainingRun(
            kind, cfg.name, cfg, {"multitask": summary}, {"multitask": multitask_dir(db, cfg.name)}
        )
    mods = MODALITIES if modality == "both" else (modality,)
    summaries = {m: train(db, cfg, m, progress=progress) for m in mods}
    folders = {m: model_dir(db, cfg.name, m) for m in mods}
    return TrainingRun(kind, cfg.name, cfg, summaries, folders)
