"""`geolrm-jax convert`: an existing OUT is never emptied or replaced unless it is this command's checkpoint and
--overwrite is given; bad state dicts are one-line errors; an interrupted save leaves the old state."""

import numpy as np
import pytest
from conftest import shared_path
from test_reliability_outputs import hidden, tree

from geolrm_jax import io_atomic
from geolrm_jax.model import convert


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The geolrm_small state dict and config, and a first conversion of it."""
    source = shared_path("geolrm_small", "state_dict.safetensors")
    config = str(shared_path("geolrm_small", "config.json"))
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    assert convert.main([str(source), str(out), "--config", config]) == 0
    return source, config, out


def run(capsys, *argv):
    rc = convert.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def assert_refused(rc, err, *needles):
    assert rc == 2 and len(err) == 1 and err[0].startswith("geolrm-jax convert: error:"), err
    for needle in needles:
        assert needle in err[0], err


def test_existing_destination_is_never_emptied(small, tmp_path, capsys):
    source, config, _ = small
    folder = tmp_path / "my_folder"
    folder.mkdir()
    (folder / "paper.pdf").write_bytes(b"%PDF user data")
    a_file = tmp_path / "weights"
    a_file.write_text("the user's file")
    for dest in (folder, a_file):
        for extra in ([], ["--overwrite"]):
            rc, err = run(capsys, source, dest, "--config", config, *extra)
            assert_refused(rc, err, str(dest))
    assert tree(folder) == {"paper.pdf": b"%PDF user data"} and a_file.read_text() == "the user's file"
    assert hidden(tmp_path) == []


def test_destination_may_not_be_the_input(small, tmp_path, capsys):
    source, config, _ = small
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(source.read_bytes())
    rc, err = run(capsys, copy, copy, "--config", config, "--overwrite")
    assert_refused(rc, err, "is the input")
    rc, err = run(capsys, copy, tmp_path, "--config", config, "--overwrite")
    assert_refused(rc, err, "contains the input")
    assert copy.read_bytes() == source.read_bytes()


def test_overwrite_replaces_a_previous_conversion(small, tmp_path, capsys):
    source, config, first = small
    out = tmp_path / "ckpt"
    assert convert.main([str(source), str(out), "--config", config]) == 0
    rc, err = run(capsys, source, out, "--config", config)
    assert_refused(rc, err, "--overwrite")
    (out / "extra.txt").write_text("added by the user")
    rc, err = run(capsys, source, out, "--config", config, "--overwrite")
    assert_refused(rc, err, "extra.txt")
    (out / "extra.txt").unlink()
    assert convert.main([str(source), str(out), "--config", config, "--overwrite"]) == 0
    assert hidden(tmp_path) == [] and convert.convert_output_problem(out) is None
    restored = convert.restore_variables(out)
    np.testing.assert_array_equal(
        np.asarray(restored["params"]["proposal"]["upsample"]["kernel"]),
        np.asarray(convert.restore_variables(first)["params"]["proposal"]["upsample"]["kernel"]))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".safetensors"])
@pytest.mark.parametrize("content", ["empty", "truncated", "random"])
def test_bad_state_dicts_are_one_line_errors(small, tmp_path, capsys, suffix, content):
    source, config, _ = small
    if suffix == ".safetensors":
        valid = source.read_bytes()
    else:
        pytest.importorskip("torch")
        valid = shared_path("geolrm_small", "state_dict.pt").read_bytes()
    data = {"empty": b"", "truncated": valid[: len(valid) // 3], "random": np.random.default_rng(2).bytes(5000)}
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(data[content])
    rc, err = run(capsys, bad, tmp_path / "out", "--config", config)
    assert_refused(rc, err, str(bad))
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []


def test_bad_model_config_is_a_one_line_error(small, tmp_path, capsys):
    source, _, _ = small
    for text in ("", "{", "[1, 2]", '{"serializer": {}}'):
        bad = tmp_path / "config.json"
        bad.write_text(text)
        rc, err = run(capsys, source, tmp_path / "out", "--config", bad)
        assert_refused(rc, err, str(bad))
    rc, err = run(capsys, source, tmp_path / "out", "--config", tmp_path / "missing.json")
    assert_refused(rc, err, "missing.json")


@pytest.mark.parametrize("error", [io_atomic.Interrupted(15), io_atomic.Interrupted(2), OSError(28, "No space")])
def test_interrupted_save_keeps_the_previous_checkpoint(small, tmp_path, capsys, monkeypatch, error):
    source, config, _ = small
    out = tmp_path / "ckpt"
    assert convert.main([str(source), str(out), "--config", config]) == 0
    before = tree(out)
    real_save = convert.save_variables

    def save_then_fail(path, variables):
        real_save(path, variables)  # the new checkpoint is complete on disk ...
        raise error  # ... when the signal (or a full disk) arrives

    monkeypatch.setattr(convert, "save_variables", save_then_fail)
    rc = convert.main([str(source), str(out), "--config", config, "--overwrite"])
    assert rc == (128 + error.signum if isinstance(error, io_atomic.Interrupted) else 2)
    assert tree(out) == before and hidden(tmp_path) == []
