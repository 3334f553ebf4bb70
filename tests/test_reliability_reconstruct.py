"""`geolrm-jax reconstruct` never loses the user's files, checks everything before loading a model, answers bad
input with one line (exit 2), cleans up on signals and refuses empty results.

Most tests replace the model by a stand-in (``fake_model``) that records whether it was loaded, so they check the
command's behaviour in well under a second each; the signal tests run the real command in a subprocess."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_inputs import make_posed_folder, write_rgba
from test_reliability_outputs import hidden, tree

from geolrm_jax import geometry, inference, inputs, reconstruct
from geolrm_jax.model import convert
from geolrm_jax.render.gaussians import Gaussians

SAMPLE = pathlib.Path(reconstruct.__file__).parent / "assets" / "sample"
FAST = ["--video-format", "none", "--no-progress"]


class FakeModel:
    """Stands in for ``inference.Reconstructor``: ``anchors`` occupied voxels, ``gaussians`` Gaussians of
    opacity ``opacity``; counts how often it was built."""

    built = []
    anchors, gaussians, opacity = 4, 8, 0.5

    def __init__(self, config, variables):
        FakeModel.built.append((config, variables))
        self.variables = variables

    def propose(self, variables, images, c2ws, Ks, mask):
        anchor_mask = np.arange(16)[None] < self.anchors
        return np.zeros((1, 16, 3), np.float32), anchor_mask

    def reconstruct(self, variables, images, c2ws, Ks, mask, anchors, anchor_mask):
        n = self.gaussians
        rng = np.random.default_rng(0)
        return Gaussians(means=rng.uniform(-0.3, 0.3, (1, n, 3)).astype(np.float32),
                         scales=np.full((1, n, 3), 0.02, np.float32),
                         quats=np.tile(np.float32([1, 0, 0, 0]), (1, n, 1)),
                         opacities=np.full((1, n), self.opacity, np.float32),
                         rgbs=np.full((1, n, 3), 0.5, np.float32))


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """No checkpoint anywhere, and the stand-in model; ``FakeModel.built`` tells whether weights were loaded."""
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(inference, "BUNDLED_CHECKPOINTS", tmp_path / "no-bundled")
    monkeypatch.setattr(inference, "Reconstructor", FakeModel)
    monkeypatch.setattr(inference, "random_variables", lambda config, seed=0, inference=False: {"seed": seed})
    FakeModel.built = []
    FakeModel.anchors, FakeModel.gaussians, FakeModel.opacity = 4, 8, 0.5
    return FakeModel


@pytest.fixture
def posed(tmp_path):
    folder = tmp_path / "obj"
    make_posed_folder(folder, n=3, size=32)
    return folder


def run(capsys, *argv, random_weights=True):
    argv = [str(a) for a in argv]
    if random_weights and "--checkpoint" not in argv:  # no checkpoint anywhere (fake_model): random weights
        argv.append("--random-weights")
    rc = reconstruct.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


def assert_refused(rc, err, *needles):
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("geolrm-jax reconstruct: error:"), err
    for needle in needles:
        assert needle in err[0], err


def test_output_into_the_input_is_refused_and_the_input_kept(posed, capsys, fake_model):
    before = tree(posed)
    for out, message in ((posed, "is the input"), (posed / "result", "lies inside the input"),
                         (posed.parent, "contains the input")):
        rc, _, err = run(capsys, posed, "-o", out, "--overwrite", *FAST)
        assert_refused(rc, err, message)
    assert tree(posed) == before and not fake_model.built


def test_overwrite_replaces_only_the_commands_own_output(posed, tmp_path, capsys, fake_model):
    user_file = tmp_path / "notes.ply"
    user_file.write_text("the user's")
    rc, _, err = run(capsys, posed, "-o", user_file, "--overwrite", *FAST)
    assert_refused(rc, err, "notes.ply", "not written by this command")
    assert user_file.read_text() == "the user's" and hidden(tmp_path) == []  # no .notes.ply.old-PID

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    rc, _, err = run(capsys, posed, "-o", foreign, "--overwrite", *FAST)
    assert_refused(rc, err, "thesis.tex")
    assert tree(foreign) == {"thesis.tex": b"keep me"} and not fake_model.built

    out = tmp_path / "result"
    assert run(capsys, posed, "-o", out, *FAST)[0] == 0
    first = tree(out)
    assert set(first) == {"gaussians.ply", "gaussians.splat", "summary.json"}
    rc, _, err = run(capsys, posed, "-o", out, *FAST)
    assert_refused(rc, err, "--overwrite")
    fake_model.gaussians = 5
    assert run(capsys, posed, "-o", out, "--overwrite", *FAST)[0] == 0
    assert json.loads((out / "summary.json").read_text())["gaussians_written"] == 5
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("flag, value", [
    ("--video-frames", 0), ("--video-size", 0), ("--fps", 0), ("--image-size", 0), ("--num-views", 0),
    ("--max-views", 0), ("--radius", -1), ("--radius", "nan"), ("--distance", 0), ("--min-opacity", 1.5),
    ("--elevation", 90), ("--render-size", 0), ("--video-size", 33),
])
def test_bad_arguments_stop_before_anything_is_written(posed, tmp_path, capsys, monkeypatch, fake_model, flag,
                                                       value):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, posed, flag, value, "--render-views", "--no-progress")
    assert_refused(rc, err, flag)
    assert not (tmp_path / "outputs").exists() and not fake_model.built


def test_unwritable_output_is_found_before_the_model_runs(posed, tmp_path, capsys, monkeypatch, fake_model):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, posed, "-o", tmp_path / "afile" / "out", *FAST)
    assert_refused(rc, err, "is not a folder")
    monkeypatch.chdir(posed)
    rc, _, err = run(capsys, posed, "-o", ".", "--overwrite", *FAST)
    assert_refused(rc, err, "is the input")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    rc, _, err = run(capsys, posed, "-o", ".", *FAST)
    assert_refused(rc, err, "current folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):
            rc, _, err = run(capsys, posed, "-o", locked / "out", *FAST)
            assert_refused(rc, err, "permission denied")
    finally:
        locked.chmod(0o755)
    assert not fake_model.built


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".safetensors"])
@pytest.mark.parametrize("content", ["empty", "truncated", "random"])
def test_bad_checkpoint_files_are_one_line_errors(posed, tmp_path, capsys, fake_model, suffix, content):
    from safetensors.numpy import save_file

    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_file({"w": np.ones((64, 64), np.float32)}, str(good))
    else:
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.ones(64, 64)}, str(good))
    data = {"empty": b"", "truncated": good.read_bytes()[: good.stat().st_size // 2],
            "random": np.random.default_rng(1).bytes(4096)}[content]
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(data)
    rc, _, err = run(capsys, posed, "-o", tmp_path / "out", "--checkpoint", bad, *FAST)
    assert_refused(rc, err, str(bad))
    assert not (tmp_path / "out").exists() and not fake_model.built


def _tiny_checkpoint(folder: pathlib.Path) -> pathlib.Path:
    """An Orbax folder as `geolrm-jax convert` writes it, for the tiny (non-official) architecture."""
    config = convert.config_from_arg("tiny")
    shapes = convert.expected_variables(config)
    variables = {c: {k: v for k, v in tree.items()} for c, tree in shapes.items()}
    import jax

    variables = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variables)
    convert.save_variables(folder, variables)
    (folder / convert.CONFIG_FILE).write_text(config.to_json(indent=1))
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "geolrm-tiny")


def test_saved_architecture_is_used_and_a_stray_cache_file_is_skipped(posed, tmp_path, capsys, monkeypatch,
                                                                      fake_model, tiny_checkpoint):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(tiny_checkpoint, cache / "geolrm-tiny")
    (cache / "stray.pt").write_bytes(b"")  # newest entry, 0 bytes
    monkeypatch.setenv("GEOLRM_CACHE", str(cache))
    rc, out, err = run(capsys, posed, "-o", tmp_path / "out", *FAST, random_weights=False)
    assert rc == 0, err
    assert any("stray.pt: skipped" in line for line in err)
    (config, variables), = fake_model.built
    assert config.proposal.grid_size == 8 and "geolrm_model_config.json" in out  # tiny, without --model-config
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["image_size"] == 56

    rc, _, err = run(capsys, posed, "-o", tmp_path / "out2", "--checkpoint", tiny_checkpoint,
                     "--model-config", "official", *FAST)
    assert_refused(rc, err, str(tiny_checkpoint), "--model-config")  # not a ScopeParamShapeError traceback


def test_empty_results_are_errors(posed, tmp_path, capsys, fake_model):
    fake_model.anchors = 0
    rc, _, err = run(capsys, posed, "-o", tmp_path / "out", *FAST)
    assert_refused(rc, err, "no anchors")
    fake_model.anchors, fake_model.opacity = 4, 0.001
    rc, _, err = run(capsys, posed, "-o", tmp_path / "out", *FAST)
    assert_refused(rc, err, "--min-opacity")
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []


def _set_cameras(folder, c2w):
    meta = json.loads((folder / "cameras.json").read_text())
    for frame, m in zip(meta["frames"], c2w, strict=True):
        frame["c2w"] = np.asarray(m).tolist()
    (folder / "cameras.json").write_text(json.dumps(meta))


def test_cameras_away_from_the_object(posed, tmp_path, capsys, fake_model):
    c2w = np.asarray(geometry.orbit_c2w(3, elevation_deg=20.0, radius=1.5))
    away = c2w.copy()
    away[:, :3, 0] *= -1
    away[:, :3, 2] *= -1  # still a rotation, now looking away from the origin
    _set_cameras(posed, away)
    rc, _, err = run(capsys, posed, "-o", tmp_path / "out", *FAST)
    assert_refused(rc, err, "cameras.json", "no camera looks at the object")
    assert not fake_model.built

    far = np.asarray(geometry.orbit_c2w(3, elevation_deg=20.0, radius=40.0))
    _set_cameras(posed, far)
    rc, _, err = run(capsys, posed, "-o", tmp_path / "out", *FAST)
    assert rc == 0 and any(line.startswith("warning:") and "spans at most" in line for line in err)


def test_tiny_images_are_refused(tmp_path, capsys, fake_model):
    folder = tmp_path / "obj"
    make_posed_folder(folder, n=2, size=32)
    write_rgba(folder / "001.png", size=1)
    rc, _, err = run(capsys, folder, "-o", tmp_path / "out", *FAST)
    assert_refused(rc, err, "001.png", "1x1")
    with pytest.raises(inputs.InputError, match="at least 8x8"):
        inputs.resize_square(np.zeros((4, 4, 3), np.float32), 56, "x.png")


def _wait_for(predicate, timeout=240.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_real_reconstruction(tmp_path, signum):
    """The real command (tiny model, random weights) signalled while it works: exit 128+n, one line, the previous
    output untouched, no temporary folder left."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"previous": true}')
    env = dict(os.environ, GEOLRM_CACHE=str(tmp_path / "no-cache"), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).resolve().parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("GEOLRM_CHECKPOINT", None)
    proc = subprocess.Popen([sys.executable, "-m", "geolrm_jax.cli", "reconstruct", str(SAMPLE), "-o", str(out),
                             "--overwrite", "--no-progress", "--video-frames", "4", "--video-size", "32",
                             "--random-weights"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _wait_for(lambda: hidden(tmp_path) or proc.poll() is not None), "no staging folder appeared"
        try:  # signal dispositions at the moment of sending, for the failure message
            status = [line for line in pathlib.Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        except OSError:
            status = []
        seen = hidden(tmp_path)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=240)
        diagnosis = f"{err}\n[test] staging seen: {seen}; child signal state when signalled: {status}"
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert proc.returncode == 128 + signum, diagnosis
    assert lines == [f"geolrm-jax reconstruct: interrupted by {signal.Signals(signum).name}; "
                     "partial outputs removed"], diagnosis
    assert tree(out) == {"summary.json": b'{"previous": true}'} and hidden(tmp_path) == []
