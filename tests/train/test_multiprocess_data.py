"""Per-process data state (the Grain pipeline of two simulated processes, one of which drops a bad example),
its re-sharding rule onto another process count, per-process checkpoint files, and meshes from config."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax.data import gobjaverse, pipeline
from geolrm_jax.train import checkpointing, sharding

SIZE, GRID = 32, 16


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """6 records; record 3 (process 1's second record of 2 processes, unshuffled) has truncated PNGs."""
    data_dir = gobjaverse.build_synthetic(str(tmp_path_factory.mktemp("data")), num_objects=4, image_size=SIZE,
                                          grid_size=GRID, validation_objects=1, supersample=1)
    src = gobjaverse.data_source(data_dir, "train", grid_size=GRID)
    out = [src[i] for i in range(len(src))] * 2
    out[3] = dict(out[3], png=[p[:40] for p in out[3]["png"]])
    return out


def _config():
    c = pipeline.default_data_config()
    c.input_size, c.render_size, c.grid_size = 16, 16, GRID
    c.num_workers, c.shuffle, c.max_bad_fraction = 0, False, 0.5
    return c


def _iterator(records, index, count, batch_size=1):
    return pipeline.make_iterator(_config(), "train", seed=index, batch_size=batch_size, process_index=index,
                                  process_count=count, source=records)


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_each_process_resumes_its_own_position_after_one_drops_a_bad_example(records):
    its = [_iterator(records, p, 2) for p in range(2)]
    for _ in range(2):
        for it in its:
            next(it)
    states = [json.loads(json.dumps(it.get_state())) for it in its]
    assert states[0]["records"] == 2 and states[1]["records"] == 3 and states[1]["num_bad"] == 1  # out of step
    expected = [[next(it) for _ in range(3)] for it in its]
    for p, state in enumerate(states):
        resumed = _iterator(records, p, 2)
        resumed.set_state(state)
        assert all(_same(a, next(resumed)) for a in expected[p])
    # The earlier checkpoint format restored process 0's state everywhere: process 1 would replay a record.
    wrong = _iterator(records, 1, 2)
    wrong.set_state(dict(states[0], process_index=1))
    assert not _same(next(wrong), expected[1][0])


def test_resharding_onto_another_process_count_follows_the_rule(records):
    its = [_iterator(records, p, 2) for p in range(2)]
    for _ in range(2):
        for it in its:
            next(it)
    states = [it.get_state() for it in its]
    total = sum(s["records"] for s in states)  # 5
    saved = {"process_count": 2, "states": states}
    for count in (1, 3):
        for p in range(count):
            it = _iterator(records, p, count)
            it.set_state(checkpointing.data_state_for_process(saved, it, p, count))
            start = total // count
            assert it.get_state()["start_record"] == start and it.get_state()["records"] == start + it.num_examples \
                + it.num_bad
            # The same as a fresh iterator of the new process advanced by `start` records.
            fresh = _iterator(records, p, count)
            while fresh.num_examples + fresh.num_bad < start:
                next(fresh)
            assert fresh.num_examples + fresh.num_bad == start  # (no bad record straddles the start here)
            assert _same(next(it), next(fresh))
    with pytest.raises(ValueError, match="written by 2 processes"):
        checkpointing.data_state_for_process(saved, object(), 0, 3)


def test_checkpoint_holds_one_data_file_per_process(tmp_path):
    mesh = sharding.make_mesh(-1, 1)
    abstract = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding.replicated(mesh))}
    ck = checkpointing.Checkpointer(tmp_path, async_save=False)
    ck.save(3, {"w": jnp.arange(8.0)}, {"records": 7, "grain": {"k": 1}})
    ck.wait()
    assert (tmp_path / "3" / "data_processes" / "process_0-of-1.json").exists()
    state, saved = ck.restore(abstract)
    assert saved == {"process_count": 1, "states": [{"records": 7, "grain": {"k": 1}}]}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(8.0))
    ck.close()


def test_mesh_from_config_takes_devices_per_process_and_checks_granules():
    cfg = sharding.mesh_from_config
    from ml_collections import ConfigDict

    mesh = cfg(ConfigDict(dict(data=-1, fsdp=2, dcn_data=1, num_devices=4)))
    assert mesh.devices.shape == (2, 2) and [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()[:4]]
    assert cfg(ConfigDict(dict(data=-1, fsdp=4, dcn_data=-1, num_devices=-1))).devices.shape == (2, 4)
    with pytest.raises(ValueError, match="form 1 process"):
        cfg(ConfigDict(dict(data=-1, fsdp=1, dcn_data=2, num_devices=-1)))
    with pytest.raises(ValueError, match="num_devices=0"):
        sharding.mesh_devices(0)


def test_batch_local_loss_matches_the_global_loss_without_gathering_the_batch():
    """A per-object gather written with global row numbers: XLA all-gathers its operand over the batch; under
    batch_local_loss it does not, with the same loss, metrics and gradients."""
    mesh = sharding.make_mesh(2, 4)
    rng = np.random.default_rng(0)

    def loss_fn(params, batch_stats, batch, key):
        x = batch["x"]
        rows = (jnp.arange(x.shape[0])[:, None] * x.shape[1] + batch["i"]).reshape(-1)
        y = jnp.tanh(jnp.take(x.reshape(-1, x.shape[-1]), rows, axis=0) @ params["w"])
        return jnp.mean(y ** 2), ({"m": jnp.mean(y)}, batch_stats, None)

    params = jax.device_put({"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}, sharding.replicated(mesh))
    batch = jax.device_put({"x": jnp.asarray(rng.normal(size=(8, 32, 16)), jnp.float32),
                            "i": jnp.asarray(rng.integers(0, 32, size=(8, 32)), jnp.int32)},
                           sharding.batch_sharding(mesh))
    plain = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    local = jax.jit(jax.value_and_grad(sharding.batch_local_loss(loss_fn, mesh), has_aux=True))
    key = jax.random.PRNGKey(0)
    (l0, (m0, _, _)), g0 = plain(params, {}, batch, key)
    (l1, (m1, _, _)), g1 = local(params, {}, batch, key)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    np.testing.assert_allclose(float(m1["m"]), float(m0["m"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g1["w"]), np.asarray(g0["w"]), rtol=1e-5, atol=1e-7)
    assert "all-gather" in plain.lower(params, {}, batch, key).compile().as_text()
    assert "all-gather" not in local.lower(params, {}, batch, key).compile().as_text()


def test_trainer_step_with_batch_local_loss_equals_the_plain_step(tmp_path):
    """mesh.batch_local_loss on the stand-in model (noise-free loss): same loss, gradient norm and params."""
    from test_train_infra import StandInTask, make_trainer, tiny_config

    class NoiseFree(StandInTask):
        def loss_fn(self, params, batch_stats, batch, rng):
            pred = self.model.apply({"params": params, "batch_stats": batch_stats}, batch["x"])
            loss = jnp.mean((pred - batch["y"]) ** 2)
            return loss, ({"mse": loss}, batch_stats, None)

    results = []
    for flag in (False, True):
        trainer = make_trainer(tiny_config(**{"mesh.fsdp": 4, "mesh.batch_local_loss": flag}), tmp_path / str(flag),
                               task=NoiseFree())
        state = trainer.init_state()
        for _ in range(2):  # the first update has lr 0
            state, metrics = trainer.step(state)
        results.append((metrics, jax.device_get(state.params)))
        trainer.close()
    (m0, p0), (m1, p1) = results
    np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m0["grad_norm"]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), p0, p1)
