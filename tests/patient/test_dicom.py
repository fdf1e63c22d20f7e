"""DICOM in (dcm2niix), RT Structure Set out (pydicom): on synthetic series made here, in LPS
and oblique orientations with anisotropic voxels, files in shuffled order."""

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gliomatch.errors import GliomatchError
from gliomatch.patient.dicom import (
    check_round_trip,
    is_dicom,
    read_rtstruct,
    read_series,
    write_rtstruct,
)


def write_mr_slice(path, pixels, *, study, series, frame, x, y, position, spacing, thickness,
                   patient_id, description, instance):  # fmt: skip
    """One MR Image Storage slice: ``pixels`` (rows, cols) uint16, row direction ``x`` and
    column direction ``y`` (LPS unit vectors), first pixel at ``position`` (mm), PixelSpacing
    ``spacing`` (between rows, between columns)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Synthetic^Patient", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality, ds.SeriesDescription = "MR", description
    ds.SeriesNumber, ds.InstanceNumber = 3, int(instance)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*x, *y)]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
    ds.SliceThickness = f"{thickness:.6g}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_series(folder, *, shape=(40, 36, 24), spacing=(0.9, 1.2), thickness=3.0,
                rotation=(0, 0, 0), seed=0, series_uid=None, description="T1"):  # fmt: skip
    """A synthetic MR series: ``shape`` = (rows, columns, slices), PixelSpacing ``spacing``
    (between rows, between columns), slices ``thickness`` mm apart along the normal of an
    orientation rotated by ``rotation`` (degrees about x, y, z) from axial LPS; written in a
    shuffled file order with shuffled instance numbers. Returns the image's intensity array
    (rows, cols, slices) and the position function ``(r, c, k) -> LPS mm``."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rot = Rotation.from_euler("xyz", rotation, degrees=True).as_matrix()
    x, y = rot @ [1.0, 0, 0], rot @ [0, 1.0, 0]
    normal = np.cross(x, y)
    origin = np.array([-20.0, -25.0, -30.0])
    rows, cols, n = shape
    g = np.indices(shape).astype(float)
    # a bright ellipsoid in a dimmer head: the anatomy
    pos = lambda r, c, k: (origin + np.multiply.outer(r * spacing[0], y)  # noqa: E731
                           + np.multiply.outer(c * spacing[1], x)
                           + np.multiply.outer(k * thickness, normal))  # fmt: skip
    p = pos(g[0], g[1], g[2])
    centre = pos(rows / 2, cols / 2, n / 2)
    d = np.linalg.norm((p - centre) / [14.0, 16.0, 24.0], axis=-1)
    img = (np.where(d < 1, 800, 100) + rng.integers(0, 20, shape)).astype(np.uint16)
    study, series = generate_uid(), series_uid or generate_uid()
    frame = generate_uid()
    order = rng.permutation(n)
    for i, k in enumerate(order):
        write_mr_slice(
            folder / f"IM{i:04d}_{rng.integers(1e6)}", img[:, :, k], study=study, series=series,
            frame=frame, x=x, y=y, position=pos(0, 0, k), spacing=spacing, thickness=thickness,
            patient_id="SYN001", description=description, instance=rng.integers(1, 10_000),
        )  # fmt: skip
    return img, pos


