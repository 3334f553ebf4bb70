"""`geolrm-jax cameras`, `eval` and `bench`: arguments and outputs checked before any work, one-line errors,
outputs written atomically and replaced only when the command wrote them."""

import json

import numpy as np
import pytest
from test_reliability_outputs import hidden

from geolrm_jax import benchmark, cli, evaluate


def errors(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_cameras_size_and_out(tmp_path, capsys):
    for size in ("0", "-3", "100000"):
        assert cli.main(["cameras", "--size", size]) == 2
        err = errors(capsys)
        assert len(err) == 1 and f"--size {size}" in err[0]
    out = tmp_path / "missing" / "folder" / "rays"  # numpy's savez adds .npz; so does the command
    assert cli.main(["cameras", "--size", "8", "--out", str(out)]) == 0
    assert np.load(tmp_path / "missing" / "folder" / "rays.npz")["plucker"].shape == (6, 8, 8, 6)
    assert cli.main(["cameras", "--size", "8", "--out", str(out)]) == 2
    assert "--overwrite" in errors(capsys)[0]
    written = tmp_path / "missing" / "folder" / "rays.npz"
    inode = written.stat().st_ino
    assert cli.main(["cameras", "--size", "8", "--out", str(out), "--overwrite"]) == 0
    assert written.stat().st_ino != inode and np.load(written)["plucker"].shape == (6, 8, 8, 6)  # a new file
    users = tmp_path / "data.npz"
    np.savez(users, weights=np.ones(3))
    assert cli.main(["cameras", "--size", "8", "--out", str(users), "--overwrite"]) == 2
    assert "not written by this command" in errors(capsys)[0]
    assert np.load(users)["weights"].shape == (3,) and hidden(tmp_path) == []


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(evaluate, "model_predictor", refuse)
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "no-cache"))


@pytest.fixture
def eval_root(tmp_path):
    root = tmp_path / "gso"
    root.mkdir()
    (root / "object_list.json").write_text(json.dumps({"validation": ["a/1"], "empty": []}))
    return root


@pytest.mark.parametrize("args, needle", [
    (["--num-views", "0"], "--num-views must be in 1..24"),
    (["--max-targets", "0"], "--max-targets 0"),
    (["--render-size", "0"], "--render-size 0"),
    (["--input-size", "50"], "--input-size 50 must be a multiple of 28"),
    (["--split", "empty"], "lists no object"),
    (["--split", "nope"], "no split 'nope'"),
    (["--lpips-weights", "missing.npz"], "missing.npz"),
    (["--checkpoint", "missing.ckpt"], "missing.ckpt"),
    (["--method", "visual_hull", "--hull-grid", "1"], "--hull-grid 1"),
    (["--method", "visual_hull", "--hull-scale", "0"], "--hull-scale 0"),
])
def test_eval_checks_before_the_model_loads(eval_root, capsys, no_model, args, needle):
    assert evaluate.main([str(eval_root), "--out", str(eval_root.parent / "evals"), *args]) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith("geolrm-jax eval: error:") and needle in err[0], err
    assert not (eval_root.parent / "evals").exists()


def test_eval_outputs_are_not_clobbered(eval_root, tmp_path, capsys, no_model):
    bad_lpips = tmp_path / "lpips.npz"
    bad_lpips.write_bytes(b"not an npz")
    assert evaluate.main([str(eval_root), "--lpips-weights", str(bad_lpips)]) == 2
    assert "lpips.npz: cannot read LPIPS weights" in errors(capsys)[0]
    out = tmp_path / "evals"
    out.mkdir()
    (out / "metrics.csv").write_text("my,own,table\n")
    for extra in ([], ["--overwrite"]):
        assert evaluate.main([str(eval_root), "--out", str(out), *extra]) == 2
        assert "metrics.csv" in errors(capsys)[0]
    assert (out / "metrics.csv").read_text() == "my,own,table\n"
    assert evaluate.main([str(eval_root), "--out", str(eval_root / "evals")]) == 2
    assert "lies inside the input" in errors(capsys)[0]


def test_bench_checks_before_compiling(tmp_path, capsys):
    for args, needle in ((["--views", "0"], "--views"), (["--repeats", "0"], "--repeats 0"),
                         (["--sizes", "0"], "multiples of 28"), (["--set", "nofield=1"], "nofield"),
                         (["--model-config", str(tmp_path / "none.json")], "none.json")):
        assert benchmark.main(["--model-config", "tiny", "--sizes", "28", *args]) == 2
        err = errors(capsys)
        assert len(err) == 1 and needle in err[0], err
    users = tmp_path / "results.json"
    users.write_text('{"mine": 1}')
    for extra in ([], ["--overwrite"]):
        assert benchmark.main(["--model-config", "tiny", "--sizes", "28", "--out", str(users), *extra]) == 2
    assert users.read_text() == '{"mine": 1}'
