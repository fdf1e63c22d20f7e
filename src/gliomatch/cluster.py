"""A Dask client for the work that spreads over processes or machines (builds, sharded search).

Dask is imported here only, when a client is asked for: single-process runs never load it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from gliomatch.errors import GliomatchError

__all__ = ["check_scheduler", "dask_client", "worker_count"]

#: A Dask scheduler address: an optional protocol, a host name, IPv4 or [IPv6], and a port.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})$")


def check_scheduler(scheduler: str | None) -> str | None:
    """``scheduler`` when it is None or a Dask scheduler address (``tcp://HOST:PORT``, also
    ``tls://``, ``ws://``, ``wss://``, ``ucx://`` or no protocol); else a one-line error. Called
    where the API is entered (builds, sharded search), before any work starts."""
    if scheduler is None:
        return None
    m = _ADDRESS.match(str(scheduler)) if isinstance(scheduler, str) else None
    if m is None or not 0 < int(m.group(1)) < 65536:
        raise GliomatchError(
            f"scheduler {scheduler!r} is not a Dask scheduler address; expected "
            "tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)"
        )
    return scheduler


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A client of the scheduler at ``scheduler`` (``tcp://HOST:PORT``), or of a local cluster
    of ``workers`` single-threaded processes; closed (and the local cluster stopped) on exit."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise GliomatchError(f"cannot reach Dask scheduler {scheduler} ({exc})") from exc
    else:
        if workers is None or workers < 1:
            raise GliomatchError(f"a local Dask cluster needs >= 1 worker, got {workers}")
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_count(client, default: int = 1) -> int:
    """Workers connected to ``client``'s scheduler (``default`` if it reports none yet)."""
    return max(1, len(client.scheduler_info().get("workers", {})) or default)
