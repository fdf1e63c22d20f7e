"""DICOM in, RT Structure Set out.

**In.** A DICOM series (a folder, or one of its files) is converted to NIfTI by ``dcm2niix``
(Rorden's converter, the field's reference, shipped as a wheel on PyPI): it orders the slices by
their position along the slice normal (not by file name or instance number), keeps oblique
orientations and anisotropic voxels in the affine, and refuses what it cannot stack. ANTsPy's
``dicom_read`` stacks files in directory-listing order with the first slice's 2-D spacing, and
stacking by hand with pydicom repeats the slice-order and orientation errors rt-utils' and
dicom2nifti's users report; so neither. pydicom reads the series' headers (which series, its
slices' UIDs and geometry) for the structure set. The converted NIfTI is kept in the outputs.

**Out.** :func:`write_rtstruct` writes binary masks on the NIfTI grid as a DICOM RT Structure
Set (pydicom) referencing every slice of the series: for each slice, the mask is sampled at the
slice's own pixel centres (their patient coordinates from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, mapped to the NIfTI grid through its affine, LPS to RAS),
and its outlines at level 0.5 (contourpy, matplotlib's contour engine) become CLOSED_PLANAR
contours in patient coordinates (mm). The geometry is therefore the DICOM's own, whatever order
or flips the conversion chose. :func:`read_rtstruct` rasterizes the contours back on the slices
(even-odd rule: a hole is a second contour), which :func:`check_round_trip` compares with the
masks; ``infer`` runs that check on every structure set it writes.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch import __version__
from gliomatch.errors import GliomatchError

__all__ = [
    "DicomSeries",
    "check_round_trip",
    "is_dicom",
    "read_rtstruct",
    "read_series",
    "write_rtstruct",
]

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom(path) -> bool:
    """Is ``path`` a DICOM file (the ``DICM`` preamble) or a folder holding one?"""
    p = Path(path)
    if p.is_dir():
        return any(_has_magic(f) for f in sorted(p.iterdir())[:2000] if f.is_file())
    return p.is_file() and _has_magic(p)


@dataclass
class DicomSlice:
    sop_class: str
    sop_instance: str
    position: np.ndarray  # ImagePositionPatient (mm, LPS): the first pixel's centre


@dataclass
class DicomSeries:
    """A series read for planning: its NIfTI conversion, and what a structure set referencing
    it needs (slices sorted along the normal, geometry, patient and study)."""

    nifti: Path
    image: nib.Nifti1Image
    folder: Path
    series_uid: str
    frame_of_reference: str
    rows: int
    columns: int
    orientation: np.ndarray  # ImageOrientationPatient: row direction (3), column direction (3)
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)
    slices: list[DicomSlice]
    header: dict = field(default_factory=dict)  # patient and study attributes, copied

    def pixel_points(self, k: int) -> np.ndarray:
        """Patient coordinates (mm, LPS) of slice ``k``'s pixel centres, shape (rows, cols, 3)."""
        cols, rows = np.meshgrid(np.arange(self.columns), np.arange(self.rows))
        pixels = np.stack([cols.ravel(), rows.ravel()], axis=1)
        return self.to_patient(k, pixels).reshape(self.rows, self.columns, 3)

    def to_patient(self, k: int, pixels: np.ndarray) -> np.ndarray:
        """(column, row) pixel coordinates (n, 2) on slice ``k`` -> patient coordinates (mm,
        LPS); :meth:`to_pixels` is its inverse."""
        x, y = self.orientation[:3], self.orientation[3:]
        p = np.asarray(pixels, float)
        return (self.slices[k].position + p[:, :1] * self.spacing[1] * x
                + p[:, 1:] * self.spacing[0] * y)  # fmt: skip

    def to_pixels(self, k: int, points: np.ndarray) -> np.ndarray:
        """Patient coordinates (n, 3) on slice ``k`` -> (column, row) pixel coordinates."""
        x, y = self.orientation[:3], self.orientation[3:]
        d = np.asarray(points, float) - self.slices[k].position
        return np.stack([d @ x / self.spacing[1], d @ y / self.spacing[0]], axis=1)


_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
)  # fmt: skip


def _headers(files):
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a damaged file: refused below, not warned
                ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise GliomatchError(f"DICOM file {f}: unreadable ({type(exc).__name__})") from None
        if "SeriesInstanceUID" not in ds or "ImagePositionPatient" not in ds:
            continue  # not an image of a series (a DICOMDIR, a structure set, a report)
        out.append((f, ds))
    return out


