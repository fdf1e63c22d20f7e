"""What a process holds: its resident memory now and at its peak (for the benchmarks' and
the trainings' reports), on Linux, macOS and Windows alike."""

from __future__ import annotations

import sys

import psutil

__all__ = ["peak_rss_bytes", "rss_bytes"]


def rss_bytes() -> int:
    """Resident memory of this process now, in bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The largest resident memory this process has held since it started, in bytes."""
    if sys.platform == "win32":
        return int(psutil.Process().memory_info().peak_wset)
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: kB
