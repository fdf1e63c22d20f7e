"""Scans as they come: one intensity convention for raw, rescaled, offset and z-scored scans.

Research datasets store anatomical scans in many intensity conventions: raw scanner values
with a zero background (BraTS), rescaled ones (x 1000, 0-1, 0-255), scans z-scored over the
whole image (the background becomes a negative constant), and scans z-scored over the brain
only with the background left at 0 (nnU-Net's normalization, BraTS 2013-2015 as some
toolkits distribute them), where half of the brain is negative. Every intensity-based step
of gliomatch (the brain support, the skull test, the registration's working copy and its N4
input) reads a scan through :func:`canonical`, which maps all of these to the same image.

The rule:

* **background** — the most frequent value on the image's six faces (:func:`background_value`):
  0 for a raw or BraTS scan, the negative constant of a whole-image z-score, 0 again for a
  brain-only z-score;
* **foreground** — every voxel whose value differs from the background;
* **levels** — scanners store integers, so the foreground's values lie on a lattice
  ``a k + b`` (``a > 0``, integer ``k``) however the scan was later rescaled or z-scored; when
  they do (to within a hundredth of a step, :func:`lattice_levels`), the integer levels ``k``
  replace the values, which removes the float rounding a rescaling left (a z-scored scan
  stored as float32 carries about one part in 10^7);
* **scale** — the foreground's 0.5th and 99th percentiles ``lo`` and ``hi``; the canonical
  intensity is ``(x - lo) / (hi - lo)`` on the foreground, clipped below at 0, and 0 on the
  background.

Why it is invariant: a positive affine map ``a x + b`` (``a > 0``) carries the background
value, the foreground set, the lattice and the percentiles along with it, so
``(x - lo) / (hi - lo)`` is unchanged; a z-score over the foreground is such a map on the
foreground, and the background constant it leaves (0 or any other) is not read. On a
lattice the canonical image is the same bit for bit, so a registration of the rescaled scan
is the registration of the original (the test and docs/methods.md's real-case check); off a
lattice (an already resampled float scan) what remains is float rounding. A map with
``a < 0`` (an inverted contrast) is a different scan, not another convention of the same one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BRAIN_LEVEL", "background_value", "canonical", "foreground", "lattice_levels"]

#: The brain support of a skull-stripped scan: canonical intensity above this (5 % of the
#: foreground's 0.5-99th percentile range; faint signal left outside by a loose mask is below).
BRAIN_LEVEL = 0.05
#: The foreground percentiles that define the canonical scale.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.0
#: A lattice has at most this many steps between its lowest and highest value (16-bit data).
MAX_LEVELS = 1 << 17
#: Values off their lattice step by more than this (in steps) mean "not a lattice".
LATTICE_TOLERANCE = 0.01


def background_value(data: np.ndarray) -> float:
    """The most frequent value on the six faces of a 3-D ``data`` (ties: the smallest).

    Examples
    --------
    >>> x = np.full((4, 4, 4), -0.7); x[1:3, 1:3, 1:3] = 2.0
    >>> background_value(x)
    -0.7
    """
    a = np.asarray(data)
    faces = np.concatenate(
        [np.ravel(f) for ax in range(a.ndim) for f in (np.take(a, 0, ax), np.take(a, -1, ax))]
    )
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def foreground(data: np.ndarray) -> np.ndarray:
    """Voxels whose value differs from the background (:func:`background_value`)."""
    a = np.asarray(data)
    return a != background_value(a)


def lattice_levels(values: np.ndarray) -> np.ndarray | None:
    """Integer levels ``k`` (float64) with ``values = a k + b`` for some ``a > 0`` to within
    ``LATTICE_TOLERANCE`` of a step, counted from the lowest value; None when the values lie
    on no such lattice (or on one of more than ``MAX_LEVELS`` steps).

    Each stored value carries rounding (a float32 z-score: about 1e-7 of its magnitude), so
    a single gap is not the step to the precision that a thousand steps need. The step is
    refined outwards instead: a first guess from the smallest gaps, levels assigned to the
    values within a few dozen steps of the lowest (where the guess cannot be a whole step
    off), a least-squares line through them, and again over a range 16 times wider, until
    every value is covered.

    Examples
    --------
    >>> lattice_levels(np.array([3.0, 3.5, 5.0, 3.5])).tolist()
    [0.0, 1.0, 4.0, 1.0]
    >>> lattice_levels(np.array([0.0, 1.0, 1.3])) is None
    True
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    u, inverse = np.unique(v, return_inverse=True)
    if len(u) < 2:
        return np.zeros(v.shape) if len(u) else None
    d = u - u[0]
    gaps = np.diff(u)
    step = float(np.median(gaps[gaps < 1.5 * gaps.min()]))
    if not step > 0 or d[-1] / step > MAX_LEVELS:
        return None
    intercept, reach = 0.0, 32.0
    while True:
        near = d <= reach * step
        k = np.round((d[near] - intercept) / step)
        if k.max() > k.min():
            step, intercept = (float(c) for c in np.polyfit(k, d[near], 1))
            if not step > 0:
                return None
        if near.all():
            break
        reach *= 16
    k = (d - intercept) / step
    levels = np.round(k)
    if np.abs(k - levels).max() > LATTICE_TOLERANCE:
        return None
    return (levels - levels[0])[inverse]


def canonical(data: np.ndarray, *, fg: np.ndarray | None = None) -> np.ndarray:
    """The scan in the canonical intensity convention of the module notes (float32, >= 0,
    background 0, the foreground's 99th percentile at 1); all zeros when the scan is constant.
    ``fg``: the scan's :func:`foreground`, when the caller has it already.

    Examples
    --------
    >>> x = np.zeros((6, 6, 6)); x[1:5, 1:5, 1:5] = np.arange(64).reshape(4, 4, 4) + 10
    >>> bool(np.allclose(canonical(x), canonical(1000 * x - 3)))
    True
    """
    a = np.asarray(data)
    fg = foreground(a) if fg is None else fg
    out = np.zeros(a.shape, np.float32)
    if not fg.any():
        return out
    values = a[fg].astype(np.float64)
    levels = lattice_levels(values)
    if levels is not None:
        values = levels
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:  # a flat foreground: the foreground itself, at 1
        out[fg] = 1.0
        return out
    out[fg] = np.maximum((values - lo) / (hi - lo), 0.0)
    return out
