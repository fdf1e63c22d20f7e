"""On-disk layout of a tumor database and the :class:`Database` reader.

A database is a directory::

    DB/
      manifest.json        the single record of the database: build settings
                           (``build_config``, written when a build starts, with ``status``
                           "building"), then format, atlas, thresholds, sampling, size filter,
                           counts and checksums (of the table, every shard, every index and
                           model file, and of itself: ``manifest_sha256``)
      tumors.parquet       one row per tumor (id, theta, volumes, centre of mass, bounding box)
      shards/sNNNNN/       one completed shard, written atomically (temporary name, then rename)
        densities.zarr     uint8 densities, one tumor per chunk, zstd-compressed, each chunk
                           with a CRC-32C checksum verified on every read
        tumors.parquet     that shard's rows (local index)
        shard.json         counts (simulated, kept, rejected)
      index/               derived search indexes (rebuildable from the above)

Densities are stored as uint8 codes ``q`` with ``u ~ (q + 0.5) / 250`` and the thresholds kept
*exactly*: ``q >= 50`` iff ``u >= 0.2`` (FLAIR) and ``q >= 150`` iff ``u >= 0.6`` (T1Gd).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.atlas import load_atlas
from gliomatch.database.config import BuildConfig
from gliomatch.database.manifest import MANIFEST_KEYS, check_entries, read_manifest, write_manifest
from gliomatch.database.sampling import identifiable
from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path, file_digests, sha256_file
from gliomatch.masks import decode, masks_from_codes

__all__ = ["TIMING_FILE", "Database", "hash_tree", "write_shard", "write_shard_stats"]


#: A shard's build timing: kept beside its content, outside its checksum, so that the same seed
#: gives the same checksums and fingerprint however fast the build ran (it did not before:
#: every rebuild had another fingerprint, and every cache keyed by it was lost).
TIMING_FILE = "timing.json"


def hash_tree(path: Path) -> str:
    """SHA-256 over the relative names and bytes of every file below ``path`` (sorted), the
    build timing (:data:`TIMING_FILE`) left out."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != TIMING_FILE)
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_shard(
    shard_dir: Path,
    codes: list[np.ndarray],
    rows: pd.DataFrame,
    stats: dict,
    shape: tuple[int, int, int],
) -> None:
    """Write one shard atomically: build it under a temporary name, then rename.

    A shard that already exists is left untouched. (Checksums are taken once, when the
    database is finalized, over the shards it uses.)
    """
    import zarr

    shard_dir = Path(shard_dir)
    if shard_dir.exists():
        return
    tmp = shard_dir.with_name(f".tmp-{shard_dir.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from zarr.codecs import Crc32cCodec, ZstdCodec

    arr = zarr.create_array(
        store=str(tmp / "densities.zarr"),
        shape=(len(codes), *shape),
        chunks=(1, *shape),
        dtype="uint8",
        fill_value=0,
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        zarr_format=3,
    )
    for i, q in enumerate(codes):
        arr[i] = q
    rows.to_parquet(tmp / "tumors.parquet", index=False)
    write_shard_stats(tmp, stats)
    try:
        os.rename(tmp, shard_dir)
    except OSError:
        # another worker finished the same shard first (same seed -> same content)
        shutil.rmtree(tmp, ignore_errors=True)
        if not shard_dir.exists():
            raise


def write_shard_stats(shard_dir: Path, stats: dict) -> None:
    """A shard's counts (``shard.json``, part of its checksum) and its timing (``elapsed_s``:
    :data:`TIMING_FILE`, not part of it)."""
    timing = {k: v for k, v in stats.items() if k == "elapsed_s"}
    counts = {k: v for k, v in stats.items() if k != "elapsed_s"}
    (Path(shard_dir) / "shard.json").write_text(json.dumps(counts, indent=2, sort_keys=True))
    if timing:
        (Path(shard_dir) / TIMING_FILE).write_text(json.dumps(timing, indent=2, sort_keys=True))


class Database:
    """Read access to a tumor database folder (lazy: densities are read per tumor or batch).

    The only reader of the manifest: everything else asks its typed properties
    (:attr:`build_config`, :attr:`model`, :attr:`counts`, :attr:`shape`, :attr:`affine`,
    :attr:`spacing_mm`, :meth:`atlas`, ...).

    Parameters
    ----------
    path : path
        The database folder (:meth:`open` checks it; do not call the constructor directly).

    Attributes
    ----------
    params : pandas.DataFrame
        One row per tumor: id, theta, the identifiable quantities, volumes, box.
    fingerprint : str
        Identifies the content; indexes and models are tied to it.

    Examples
    --------
    >>> db = Database.open(db.path)                   # a 6-tumor 32^3 database
    >>> len(db), db.shape, db.model.name, db.build_config.seed
    (6, (32, 32, 32), 'fisher-kolmogorov', 1)
    >>> u = db.density(0)                             # float32 on the atlas grid
    >>> flair, t1gd = db.masks(0)                     # u >= 0.2, u >= 0.6, exact
    >>> bool(((u >= 0.2) == flair).all()), bool((t1gd <= flair).all())
    (True, True)
    """

    def __init__(self, path: Path, manifest: dict, table: pd.DataFrame):
        self.path = Path(path)
        self.manifest = manifest
        self._table = table
        self._arrays: dict[int, object] = {}
        self._atlas = None
        #: Files already checked in this process: (path, digest) -> (size, mtime_ns) then.
        self._checked: dict[tuple[str, str], tuple[int, int]] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path) -> Database:
        """Open a database folder; a foreign, old-format or incomplete folder is a clear error."""
        path = Path(path)
        if not path.is_dir():
            raise GliomatchError(f"database {path}: no such folder")
        manifest = read_manifest(path)
        mpath = path / "manifest.json"
        if manifest is None:
            hint = "not a gliomatch database"
            if (path / "config.json").is_file():  # an unfinished build of gliomatch < 0.x
                hint = "an unfinished build? run the same `gliomatch db build` again to resume"
            raise GliomatchError(f"database {path}: missing manifest.json ({hint})")
        if manifest.get("status", "complete") != "complete":
            raise GliomatchError(
                f"database {path}: the build has not finished; run the same `gliomatch db build` "
                "again to resume it"
            )
        missing = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing:
            raise GliomatchError(f"database {mpath}: missing entries {', '.join(missing)}")
        check_entries(manifest, mpath)
        tpath = path / "tumors.parquet"
        if not tpath.is_file():
            raise GliomatchError(f"database {tpath}: missing")
        if sha256_file(tpath) != manifest["table_sha256"]:
            raise GliomatchError(
                f"database {tpath}: checksum mismatch (corrupted or modified); "
                "run `gliomatch db verify` and rebuild the database"
            )
        try:
            table = pd.read_parquet(tpath)
        except Exception as exc:
            raise GliomatchError(f"database {tpath}: unreadable parquet ({exc})") from exc
        if len(table) != manifest["counts"]["tumors"]:
            raise GliomatchError(
                f"database {tpath}: {len(table)} rows but the manifest says "
                f"{manifest['counts']['tumors']}"
            )
        return cls(path, manifest, table)

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return len(self._table)

    @property
    def params(self) -> pd.DataFrame:
        """One row per tumor: id, theta (fractions and mm), the identifiable D_w/rho,
        infiltration length and stage rho T, volumes, centre of mass, bounding box.

        The identifiable columns are derived from theta for databases built before they were
        stored (no rebuild needed)."""
        if "rho_t" not in self._table.columns:
            t = self._table
            derived = identifiable(t["dw"].to_numpy(), t["rho"].to_numpy(), t["t_end"].to_numpy())
            at = t.columns.get_loc("t_end") + 1
            for offset, (name, values) in enumerate(derived.items()):
                t.insert(at + offset, name, values)
        return self._table

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["atlas"]["shape"])

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.manifest["atlas"]["affine"], dtype=np.float64)

    @property
    def resolution(self) -> int:
        return int(self.manifest["atlas"]["resolution"])

    @property
    def spacing_mm(self) -> float:
        """The atlas grid's voxel size (mm)."""
        return float(self.manifest["atlas"]["spacing_mm"])

    @cached_property
    def build_config(self) -> BuildConfig:
        """The settings the database was built with (grid, seed, sampling, size filter)."""
        return BuildConfig.from_dict(self.manifest["build_config"])

    @property
    def model(self):
        """The growth model that made the database (:mod:`gliomatch.solver.model`)."""
        return self.build_config.model

    @property
    def counts(self) -> dict:
        """``tumors``, ``trajectories`` simulated, ``rejected_snapshots``, ``shards``."""
        return dict(self.manifest["counts"])

    @property
    def disk_bytes(self) -> int:
        """Bytes of the stored densities (the shards)."""
        return int(self.manifest["disk_bytes"])

    @property
    def build_seconds(self) -> float:
        """Seconds the last build run took (a resumed build counts its own run)."""
        return float(self.manifest["build_seconds_this_run"])

    @property
    def shard_records(self) -> list[dict]:
        """One record per shard used: ``name``, ``used`` tumors, ``sha256`` of its files."""
        return [dict(e) for e in self.manifest["shards"]]

    def recorded_keys(self) -> list[str]:
        """The keys of the indexes and models listed in the manifest (``models/NAME`` for a
        model), sorted."""
        return sorted(self.manifest.get("files", {}))

    @property
    def index_dir(self) -> Path:
        """Folder of derived search indexes (created on demand)."""
        p = self.path / "index"
        p.mkdir(exist_ok=True)
        return p

    @cached_property
    def fingerprint(self) -> str:
        """Identifies this database's content (used to tie indexes and models to it)."""
        m = self.manifest
        h = hashlib.sha256(
            json.dumps(
                [m["atlas"]["checksum"], m["shards"], m["counts"]["tumors"]], sort_keys=True
            ).encode()
        )
        return h.hexdigest()[:16]

    def atlas(self):
        """The atlas the database was simulated in (read and checked once per ``Database``)."""
        if self._atlas is None:
            self._atlas = self._load_atlas()
        return self._atlas

    def _load_atlas(self):

        a = self.manifest["atlas"]
        spec = None if a["source"] == "mni152-2009" else a["source"].removeprefix("user:")
        atlas = load_atlas(spec, a["resolution"])
        if atlas.checksum != a["checksum"]:
            raise GliomatchError(
                f"database {self.path}: its atlas ({a['source']}, {a['resolution']}^3) differs "
                "from the one available here (checksum mismatch)"
            )
        return atlas

    # ------------------------------------------------------------------ derived files
    @contextlib.contextmanager
    def _manifest_lock(self):
        with open(self.path / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record_files(self, key: str, folder: Path, names: list[str] | None = None) -> None:
        """List the SHA-256 of every file below ``folder`` (an index or a model; only
        ``names`` when given) in the manifest under ``files[key]``, so that
        :meth:`check_files` and ``db verify`` can detect corruption."""
        folder = Path(folder)
        if names is None:
            digests = file_digests(folder)
        else:
            digests = {n: sha256_file(folder / n) for n in names}
        with self._manifest_lock():
            fresh = Database.open(self.path).manifest  # another process may have added entries
            fresh.setdefault("files", {})[key] = digests
            write_manifest(self.path, fresh)
        self.manifest = json.loads((self.path / "manifest.json").read_text())

    def forget_files(self, key: str) -> None:
        """Drop ``files[key]`` from the manifest (its folder was removed)."""
        with self._manifest_lock():
            fresh = Database.open(self.path).manifest
            if fresh.get("files", {}).pop(key, None) is not None:
                write_manifest(self.path, fresh)
        self.manifest = json.loads((self.path / "manifest.json").read_text())

    def is_built(self, key: str, folder: Path, meta: dict) -> bool:
        """Whether the derived files ``folder`` (an index, a cache) are built for ``meta``: its
        ``meta.json`` holds every item of ``meta`` and its files are listed under ``key``."""
        path = Path(folder) / "meta.json"
        if not path.is_file() or self.recorded_files(key) is None:
            return False
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(saved, dict) and all(saved.get(k) == v for k, v in meta.items())

    def recorded_files(self, key: str) -> dict | None:
        """The checksums recorded for ``key`` (None when it was never recorded)."""
        return self.manifest.get("files", {}).get(key)

    def check_files(self, key: str, folder: Path, *, complete: bool = True) -> None:
        """Raise :class:`GliomatchError` unless ``folder`` holds the files recorded for
        ``key``, byte for byte (and no others, when ``complete``)."""
        expected = self.recorded_files(key)
        if expected is None:
            raise GliomatchError(
                f"{folder}: not listed in the database manifest (made by another gliomatch or "
                "copied in); rebuild it"
            )
        folder = Path(folder)
        present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if not complete:
            present = sorted(set(present) & set(expected))
        if present != sorted(expected):
            extra = sorted(set(present) - set(expected))
            lost = sorted(set(expected) - set(present))
            raise GliomatchError(
                f"{folder}: files differ from the manifest (missing {lost or 'none'}, "
                f"unexpected {extra or 'none'}); rebuild it"
            )
        for rel, digest in expected.items():
            path = folder / rel
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._checked.get((str(path), digest)) == stamp:
                continue  # hashed already in this process and untouched since
            if sha256_file(path) != digest:
                raise GliomatchError(
                    f"{folder / rel}: checksum mismatch (corrupted or modified); rebuild it"
                )
            self._checked[(str(path), digest)] = stamp

    # ------------------------------------------------------------------ densities
    def _array(self, shard: int):
        import zarr

        arr = self._arrays.get(shard)
        if arr is None:
            p = self.path / "shards" / f"s{shard:05d}" / "densities.zarr"
            try:
                arr = zarr.open_array(store=str(p), mode="r")
            except Exception as exc:
                raise GliomatchError(f"database shard {p}: unreadable ({exc})") from exc
            if tuple(arr.shape[1:]) != self.shape or arr.dtype != np.uint8:
                raise GliomatchError(
                    f"database shard {p}: holds {arr.dtype} arrays of shape {arr.shape[1:]}, "
                    f"expected uint8 {self.shape} (corrupted metadata); run `gliomatch db verify`"
                )
            self._arrays[shard] = arr
        return arr

    def _check_id(self, i) -> int:
        if isinstance(i, bool | np.bool_) or not isinstance(i, int | np.integer):
            raise GliomatchError(f"tumor id must be an integer, got {i!r}")
        if not 0 <= int(i) < len(self):
            raise GliomatchError(f"tumor id {i} out of range (database has {len(self)} tumors)")
        return int(i)

    def codes(self, i: int) -> np.ndarray:
        """uint8 codes of tumor ``i`` (see :func:`decode`)."""
        i = self._check_id(i)
        row = self._table.iloc[i]
        arr = self._array(int(row["shard"]))
        name = f"s{int(row['shard']):05d}"
        try:
            q = np.asarray(arr[int(row["local"])])
        except Exception as exc:  # a CRC-32C mismatch, a truncated or undecodable chunk
            raise GliomatchError(
                f"database shard {name}: cannot read tumor {i} ({exc}); run `gliomatch db verify`"
            ) from exc
        if not q.any():  # a deleted chunk reads as the fill value; no stored tumor is empty
            raise GliomatchError(
                f"database shard {name}: tumor {i}'s density chunk is missing; "
                "run `gliomatch db verify`"
            )
        return q

    def density(self, i: int) -> np.ndarray:
        """Approximate cell density (float32) of tumor ``i`` on the atlas grid."""
        return decode(self.codes(i))

    def masks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(FLAIR, T1Gd) = (u >= 0.2, u >= 0.6) of tumor ``i``, exact."""
        return masks_from_codes(self.codes(i))

    def iter_batches(
        self, batch_size: int = 64, ids=None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, codes)`` with codes of shape (b, R, R, R), reading shard by shard."""
        ids = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            yield chunk, np.stack([self.codes(int(i)) for i in chunk])
