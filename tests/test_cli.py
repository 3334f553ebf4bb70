"""The geolrm-jax command line: dispatch, help, and the cameras command end to end."""

import subprocess
import sys

import numpy as np
import pytest

from geolrm_jax import cli, geometry


def test_help_lists_commands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_every_command_module_has_main_and_the_listed_help():
    from geolrm_jax import commands

    for name, (_, help_) in commands.COMMANDS.items():
        module = commands.command_module(name)
        assert callable(module.main) and module.HELP == help_, name


def test_listing_the_commands_imports_none_of_them():
    code = ("import sys; from geolrm_jax import cli; cli.main([]); "
            "print(sorted(m for m in sys.modules if m.startswith('geolrm_jax.commands.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("preset, views", [("sv3d", 21), ("zero123pp", 6)])
def test_cameras_command_writes_rays(tmp_path, preset, views):
    out = tmp_path / "rays.npz"
    assert cli.main(["cameras", "--preset", preset, "--size", "16", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["plucker"].shape == (views, 16, 16, 6)
    expected = geometry.CAMERA_PRESETS[preset]()
    np.testing.assert_allclose(data["c2w"], expected.c2w, atol=1e-6)
    np.testing.assert_allclose(data["plucker"], geometry.plucker_embedding(expected.c2w, expected.K, 16, 16), atol=1e-6)


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "geolrm_jax.cli", "cameras", "--size", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "zero123pp: 6 views" in result.stdout
