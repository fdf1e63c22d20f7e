"""File primitives: checksums, atomic writes, output paths confined to a folder, cache keys.

Every file gliomatch reads back (database tables, index arrays, trained models) may be corrupt
or hostile, and every output path derived from user data (a patient id in a cohort CSV) may try
to escape its folder. These helpers are the one place that handles both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from gliomatch.errors import GliomatchError

__all__ = [
    "cache_key",
    "confined_child",
    "file_digests",
    "sha256_file",
    "stale_temporaries",
    "worker_pool",
    "write_json_atomic",
]

#: A name usable as one path component: letters, digits, ``.``, ``_``, ``-``; starts with a
#: letter or digit (so never ``.`` or ``..``), at most 128 characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (sorted, POSIX separators)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written).

    NaN and infinities are refused: they are not JSON.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def confined_child(folder: Path, name: str, what: str = "name") -> Path:
    """``folder / name`` for a ``name`` that comes from user data, refused unless it is one
    plain path component (see :data:`SAFE_NAME`) that stays inside ``folder``.

    Examples
    --------
    >>> confined_child(Path("out"), "patient-007").as_posix()
    'out/patient-007'
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise GliomatchError(
            f"{what} {name!r} cannot be used as a folder name: use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    child = Path(folder) / name
    if child.resolve().parent != Path(folder).resolve():
        raise GliomatchError(f"{what} {name!r} would leave the output folder {folder}")
    return child


def cache_key(**parts) -> str:
    """A short stable key of everything a cached result depends on (JSON-serialisable)."""
    text = json.dumps(parts, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stale_temporaries(folder: Path, prefix: str = ".tmp-") -> list[Path]:
    """Temporary entries ``<prefix>...-<pid>`` in ``folder`` whose writer process is gone."""
    out = []
    if not Path(folder).is_dir():
        return out
    for p in Path(folder).glob(f"{prefix}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_pool(workers: int):
    """A process pool whose workers end when this process ends, even when it is killed
    (``SIGKILL`` included, on Linux): a killed index build leaves no orphaned workers."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to send SIGTERM to this worker when its parent dies (prctl
    PR_SET_PDEATHSIG); where that is unavailable, nothing changes."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