@pytest.mark.parametrize(
    "rotation,spacing,thickness",
    [((0, 0, 0), (0.9, 1.2), 3.0), ((17, -9, 23), (1.1, 0.8), 2.5)],
    ids=["axial-LPS", "oblique"],
)
def test_a_series_converts_with_its_geometry_and_a_structure_set_round_trips(
    tmp_path, rotation, spacing, thickness
):
    img, pos = make_series(tmp_path / "dcm", spacing=spacing, thickness=thickness,
                           rotation=rotation)  # fmt: skip
    assert is_dicom(tmp_path / "dcm") and not is_dicom(tmp_path)
    s = read_series(tmp_path / "dcm", tmp_path / "out")
    assert s.nifti.is_file() and len(s.slices) == img.shape[2]
    # the NIfTI holds the DICOM's intensities at the DICOM's positions (LPS -> RAS), whatever
    # order the files came in
    data = np.asarray(s.image.dataobj)
    inv = np.linalg.inv(s.image.affine)
    rng = np.random.default_rng(1)
    for r, c, k in zip(*(rng.integers(0, n, 50) for n in img.shape), strict=True):
        ras = pos(r, c, k) * [-1, -1, 1]
        v = np.rint(inv[:3, :3] @ ras + inv[:3, 3]).astype(int)
        assert data[tuple(v)] == img[r, c, k]
    assert np.allclose(sorted(nib.affines.voxel_sizes(s.image.affine)),
                       sorted((*spacing, thickness)), atol=1e-3)  # fmt: skip
    # structures on the NIfTI grid: a ball (GTV), a ball with a hole, an elongated blob
    g = np.indices(data.shape[:3]).astype(float)
    world = (
        np.einsum("ij,j...->i...", s.image.affine[:3, :3], g)
        + s.image.affine[:3, 3, None, None, None]
    )
    centre = world.reshape(3, -1).mean(1)[:, None, None, None]
    dist = np.linalg.norm(world - centre, axis=0)
    gtv = dist < 6
    ring = (dist < 11) & (dist > 4)
    blob = (np.abs(world[0] - centre[0]) < 15) & (np.abs(world[1] - centre[1]) < 5) & (dist < 16)
    rois = [
        (name, nib.Nifti1Image(m.astype(np.uint8), s.image.affine), kind, color)
        for name, m, kind, color in (("GTV", gtv, "GTV", (255, 0, 0)),
                                     ("CTV ring", ring, "CTV", (0, 255, 0)),
                                     ("CTV blob", blob, "CTV", (255, 255, 0)))
    ]  # fmt: skip
    out = write_rtstruct(s, rois, tmp_path / "rtstruct.dcm")
    import pydicom

    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and ds.PatientID == "SYN001"
    ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    refs = ref.RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == s.series_uid and len(refs.ContourImageSequence) == 24
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV", "CTV ring", "CTV blob"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["GTV", "CTV", "CTV"]
    # read back and rasterized: within one pixel of each slice's mask
    assert check_round_trip(out, s, rois) == {"GTV": 0, "CTV ring": 0, "CTV blob": 0}
    back = read_rtstruct(out, s)
    for name, image, *_ in rois:
        from gliomatch.patient.dicom import _mask_on_slices

        want = _mask_on_slices(s, np.asarray(image.dataobj) > 0, image.affine)
        assert want.sum() > 0
        assert (want ^ back[name]).sum() <= 0.1 * want.sum()
    # the ring's hole is a hole in the structure set too
    mid = len(s.slices) // 2
    assert (
        back["CTV ring"][mid].any()
        and not back["CTV ring"][mid][
            tuple(np.argwhere(_mask_on_slices(s, gtv & (dist < 3), s.image.affine)[mid])[0])
        ]
    )


