"""Exceptions raised by gliomatch for bad input.

Every check that rejects user input raises :class:`GliomatchError` (a ``ValueError``) with a
message that names the offending file, parameter or array and says how to fix it. The command
line turns these into a one-line error and a non-zero exit code, never a traceback.
"""

__all__ = ["GliomatchError"]


class GliomatchError(ValueError):
    """Invalid input: a wrong shape, a missing file, an out-of-range parameter, ..."""
