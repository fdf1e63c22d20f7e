"""Every tumor's masks at a lower resolution, read from the densities once and kept.

The learned strategies and their training see the masks through an order-0 zoom to their
input resolution (32³ for the CPU-sized models). Reading and thresholding 50,000 densities
takes minutes, once per model; this cache does it once per database and resolution:
``index/masks<R>/{flair,t1gd}.npy``, one row of packed bits (``R³ / 8`` bytes) per tumor,
memory-mapped, so a model reads any batch of tumors without holding the database in memory
(410 MB for 50,000 tumors at 32³, both modalities). Its files' checksums are in the manifest
and its ``meta.json`` names the database's fingerprint, so a cache of another database or
another zoom is never used.

:func:`downsampled_masks` is the slow, obvious reference it must equal
(``tests/database/test_downsampled.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.files import stale_temporaries
from gliomatch.masks import downsample, masks_from_codes
from gliomatch.progress import Progress, report

__all__ = ["MaskCache", "downsampled_masks", "mask_cache"]

MODALITIES = ("flair", "t1gd")
#: How the masks are made (a change of it invalidates every cache).
METHOD = "order-0 scipy.ndimage.zoom of the thresholded density (masks.downsample)"


def downsampled_masks(db, ids, modality: str, size: int) -> np.ndarray:
    """The reference: uint8 masks (n, size, size, size) of tumors ``ids``, read one by one."""
    out = np.zeros((len(ids), size, size, size), np.uint8)
    for n, i in enumerate(ids):
        f, t = db.masks(int(i))
        out[n] = downsample(t if modality == "t1gd" else f, size)
    return out


class MaskCache:
    """The masks of every tumor of ``db`` at ``size``³, built once (:meth:`ensure`)."""

    def __init__(self, db, size: int):
        if size < 1 or size > db.resolution:
            raise GliomatchError(
                f"mask cache size must be in [1, {db.resolution}] (the database grid), got {size}"
            )
        self.db, self.size = db, int(size)
        self.key = f"masks{self.size}"
        self.folder = db.path / "index" / self.key
        self._bits: dict[str, np.ndarray] = {}

    def _meta(self) -> dict:
        return {"db": self.db.fingerprint, "n": len(self.db), "size": self.size, "method": METHOD}

    def is_built(self) -> bool:
        return self.db.is_built(self.key, self.folder, self._meta())

    def ensure(self, progress: Progress | None = None) -> MaskCache:
        """Build the cache if it is missing or stale (one pass over the densities), then check
        its files against the manifest."""
        if not self.is_built():
            self._build(progress)
        if not self._bits:
            self.db.check_files(self.key, self.folder)
            self._bits = {m: np.load(self.folder / f"{m}.npy", mmap_mode="r") for m in MODALITIES}
            want = (len(self.db), -(-(self.size**3) // 8))
            if any(b.shape != want or b.dtype != np.uint8 for b in self._bits.values()):
                raise GliomatchError(
                    f"mask cache {self.folder}: arrays of the wrong shape; remove the folder "
                    "and it is built again"
                )
        return self

    def _build(self, progress: Progress | None) -> None:
        index = self.db.path / "index"
        index.mkdir(exist_ok=True)
        for stale in stale_temporaries(index):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = index / f".tmp-{self.key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            t0 = time.perf_counter()
            n, row = len(self.db), -(-(self.size**3) // 8)
            out = {
                m: np.lib.format.open_memmap(tmp / f"{m}.npy", "w+", np.uint8, (n, row))
                for m in MODALITIES
            }
            for ids, codes in self.db.iter_batches(batch_size=64):
                for j, i in enumerate(ids):
                    f, t = masks_from_codes(codes[j])
                    out["flair"][i] = np.packbits(downsample(f, self.size))
                    out["t1gd"][i] = np.packbits(downsample(t, self.size))
                report(progress, ids[-1] + 1, n, f"tumor masks at {self.size}³")
            for arr in out.values():
                arr.flush()
            del out
            meta = {**self._meta(), "build_seconds": round(time.perf_counter() - t0, 3)}
            (tmp / "meta.json").write_text(json.dumps(meta))
            shutil.rmtree(self.folder, ignore_errors=True)
            os.replace(tmp, self.folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GliomatchError(
                f"cannot write the mask cache in {index} ({exc.strerror or exc}); free some "
                "space or make the database writable"
            ) from exc
        self.db.record_files(self.key, self.folder)
        self._bits = {}

    def masks(self, ids, modality: str) -> np.ndarray:
        """uint8 masks (len(ids), size, size, size) of tumors ``ids`` (after :meth:`ensure`)."""
        if modality not in MODALITIES:
            raise GliomatchError(f"modality must be flair or t1gd, got {modality!r}")
        if not self._bits:
            raise GliomatchError("mask cache not loaded: call ensure() first")
        ids = np.asarray(ids, dtype=np.int64)
        s = self.size
        rows = self._bits[modality][ids]
        return np.unpackbits(rows, axis=1, count=s**3).reshape(len(ids), s, s, s)

    @property
    def build_seconds(self) -> float | None:
        meta = self.folder / "meta.json"
        return json.loads(meta.read_text()).get("build_seconds") if meta.is_file() else None


def mask_cache(db, size: int, progress: Progress | None = None) -> MaskCache:
    """The (built, checked) cache of ``db``'s masks at ``size``³."""
    return MaskCache(db, size).ensure(progress)
