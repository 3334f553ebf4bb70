"""Lowering for TPU: ``jax.export(..., platforms=("tpu",))`` of the deformable op, the rasterizer, the model's
inference program (proposal, reconstruction, render) and the stage-2 gradient (the train step's
``value_and_grad`` of the render loss) contains the Mosaic kernels (``tpu_custom_call``), forward and backward.

Export lowers the Pallas kernels to Mosaic on this CPU-only machine (no TPU compiler runs: layouts and VMEM
limits are checked only by the TPU's own compiler). The programs are traced with ``jax.default_backend()``
reporting "tpu", as on a TPU host, so the ops' automatic dispatch picks "pallas_tpu".
"""
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest
from deformable_cases import SHAPES
from geolrm_kernels.deformable import deformable_sample

REPO = pathlib.Path(__file__).resolve().parents[2]
KERNELS = ("deformable_sample_forward_tpu", "deformable_sample_backward_tpu", "splat_rasterize_forward_tpu",
           "splat_rasterize_backward_tpu")


def tpu_text(fn, *args):
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*args)
    return exported.mlir_module()


def kernel_calls(text):
    """Names of the Mosaic kernels called by the module's tpu_custom_calls."""
    calls = [line for line in text.splitlines() if "tpu_custom_call" in line]
    return [name for line in calls for name in KERNELS if name in line], len(calls)


@pytest.fixture
def on_tpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")


def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def test_deformable_op_lowers_to_mosaic(on_tpu):
    b, v, q, heads, c, points = 1, 3, 300, 4, 32, 4
    length = sum(h * w for h, w in SHAPES)
    args = (spec((b, v, length, heads, c)), spec((b, v, q, 2)), spec((b, q, heads, 2, points, 2)),
            spec((b, q, heads, 2, points)))

    def loss(*xs):  # implementation=None: "pallas_tpu" on a TPU backend
        return jnp.sum(deformable_sample(*xs, SHAPES, view_mask=jnp.ones((b, v), bool)) ** 2)

    names, count = kernel_calls(tpu_text(jax.grad(loss, argnums=(0, 1, 2, 3)), *args))
    assert count == 2 and sorted(names) == sorted(KERNELS[:2])


def test_rasterizer_lowers_to_mosaic(on_tpu):
    from geolrm_kernels import rasterize

    size, num, capacity = 48, 500, 4096
    tiles = 9

    def loss(feats, ids, start, end):
        out = rasterize.rasterize(feats, ids, start, end, size, size)
        return jnp.sum(out.color) + jnp.sum(out.depth * out.transmittance)

    args = (spec((num, 10)), spec((capacity,), jnp.int32), spec((tiles,), jnp.int32), spec((tiles,), jnp.int32))
    names, count = kernel_calls(tpu_text(jax.grad(loss), *args))
    assert count == 2 and sorted(names) == sorted(KERNELS[2:])


@pytest.mark.slow
def test_inference_program_and_stage2_gradient_lower_to_mosaic(on_tpu):
    """The tiny model: inference (propose, reconstruct, render 2 views: forward kernels only) and the stage-2
    loss gradient (all four kernels)."""
    from geolrm_jax.model import config as model_config
    from geolrm_jax.model.convert import expected_variables
    from geolrm_jax.model.geolrm import GeoLRM
    from geolrm_jax.render.splat import render
    from geolrm_jax.train.stages import Stage2Task

    model = GeoLRM(model_config.tiny_model_config())
    inputs = (spec((1, 2, 28, 28, 3)), spec((1, 2, 4, 4)), spec((1, 2, 3, 3)), spec((1, 2), jnp.bool_))
    variables = expected_variables(model_config.tiny_model_config())
    c2w, ks = inputs[1], inputs[2]

    def infer(variables, images, c2ws, ks, view_mask):
        out = model.apply(variables, images, c2ws, ks, view_mask)
        return render(out["gaussians"], c2ws, ks, 32, 32, jnp.ones(3), capacity=4096).rgb

    text = tpu_text(infer, variables, *inputs)
    names, _ = kernel_calls(text)
    assert {"deformable_sample_forward_tpu", "splat_rasterize_forward_tpu"} <= set(names)
    assert not re.search(r"deformable_sample_backward_tpu|splat_rasterize_backward_tpu", " ".join(names))

    loader = importlib.util.spec_from_file_location("train_tiny", REPO / "configs" / "train_tiny.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    config = module.get_config("2")
    task = Stage2Task(config)
    g = config.model.proposal.grid_size
    shapes = dict(input_images=inputs[0], input_c2w=c2w, input_K=ks, input_mask=inputs[3],
                  occupancy=spec((1, g, g, g), jnp.int32), target_images=spec((1, 2, 32, 32, 3)),
                  target_c2w=c2w, target_K=ks, background=spec((1, 3)), target_alpha=spec((1, 2, 32, 32)),
                  target_depth=spec((1, 2, 32, 32)), target_mask=inputs[3])
    batch = {k: spec(v.shape, v.dtype) for k, v in shapes.items()}
    grad = jax.value_and_grad(task.loss_fn, has_aux=True)
    names, _ = kernel_calls(tpu_text(grad, variables["params"], variables["batch_stats"], batch,
                                     jax.random.key(0)))
    assert set(names) == set(KERNELS)