def _one_series(path: Path):
    """The files and headers of the one series ``path`` names (a folder holding one series, or
    one file of a series in its folder)."""
    folder = path if path.is_dir() else path.parent
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and _has_magic(f)]
    if not files:
        raise GliomatchError(f"{path}: no DICOM file (none starts with the DICM preamble)")
    found = _headers(files)
    if not found:
        raise GliomatchError(
            f"{path}: no DICOM image with a position (ImagePositionPatient): damaged files, or "
            "not images"
        )
    series: dict[str, list] = {}
    for f, ds in found:
        series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    if path.is_file():
        uid = dict(found).get(path)
        if uid is None:
            raise GliomatchError(f"{path}: not a DICOM image of a series")
        return series[str(uid.SeriesInstanceUID)]
    if len(series) > 1:
        names = ", ".join(
            f"{ds[0][1].get('SeriesDescription', '?')} ({len(ds)} files)" for ds in series.values()
        )
        raise GliomatchError(
            f"{path} holds {len(series)} DICOM series ({names}): give one of its files, or a "
            "folder holding one series"
        )
    return next(iter(series.values()))


def read_series(path, out_dir) -> DicomSeries:
    """Convert the DICOM series at ``path`` (a folder of one series, or one of its files) to
    ``out_dir/anatomy.nii.gz`` with dcm2niix, and read what a structure set needs."""
    import dcm2niix

    path = Path(path)
    if not path.exists():
        raise GliomatchError(f"{path}: file not found")
    members = _one_series(path)
    first = members[0][1]
    for key in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "SOPInstanceUID"):
        if key not in first:
            raise GliomatchError(f"DICOM series {path}: its images have no {key}")
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    spacing = tuple(float(v) for v in first.PixelSpacing)
    rows, cols = int(first.Rows), int(first.Columns)
    for f, ds in members:
        same = (
            np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4)
            and np.allclose([float(v) for v in ds.PixelSpacing], spacing, atol=1e-4)
            and (int(ds.Rows), int(ds.Columns)) == (rows, cols)
        )
        if not same:
            raise GliomatchError(
                f"DICOM series {path}: {f.name} has another orientation, pixel spacing or size "
                "than the others (a localizer or a second acquisition?): not one volume"
            )
    normal = np.cross(iop[:3], iop[3:])
    members.sort(key=lambda m: float(np.dot([float(v) for v in m[1].ImagePositionPatient],
                                            normal)))  # fmt: skip
    slices = [
        DicomSlice(
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            np.asarray([float(v) for v in ds.ImagePositionPatient]),
        )  # fmt: skip
        for _, ds in members
    ]
    if len(slices) < 2:
        raise GliomatchError(f"DICOM series {path}: one slice, not a volume")
    if len({s.sop_instance for s in slices}) < len(slices):
        raise GliomatchError(f"DICOM series {path}: two files of the same image (SOPInstanceUID)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gliomatch-dicom-") as tmp:
        src = Path(tmp) / "series"
        src.mkdir()
        for i, (f, _) in enumerate(members):
            shutil.copyfile(f, src / f"{i:05d}.dcm")  # this series only, nothing else
        conv = Path(tmp) / "nifti"
        conv.mkdir()
        run = subprocess.run(
            [dcm2niix.bin, "-z", "y", "-b", "n", "-f", "anatomy", "-o", str(conv), "-d", "0",
             "-i", "n", "-x", "n", str(src)],
            capture_output=True, text=True,
        )  # fmt: skip
        made = sorted(conv.glob("*.nii.gz"))
        if run.returncode != 0 or len(made) != 1:
            why = (run.stderr or run.stdout).strip().splitlines()
            raise GliomatchError(
                f"DICOM series {path}: dcm2niix could not make one volume of it"
                + (f" ({why[-1]})" if why else f" ({len(made)} volumes)")
            )
        nifti = out_dir / "anatomy.nii.gz"
        shutil.copyfile(made[0], nifti)
    image = nib.load(str(nifti))
    image = nib.Nifti1Image(
        np.asarray(image.dataobj, dtype=np.float32), image.affine, image.header
    )  # fmt: skip  (in memory: the file may move)
    image.set_data_dtype(np.float32)
    header = {k: first.get(k) for k in _PATIENT_STUDY if k in first}
    return DicomSeries(
        nifti, image, path if path.is_dir() else path.parent, str(first.SeriesInstanceUID),
        str(first.get("FrameOfReferenceUID", "")), rows, cols, iop, spacing, slices, header,
    )  # fmt: skip


def _mask_on_slices(series: DicomSeries, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The mask (a NIfTI grid's array) at every slice's pixel centres: (slices, rows, cols)."""
    inv = np.linalg.inv(np.asarray(affine, float))
    out = np.zeros((len(series.slices), series.rows, series.columns), bool)
    shape = np.asarray(mask.shape[:3])
    for k in range(len(series.slices)):
        ras = series.pixel_points(k).reshape(-1, 3) @ _LPS_TO_RAS.T
        vox = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        inside = np.all((vox >= 0) & (vox < shape), axis=1)
        vals = np.zeros(len(vox), bool)
        vals[inside] = mask[vox[inside, 0], vox[inside, 1], vox[inside, 2]]
        out[k] = vals.reshape(series.rows, series.columns)
    return out


def _outlines(sl: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (column, row) of a boolean slice at level 0.5 (holes included)."""
    import contourpy

    z = np.pad(sl.astype(np.float64), 1)  # every outline closes inside the padded frame
    gen = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate)
    lines = []
    for line in gen.lines(0.5):
        pts = np.asarray(line) - 1.0  # back to the slice's pixel indices
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]  # CLOSED_PLANAR: the closing point is implied
        if len(pts) >= 3:
            lines.append(pts)
    return lines


