"""`geolrm-jax reconstruct` end to end (tiny config, random weights), checkpoint search, no partial outputs."""

import json
import os
import pathlib

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from conftest import shared_path
from test_inputs import make_posed_folder

from geolrm_jax import export, inference, reconstruct

SAMPLE = pathlib.Path(reconstruct.__file__).parent / "assets" / "sample"


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch):
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(inference, "BUNDLED_CHECKPOINTS", tmp_path / "no-bundled")


def test_reconstruct_end_to_end(tmp_path, capsys, no_checkpoints):
    source = SAMPLE if (SAMPLE / "cameras.json").exists() else tmp_path / "obj"
    if source != SAMPLE:
        make_posed_folder(source, n=3, size=64)
    out = tmp_path / "result"
    rc = reconstruct.main([str(source), "-o", str(out), "--random-weights", "--video-frames", "3", "--video-size", "32",
                           "--render-views", "--render-size", "32", "--no-progress", "--max-views", "21"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model: RANDOM WEIGHTS") and "peak device memory: n/a on CPU" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_weights"] and summary["input_kind"] == "posed"
    assert summary["model"].startswith("RANDOM WEIGHTS")
    assert set(summary["timings_s"]) >= {"proposal (stage 1)", "reconstruction (stage 2)", "turntable"}
    n = summary["gaussians_written"]
    g = export.read_ply(out / "gaussians.ply")
    assert g.means.shape == (n, 3) and np.all(np.isfinite(g.means)) and np.all(g.opacities >= 0.005)
    assert (out / "gaussians.splat").stat().st_size == 32 * n
    frames = np.asarray(iio.imread(out / "turntable.mp4", index=None))
    assert frames.shape == (3, 32, 32, 3)
    views = sorted((out / "views").iterdir())
    assert len(views) == summary["num_views"]
    assert iio.imread(views[0]).shape == (32, 32, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left

    # An existing output folder is kept unless --overwrite.
    rc = reconstruct.main([str(source), "-o", str(out), "--random-weights", "--no-progress"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_bad_input_leaves_nothing(tmp_path, capsys, no_checkpoints):
    source = tmp_path / "obj"
    make_posed_folder(source, n=2, size=28)
    (source / "001.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    rc = reconstruct.main([str(source), "-o", str(out), "--random-weights", "--no-progress"])
    assert rc == 2
    assert "001.png: cannot read image" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*"))
    (source / "001.png").unlink()
    (source / "cameras.json").write_text((source / "cameras.json").read_text().replace("001.png", "000.png"))
    assert reconstruct.main([str(source), "-o", str(out), "--random-weights", "--image-size", "50",
                             "--no-progress"]) == 2
    assert "--image-size 50 must be a multiple of 28" in capsys.readouterr().err and not out.exists()


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch, no_checkpoints):
    def broken_splat(*args, **kwargs):
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(export, "write_splat", broken_splat)
    out = tmp_path / "result"
    source = SAMPLE if (SAMPLE / "cameras.json").exists() else tmp_path / "obj"
    if source != SAMPLE:
        make_posed_folder(source, n=3, size=64)
    rc = reconstruct.main([str(source), "-o", str(out), "--random-weights", "--video-format", "none", "--no-progress"])
    assert rc == 2 and "disk full" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".result*"))  # the written PLY went with the temp folder
    assert reconstruct.main([str(source), "-o", str(out), "--random-weights", "--video-size", "33",
                             "--no-progress"]) == 2
    assert "even size" in capsys.readouterr().err


def test_checkpoint_search_order(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GEOLRM_CACHE", str(cache))
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setattr(inference, "BUNDLED_CHECKPOINTS", tmp_path / "bundled")
    assert inference.find_checkpoint() == (None, "none found")
    old, new = cache / "old.safetensors", cache / "converted"
    save_file({"w": np.zeros(1, np.float32)}, str(old))  # readable entries (unreadable ones are skipped)
    new.mkdir()
    (new / "_CHECKPOINT_METADATA").write_text("{}")
    (cache / "notes.txt").write_text("not a checkpoint")
    os.utime(old, (1, 1))
    assert inference.find_checkpoint()[0] == new
    monkeypatch.setenv("GEOLRM_CHECKPOINT", str(old))
    assert inference.find_checkpoint() == (old, "$GEOLRM_CHECKPOINT")
    assert inference.find_checkpoint(str(new)) == (new, "--checkpoint")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        inference.find_checkpoint(str(tmp_path / "missing.ckpt"))
    monkeypatch.delenv("GEOLRM_CHECKPOINT")
    bundled = tmp_path / "bundled" / "demo"
    bundled.mkdir(parents=True)
    (bundled / "_CHECKPOINT_METADATA").write_text("{}")
    assert inference.find_checkpoint()[0] == new  # the user's converted weights win over a newer bundled model
    for p in list(cache.iterdir()):
        (p / "_CHECKPOINT_METADATA").unlink() if p.is_dir() else p.unlink()
    assert inference.find_checkpoint() == (bundled, "bundled")


def test_no_checkpoint_needs_random_weights_flag(tmp_path, capsys, no_checkpoints):
    out = tmp_path / "out"
    assert reconstruct.main(["-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint found" in err and "--random-weights" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert reconstruct.main(["-o", str(out), "--random-weights", "--checkpoint", str(tmp_path), "--no-progress"]) == 2
    assert "choose one" in capsys.readouterr().err and not out.exists()


def test_state_dict_checkpoint_loads_into_the_model_tree(tmp_path):
    from geolrm_jax.model import convert

    weights = shared_path("geolrm_small", "state_dict.safetensors")
    config = convert.config_from_arg(str(shared_path("geolrm_small", "config.json")))
    loaded = inference.load_variables(weights, config)
    random = inference.random_variables(config, seed=1)
    assert jax.tree.structure(loaded) == jax.tree.structure(random)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(random), strict=True):
        assert a.shape == b.shape
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(random))
    # An Orbax folder as `geolrm-jax convert` writes it reads back identically.
    convert.save_variables(tmp_path / "converted", loaded)
    restored = inference.load_variables(tmp_path / "converted", config)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
