"""Trainer infrastructure on a small stand-in model (mesh, sharded step, optimizer, checkpoints, NaN guard)."""
import os
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax.train import sharding, steps
from geolrm_jax.train.defaults import base_train_config
from geolrm_jax.train.trainer import Trainer

FEATURES = 16


class Head(nn.Module):
    @nn.compact
    def __call__(self, h):
        return nn.Dense(1, name="out")(jnp.tanh(nn.Dense(64, name="hidden")(h)))[..., 0]


class StandInNet(nn.Module):
    """Two top-level subtrees named like GeoLRM's ('proposal', 'reconstruction') and a batch_stats entry."""

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(64, name="proposal")(x))
        h = nn.BatchNorm(use_running_average=True, name="norm")(h)
        return Head(name="reconstruction")(h)


class StandInTask:
    def __init__(self, nan_loss=False):
        self.model = StandInNet()
        self.nan_loss = nan_loss

    def init_variables(self, rng, batch):
        return self.model.init(rng, batch["x"])

    def loss_fn(self, params, batch_stats, batch, rng):
        noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
        pred = self.model.apply({"params": params, "batch_stats": batch_stats}, batch["x"])
        loss = jnp.mean((pred - batch["y"] - noise) ** 2)
        if self.nan_loss:
            loss = loss * jnp.nan
        return loss, ({"mse": loss}, batch_stats, None)

    def summary_images(self, params, batch_stats, batch, rng):
        return {"inputs": jnp.broadcast_to(batch["x"][:, None, :, None], (*batch["x"].shape[:1], 4, FEATURES, 3))}