def test_bad_dicom_input_is_a_one_line_error(tmp_path):
    with pytest.raises(GliomatchError, match="file not found"):
        read_series(tmp_path / "nothing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("not dicom")
    with pytest.raises(GliomatchError, match="no DICOM file"):
        read_series(tmp_path / "empty", tmp_path / "o")
    make_series(tmp_path / "two", shape=(20, 20, 6), description="T1")
    make_series(tmp_path / "two", shape=(20, 20, 6), description="FLAIR", seed=3)
    with pytest.raises(GliomatchError, match="holds 2 DICOM series"):
        read_series(tmp_path / "two", tmp_path / "o")
    # one file of the folder names its series
    one = sorted((tmp_path / "two").iterdir())[0]
    assert len(read_series(one, tmp_path / "o").slices) == 6
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    with pytest.raises(GliomatchError, match="no DICOM image with a position"):
        read_series(bad, tmp_path / "o")


def series_from_nifti(img, folder, *, seed=0):
    """``img`` (a NIfTI scan) written as a DICOM series: one slice per third-axis index, pixel
    (row r, column c) = voxel (c, r, k); positions and orientation from its affine (RAS ->
    LPS). Files in shuffled order."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    a = img.affine
    flip = np.diag([-1.0, -1.0, 1.0])
    x, y = flip @ a[:3, 0], flip @ a[:3, 1]
    sx, sy = np.linalg.norm(x), np.linalg.norm(y)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = np.rint(4000 * (data - data.min()) / max(np.ptp(data), 1e-6)).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for i, k in enumerate(rng.permutation(data.shape[2])):
        write_mr_slice(
            folder / f"{rng.integers(1e9)}.dcm", data[:, :, k].T, study=study, series=series,
            frame=frame, x=x / sx, y=y / sy,
            position=flip @ (a[:3, :3] @ [0, 0, k] + a[:3, 3]), spacing=(sy, sx),
            thickness=np.linalg.norm(a[:3, 2]), patient_id="SYN002", description="T1",
            instance=i + 1,
        )  # fmt: skip


def test_infer_from_a_dicom_series_writes_an_rt_structure_set(make_db, tmp_path):
    """`infer --t1 <DICOM folder>`: the series converted (kept in the outputs), the patient
    planned, and the GTV and both CTVs written as an RT Structure Set referencing the series,
    which reads back within one pixel of the NIfTI plans; a NIfTI input says why there is
    none."""
    import json

    import pydicom
    from nibabel.processing import resample_from_to
    from typer.testing import CliRunner

    from gliomatch.cli import app
    from gliomatch.patient.synthetic import make_patient

    db = make_db(20, resolution=32, seed=5)
    row = db.params.iloc[3]
    theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
    pat = make_patient(db.atlas(), tmp_path / "pat", density=db.density(3), theta=theta, seed=2)
    series_from_nifti(nib.load(pat.t1), tmp_path / "dcm")
    # the segmentation on the converted grid (the same world grid: nearest neighbour is exact)
    conv = read_series(tmp_path / "dcm", tmp_path / "conv")
    seg = resample_from_to(nib.load(pat.seg), conv.image, order=0)
    nib.save(seg, tmp_path / "seg.nii.gz")
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["infer", "--db", str(db.path), "--out", str(out), "--t1",
                                 str(tmp_path / "dcm"), "--seg", str(tmp_path / "seg.nii.gz"),
                                 "--labels", "brats2021", "--registration", "affine",
                                 "--no-refine", "--k", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "converted to" in r.output and "RT Structure Set" in r.output
    assert (out / "dicom" / "anatomy.nii.gz").is_file()
    summary = json.loads((out / "matches.json").read_text())
    rt = summary["rt_structure_set"]
    assert rt["written"] and rt["pixels_off_by_more_than_one"] == {
        "GTV": 0, "CTV standard": 0, "CTV personalized": 0}  # fmt: skip
    ds = pydicom.dcmread(out / "rtstruct.dcm")
    assert ds.PatientID == "SYN002" and ds.ApprovalStatus == "UNAPPROVED"
    back = read_rtstruct(out / "rtstruct.dcm", conv)
    from gliomatch.patient.dicom import _mask_on_slices

    ctv = nib.load(out / "ctv_personalized.nii.gz")
    want = _mask_on_slices(conv, np.asarray(ctv.dataobj) > 0, ctv.affine)
    assert want.any() and (want ^ back["CTV personalized"]).sum() <= 0.2 * want.sum()
    # NIfTI in: no structure set, and matches.json says why
    r = CliRunner().invoke(app, ["infer", "--db", str(db.path), "--out", str(tmp_path / "n"),
                                 "--t1", str(pat.t1), "--seg", str(pat.seg), "--labels",
                                 "brats2021", "--registration", "affine", "--no-refine",
                                 "--k", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rt = json.loads((tmp_path / "n" / "matches.json").read_text())["rt_structure_set"]
    assert not rt["written"] and "NIfTI" in rt["why"]
    assert not (tmp_path / "n" / "rtstruct.dcm").exists()
