"""Parity at the released widths: the original GeoLRM code (../shared/baselines/geolrm_official, torch on the CPU)
makes a fixture with random perturbed weights at test time (`tools/make_parity_fixture_released.py`; its
~250 MB of weights are not committed), and `tools/check_parity.py` must reproduce it in float32 (1e-4) and in
bf16 (5e-2) on every output. Under CI=true a missing original or torch/transformers fails the test."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import SHARED

REPO = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL = SHARED / "baselines" / "geolrm_official"
OUTPUTS = 14  # arrays in outputs.npz, as in geolrm_small


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require(ok: bool, message: str):
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def released_fixture(tmp_path_factory):
    _require((OFFICIAL / "src" / "models" / "geolrm.py").exists(), f"original GeoLRM code missing: {OFFICIAL}")
    for module in ("torch", "transformers"):
        _require(importlib.util.find_spec(module) is not None, f"{module} missing (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("released")
    out = root / "fixture"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_parity_fixture_released.py"), "--out", str(out),
                           "--official", str(OFFICIAL)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_check_parity_at_released_widths(released_fixture, dtype, tolerance, capsys):
    rc = _load_tool("check_parity").main(["--fixture", str(released_fixture), "--dtype", dtype])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0, "\n".join(lines)
    assert lines[-1] == "all outputs within tolerance"
    rows = {ln.split()[0]: float(ln.split()[2]) for ln in lines[1:-1]}
    assert len(rows) == OUTPUTS and "gaussians" in rows and "occupancy_logits" in rows
    for name, rel in rows.items():
        assert rel <= tolerance, (name, rel)  # NaN fails this too
    if dtype == "bfloat16":  # it really ran in bf16
        assert rows["latents"] > 1e-4


def test_generator_refuses_an_existing_directory(tmp_path, capsys):
    """Checked before torch is imported or anything is written."""
    gen = _load_tool("make_parity_fixture_released")
    (tmp_path / "keep.txt").write_text("user data")
    assert gen.main(["--out", str(tmp_path), "--official", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"
    assert gen.main(["--out", str(tmp_path / "new"), "--official", str(tmp_path)]) == 2
    assert "no src/models/geolrm.py" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