class StandInData:
    """Deterministic batches indexed by position; JSON state like Grain's dataset iterators."""

    def __init__(self, seed, batch_size):
        self.seed, self.batch_size, self.index = seed, batch_size, 0
        self.w = np.random.default_rng(1234).normal(size=(FEATURES,)).astype(np.float32)

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        x = rng.normal(size=(self.batch_size, FEATURES)).astype(np.float32)
        return {"x": x, "y": np.sin(x @ self.w)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def tiny_config(**overrides):
    c = base_train_config()
    c.batch_size = 8
    c.num_train_steps = 8
    c.log_every_steps = 2
    c.image_every_steps = 4
    c.mesh.min_fsdp_size = 64
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.optim.grad_clip = 1.0
    c.checkpoint.every_steps = 4
    c.checkpoint.async_save = True
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def make_trainer(config, workdir, mesh=None, task=None):
    return Trainer(config, workdir, task=task or StandInTask(),
                   make_data_iterator=lambda cfg, split, seed, bs: StandInData(seed, bs), mesh=mesh)


def test_mesh_shape_and_param_rule():
    assert sharding.mesh_shape(-1, 4, 8) == (2, 4)
    assert sharding.mesh_shape(8, -1, 8) == (8, 1)
    with pytest.raises(ValueError, match="does not fit"):
        sharding.mesh_shape(3, -1, 8)
    spec = sharding.param_partition_spec((16, 64), fsdp_size=4, min_fsdp_size=64)
    assert tuple(spec) == (None, "fsdp")
    assert tuple(sharding.param_partition_spec((6, 10), 4, 1)) == ()     # no divisible axis → replicated
    assert tuple(sharding.param_partition_spec((64,), 4, 1024)) == ()    # small → replicated


def test_decoder_activations_stay_batch_sharded_under_the_trainer_rules():
    """The Gaussian decoder's features carry only the batch split when traced inside activation_sharding (its
    kernels are fsdp-split along the K·14 features), give the same Gaussians and gradients, and carry no
    constraint outside that context."""
    from geolrm_jax.model.decoder import GaussianDecoder

    mesh = sharding.make_mesh(2, 4)
    decoder = GaussianDecoder(gs_per_token=2, offset_max=0.2, scale_max=0.02)
    rng = np.random.default_rng(0)
    latents = jnp.asarray(rng.normal(size=(8, 16, 24)), jnp.float32)
    anchors = jnp.asarray(rng.uniform(-0.5, 0.5, size=(8, 16, 3)), jnp.float32)
    mask = jnp.ones((8, 16), bool)
    params = decoder.init(jax.random.PRNGKey(0), latents, anchors, mask)
    shardings = sharding.state_shardings(params, mesh, min_fsdp_size=256)
    assert shardings["params"]["latent_decoder_2"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    params = jax.device_put(params, shardings)
    latents = jax.device_put(latents, sharding.batch_sharding(mesh))

    def loss(p, x):
        g = decoder.apply(p, x, anchors, mask)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(g))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    constrained = sharding.call_with_activation_sharding(value_and_grad, mesh)
    with sharding.activation_sharding(mesh):
        text = str(jax.make_jaxpr(loss)(params, latents))
    batch = "(('data', 'fsdp'), None, None)"
    assert text.count("sharding_constraint") == 2 and text.count(batch) == 2, text
    assert "sharding_constraint" not in str(jax.make_jaxpr(loss)(params, latents))
    (v1, g1), (v2, g2) = constrained(params, latents), value_and_grad(params, latents)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


def test_sharded_step_matches_single_device(tmp_path):
    config = tiny_config(grad_accum_steps=2)
    one = make_trainer(config, tmp_path / "one", mesh=sharding.make_mesh(1, 1, jax.devices()[:1]))
    many = make_trainer(config, tmp_path / "many", mesh=sharding.make_mesh(2, 4))
    kernel = many.abstract_state.params["proposal"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    s1, s8 = one.init_state(), many.init_state()
    for _ in range(2):  # the first update has lr 0 (warmup from 0, as the original)
        batch = one.next_batch()
        s1, m1 = one.step(s1, batch)
        s8, m8 = many.step(s8, batch)
    assert s8.params["proposal"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert np.isfinite(float(m1["loss"]))
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert not np.allclose(np.asarray(s1.params["proposal"]["kernel"]),
                           np.asarray(one.init_state().params["proposal"]["kernel"]))
    one.close()
    many.close()


def test_accumulation_equals_large_batch(tmp_path):
    """2 micro-batches of 8 accumulate to the gradient of one batch of 16 (the stand-in loss is a mean)."""
    mesh = sharding.make_mesh(-1, 1)
    big = make_trainer(tiny_config(batch_size=16), tmp_path / "big", mesh=mesh)
    acc = make_trainer(tiny_config(batch_size=8, grad_accum_steps=2), tmp_path / "acc", mesh=mesh)
    batch = big.next_batch()
    # Noise keys differ per micro-batch, so compare with the noise-free gradient through grad_norm closeness.
    _, mb = big.step(big.init_state(), batch)
    _, ma = acc.step(acc.init_state(), batch)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=2e-2)
    np.testing.assert_allclose(float(ma["grad_norm"]), float(mb["grad_norm"]), rtol=5e-2)
    big.close()
    acc.close()


def test_frozen_subtree_gets_no_update(tmp_path):
    trainer = make_trainer(tiny_config(**{"optim.frozen": ("proposal",)}), tmp_path)
    state = trainer.init_state()
    before = jax.device_get(state.params)
    for _ in range(2):  # the first update has lr 0
        state, _ = trainer.step(state)
    after = jax.device_get(state.params)
    np.testing.assert_array_equal(after["proposal"]["kernel"], before["proposal"]["kernel"])
    assert not np.allclose(after["reconstruction"]["out"]["kernel"],
                           before["reconstruction"]["out"]["kernel"])
    trainer.close()


def test_nonfinite_step_is_skipped(tmp_path):
    trainer = make_trainer(tiny_config(max_consecutive_nonfinite=3), tmp_path, task=StandInTask(nan_loss=True))
    state = trainer.init_state()
    before = jax.device_get((state.params, state.opt_state, state.batch_stats))
    state, metrics = trainer.step(state)
    after = jax.device_get((state.params, state.opt_state, state.batch_stats))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.nonfinite_total) == 1 and int(state.step) == 1
    assert float(metrics["nonfinite"]) == 1.0
    trainer.close()
    with pytest.raises(FloatingPointError, match="consecutive steps"):
        make_trainer(tiny_config(max_consecutive_nonfinite=3), tmp_path / "run",
                     task=StandInTask(nan_loss=True)).train()


def test_resume_gives_identical_losses_and_restores_on_other_mesh(tmp_path):
    config = tiny_config()
    reference = make_trainer(config, tmp_path / "ref", mesh=sharding.make_mesh(2, 4))
    state = reference.init_state()
    losses = []
    for _ in range(8):
        state, m = reference.step(state)
        losses.append(float(m["loss"]))
    reference.close()

    # Run to step 4 with a checkpoint, then "die" (the trainer is dropped without a final save).
    first = make_trainer(config, tmp_path / "run", mesh=sharding.make_mesh(2, 4))
    state = first.init_state()
    for _ in range(4):
        state, _ = first.step(state)
    first.save(state, {"loss": 1.0})
    first.checkpointer.wait()
    for _ in range(2):  # progress after the checkpoint is lost
        state, _ = first.step(state)
    del first

    # Resume on a different mesh shape (8, 1): params restored onto the new shardings.
    resumed = make_trainer(config, tmp_path / "run", mesh=sharding.make_mesh(8, 1))
    state = resumed.restore_or_init()
    assert int(state.step) == 4
    assert state.params["proposal"]["kernel"].sharding.mesh.devices.shape == (8, 1)
    assert resumed.data.get_state() == {"index": 4}
    resumed_losses = []
    for _ in range(4):
        state, m = resumed.step(state)
        resumed_losses.append(float(m["loss"]))
    np.testing.assert_allclose(resumed_losses, losses[4:], rtol=1e-5)
    resumed.close()


def test_train_loop_logs_checkpoints_and_preemption(tmp_path):
    config = tiny_config(num_train_steps=6, eval_every_steps=3, **{"checkpoint.every_steps": 4})
    trainer = make_trainer(config, tmp_path)
    result = trainer.train()
    trainer.close()
    assert result["step"] == 6 and np.isfinite(result["loss"]) and np.isfinite(result["eval_loss"])
    assert [step for step, m in trainer.history if "eval_mse" in m] == [3, 6]
    assert sorted(trainer.checkpointer.all_steps()) == [4, 6]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))

    # SIGTERM saves at the current step and stops.
    config = tiny_config(num_train_steps=50)
    trainer = make_trainer(config, tmp_path / "pre")
    trainer.next_batch_orig = trainer.next_batch

    def next_batch_then_preempt():
        if trainer.data.index == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return trainer.next_batch_orig()

    trainer.next_batch = next_batch_then_preempt
    result = trainer.train()
    trainer.close()
    assert result["preempted"] and result["step"] == 3
    assert trainer.checkpointer.latest_step() == 3


