"""Installation: the patient workflow needs no optional extra, a missing extra is a one-line
error naming it, and the core lock resolves to wheels on every supported platform."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError, require_extra

ROOT = Path(__file__).resolve().parents[1]


def test_the_patient_workflow_imports_no_optional_extra():
    """torch, MONAI and pyradiomics serve only the learned and radiomics strategies: the CLI,
    the pipeline, the search and the database never import them."""
    code = (
        "import sys, gliomatch.cli, gliomatch.cli.infer, gliomatch.patient.pipeline, "
        "gliomatch.search, gliomatch.database.build, gliomatch.evaluation.stress\n"
        "print([m for m in ('torch', 'monai', 'radiomics') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_a_one_line_error_naming_it(make_db, monkeypatch):
    import importlib.util

    from gliomatch.search import get_strategy

    db = make_db(6, seed=43, indexes=())

    real = importlib.util.find_spec
    absent = {"torch", "monai", "radiomics"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in absent else real(name, *a))  # fmt: skip
    with pytest.raises(GliomatchError, match=r"needs torch and monai, not installed.*'learn'"):
        require_extra("learn", "training")
    with pytest.raises(GliomatchError, match="the ae search strategy needs torch"):
        get_strategy("ae", db)
    with pytest.raises(GliomatchError, match=r"pip install 'gliomatch\[radiomics\]'"):
        get_strategy("radiomics", db)
    r = CliRunner().invoke(app, ["train", "ae", "--db", str(db.path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "training needs torch and monai" in r.output and "'learn' extra" in r.output


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_the_core_lock_resolves_to_wheels_on_every_supported_platform():
    """`make check-lock`: a dry-run resolution of requirements.lock with wheels only (no
    compiler), for CPython 3.11-3.13 on Linux x86_64 and macOS arm64 (macOS 14+); the six
    resolutions run at once (they wait on PyPI, not on the CPU)."""
    uv = Path(sys.executable).parent / "uv"
    uv = str(uv) if uv.exists() else shutil.which("uv")
    if uv is None or not _pypi_reachable():
        pytest.skip("uv or PyPI not available here")
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"}
    runs = {
        (python, platform): subprocess.Popen(
            [
                uv,
                "pip",
                "compile",
                str(ROOT / "requirements.lock"),
                "--python-version",
                python,
                "--python-platform",
                platform,
                "--only-binary",
                ":all:",
                "--no-deps",
                "--quiet",
                "-o",
                os.devnull,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for python in ("3.11", "3.12", "3.13")
        for platform in ("x86_64-manylinux_2_28", "aarch64-apple-darwin")
    }
    failed = {}
    for target, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed[target] = err[-1000:]
    assert not failed, failed
