"""`gliomatch train`: autoencoders, hashing and the multitask embedding.

The learning modules (torch) are imported inside the command: the one deferred import of the
command line, so that other commands start without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gliomatch.cli.apps import app
from gliomatch.cli.common import (
    as_json,
    handle_errors,
    progress_bar,
)
from gliomatch.errors import GliomatchError


@app.command()
@handle_errors
def train(
    kind: Annotated[str, typer.Argument(help="ae, vae, hash or multitask.")],
    db_path: Annotated[Path, typer.Option("--db", help="Database folder.")],
    latent: Annotated[int, typer.Option(help="Latent size (ae, vae).")] = 1024,
    bits: Annotated[int, typer.Option(help="Code bits (hash).")] = 64,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (published: 120; multitask default 30).")
    ] = None,
    input_resolution: Annotated[
        int, typer.Option(help="Masks downsampled to this (16, 32, 64, 128).")
    ] = 32,
    n_train: Annotated[int, typer.Option(help="Training tumors (published: 1500).")] = 1500,
    n_val: Annotated[int, typer.Option(help="Validation tumors (published: 150).")] = 150,
    batch: Annotated[
        int | None, typer.Option(help="Batch size (published: 2; multitask default 8).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam lr (1e-5; VAE 3e-5; multitask 1e-3).")
    ] = None,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs).")] = 20,
    lr_patience: Annotated[
        int,
        typer.Option(
            help="ae/vae/hash: lr x 0.2 after this many epochs without improvement "
            "(0: constant lr)."
        ),
    ] = 0,
    gamma: Annotated[
        float | None,
        typer.Option(
            help="hash: bi-half quantization pull (default: the paper's 6; 0: plain STE)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    modality: Annotated[str, typer.Option(help="t1gd, flair or both.")] = "both",
    tasks: Annotated[
        str,
        typer.Option(help="multitask: all, seg, location, regime or a comma list of labels."),
    ] = "all",
    lambda_seg: Annotated[float, typer.Option(help="multitask: segmentation weight.")] = 1.0,
    lambda_cls: Annotated[float, typer.Option(help="multitask: classification weight.")] = 1e-3,
    box_jitter: Annotated[
        bool, typer.Option(help="multitask: train with distorted bounding boxes.")
    ] = True,
    atlas_channel: Annotated[
        bool, typer.Option(help="multitask: the atlas T1 as a third input channel.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Train a mask autoencoder per modality, or the multitask embedding network (resumable;
    loss curves and validation figures saved with the model in the database's index folder)."""
    from gliomatch.database import Database

    if kind not in ("ae", "vae", "hash", "multitask"):
        raise GliomatchError(f"unknown model kind {kind!r}; use ae, vae, hash or multitask")
    db = Database.open(db_path)
    # options left out take the configuration's defaults (given ones, 0 included, are checked)
    given = {k: v for k, v in (("epochs", epochs), ("batch", batch), ("lr", lr)) if v is not None}
    if kind == "multitask":
        from gliomatch.learn.multitask import MultitaskConfig, multitask_dir, train_multitask

        mcfg = MultitaskConfig(
            tasks=tasks,
            **given,
            n_train=n_train,
            n_val=n_val,
            input_resolution=input_resolution,
            lambda_seg=lambda_seg,
            lambda_cls=lambda_cls,
            box_jitter=box_jitter,
            atlas_channel=atlas_channel,
            patience=patience,
            device=device,
        )
        with progress_bar(not json_out) as bar:
            bar(0, mcfg.epochs, f"{mcfg.name}: loading the tumors")
            r = train_multitask(db, mcfg, progress=bar)
        if json_out:
            typer.echo(as_json(r))
            return
        f = r["final"]
        parts = ", ".join(
            f"{k[4:]} {v:.3f}" for k, v in f.items() if k.startswith("val_") and k != "val_total"
        )
        typer.echo(
            f"{mcfg.name}: {r['history_epochs']} epochs, best validation loss "
            f"{r['best_val_loss']:.4g}; last epoch validation losses: {parts} "
            f"-> {multitask_dir(db, mcfg.name)}"
        )
        return

    from gliomatch.learn.train import TrainConfig, model_dir
    from gliomatch.learn.train import train as run

    cfg = TrainConfig(
        kind=kind,
        latent=latent,
        bits=bits,
        input_resolution=input_resolution,
        n_train=n_train,
        n_val=n_val,
        patience=patience,
        lr_patience=lr_patience,
        device=device,
        **given,
        **({} if gamma is None else {"gamma": gamma}),
    )
    mods = ("t1gd", "flair") if modality == "both" else (modality,)
    results = {}
    with progress_bar(not json_out) as bar:
        for m in mods:
            results[m] = run(db, cfg, m, progress=bar)
    if json_out:
        typer.echo(as_json(results))
        return
    for m, r in results.items():
        typer.echo(
            f"{cfg.name} {m}: {r['history_epochs']} epochs, best validation loss "
            f"{r['best_val_loss']:.4f}, reconstruction Dice {r['recon_dice_val']:.3f} "
            f"(validation) -> {model_dir(db, cfg.name, m)}"
        )