def _ds(v: float) -> str:
    return f"{v:.3f}"


def _item(**attributes):
    """A pydicom Dataset with these attributes (by keyword)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def write_rtstruct(series: DicomSeries, rois, path, *, label: str = "gliomatch") -> Path:
    """Write ``rois`` (``(name, mask_image, interpreted_type, (r, g, b))``: masks on any NIfTI
    grid of the series' space; type ``GTV``, ``CTV``, ...) as an RT Structure Set referencing
    ``series``; returns ``path``."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for key, value in series.header.items():
        setattr(ds, key, value)
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):  # fmt: skip
        if key not in ds:
            setattr(ds, key, "")  # type 2: present, may be empty
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "gliomatch"
    ds.ManufacturerModelName = "gliomatch"
    ds.SoftwareVersions = __version__
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 999
    ds.SeriesDescription = f"{label} target volumes"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"  # a physician reviews and approves in the planning system
    frame = series.frame_of_reference or generate_uid()

    def image_refs(ks):
        return Sequence([_item(ReferencedSOPClassUID=series.slices[k].sop_class,
                               ReferencedSOPInstanceUID=series.slices[k].sop_instance)
                         for k in ks])  # fmt: skip

    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_uid
    ref_series.ContourImageSequence = image_refs(range(len(series.slices)))
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    ref_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])

    roi_seq, contour_seq, obs_seq = [], [], []
    for number, (name, image, kind, color) in enumerate(rois, 1):
        mask = np.asarray(image.dataobj) > 0
        on_slices = _mask_on_slices(series, mask, image.affine)
        if mask.any() and not on_slices.any():
            raise GliomatchError(f"structure {name}: outside the DICOM series' slices")
        roi_seq.append(_item(ROINumber=number, ReferencedFrameOfReferenceUID=frame,
                             ROIName=name, ROIGenerationAlgorithm="AUTOMATIC"))  # fmt: skip
        contours = []
        for k in range(len(series.slices)):
            for pts in _outlines(on_slices[k]):
                world = series.to_patient(k, pts)
                contours.append(
                    _item(
                        ContourImageSequence=image_refs([k]),
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(world),
                        ContourData=[_ds(v) for v in world.ravel()],
                    )  # fmt: skip
                )
        item = _item(ROIDisplayColor=[int(v) for v in color], ReferencedROINumber=number)
        if contours:
            item.ContourSequence = Sequence(contours)
        contour_seq.append(item)
        obs_seq.append(_item(ObservationNumber=number, ReferencedROINumber=number,
                             RTROIInterpretedType=kind, ROIInterpreter=""))  # fmt: skip
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    tmp.replace(path)
    return path


def read_rtstruct(path, series: DicomSeries) -> dict[str, np.ndarray]:
    """Each structure of an RT Structure Set rasterized on ``series``' slices: ``{name: bool
    array (slices, rows, cols)}`` (a pixel is in when its centre lies inside an odd number of
    the slice's contours)."""
    import pydicom
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    index = {s.sop_instance: k for k, s in enumerate(series.slices)}
    grid = np.stack(np.meshgrid(np.arange(series.columns), np.arange(series.rows)), -1)
    centres = grid.reshape(-1, 2).astype(float)  # (column, row) of every pixel
    out = {}
    for item in ds.ROIContourSequence:
        mask = np.zeros((len(series.slices), series.rows, series.columns), bool)
        for c in item.get("ContourSequence", []):
            k = index[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
            poly = Polygon(series.to_pixels(k, pts), closed=False)
            inside = poly.contains_points(centres).reshape(series.rows, series.columns)
            mask[k] ^= inside
        out[names[int(item.ReferencedROINumber)]] = mask
    return out


def check_round_trip(path, series: DicomSeries, rois) -> dict[str, int]:
    """Read the structure set back and compare each structure with its mask on the slices:
    ``{name: pixels that differ and lie more than one pixel from the mask's edge}`` (0 for a
    faithful structure set; the contours run along pixel edges, so a difference within one
    pixel of the edge is the contour's own tolerance)."""
    from scipy import ndimage

    back = read_rtstruct(path, series)
    out = {}
    cross = ndimage.generate_binary_structure(2, 1)
    for name, image, _kind, _color in rois:
        want = _mask_on_slices(series, np.asarray(image.dataobj) > 0, image.affine)
        got = back[name]
        far = 0
        for k in range(len(want)):
            diff = want[k] ^ got[k]
            if diff.any():
                edge = ndimage.binary_dilation(want[k], cross) & ~ndimage.binary_erosion(
                    want[k], cross
                )
                far += int((diff & ~ndimage.binary_dilation(edge, cross)).sum())
        out[name] = far
    return out
