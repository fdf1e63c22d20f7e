import nibabel as nib
import numpy as np
import pytest

from gliomatch.atlas import Atlas, cache_dir, mni152_atlas, user_atlas
from gliomatch.errors import GliomatchError


def test_mni152_grid(atlas32, atlas64):
    for a, n, h in ((atlas32, 32, 6.0), (atlas64, 64, 3.0)):
        assert a.shape == (n, n, n)
        assert a.spacing == pytest.approx(h)
        assert np.allclose(a.affine[:3, :3], np.eye(3) * h)
        for m in (a.wm, a.gm, a.csf, a.t1):
            assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
        # the whole brain is inside the grid: no tissue on the outer faces
        t = a.tissue
        assert not (
            t[0].any()
            or t[-1].any()
            or t[:, 0].any()
            or t[:, -1].any()
            or t[:, :, 0].any()
            or t[:, :, -1].any()
        )
        info = a.info()
        # MNI152 2009: about 0.7 l of white and 1.0 l of grey matter
        assert 550 < info["wm_cm3"] < 800 and 850 < info["gm_cm3"] < 1150


def test_tissue_volumes_consistent_across_resolutions(atlas32, atlas64):
    assert atlas32.info()["wm_cm3"] == pytest.approx(atlas64.info()["wm_cm3"], rel=0.02)


def test_cache_roundtrip(atlas32):
    files = list((cache_dir() / "atlas").glob("mni152-2009-r32-*.npz"))
    assert files
    again = mni152_atlas(32)
    assert again.checksum == atlas32.checksum


def test_world_coordinates(atlas32):
    centre = atlas32.fraction_to_world([0.5, 0.5, 0.5])
    assert np.allclose(atlas32.world_to_voxel(centre), atlas32.fraction_to_voxel([0.5] * 3))


@pytest.mark.parametrize("res", [7, 0, -3, 2.5])
def test_bad_resolution(res):
    with pytest.raises(GliomatchError, match="resolution"):
        mni152_atlas(res)


def _write_user_atlas(folder, atlas: Atlas, **override):
    folder.mkdir(exist_ok=True)
    for name in ("t1", "wm", "gm", "csf"):
        data = override.get(name, getattr(atlas, name))
        nib.save(
            nib.Nifti1Image(np.asarray(data, dtype=np.float32), atlas.affine),
            str(folder / f"{name}.nii.gz"),
        )
    return folder


def test_user_atlas_roundtrip(tmp_path, atlas64):
    folder = _write_user_atlas(tmp_path / "sri", atlas64)
    a = user_atlas(folder, 32)
    assert a.shape == (32, 32, 32)
    assert a.source.startswith("user:")
    assert a.info()["wm_cm3"] == pytest.approx(atlas64.info()["wm_cm3"], rel=0.05)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"wm": np.zeros((10, 10, 10))}, "shape"),
        ({"gm": np.full((64, 64, 64), 1.5)}, r"\[0, 1\]"),
        ({"csf": np.full((64, 64, 64), np.nan)}, "NaN"),
        ({"wm": np.zeros((64, 64, 64))}, "empty"),
        ({"t1": np.zeros((64, 64, 64, 2))}, "3-D"),
    ],
)
def test_user_atlas_bad(tmp_path, atlas64, override, message):
    folder = _write_user_atlas(tmp_path / "bad", atlas64, **override)
    with pytest.raises(GliomatchError, match=message):
        user_atlas(folder, 32, use_cache=False)


def test_user_atlas_missing(tmp_path, atlas64):
    folder = _write_user_atlas(tmp_path / "m", atlas64)
    (folder / "csf.nii.gz").unlink()
    with pytest.raises(GliomatchError, match="csf"):
        user_atlas(folder, 32)
    with pytest.raises(GliomatchError, match="not a folder"):
        user_atlas(tmp_path / "nope", 32)


def test_user_atlas_mismatched_affine(tmp_path, atlas64):
    folder = _write_user_atlas(tmp_path / "aff", atlas64)
    shifted = atlas64.affine.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(atlas64.gm, shifted), str(folder / "gm.nii.gz"))
    with pytest.raises(GliomatchError, match="affine"):
        user_atlas(folder, 32, use_cache=False)
