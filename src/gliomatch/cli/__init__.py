"""The ``gliomatch`` command line: ``gliomatch <noun> <verb>``, one module per noun.

A command parses its options, calls one library function and prints; every failure becomes one
``error:`` line (:func:`gliomatch.cli.common.handle_errors`). Progress bars (rich) live here
only: the library reports progress through a ``progress(done, total, description)`` callback.
"""

from gliomatch.cli import (  # noqa: F401
    atlas,
    bench,
    bench_patient,
    bench_stress,
    db,
    demo,
    evaluate,
    infer,
    plan,
    predictgbm,
    recurrence,
    search,
    simulate,
    train,
)
from gliomatch.cli.apps import app

__all__ = ["app", "main"]


def main():  # pragma: no cover - console entry point
    app()
