"""Training settings of every learned model, and their defaults (the only copy of them).

Torch-free, so that the command line can read the defaults for its help without loading torch.
:func:`training_config` builds the settings of one model kind from the options a user gave,
refusing options that do not apply to that kind.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.learn.tasks import TASK_SETS, TASKS

__all__ = [
    "GAMMA",
    "KINDS",
    "MODALITIES",
    "TASK_SETS",
    "MultitaskConfig",
    "TrainConfig",
    "check_settings",
    "model_name",
    "multitask_name",
    "parse_tasks",
    "training_config",
]

#: Autoencoder kinds; ``multitask`` is the fourth model kind, with its own settings.
KINDS = ("ae", "vae", "hash")
MODALITIES = ("t1gd", "flair")
#: Bi-half quantization pull of the hashing network (the paper's gamma).
GAMMA = 6.0


def model_name(kind: str, latent: int | None = None, bits: int | None = None) -> str:
    if kind == "ae":
        return "ae" if latent in (None, 1024) else f"ae{latent}"
    if kind == "vae":
        return f"vae{latent or 1024}"
    if kind == "hash":
        return "hash" if bits in (None, 64) else f"hash{bits}"
    raise GliomatchError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")


def parse_tasks(spec: str) -> tuple[str, ...]:
    """``all``, ``seg`` (segmentation only), ``location``, ``regime`` or a comma list of task
    names; returned in the canonical order of :data:`TASKS`."""
    spec = spec.strip().lower()
    if spec in TASK_SETS:
        return TASK_SETS[spec]
    names = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise GliomatchError(
            f"unknown task(s) {unknown or spec!r}; use a set ({', '.join(TASK_SETS)}) or a "
            f"comma list of {', '.join(TASKS)}"
        )
    return tuple(t for t in TASKS if t in names)


def multitask_name(tasks: tuple[str, ...], lambda_seg: float) -> str:
    """``multitask`` for the full model; ``multitask-size-noseg`` and the like otherwise."""
    if tasks == TASK_SETS["all"] and lambda_seg > 0:
        return "multitask"
    label = next((k for k, v in TASK_SETS.items() if v == tasks), None) or "-".join(tasks)
    return f"multitask-{label}" + ("" if lambda_seg > 0 else "-noseg")


def check_settings(cfg, positive: tuple[str, ...]) -> None:
    """Clear errors for training settings: the ``positive`` ones >= 1, a known device.

    Whether a CUDA device is present is checked when training starts
    (:func:`gliomatch.learn.trainer.require_device`).
    """
    for name in positive:
        if getattr(cfg, name) < 1:
            raise GliomatchError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    lr = getattr(cfg, "lr", None)
    if lr is not None and not (np.isfinite(lr) and 0 < lr < 1):
        raise GliomatchError(f"lr (learning rate) must be in (0, 1), got {lr}")
    limit = cfg.time_limit
    if limit is not None and not (np.isfinite(limit) and limit > 0):
        raise GliomatchError(f"time limit must be a positive number of minutes, got {limit}")
    if cfg.device not in ("cpu", "cuda"):
        raise GliomatchError(f"device must be cpu or cuda, got {cfg.device!r}")


@dataclass
class TrainConfig:
    """A mask autoencoder (one per modality): the papers' settings at a CPU-sized input."""

    kind: str = "ae"
    latent: int = 1024
    bits: int = 64
    epochs: int = 120
    lr: float | None = None  # 1e-5 (ae, hash) or 3e-5 (vae)
    batch: int = 2
    n_train: int = 1500
    n_val: int = 150
    input_resolution: int = 32
    beta: float = 1e-3
    gamma: float = GAMMA  # bi-half quantization pull (hash)
    patience: int = 20
    lr_patience: int = 0  # > 0: lr x 0.2 after this many epochs without improvement
    time_limit: float | None = None  # minutes of training (per modality); None: no limit
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise GliomatchError(f"unknown model kind {self.kind!r}; use one of {KINDS}")
        check_settings(self, ("epochs", "batch", "n_train", "n_val", "latent", "bits"))
        if self.gamma < 0 or self.lr_patience < 0:
            raise GliomatchError(
                f"gamma and lr_patience must be >= 0, got {self.gamma} and {self.lr_patience}"
            )
        if self.kind == "hash" and self.bits % 8:
            raise GliomatchError(f"bits must be a multiple of 8, got {self.bits}")
        if self.lr is None:
            self.lr = 3e-5 if self.kind == "vae" else 1e-5

    @property
    def name(self) -> str:
        return model_name(self.kind, self.latent, self.bits)

    @property
    def code_size(self) -> int:
        return self.bits if self.kind == "hash" else self.latent


@dataclass
class MultitaskConfig:
    """The multitask embedding network (segmentation + classification heads, RoI pooling)."""

    tasks: str = "all"
    epochs: int = 30
    lr: float = 1e-3
    batch: int = 8
    n_train: int = 1500
    n_val: int = 150
    input_resolution: int = 32
    lambda_seg: float = 1.0
    lambda_cls: float = 1e-3
    box_jitter: bool = True
    atlas_channel: bool = False
    blocks: int = 2
    patience: int = 10
    time_limit: float | None = None  # minutes of training; None: no limit
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        self.task_list = parse_tasks(self.tasks)

        check_settings(self, ("epochs", "batch", "n_train", "n_val"))
        if self.lambda_seg < 0 or self.lambda_cls < 0:
            raise GliomatchError("loss weights must be >= 0")
        if self.lambda_seg == 0 and not self.task_list:
            raise GliomatchError("nothing to train: no classification task and lambda_seg = 0")

    @property
    def name(self) -> str:
        return multitask_name(self.task_list, self.lambda_seg)


#: The settings that apply to each kind (beyond ``kind`` itself).
_SETTINGS = {
    **{k: {f.name for f in fields(TrainConfig)} - {"kind"} for k in KINDS},
    "multitask": {f.name for f in fields(MultitaskConfig)},
}
_ONLY_FOR = {"latent": ("ae", "vae"), "bits": ("hash",), "gamma": ("hash",), "beta": ("vae",)}


def default(kind: str, name: str):
    """The default of setting ``name`` for model ``kind`` (e.g. for a help text)."""
    cls = MultitaskConfig if kind == "multitask" else TrainConfig
    return next(f.default for f in fields(cls) if f.name == name)


def training_config(kind: str, **options) -> TrainConfig | MultitaskConfig:
    """The settings of a ``kind`` model (ae, vae, hash, multitask) from the options given.

    Options left out (or None) take the dataclass defaults; an option that does not apply to
    ``kind`` (``bits`` for an autoencoder, ``tasks`` for a hash) is an error, not ignored.
    """
    if kind not in _SETTINGS:
        raise GliomatchError(f"unknown model kind {kind!r}; use ae, vae, hash or multitask")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set().union(*_SETTINGS.values()))
    if unknown:
        raise GliomatchError(f"unknown training setting(s): {', '.join(unknown)}")
    misplaced = sorted(
        k for k in given if k not in _SETTINGS[kind] or kind not in _ONLY_FOR.get(k, (kind,))
    )
    if misplaced:
        flags = ", ".join("--" + k.replace("_", "-") for k in misplaced)
        article = "an" if kind[0] in "aeiou" else "a"
        raise GliomatchError(f"{flags}: not a setting of {article} {kind} model")
    if kind == "multitask":
        return MultitaskConfig(**given)
    return TrainConfig(kind=kind, **given)
