"""The manifest: the single record of a tumor database, its schema, writer and reader.

``manifest.json`` holds the build settings (``build_config``, written when a build starts,
with ``status`` "building"), then the format, the atlas, thresholds, density encoding, growth
model, sampling, size filter, counts and checksums (of the table, every shard, every index and
model file), and is sealed with its own SHA-256 (``manifest_sha256``). Only the database
package reads it; everything else asks :class:`gliomatch.database.Database` (typed properties).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from gliomatch import __version__
from gliomatch.database.config import BuildConfig
from gliomatch.errors import GliomatchError
from gliomatch.files import write_json_atomic
from gliomatch.masks import FLAIR_LEVEL, SCALE, T1GD_LEVEL

__all__ = [
    "ATLAS_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEYS",
    "building_manifest",
    "check_entries",
    "complete_manifest",
    "manifest_digest",
    "read_manifest",
    "write_manifest",
]

FORMAT = "gliomatch-tumor-db"
#: 2: CRC-32C per density chunk, checksums of the table, indexes, models and manifest.
FORMAT_VERSION = 2
#: Manifest keys every reader relies on.
MANIFEST_KEYS = ("atlas", "counts", "shards", "sampling", "size_filter", "table_sha256")
#: What the manifest's ``atlas`` record must hold.
ATLAS_KEYS = ("source", "resolution", "shape", "spacing_mm", "affine", "checksum")


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest's canonical JSON, without its own ``manifest_sha256`` entry."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(path: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically, sealed with its own checksum."""
    manifest = {**manifest, "manifest_sha256": manifest_digest(manifest)}
    write_json_atomic(Path(path) / "manifest.json", manifest)


def read_manifest(path: Path) -> dict | None:
    """The sealed manifest of database folder ``path`` (None if it has none yet).

    Checks that it is JSON, of this format and version, and that its own checksum matches; a
    manifest may describe a finished database or a build in progress (``status``).
    """
    mpath = Path(path) / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GliomatchError(f"database {mpath}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GliomatchError(f"database {mpath}: not a gliomatch tumor database manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GliomatchError(
            f"database {mpath}: format version {manifest.get('format_version')} is not "
            f"supported (this gliomatch reads version {FORMAT_VERSION}); rebuild it"
        )
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise GliomatchError(
            f"database {mpath}: checksum mismatch (the manifest is corrupted or was edited); "
            "restore it from a backup or rebuild the database"
        )
    if not isinstance(manifest.get("build_config"), dict):
        raise GliomatchError(f"database {mpath}: missing entry build_config")
    return manifest


def check_entries(manifest: dict, mpath: Path) -> None:
    """The nested entries every reader relies on: the atlas (source, resolution, a 3-D shape,
    spacing, a finite invertible 4x4 affine, checksum), the tumor count and the shard list.
    A manifest resealed without one of them is a one-line error, not a KeyError later."""
    atlas, counts = manifest.get("atlas"), manifest.get("counts")
    problem = None
    if not isinstance(atlas, dict):
        problem = "atlas is not a record"
    elif missing := [k for k in ATLAS_KEYS if k not in atlas]:
        problem = f"atlas lacks {', '.join(missing)}"
    else:
        try:
            shape = np.asarray(atlas["shape"])
            affine = np.asarray(atlas["affine"], dtype=np.float64)
            ok = (
                shape.shape == (3,)
                and shape.dtype.kind in "iu"
                and bool(np.all(shape > 0))
                and affine.shape == (4, 4)
                and bool(np.all(np.isfinite(affine)))
                and abs(np.linalg.det(affine[:3, :3])) > 1e-9
                and isinstance(atlas["resolution"], int)
                and float(atlas["spacing_mm"]) > 0
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problem = "atlas shape, affine, resolution or spacing is malformed"
    if problem is None and not (
        isinstance(counts, dict)
        and isinstance(counts.get("tumors"), int)
        and not isinstance(counts.get("tumors"), bool)
    ):
        problem = "counts.tumors is missing or not an integer"
    if problem is None and not (
        isinstance(manifest["shards"], list)
        and all(isinstance(s, dict) and {"name", "sha256"} <= set(s) for s in manifest["shards"])
    ):
        problem = "shards is not a list of {name, sha256} records"
    if problem:
        raise GliomatchError(
            f"database {mpath}: {problem} (the manifest was edited); restore it from a backup "
            "or rebuild the database"
        )


def building_manifest(cfg: BuildConfig) -> dict:
    """The manifest of a build that has started: its settings and ``status`` "building"."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": "building",
        "software": {"gliomatch": __version__},
        "build_config": cfg.to_dict(),
    }


def complete_manifest(
    cfg: BuildConfig,
    atlas,
    *,
    shards: list[dict],
    counts: dict,
    disk_bytes: int,
    seconds: float,
    table_sha256: str,
) -> dict:
    """The manifest of a finished database (its ``files`` empty: indexes and models are
    recorded as they are built)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "software": {"gliomatch": __version__},
        "atlas": {
            "source": atlas.source,
            "resolution": atlas.resolution,
            "shape": list(atlas.shape),
            "spacing_mm": atlas.spacing,
            "affine": atlas.affine.tolist(),
            "checksum": atlas.checksum,
        },
        "thresholds": {"flair": FLAIR_LEVEL, "t1gd": T1GD_LEVEL},
        "encoding": {
            "dtype": "uint8",
            "scale": SCALE,
            "flair_code": 50,
            "t1gd_code": 150,
            "decode": "u = (q + 0.5) / 250 for q > 0, else 0",
        },
        "model": {
            "name": cfg.model.name,
            "scheme": cfg.model.scheme,
            "equation": "du/dt = div(D grad u) + rho u (1 - u)",
            "dw_gm_ratio": cfg.ratio,
            "units": {"dw": "mm^2/day", "rho": "1/day", "t_end": "day"},
        },
        "sampling": {**cfg.sampling.to_dict(), "seed": cfg.seed, "shard_size": cfg.shard_size},
        "build_config": cfg.to_dict(),
        "size_filter": cfg.size_filter.to_dict(),
        "counts": counts,
        "disk_bytes": int(disk_bytes),
        "build_seconds_this_run": round(seconds, 2),
        "shards": shards,
        "table_sha256": table_sha256,
        "files": {},  # derived indexes and models: recorded when they are built
    }
