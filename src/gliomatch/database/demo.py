"""The default database: the demo database, built once in the cache (resumable) and used by
``infer``, ``predict-gbm`` and the benchmarks when no ``--db`` is given.

Its design was chosen by measurement for its budget (the build and its index in <= 90 s on
2 cores): 10,000 tumors at 64^3 (3 mm voxels). Databases built for the same 90 s at 64^3,
96^3 and 128^3 (14,672, 5,415 and 2,245 tumors) were compared on the same 200 synthetic
patients at 1.5 mm (``bench plans``, docs/methods.md); more tumors on the coarser grid won
(ensemble CTV - standard CTV, enhancing recurrence: +3.5, +2.7 and +2.1 points; the old demo,
1,000 tumors at 128^3: -1.8). It is still a demo: commands that fall back to it say so and
warn that a database of this size gives poorer matches than a 50,000-tumor one.
"""

from __future__ import annotations

from pathlib import Path

from gliomatch.atlas import cache_dir
from gliomatch.database.build import build_database
from gliomatch.database.config import BuildConfig
from gliomatch.database.manifest import FORMAT_VERSION
from gliomatch.database.storage import Database
from gliomatch.files import cache_key
from gliomatch.progress import Progress

__all__ = ["DEMO_N", "DEMO_RESOLUTION", "demo_database"]

#: Tumors in the demo database, and its grid (module notes: chosen by measurement).
DEMO_N = 10_000
DEMO_RESOLUTION = 64


def demo_database(
    n: int = DEMO_N,
    resolution: int = DEMO_RESOLUTION,
    path: Path | None = None,
    *,
    log=None,
    progress: Progress | None = None,
) -> Database:
    """The demo database (built once in the cache, resumed or grown to ``n``).

    The cache folder names the database format and a key of the build settings, so a demo
    database of an older format or sampler is rebuilt rather than refused or reused.
    """
    cfg = BuildConfig(resolution=resolution, seed=0)
    key = cache_key(config=cfg.to_dict())[:10]
    path = (
        Path(path) if path else cache_dir() / "demo" / f"db-r{resolution}-v{FORMAT_VERSION}-{key}"
    )
    if (path / "manifest.json").is_file():
        db = Database.open(path)
        if len(db) == n:
            return db
    if log:
        log(
            f"building the demo database: {n} tumors at {resolution}^3 in {path} "
            "(once; cached and resumable)"
        )
    return build_database(path, n, cfg, progress=progress)
