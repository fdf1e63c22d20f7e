"""The numba kernels of the database build and of the density codes equal their NumPy
references."""

import numpy as np
import pytest

from gliomatch.database.kernels import tumor_stats, tumor_stats_reference
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL, encode, encode_reference


@pytest.mark.parametrize("seed", range(4))
def test_tumor_stats_equal_reference(seed):
    rng = np.random.default_rng(seed)
    u = np.zeros((20, 18, 22), np.float32)
    u[3:15, 2:12, 5:20] = rng.random((12, 10, 15), dtype=np.float32) ** (1 + seed)
    levels = (np.float32(FLAIR_LEVEL), np.float32(T1GD_LEVEL))
    fast, ref = tumor_stats(u, *levels), tumor_stats_reference(u, *levels)
    assert fast[0] == ref[0] and fast[1] == ref[1]
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-9)
    assert np.array_equal(fast[3], ref[3]) and np.array_equal(fast[4], ref[4])


def test_encode_equals_reference_near_the_thresholds():
    rng = np.random.default_rng(1)
    edges = np.array([0.0, FLAIR_LEVEL, T1GD_LEVEL, 1.0], np.float32)
    near = np.concatenate([np.nextafter(edges, -1), edges, np.nextafter(edges, 2)])
    u = np.concatenate([rng.random(5000, dtype=np.float32), np.clip(near, 0, 1)])
    assert np.array_equal(encode(u), encode_reference(u))
