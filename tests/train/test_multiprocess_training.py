"""Multi-process training on localhost: 2 processes × 4 CPU devices (jax.distributed over gloo) train the
stand-in model of test_train_infra.py, are SIGTERMed, resume and match a single-process run's losses; process 1
drops a bad example on the way (its data position then differs from process 0's), so the resume is exact only
if each process gets its own data state back. The final checkpoint is then restored in 1 process and in 4.

The workers are this file run as a script (`python tests/train/test_multiprocess_training.py --worker ...`).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = frozenset({5})   # global example 5 is bad: process 1 of 2 skips it in its 2nd batch
STEPS = 8
HOLD_AT = 3            # the first run's data iterators wait before their 4th batch until SIGTERM was sent


class ShardedStandInData:
    """Examples e = shard + r·num_shards (r = 0, 1, ...) of each shard this iterator reads, bad ones skipped;
    x of example e is a fixed function of (seed, e). State and re-sharding follow geolrm_jax.data.pipeline:
    `records` = records consumed, `reshard_state` = pipeline.reshard_states."""

    def __init__(self, seed, batch_size, shards, num_shards, hold_dir=None):
        from test_train_infra import FEATURES

        self.seed, self.shards, self.num_shards, self.hold_dir = seed, list(shards), num_shards, hold_dir
        self.per_shard = batch_size // len(self.shards)
        self.features = FEATURES
        self.w = np.random.default_rng(1234).normal(size=(FEATURES,)).astype(np.float32)
        self.next_record = [0] * len(self.shards)
        self.start_record, self.num_examples, self.num_bad, self.batches = 0, 0, 0, 0

    def __iter__(self):
        return self

    def _example(self, e):
        return np.random.default_rng([self.seed, e]).normal(size=(self.features,)).astype(np.float32)

    def __next__(self):
        if self.hold_dir and self.batches == HOLD_AT:
            import jax

            open(os.path.join(self.hold_dir, f"held_{jax.process_index()}"), "w").close()
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(self.hold_dir, "release")) and time.time() < deadline:
                time.sleep(0.05)
        rows = []
        for i, shard in enumerate(self.shards):
            taken = 0
            while taken < self.per_shard:
                e = shard + self.next_record[i] * self.num_shards
                self.next_record[i] += 1
                if e in BAD:
                    self.num_bad += 1
                    continue
                rows.append(self._example(e))
                taken += 1
                self.num_examples += 1
        self.batches += 1
        x = np.stack(rows)
        return {"x": x, "y": np.sin(x @ self.w)}

    def get_state(self):
        return {"grain": {"next_record": list(self.next_record), "batches": self.batches},
                "records": self.start_record + self.num_examples + self.num_bad, "start_record": self.start_record,
                "num_examples": self.num_examples, "num_bad": self.num_bad}

    def set_state(self, state):
        self.start_record = int(state["start_record"])
        self.num_examples, self.num_bad = int(state["num_examples"]), int(state["num_bad"])
        if state["grain"] is None:  # re-sharded: every shard starts at start_record
            self.next_record, self.batches = [self.start_record] * len(self.shards), 0
        else:
            self.next_record, self.batches = list(state["grain"]["next_record"]), state["grain"]["batches"]

    def reshard_state(self, states, process_index, process_count):
        from geolrm_jax.data.pipeline import reshard_states

        return reshard_states(states, process_index, process_count)


# ---------------------------------------------------------------------------------------------------------
# worker (a separate process)


def worker(args):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                                   process_id=args.process_id)
    sys.path.insert(0, HERE)
    from jax.experimental import multihost_utils
    from test_train_infra import StandInTask, tiny_config

    from geolrm_jax.train.trainer import Trainer

    n, p = jax.process_count(), jax.process_index()
    config = tiny_config(num_train_steps=STEPS, log_every_steps=1, image_every_steps=0,
                         **{"mesh.fsdp": 2, "mesh.dcn_data": n, "checkpoint.every_steps": 100})
    shards, num_shards = ([0, 1], 2) if args.emulate_two else ([p], n)
    make_data = lambda cfg, split, seed, bs: ShardedStandInData(cfg.seed, bs, shards, num_shards, args.hold_dir)
    trainer = Trainer(config, args.workdir, task=StandInTask(), make_data_iterator=make_data)
    out = {"process_index": p, "process_count": n, "mesh": list(trainer.mesh.devices.shape),
           "mesh_processes": [[d.process_index for d in row] for row in trainer.mesh.devices]}
    if args.mode == "train":
        result = trainer.train()
        state = trainer.final_state
        out.update(step=result["step"], preempted=result["preempted"],
                   losses={str(s): m["loss"] for s, m in result["history"] if "loss" in m})
        params = multihost_utils.process_allgather(state.params, tiled=True)
    else:
        state = trainer.restore_or_init()
        out.update(step=int(state.step), data_state=trainer.data.get_state())
        params = multihost_utils.process_allgather(state.params, tiled=True)
        _, metrics = trainer.step(state)  # donates state
        out["next_loss"] = float(metrics["loss"])
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    if p == 0:
        np.savez(os.path.join(args.out, "params.npz"), **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    with open(os.path.join(args.out, f"result_{p}.json"), "w") as f:
        json.dump(out, f)
    trainer.close()


# ---------------------------------------------------------------------------------------------------------
# the test (parent)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir, out, num_processes, devices, mode="train", hold_dir=None, emulate_two=False):
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(HERE)) + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    procs = []
    for p in range(num_processes):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", f"--process-id={p}",
                f"--num-processes={num_processes}", f"--port={port}", f"--workdir={workdir}", f"--out={out}",
                f"--mode={mode}"]
        argv += [f"--hold-dir={hold_dir}"] if hold_dir else []
        argv += ["--emulate-two"] if emulate_two else []
        log = open(os.path.join(out, f"log_{p}.txt"), "w")
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def finish(procs, out, timeout=240):
    deadline = time.time() + timeout
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for other, _ in procs:
                other.kill()
        log.close()
    logs = "".join(open(os.path.join(out, f"log_{p}.txt")).read()[-3000:] for p in range(len(procs)))
    assert all(proc.returncode == 0 for proc, _ in procs), logs
    return [json.load(open(os.path.join(out, f"result_{p}.json"))) for p in range(len(procs))]


@pytest.mark.slow
def test_two_processes_preempt_resume_and_restore_on_1_and_4(tmp_path):
    # Reference: one process, 8 devices, reading both shards as the two processes will.
    ref = finish(start(tmp_path / "ref", tmp_path / "out_ref", 1, 8, emulate_two=True), tmp_path / "out_ref")[0]
    assert sorted(int(s) for s in ref["losses"]) == list(range(1, STEPS + 1)) and not ref["preempted"]

    # 2 processes × 4 devices: SIGTERM both while they wait for their 4th batch.
    hold, run = tmp_path / "hold", tmp_path / "run"
    hold.mkdir()
    procs = start(run, tmp_path / "out_a", 2, 4, hold_dir=str(hold))
    deadline = time.time() + 180
    while not all((hold / f"held_{p}").exists() for p in range(2)):
        assert time.time() < deadline and all(proc.poll() is None for proc, _ in procs), "workers did not get there"
        time.sleep(0.1)
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    (hold / "release").touch()
    first = finish(procs, tmp_path / "out_a")
    assert all(r["preempted"] for r in first) and first[0]["step"] == first[1]["step"]
    stopped = first[0]["step"]
    assert HOLD_AT < stopped < STEPS
    assert first[0]["mesh"] == [4, 2] and first[0]["mesh_processes"] == [[0, 0]] * 2 + [[1, 1]] * 2
    for r in first:
        assert sorted(int(s) for s in r["losses"]) == list(range(1, stopped + 1))
        for s, loss in r["losses"].items():
            np.testing.assert_allclose(loss, ref["losses"][s], rtol=1e-5, err_msg=f"step {s}")

    # Resume on 2 processes: the remaining steps repeat the reference (process 1 is one record ahead).
    second = finish(start(run, tmp_path / "out_b", 2, 4), tmp_path / "out_b")
    for r in second:
        assert r["step"] == STEPS and not r["preempted"]
        assert sorted(int(s) for s in r["losses"]) == list(range(stopped + 1, STEPS + 1))
        for s, loss in r["losses"].items():
            np.testing.assert_allclose(loss, ref["losses"][s], rtol=1e-5, err_msg=f"step {s}")
    saved_files = sorted(f for f in os.listdir(run / "checkpoints" / str(STEPS) / "data_processes")
                         if f.startswith("process_"))
    assert saved_files == ["process_0-of-2.json", "process_1-of-2.json"]
    saved = [json.load(open(run / "checkpoints" / str(STEPS) / "data_processes" / f))["state"] for f in saved_files]
    assert saved[1]["records"] == saved[0]["records"] + 1 and saved[1]["num_bad"] == 1  # desynchronized
    trained = np.load(tmp_path / "out_b" / "params.npz")

    # Restore the final checkpoint in 1 process (8 devices) and in 4 processes (2 devices each).
    total = saved[0]["records"] + saved[1]["records"]
    for count, devices in ((1, 8), (4, 2)):
        out = tmp_path / f"out_restore_{count}"
        results = finish(start(run, out, count, devices, mode="restore"), out)
        restored = np.load(out / "params.npz")
        assert sorted(restored.files) == sorted(trained.files)
        for name in trained.files:
            np.testing.assert_array_equal(restored[name], trained[name], err_msg=name)
        for r in results:
            assert r["step"] == STEPS and np.isfinite(r["next_loss"])
            assert r["data_state"]["start_record"] == total // count  # the documented re-sharding rule
            assert r["data_state"]["grain"]["next_record"] == [total // count]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    parser.add_argument("--mode", choices=("train", "restore"), default="train")
    parser.add_argument("--hold-dir")
    parser.add_argument("--emulate-two", action="store_true")
    worker(parser.parse_args())
