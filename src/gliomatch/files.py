"""File primitives: checksums, atomic writes, output paths confined to a folder, cache keys.

Every file gliomatch reads back (database tables, index arrays, trained models) may be corrupt
or hostile, and every output path derived from user data (a patient id in a cohort CSV) may try
to escape its folder. These helpers are the one place that handles both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from gliomatch.errors import GliomatchError

__all__ = [
    "atomic_path",
    "output_folder",
    "cache_key",
    "confined_child",
    "file_digests",
    "sha256_file",
    "stale_temporaries",
    "worker_pool",
    "write_json_atomic",
    "write_text_atomic",
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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer to fill; renamed onto ``path`` when the
    block ends, removed when it fails. ``path`` thus holds either its earlier content or the
    complete new file, never a truncated one (a full disk, an interrupted run).

    The temporary name keeps ``path``'s suffixes (``.model.tmp-<pid>.pt``), for writers that
    choose the format by extension (nibabel, matplotlib). A write that fails for lack of space
    or permission (``OSError``, or the ``RuntimeError`` torch raises for it) becomes a one-line
    :class:`GliomatchError` naming ``path``.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(p) as tmp:
    ...     _ = tmp.write_text("done")
    >>> p.read_text()
    'done'
    """
    path = Path(path)
    base, dot, ext = path.name.partition(".")
    tmp = path.with_name(f".{base}.tmp-{os.getpid()}{dot}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
        raise GliomatchError(f"cannot write {path}: {reason}") from exc
    except RuntimeError as exc:  # torch.save's report of a failed write
        tmp.unlink(missing_ok=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GliomatchError(
            f"cannot write {path} ({reason}); is the disk full? Free some space or choose a "
            "writable folder"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_folder(path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) if needed; a one-line error naming it when it
    cannot be (a read-only disk, a file in the way)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GliomatchError(f"{what} {path}: cannot create it ({exc.strerror})") from exc
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (never half-written)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through :func:`atomic_path` (never half-written).

    NaN and infinities are refused: they are not JSON.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))


def read_cached(path: Path) -> dict | None:
    """The JSON record cached at ``path``, or None when there is none or it does not parse
    (edited or damaged by hand: not trusted, not a traceback)."""
    path = Path(path)
    if path.is_file():
        try:
            rec = json.loads(path.read_text())
            if isinstance(rec, dict):
                return rec
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return None


def cached_record(path: Path, compute) -> dict:
    """The JSON record cached at ``path`` (:func:`read_cached`), else ``compute()``'s, written
    there atomically (a resumable benchmark's per-patient cache)."""
    rec = read_cached(path)
    if rec is not None:
        return rec
    rec = compute()
    write_text_atomic(path, json.dumps(rec))
    return rec


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