def test_killed_save_leaves_last_checkpoint_restorable(tmp_path):
    """A process killed in the middle of an async save: the previous step stays the latest, restorable."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax, jax.numpy as jnp
        from geolrm_jax.train.checkpointing import Checkpointer
        ck = Checkpointer({str(tmp_path)!r}, async_save=True)
        state = {{"w": jnp.arange(4096.0)}}
        ck.save(1, state, {{"index": 1}}, {{"loss": 1.0}})
        ck.wait()
        ck.save(2, {{"w": jnp.ones((1 << 22,))}}, {{"index": 2}}, {{"loss": 0.5}})
        os._exit(9)   # killed before the async save of step 2 is finalized
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 9, proc.stderr[-2000:]
    from geolrm_jax.train.checkpointing import Checkpointer

    ck = Checkpointer(tmp_path)
    assert ck.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((4096,), jnp.float32,
                                          sharding=sharding.replicated(sharding.make_mesh(-1, 1)))}
    state, data_state = ck.restore(abstract)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(4096.0))
    assert data_state == {"process_count": 1, "states": [{"index": 1}]}
    ck.close()


def test_split_accumulation_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        steps.split_accumulation({"x": np.zeros((5, 2))}, 2)


def test_init_from_previous_run_copies_only_named_subtrees(tmp_path):
    """Stage 2 starts from stage 1's proposal weights: init_from a workdir copies the named subtrees only."""
    mesh = sharding.make_mesh(-1, 1)
    first = make_trainer(tiny_config(), tmp_path / "stage1", mesh=mesh)
    state = first.init_state()
    for _ in range(2):
        state, _ = first.step(state)
    first.save(state)
    first.close()
    trained = jax.device_get(state.params)

    config = tiny_config(seed=7, init_from=str(tmp_path / "stage1"), init_subtrees=("proposal",))
    second = make_trainer(config, tmp_path / "stage2", mesh=mesh)
    fresh = jax.device_get(make_trainer(tiny_config(seed=7), tmp_path / "plain", mesh=mesh).init_state().params)
    params = jax.device_get(second.restore_or_init().params)
    np.testing.assert_array_equal(params["proposal"]["kernel"], trained["proposal"]["kernel"])
    np.testing.assert_array_equal(params["reconstruction"]["out"]["kernel"], fresh["reconstruction"]["out"]["kernel"])
    assert not np.array_equal(fresh["proposal"]["kernel"], trained["proposal"]["kernel"])
    second.close()
    with pytest.raises(ValueError, match="missing"):
        make_trainer(tiny_config(init_from=str(tmp_path / "stage1"), init_subtrees=("nope",)), tmp_path / "x",
                     mesh=mesh).init_state()
