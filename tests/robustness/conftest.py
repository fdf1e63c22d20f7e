"""Fixtures of the robustness suite: a tiny database with its exact index, a synthetic patient."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app

runner = CliRunner()


def run(*args):
    """Invoke ``gliomatch ARGS``; returns (exit code, output: stdout and stderr)."""
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def one_error_line(code, output, *fragments):
    """The command failed with exit code 1 and exactly one ``error:`` line holding each of
    ``fragments``, and no traceback."""
    assert code == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def base_db(make_db):
    db = make_db(8, resolution=32, seed=3)
    from gliomatch.search import get_strategy

    get_strategy("exact", db).ensure_ready()
    return db


@pytest.fixture
def db_copy(base_db, tmp_path):
    """A private copy of the tiny database (with its index), safe to damage."""
    from gliomatch.database import Database

    dst = tmp_path / "db"
    shutil.copytree(base_db.path, dst)
    return Database.open(dst)


@pytest.fixture(scope="module")
def masks(base_db, tmp_path_factory):
    """Atlas-space FLAIR and T1Gd NIfTIs of database tumor 2 (a query with a known answer)."""
    import nibabel as nib

    folder = tmp_path_factory.mktemp("q")
    f, t = base_db.masks(2)
    paths = []
    for name, m in (("flair", f), ("t1gd", t)):
        p = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(m.astype(np.uint8), base_db.affine), str(p))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def patient(base_db, tmp_path_factory):
    from gliomatch.patient.synthetic import make_patient

    return make_patient(
        base_db.atlas(), tmp_path_factory.mktemp("patient"), density=base_db.density(1), seed=4
    )
