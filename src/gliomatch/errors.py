"""Exceptions raised by gliomatch for bad input, and the checks every entry point shares.

Every check that rejects user input raises :class:`GliomatchError` (a ``ValueError``) with a
message that names the offending file, parameter or array and says how to fix it. The command
line turns these into a one-line error and a non-zero exit code, never a traceback. A count
that the Python API and the command line both take (``k``, ``loop_check``, ...) is checked by
:func:`check_count` where the API is entered, so both refuse the same values.
"""

import numbers

__all__ = ["GliomatchError", "check_count"]


class GliomatchError(ValueError):
    """Invalid input: a wrong shape, a missing file, an out-of-range parameter, ..."""


def check_count(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``; else a one-line error naming ``name``
    (``k``, ``--loop-check``, ...). Booleans and non-integral numbers are refused.

    Examples
    --------
    >>> check_count(3, "k")
    3
    >>> check_count(-3, "k")
    Traceback (most recent call last):
    ...
    gliomatch.errors.GliomatchError: k must be >= 1 (a positive integer), got -3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, "an integer")
        raise GliomatchError(f"{name} must be >= {minimum} ({kind}), got {value!r}")
    return int(value)
