"""The one way the library reports progress: a callback ``progress(done, total, description)``.

Long work (a database build, an index, a training, an evaluation) calls it as it goes; the
command line turns the calls into progress bars. The library itself never prints or draws.
A description is ``"what"`` or ``"what: detail"``: one bar per *what*, the detail (a loss, a
rate) may change from call to call.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "report"]

#: ``progress(done, total, description)``: ``done`` of ``total`` units of the work described.
Progress = Callable[[int, int, str], None]


def report(progress: Progress | None, done: int, total: int, description: str) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(int(done), int(total), description)
