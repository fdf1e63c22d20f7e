"""Exceptions raised by gliomatch for bad input, and the checks every entry point shares.

Every check that rejects user input raises :class:`GliomatchError` (a ``ValueError``) with a
message that names the offending file, parameter or array and says how to fix it. The command
line turns these into a one-line error and a non-zero exit code, never a traceback. A count
that the Python API and the command line both take (``k``, ``loop_check``, ...) is checked by
:func:`check_count` where the API is entered, so both refuse the same values.
"""

import importlib.util
import numbers

__all__ = ["EXTRAS", "GliomatchError", "check_count", "require_extra"]

#: gliomatch's optional extras and the modules each brings (pyproject.toml).
EXTRAS = {"learn": ("torch", "monai"), "radiomics": ("radiomics",)}


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


def require_extra(extra: str, what: str) -> None:
    """A one-line error when ``what`` (a strategy, a command) needs an optional extra that is
    not installed: the patient workflow needs neither torch, MONAI nor pyradiomics.

    Examples
    --------
    >>> require_extra("learn", "the ae search strategy")  # installed here: nothing happens
    """
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise GliomatchError(
            f"{what} needs {' and '.join(missing)}, not installed: install gliomatch's "
            f"'{extra}' extra (pip install 'gliomatch[{extra}]'; in a checkout, make install-all)"
        )
