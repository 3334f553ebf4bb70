"""`geolrm-jax train`: a bad config, override or dataset is one line (exit 2) and leaves no workdir; SIGINT, like
SIGTERM, saves a checkpoint at the next step and the run resumes exactly."""

import os
import pathlib
import signal

import numpy as np
import pytest
from test_train_infra import make_trainer, tiny_config

from geolrm_jax.train import main as train_main
from geolrm_jax.train import sharding
from geolrm_jax.train import trainer as trainer_module

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "train_tiny.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from geolrm_jax.data import gobjaverse

    root = tmp_path_factory.mktemp("data")
    return gobjaverse.build_synthetic(str(root), num_objects=2, image_size=16, grid_size=8, validation_objects=1,
                                      supersample=1)


def run(capsys, *argv):
    rc = train_main.main(list(argv))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "geolrm-jax train" in line]
    return rc, err


@pytest.mark.parametrize("args, needle", [
    (["--config=missing.py"], "missing.py: training config file not found"),
    (["--config.foo=1"], "names no field of the config"),
    (["--config.stage=3"], "config.stage = 3: must be 1 or 2"),
    (["--config.data.data_dir=/nonexistent/data"], "/nonexistent/data"),
    ([], "config.data.data_dir = '': is empty"),
    (["--config.batch_size=0"], "config.batch_size = 0"),
    (["--config.optim.lr=-1"], "config.optim.lr"),
    ([f"--config={CONFIG}:2", "--config.loss.lpips=1.0"], "loss.lpips_weights"),
])
def test_bad_config_is_one_line_and_leaves_no_workdir(tmp_path, capsys, dataset, args, needle):
    workdir = tmp_path / "run"
    if args and args[0].startswith("--config="):
        argv = [args[0], f"--workdir={workdir}", f"--config.data.data_dir={dataset}", *args[1:]]
    elif not args:  # the config's own (empty) data_dir
        argv = [f"--config={CONFIG}", f"--workdir={workdir}"]
    else:  # later flags win: the override under test replaces the good data_dir
        argv = [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={dataset}", *args]
    rc, err = run(capsys, *argv)
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not workdir.exists()


def test_damaged_dataset_and_workdir_inside_it(tmp_path, capsys, dataset):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    shard = next(p for p in copy.iterdir() if "train.array_record" in p.name)
    shard.write_bytes(shard.read_bytes()[:1000])
    rc, err = run(capsys, f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={copy}")
    assert rc == 2 and "not a readable dataset" in err[0] and not (tmp_path / "run").exists()
    rc, err = run(capsys, f"--config={CONFIG}", f"--workdir={pathlib.Path(dataset) / 'run'}",
                  f"--config.data.data_dir={dataset}")
    assert rc == 2 and "lies inside the input" in err[0]


def test_failed_start_removes_only_an_empty_new_workdir(tmp_path, capsys, monkeypatch, dataset):
    def broken_start(config, workdir):
        os.makedirs(os.path.join(workdir, "checkpoints"))  # what Trainer creates before it fails
        raise ValueError("init_from /x: params/proposal missing")

    monkeypatch.setattr(trainer_module, "train_and_evaluate", broken_start)
    new = tmp_path / "new"
    rc, err = run(capsys, f"--config={CONFIG}", f"--workdir={new}", f"--config.data.data_dir={dataset}")
    assert rc == 2 and "params/proposal missing" in err[0] and not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("keep")
    rc, _ = run(capsys, f"--config={CONFIG}", f"--workdir={old}", f"--config.data.data_dir={dataset}")
    assert rc == 2 and (old / "notes.txt").read_text() == "keep"


def test_stop_by_signal_exit_code_and_message(tmp_path, capsys, monkeypatch, dataset):
    monkeypatch.setattr(trainer_module, "train_and_evaluate",
                        lambda config, workdir: {"step": 7, "stop_signal": signal.SIGINT, "preempted": True})
    rc, err = run(capsys, f"--config={CONFIG}", f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={dataset}")
    assert rc == 130 and "stopped by SIGINT after step 7" in err[0] and "resume" in err[0]


@pytest.mark.slow
def test_ctrl_c_saves_and_the_run_resumes_exactly(tmp_path):
    """SIGINT as SIGTERM (tests/train/test_train_infra.py): a checkpoint at the next step boundary, then a stop."""
    import jax

    signum = signal.SIGINT
    config = tiny_config(num_train_steps=8, image_every_steps=0, **{"checkpoint.every_steps": 100})
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])  # one device: the fastest to compile here
    reference = make_trainer(config, tmp_path / "ref", mesh=mesh)
    reference.train()
    reference.close()
    expected = [m["loss"] for _, m in reference.history]

    trainer = make_trainer(config, tmp_path / "run", mesh=mesh)
    real_next = trainer.next_batch

    def next_batch_then_signal():
        if trainer.data.index == 3:
            os.kill(os.getpid(), signum)  # arrives while step 4's batch is fetched
        return real_next()

    trainer.next_batch = next_batch_then_signal
    result = trainer.train()
    trainer.close()
    assert result["preempted"] and result["stop_signal"] == signum and result["step"] == 4
    assert trainer.checkpointer.latest_step() == 4

    resumed = make_trainer(config, tmp_path / "run", mesh=mesh)
    resumed.train()
    resumed.close()
    assert [s for s, _ in resumed.history] == [6, 8]
    np.testing.assert_allclose([m["loss"] for _, m in resumed.history], expected[-2:], rtol=1e-5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
