"""`gliomatch train`: autoencoders, hashing and the multitask embedding.

The defaults shown come from the training configurations (:mod:`gliomatch.learn.config`), their
only copy; an option left out takes them. The training itself (torch) is imported inside the
command, so that other commands start without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import as_json, handle_errors, progress_bar
from gliomatch.errors import GliomatchError
from gliomatch.learn.config import default


def _d(name: str, kind: str = "ae") -> str:
    return f"default {default(kind, name)}"


@app.command()
@handle_errors
def train(
    kind: Annotated[str, typer.Argument(help="ae, vae, hash or multitask.")],
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    latent: Annotated[
        int | None, typer.Option(help=f"Latent size (ae, vae; {_d('latent')}).")
    ] = None,
    bits: Annotated[int | None, typer.Option(help=f"Code bits (hash; {_d('bits')}).")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help=f"Epochs (published: 120; {_d('epochs', 'multitask')} for multitask)."),
    ] = None,
    input_resolution: Annotated[
        int | None,
        typer.Option(
            help=f"Masks downsampled to this (16, 32, 64, 128; {_d('input_resolution')})."
        ),
    ] = None,
    n_train: Annotated[
        int | None, typer.Option(help=f"Training tumors (published: {_d('n_train')}).")
    ] = None,
    n_val: Annotated[
        int | None, typer.Option(help=f"Validation tumors (published: {_d('n_val')}).")
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(help=f"Batch size (published: 2; {_d('batch', 'multitask')} for multitask)."),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=f"Adam lr (1e-5; VAE 3e-5; multitask {default('multitask', 'lr')})."),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help=f"Early stopping patience, epochs ({_d('patience')}; "
            f"{_d('patience', 'multitask')} for multitask)."
        ),
    ] = None,
    lr_patience: Annotated[
        int | None,
        typer.Option(
            help="ae/vae/hash: lr x 0.2 after this many epochs without improvement "
            f"(0: constant lr; {_d('lr_patience')})."
        ),
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option(help=f"hash: bi-half quantization pull (0: plain STE; {_d('gamma')})."),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            help="Minutes of training (per modality for ae/vae/hash): stop after the epoch that "
            "reaches them (resumed epochs count; default: no limit)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default cpu).")] = None,
    modality: Annotated[str, typer.Option(help="t1gd, flair or both.")] = "both",
    tasks: Annotated[
        str | None,
        typer.Option(
            help="multitask: all, seg, location, regime or a comma list of labels "
            f"({_d('tasks', 'multitask')})."
        ),
    ] = None,
    lambda_seg: Annotated[
        float | None,
        typer.Option(help=f"multitask: segmentation weight ({_d('lambda_seg', 'multitask')})."),
    ] = None,
    lambda_cls: Annotated[
        float | None,
        typer.Option(help=f"multitask: classification weight ({_d('lambda_cls', 'multitask')})."),
    ] = None,
    box_jitter: Annotated[
        bool | None,
        typer.Option(
            help="multitask: train with distorted bounding boxes "
            f"({_d('box_jitter', 'multitask')})."
        ),
    ] = None,
    atlas_channel: Annotated[
        bool | None,
        typer.Option(
            help="multitask: the atlas T1 as a third input channel "
            f"({_d('atlas_channel', 'multitask')})."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Train a mask autoencoder per modality, or the multitask embedding network (resumable;
    loss curves and validation figures saved with the model in the database's index folder)."""
    from gliomatch.errors import require_extra

    require_extra("learn", "training")
    from gliomatch.learn.run import train_model

    options = dict(
        latent=latent, bits=bits, epochs=epochs, input_resolution=input_resolution,
        n_train=n_train, n_val=n_val, batch=batch, lr=lr, patience=patience,
        lr_patience=lr_patience, gamma=gamma, time_limit=time_limit, device=device, tasks=tasks,
        lambda_seg=lambda_seg, lambda_cls=lambda_cls, box_jitter=box_jitter,
        atlas_channel=atlas_channel,
    )  # fmt: skip
    from gliomatch.database import Database
    from gliomatch.search import get_strategy

    with progress_bar(not json_out) as bar:
        run = train_model(db_path, kind, modality=modality, progress=bar, **options)
        # the explicit build step of the strategy: every tumor's code, once
        strat = get_strategy(run.name, Database.open(db_path), progress=bar)
        try:
            strat.ensure_ready()
            codes = f"{run.name} codes of every tumor -> {strat.index_path}"
        except GliomatchError as exc:  # e.g. one modality trained, the other not yet
            codes = f"{run.name} codes not built yet: {exc}"
    if json_out:
        typer.echo(as_json({**run.summaries, "codes": codes}))
        return
    for part, r in run.summaries.items():
        typer.echo(f"{run.name} {part}: {_describe(r)} -> {run.folders[part]}")
    typer.echo(codes)


def _describe(r: dict) -> str:
    line = (
        f"{r['history_epochs']} epochs ({r['train_seconds'] / 60:.1f} min, stopped by "
        f"{r['stopped']}; process peak {r['peak_rss_mb']:.0f} MB), best validation loss "
        f"{r['best_val_loss']:.4g}"
    )
    if "recon_dice_val" in r:  # an autoencoder
        return line + f", reconstruction Dice {r['recon_dice_val']:.3f} (validation)"
    losses = ", ".join(
        f"{k[4:]} {v:.3f}"
        for k, v in r["final"].items()
        if k.startswith("val_") and k != "val_total"
    )
    return line + f"; last epoch validation losses: {losses}"
