"""``gliomatch db verify``: checksums, table/array consistency, recoverable masks."""

from __future__ import annotations

import numpy as np

from gliomatch.database.storage import Database, hash_tree
from gliomatch.errors import GliomatchError
from gliomatch.masks import masks_from_codes
from gliomatch.progress import Progress, report

__all__ = ["TRAINING_RECORDS", "verify"]

#: Files a model folder holds besides its listed weights and settings: the training's own
#: records (resumable checkpoint, curves, split), never read by a search.
TRAINING_RECORDS = ("checkpoint.pt", "history.csv", "loss.png", "split.npz")


def verify(db: Database, *, progress: Progress | None = None) -> dict:
    """Check a database thoroughly; raise :class:`GliomatchError` naming the first bad file.

    * the manifest's own checksum, which seals the build settings it records, and the
      table's (checked when the database opens);
    * every shard's files match the manifest's SHA-256;
    * the atlas the database was simulated in (its files' checksum) has the grid and affine
      the manifest states, so a resealed, edited affine is caught;
    * every index and model file listed in the manifest matches its SHA-256, no index or model
      folder is unlisted, and a model folder holds nothing but its listed files and its
      training records (``TRAINING_RECORDS``);
    * the table's (shard, local) pairs exist in the shard arrays, with the right grid;
    * each tumor's stored masks reproduce the table's FLAIR/T1Gd volumes exactly.
    """
    atlas = db.atlas()  # checks the atlas' checksum against the manifest's
    if tuple(atlas.shape) != db.shape or not np.allclose(atlas.affine, db.affine, atol=1e-5):
        raise GliomatchError(
            f"database {db.path / 'manifest.json'}: its atlas grid or affine differs from the "
            f"atlas' own ({atlas.source}, checksum verified): the manifest was edited; restore "
            "it from a backup or rebuild the database"
        )
    shards_dir = db.path / "shards"
    for entry in db.manifest["shards"]:
        p = shards_dir / entry["name"]
        if not p.is_dir():
            raise GliomatchError(f"database shard {p}: missing")
        if hash_tree(p) != entry["sha256"]:
            raise GliomatchError(f"database shard {p}: checksum mismatch (corrupted or modified)")
    for key in db.manifest.get("files", {}):
        folder = db.path / "index" / key
        if not folder.is_dir():
            raise GliomatchError(f"database index {folder}: listed in the manifest but missing")
        db.check_files(key, folder, complete=not key.startswith("models/"))
    index = db.path / "index"
    models = index / "models"
    if models.is_dir():
        for folder in sorted(p for p in models.iterdir() if not p.name.startswith(".")):
            listed = db.recorded_files(f"models/{folder.name}")
            if listed is None:
                raise GliomatchError(
                    f"database model {folder}: not listed in the manifest (an unfinished or "
                    "failed training, or copied in); run the same `gliomatch train` again to "
                    "finish it, or delete the folder"
                )
            extra = sorted(
                p.relative_to(folder).as_posix()
                for p in folder.rglob("*")
                if p.is_file() and p.name not in listed and p.name not in TRAINING_RECORDS
            )
            if extra:
                raise GliomatchError(
                    f"database model {folder}: unexpected files {extra} (not made by `gliomatch "
                    "train`, or left by an interrupted write); delete them"
                )
    if index.is_dir():
        for folder in sorted(index.iterdir()):
            hidden = folder.name.startswith(".")  # a killed build's temporary: never read
            if (
                folder.is_dir()
                and not hidden
                and folder.name != "models"
                and (db.recorded_files(folder.name) is None)
            ):
                raise GliomatchError(
                    f"database index {folder}: not listed in the manifest (copied in, or left "
                    "by an interrupted build); delete it or rebuild it with `gliomatch db index`"
                )
    table = db.params
    vox = db.manifest["atlas"]["spacing_mm"] ** 3 / 1000.0
    if not np.array_equal(table["id"].to_numpy(), np.arange(len(table))):
        raise GliomatchError(f"database {db.path / 'tumors.parquet'}: ids are not 0..n-1")
    for s, group in table.groupby("shard"):
        arr = db._array(int(s))
        if tuple(arr.shape[1:]) != db.shape:
            raise GliomatchError(
                f"database shard s{int(s):05d}: grid {arr.shape[1:]} != {db.shape}"
            )
        if group["local"].max() >= arr.shape[0]:
            raise GliomatchError(f"database shard s{int(s):05d}: fewer tumors than the table lists")
    for i in range(len(db)):
        flair, t1gd = masks_from_codes(db.codes(i))
        row = table.iloc[i]
        if not (
            np.isclose(flair.sum() * vox, row["flair_cm3"], rtol=1e-9, atol=1e-9)
            and np.isclose(t1gd.sum() * vox, row["t1gd_cm3"], rtol=1e-9, atol=1e-9)
        ):
            raise GliomatchError(
                f"database shard s{int(row['shard']):05d}: tumor {i}'s stored masks do not "
                "match its volumes in tumors.parquet"
            )
        report(progress, i + 1, len(db), "verifying tumors")
    return {"tumors": len(db), "shards": len(db.manifest["shards"]), "ok": True}
