"""One scan in the intensity conventions research datasets store (shared by the tests of
``gliomatch.intensity`` and the robustness suite)."""

import numpy as np

CONVENTIONS = ("affine", "z_zero", "z_negative", "z_whole")


def z_brain(x, background=0.0):
    """``x`` z-scored over its foreground (nonzero voxels; nnU-Net's normalization), the
    background set to the constant ``background``; float32 as such files are stored."""
    x = np.asarray(x, dtype=np.float64)
    fg = x != 0
    out = np.full(x.shape, background, np.float32)
    out[fg] = ((x[fg] - x[fg].mean()) / x[fg].std()).astype(np.float32)
    return out


def in_convention(x, convention, scale=1000.0, offset=0.0):
    """The scan ``x`` (integers, zero background) stored in another intensity convention:
    ``affine`` (x * scale + offset), ``z_zero`` / ``z_negative`` (z-scored over the brain, the
    background 0 or -1.7), ``z_whole`` (z-scored over the whole image)."""
    x64 = np.asarray(x, dtype=np.float64)
    if convention == "affine":
        return (x64 * scale + offset).astype(np.float32)
    if convention == "z_zero":
        return z_brain(x)
    if convention == "z_negative":
        return z_brain(x, background=-1.7)
    if convention == "z_whole":
        return ((x64 - x64.mean()) / x64.std()).astype(np.float32)
    raise ValueError(convention)
