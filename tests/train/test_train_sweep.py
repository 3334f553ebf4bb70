"""Sweeps (geolrm_jax/train/sweep.py): scenic-style algebra, typed overrides that parse back to the swept values,
dry run, and parallel launching with one device group per run."""
import json
import pathlib
import sys
import textwrap

import pytest

from geolrm_jax.train import sweep
from geolrm_jax.train.main import _parse

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_algebra_product_zip_chain():
    lr = sweep.sweep("config.optim.lr", [1e-4, 2e-4])
    warm = sweep.sweep("optim.warmup_steps", [10, 20])
    assert sweep.zipit([lr, warm]) == [{"optim.lr": 1e-4, "optim.warmup_steps": 10},
                                       {"optim.lr": 2e-4, "optim.warmup_steps": 20}]
    assert len(sweep.product([lr, warm])) == 4
    assert sweep.chainit([lr, sweep.fixed("optim.lr", 5e-5)])[-1] == {"optim.lr": 5e-5}
    with pytest.raises(ValueError, match="different lengths"):
        sweep.zipit([lr, sweep.sweep("seed", [1, 2, 3])])
    with pytest.raises(ValueError, match="set twice"):
        sweep.product([lr, lr])


def test_product_sweep_expands_to_typed_overrides():
    runs = sweep.expand(str(REPO / "configs" / "sweep_lr_points.py"), "runs/sweep", ["--config.seed=3"])
    assert len(runs) == 9
    argv = dict(runs)["lr-0.0001_num_points-8"]
    assert argv[:2] == ["geolrm-jax", "train"]
    assert "--config.optim.lr=0.0001" in argv and "--config.model.reconstruction.num_points=8" in argv
    assert "--workdir=runs/sweep/lr-0.0001_num_points-8" in argv and argv[-1] == "--config.seed=3"


def test_string_axis_and_zipped_pair_parse_back_to_the_swept_values(capsys):
    path = str(REPO / "configs" / "sweep_anchors_lr.py")
    runs = sweep.expand(path, "runs/a")
    assert len(runs) == 4
    seen = set()
    for _, argv in runs:
        config, workdir = _parse(argv[2:])  # what `geolrm-jax train` will see
        assert config.stage2.anchors in ("ground_truth", "proposal")  # unquoted
        assert (config.optim.lr, config.optim.warmup_steps) in ((5e-5, 6000), (1e-4, 12000))
        assert isinstance(config.optim.warmup_steps, int) and isinstance(config.optim.lr, float)
        seen.add((config.stage2.anchors, config.optim.lr))
        assert workdir.startswith("runs/a/anchors-")
    assert len(seen) == 4
    assert sweep.main([path, "--workdir=runs/a", "--devices=0,1,2,3", "--devices-per-run=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0,1 geolrm-jax train ")
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ")
    assert "--config.stage2.anchors=proposal" in lines[2] and "dry run" in lines[-1]


def write_sweep(tmp_path, hyper_body: str, base: str = "dict(optim=dict(lr=1.0, warmup_steps=5), name='a')"):
    path = tmp_path / "my_sweep.py"
    path.write_text("import ml_collections\n"
                    f"def get_config():\n    return ml_collections.ConfigDict({base})\n"
                    f"def get_hyper(hyper):\n    return {hyper_body}\n")
    return str(path)


def test_bad_values_and_fields_fail_with_the_field_named(tmp_path, capsys):
    cases = {
        "hyper.sweep('optim.warmup_steps', [2.5])": "expects an int",
        "hyper.sweep('name', [3])": "expects a string",
        "hyper.sweep('optim.lrr', [1.0])": "'optim.lrr' is not in the base config",
    }
    for body, message in cases.items():
        with pytest.raises(sweep.SweepError, match=message):
            sweep.expand(write_sweep(tmp_path, body), "runs")
    assert sweep.main([write_sweep(tmp_path, "hyper.sweep('name', [3])"), "--workdir=w"]) == 2
    assert "name: expects a string" in capsys.readouterr().err


FAKE_RUN = textwrap.dedent("""
    import json, os, sys, time
    workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    time.sleep(0.5)
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "start": start, "end": time.time()}, f)
    print("fake run done")
    sys.exit(3 if "--config.name=bad" in sys.argv else 0)
""")


def test_launch_runs_in_parallel_on_device_groups(tmp_path):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_RUN)
    path = write_sweep(tmp_path, "hyper.product([hyper.sweep('name', ['x y', 'bad']), "
                                 "hyper.zipit([hyper.sweep('optim.lr', [1, 2]), "
                                 "hyper.sweep('optim.warmup_steps', [3, 4])])])")
    workdir = tmp_path / "sweep"
    code = sweep.main([path, f"--workdir={workdir}", "--launch", "--devices=0,1,2,3", "--devices-per-run=2",
                       f"--command={sys.executable} {fake}", "--", "--config.seed=1"])
    assert code == 3  # the runs with name=bad fail; the others still ran
    records = [json.loads(p.read_text()) for p in sorted(workdir.glob("*/run.json"))]
    assert len(records) == 4
    assert {r["devices"] for r in records} == {"0,1", "2,3"}
    assert any("--config.name=x y" in r["argv"] for r in records)
    assert all("--config.optim.lr=1.0" in r["argv"] or "--config.optim.lr=2.0" in r["argv"] for r in records)
    assert all(r["argv"][-1] == "--config.seed=1" for r in records)
    first, second = sorted(records, key=lambda r: r["start"])[:2]
    assert second["start"] < first["end"]  # two slots: the first two runs overlapped
    logs = sorted(workdir.glob("*.log"))
    assert len(logs) == 4 and all("fake run done" in p.read_text() for p in logs)
