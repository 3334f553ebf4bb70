"""GeoLRM model: parity with the original on geolrm_small, jit/grad/vmap on the tiny config, view and anchor
masks, anchor selection, and the pieces whose numerics follow torch (bicubic resize, transposed conv)."""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path
from transform_checks import run as run_fast_compiled

from geolrm_jax import geometry
from geolrm_jax.model import config as model_config
from geolrm_jax.model.geolrm import GeoLRM
from geolrm_jax.model.proposal import linspace_like_torch, select_anchors
from geolrm_jax.model.transformer import SelfAttention, rope3d_tables, rope_grid_index

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_variables(model, inputs, seed=0, scale=0.3):
    """Random (not initializer-distributed) variables with the model's tree; avoids compiling `init`."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        x = rng.normal(size=leaf.shape).astype(np.float32) * scale
        if jax.tree_util.keystr(path).endswith("['var']"):
            x = 1.0 + np.abs(x)
        out.append(jnp.asarray(x))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), out)


def tiny_inputs(batch=2, views=3, size=28, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.uniform(size=(batch, views, size, size, 3)), jnp.float32)
    c2ws = jnp.broadcast_to(geometry.orbit_c2w(views, 20.0, 1.5), (batch, views, 4, 4))
    ks = jnp.broadcast_to(geometry.fov_to_intrinsics(39.6), (batch, views, 3, 3))
    return images, c2ws, ks, jnp.ones((batch, views), bool)


def tiny_scene_inputs():
    """Batch of 2 scenes: scene 1 = the first two views of scene 0 plus a padded third view."""
    images, c2ws, ks, _ = tiny_inputs(batch=1)
    images = jnp.concatenate([images, images.at[:, 2].set(0.0)])
    c2ws = jnp.concatenate([c2ws, c2ws.at[:, 2].set(jnp.eye(4))])
    view_mask = jnp.asarray([[True, True, True], [True, True, False]])
    return images, c2ws, jnp.concatenate([ks, ks]), view_mask


@pytest.fixture(scope="module")
def tiny():
    """Tiny model, inputs, random variables, and one jitted value_and_grad through the whole model."""
    model = GeoLRM(model_config.tiny_model_config())
    inputs = tiny_scene_inputs()
    variables = random_variables(model, inputs)

    def loss(params):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, *inputs)
        g = out["gaussians"]
        return (jnp.mean(jnp.tanh(out["occupancy_logits"])) + jnp.mean(g.means) + jnp.mean(g.opacities)
                + jnp.mean(g.scales) * 10 + jnp.mean(g.rgbs) + jnp.mean(g.quats)), out

    (value, out), grads = run_fast_compiled(jax.value_and_grad(loss, has_aux=True), variables["params"])
    return model, inputs, variables, (value, out, grads)


def test_parity_tool_on_fixture(capsys):
    fixture = shared_path("geolrm_small", "outputs.npz").parent
    assert _load_tool("check_parity").main(["--fixture", str(fixture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "all outputs within tolerance"
    rows = {ln.split()[0]: float(ln.split()[2]) for ln in lines[1:-1]}
    assert len(rows) == 14 and "gaussians" in rows and "layer0__cross_attention_out" in rows
    for name, rel in rows.items():
        assert rel <= 1e-4, (name, rel)  # NaN fails this too


def test_jit_grad_full_model(tiny):
    model, _, _, (value, out, grads) = tiny
    assert np.isfinite(value)
    b, g = 2, 8
    s = model.config.proposal.capacity
    k = model.config.reconstruction.gs_per_token
    assert out["occupancy_logits"].shape == (b, g, g, g)
    assert out["anchors"].shape == (b, s, 3) and out["anchor_mask"].shape == (b, s)
    assert out["gaussians"].means.shape == (b, s * k, 3) and out["gaussians"].opacities.shape == (b, s * k)
    assert 0 < int(out["anchor_mask"].sum())
    opac = np.asarray(out["gaussians"].opacities).reshape(b, s, k)
    assert np.all(opac[~np.asarray(out["anchor_mask"])] == 0)
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        leaf = np.asarray(leaf)
        assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)
        assert np.any(leaf != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


def test_vmap_matches_batch_and_padded_views_are_ignored(tiny):
    """vmap over scenes equals the batched call; a padded view with another image and a singular camera
    changes nothing."""
    model, (images, c2ws, ks, mask), variables, (_, out, _) = tiny
    noise = jnp.asarray(np.random.default_rng(5).uniform(size=(28, 28, 3)), jnp.float32)
    images = images.at[1, 2].set(noise)
    c2ws = c2ws.at[1, 2].set(0.0)
    fwd = lambda im, c, k, m: model.apply(variables, im[None], c[None], k[None], m[None])
    vout = run_fast_compiled(jax.vmap(fwd), images, c2ws, ks, mask)
    for x, y in zip(jax.tree.leaves(vout), jax.tree.leaves(out), strict=True):
        x, y = np.asarray(x, np.float32)[:, 0], np.asarray(y, np.float32)
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_key_padding_mask_in_token_attention():
    """With ordinary attention, padded anchors do not influence valid ones."""
    layer = SelfAttention(dim=24, heads=2, attention_impl="xla", over_heads=False)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 6, 24)), jnp.float32)
    xyz = jnp.asarray(rng.uniform(-0.5, 0.5, size=(1, 6, 3)), jnp.float32)
    mask = jnp.asarray([[True, False, True, True, False, True]])
    valid = np.asarray(mask[0])
    cos, sin = rope3d_tables(rope_grid_index(xyz, 0.5, 8), 12)
    params = jax.jit(layer.init)(jax.random.PRNGKey(0), x, cos, sin, mask)
    apply = jax.jit(layer.apply)
    y1 = np.asarray(apply(params, x, cos, sin, mask))
    x_pad = x.at[:, ~valid].set(100.0)
    y2 = np.asarray(apply(params, x_pad, cos, sin, mask))
    np.testing.assert_allclose(y1[:, valid], y2[:, valid], rtol=1e-5, atol=1e-5)
    y3 = np.asarray(apply(params, x_pad, cos, sin, jnp.ones_like(mask)))
    assert np.abs(y3[:, valid] - y1[:, valid]).max() > 1e-3  # the mask is what made the difference
    # against a dense reference: softmax over the valid keys only
    p = params["params"]
    q, k, v = (np.asarray(x @ p[n]["kernel"]).reshape(1, 6, 2, 12) for n in ("wq", "wk", "wv"))
    from geolrm_jax.model.transformer import apply_rope3d
    q, k = np.asarray(apply_rope3d(jnp.asarray(q), cos, sin)), np.asarray(apply_rope3d(jnp.asarray(k), cos, sin))
    logits = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(12.0) + np.where(valid, 0.0, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ref = np.einsum("bhst,bthd->bshd", probs, v).reshape(1, 6, 24) @ np.asarray(p["wo"]["kernel"])
    np.testing.assert_allclose(y1, ref, rtol=1e-4, atol=1e-5)


def test_select_anchors_keeps_highest_in_raster_order():
    g = 4
    logits = -np.ones((2, g, g, g), np.float32)
    logits[0, 1, 2, 3], logits[0, 0, 0, 1], logits[0, 3, 3, 3], logits[0, 2, 0, 0] = 5.0, 1.0, 3.0, 0.5
    select = jax.jit(select_anchors, static_argnums=(1, 2))
    anchors, mask = select(jnp.asarray(logits), 3, 0.5)
    lin = linspace_like_torch(g) * 0.5
    # 4 occupied > capacity 3: the lowest logit (2, 0, 0) is dropped; the rest come in raster order.
    expected = np.asarray([[lin[0], lin[0], lin[1]], [lin[1], lin[2], lin[3]], [lin[3], lin[3], lin[3]]])
    np.testing.assert_array_equal(np.asarray(anchors[0]), expected)
    assert np.asarray(mask[0]).tolist() == [True, True, True]
    assert np.asarray(mask[1]).tolist() == [False] * 3  # nothing occupied
    np.testing.assert_array_equal(np.asarray(anchors[1]), 0.0)
    big, big_mask = select(jnp.asarray(logits), 70, 0.5)  # capacity > G³
    assert big.shape == (2, 70, 3) and int(big_mask[0].sum()) == 4


def test_torch_numerics_bicubic_and_conv_transpose():
    torch = pytest.importorskip("torch")
    from geolrm_jax.model.dinov2 import resize_pos_embed
    from geolrm_jax.model.encoder import ConvTranspose2d

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(37 * 37, 16)).astype(np.float32)
    for out in ((8, 8), (32, 32), (16, 12)):
        ref = torch.nn.functional.interpolate(torch.tensor(pos).reshape(1, 37, 37, 16).permute(0, 3, 1, 2),
                                              size=out, mode="bicubic", align_corners=False)
        ours = resize_pos_embed(jnp.asarray(pos), 37, *out).reshape(*out, 16)
        np.testing.assert_allclose(np.asarray(ours), ref[0].permute(1, 2, 0).numpy(), rtol=1e-5, atol=2e-6)
    x = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4, 4, 4)).astype(np.float32)  # torch (in, out, k, k)
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(w), stride=2,
                                               padding=1)
    ours = jax.jit(ConvTranspose2d(4).apply)({"params": {"kernel": jnp.asarray(w.transpose(2, 3, 0, 1))}},
                                             jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_bf16_mode_close_to_fp32(tiny):
    _, inputs, variables, (_, out, _) = tiny
    config = model_config.tiny_model_config()
    config.dtype = "bfloat16"
    bf16 = GeoLRM(config)
    low = run_fast_compiled(lambda v: bf16.apply(v, *inputs, method=bf16.propose), variables)
    assert low.dtype == jnp.float32  # logits are returned in float32; params stay float32
    ref = np.asarray(out["occupancy_logits"])
    rel = np.abs(np.asarray(low) - ref).max() / np.abs(ref).max()
    assert 0 < rel < 5e-2, rel


def _decode_reference(params, latents, anchors, mask, k, offset_max=0.2, scale_max=0.02):
    """The original's get_gaussians in float64 numpy -> (B, S·K, 14)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(latents, np.float64) @ p["latent_decoder_0"]["kernel"] + p["latent_decoder_0"]["bias"]
    x = x / (1 + np.exp(-x)) @ p["latent_decoder_2"]["kernel"] + p["latent_decoder_2"]["bias"]
    b, s = x.shape[:2]
    f = x.reshape(b, s, k, 14)
    sig = lambda t: 1 / (1 + np.exp(-t))
    q = f[..., 7:11]
    out = np.concatenate([np.asarray(anchors, np.float64)[:, :, None] + sig(f[..., :3]) * offset_max,
                          (sig(f[..., 3:4]) * np.asarray(mask)[:, :, None, None]), sig(f[..., 4:7]) * scale_max,
                          q / np.linalg.norm(q, axis=-1, keepdims=True), np.clip(f[..., 11:], -0.5, 0.5) + 0.5], -1)
    return out.reshape(b, s * k, 14)


def test_bf16_mode_decodes_gaussians_in_float32(tiny):
    """As the original (get_gaussians outside its autocast): float32 latents in, float32 decoding."""
    from geolrm_jax.model.decoder import gaussians_to_array

    _, inputs, variables, (_, out, _) = tiny
    anchors, mask = out["anchors"], out["anchor_mask"]
    errors = {}
    for decoder_dtype in ("float32", "bfloat16"):
        config = model_config.tiny_model_config()
        config.dtype, config.decoder_dtype = "bfloat16", decoder_dtype
        model = GeoLRM(config)
        gaussians, state = run_fast_compiled(
            lambda v, m=model: m.apply(v, *inputs, anchors, mask, method=m.reconstruct, mutable=["intermediates"]),
            variables)
        latents = state["intermediates"]["reconstruction"]["latents"][0]
        assert latents.dtype == jnp.float32
        want = _decode_reference(variables["params"]["reconstruction"]["decoder"], latents, anchors, mask,
                                 config.reconstruction.gs_per_token)
        errors[decoder_dtype] = np.abs(np.asarray(gaussians_to_array(gaussians), np.float64) - want).max()
    assert errors["float32"] < 1e-5, errors
    assert errors["bfloat16"] > 20 * errors["float32"], errors  # the test sees the difference


def test_rms_norm_rounds_once_to_its_dtype():
    from geolrm_jax.model.transformer import RMSNorm

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 48)) * 3, jnp.float32)
    weight = jnp.asarray(1 + 0.1 * rng.normal(size=48), jnp.float32)
    got = RMSNorm(1e-5, jnp.bfloat16).apply({"params": {"weight": weight}}, x)
    x64 = np.asarray(x, np.float64)
    want = x64 / np.sqrt(np.mean(x64 ** 2, -1, keepdims=True) + 1e-5) * np.asarray(weight, np.float64)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16)))


def test_remat_traces_through_grad():
    config = model_config.tiny_model_config()
    config.remat = True
    config.remat_policy = "dots_saveable"
    model = GeoLRM(config)
    inputs = tiny_inputs(batch=1)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))

    def loss(params, stats):
        return jnp.mean(model.apply({"params": params, "batch_stats": stats}, *inputs, method=model.propose))

    grads = jax.eval_shape(jax.grad(loss), abstract["params"], abstract["batch_stats"])
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, abstract["params"])
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(abstract["params"], abstract["batch_stats"]))
    assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_config_validation():
    with pytest.raises(ValueError, match="lrm_generator.transformer_dim"):
        model_config.config_from_fixture({"serializer": {}, "lrm_generator": {}, "dinov2_config": {
            "use_swiglu_ffn": False, "image_size": 518, "patch_size": 14, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 1, "mlp_ratio": 4, "layer_norm_eps": 1e-6}} | {"serializer": {
                "encoder_feat_dim": 8, "transformer_dim": 8, "transformer_layers": 1, "transformer_heads": 1,
                "grid_size": 8, "token_res": 2, "num_deform_points": 1, "scale": 0.5, "max_seq_len": 4},
            "lrm_generator": {"encoder_feat_dim": 8, "use_sh": False}})
    config = model_config.tiny_model_config()
    config.dtype = "float16"
    with pytest.raises(ValueError, match="config.dtype"):
        jax.eval_shape(lambda: GeoLRM(config).init(jax.random.PRNGKey(0), *tiny_inputs(batch=1)))
    assert isinstance(nn.Module, type)


def test_init_variables_tree_matches_converter_layout():
    from geolrm_jax.model.convert import expected_variables
    from geolrm_jax.model.geolrm import init_variables

    config = model_config.tiny_model_config()
    abstract = jax.eval_shape(lambda: init_variables(config, jax.random.PRNGKey(0)))
    expected = expected_variables(config)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                                 expected)
    assert set(abstract) == {"params", "batch_stats"} and set(abstract["params"]) == {"proposal", "reconstruction"}


def test_transformer_with_scattered_anchor_mask_equals_the_valid_subset():
    """Padded anchors anywhere in the list: valid outputs (and intermediates) equal those of the valid anchors
    alone, in the caller's order (the transformer reorders tokens valid-first internally)."""
    from geolrm_jax.model.transformer import GeoTransformer

    shapes = ((4, 4), (2, 2))
    model = GeoTransformer(dim=24, layers=2, heads=2, num_points=2, grid_size=16, xyz_scale=0.5,
                           spatial_shapes=shapes, attention_impl="xla", sample_impl="xla")
    rng = np.random.default_rng(7)
    s, valid = 7, np.array([False, True, True, False, True, False, True])
    xyzs = jnp.asarray(rng.uniform(-0.5, 0.5, (1, s, 3)), jnp.float32)
    feats = jnp.asarray(rng.normal(size=(1, 2, 20, 24)), jnp.float32)
    c2ws = geometry.orbit_c2w(2, 20.0, 1.5)[None]
    ks = jnp.broadcast_to(geometry.fov_to_intrinsics(39.6), (1, 2, 3, 3))
    views = jnp.ones((1, 2), bool)
    mask = jnp.asarray(valid)[None]
    variables = random_variables(model, (xyzs, mask, feats, c2ws, ks, views))
    run = jax.jit(lambda x, m: model.apply(variables, x, m, feats, c2ws, ks, views, mutable="intermediates"))
    full, inter_full = run(xyzs, mask)
    sub, inter_sub = run(xyzs[:, valid], jnp.ones((1, int(valid.sum())), bool))
    np.testing.assert_allclose(np.asarray(full)[:, valid], np.asarray(sub), rtol=1e-5, atol=1e-5)
    layers_full = inter_full["intermediates"]["layers"]["cross_attention_out"][0]
    layers_sub = inter_sub["intermediates"]["layers"]["cross_attention_out"][0]
    np.testing.assert_allclose(np.asarray(layers_full)[:, :, valid], np.asarray(layers_sub), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(full)))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_bias_in_matmul_dense_equals_dense(dtype, tol):
    from geolrm_jax.model.transformer import BiasInMatmulDense, with_bias_columns

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32)
    dense = nn.Dense(16, dtype=dtype)
    params = dense.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)  # bias != 0
    want = np.asarray(dense.apply(params, x), np.float32)
    got = BiasInMatmulDense(16, dtype).apply(params, with_bias_columns(x))
    assert got.dtype == dtype and got.shape == (2, 5, 16)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol * np.abs(want).max())
    same_tree = jax.eval_shape(BiasInMatmulDense(16, dtype).init, jax.random.PRNGKey(0), with_bias_columns(x))
    assert jax.tree.map(lambda a: a.shape, same_tree) == jax.tree.map(lambda a: a.shape, params)


def test_gelu_erf_is_torch_gelu():
    from geolrm_jax.model.dinov2 import gelu_erf

    x = np.random.default_rng(0).normal(size=4096).astype(np.float32) * 4
    x[:4] = [0.0, -12.0, 12.0, 1e-3]
    want = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))  # erfc form, same function
    got = np.asarray(gelu_erf(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6)
    assert gelu_erf(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_inference_variables_give_identical_bf16_outputs():
    from geolrm_jax.model.geolrm import inference_variables

    config = model_config.tiny_model_config()
    config.dtype = "bfloat16"
    from geolrm_jax import inference

    variables = inference.random_variables(config, seed=1)
    cast = inference_variables(variables, config)
    kernels = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(cast)[0]
               if str(getattr(path[-1], "key", "")) == "kernel"}
    decoder = {k: v for k, v in kernels.items() if "'decoder'" in k}
    assert len(decoder) == 2 and all(k.dtype == jnp.float32 for k in decoder.values())  # decoded in float32
    assert len(kernels) > 2 and all(v.dtype == jnp.bfloat16 for k, v in kernels.items() if k not in decoder)
    biases = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(cast)[0]
              if str(getattr(path[-1], "key", "")) == "bias"]
    assert biases and all(b.dtype == jnp.float32 for b in biases)
    images, c2ws, ks, mask = tiny_inputs(batch=1, views=2)
    model = GeoLRM(config)
    out_a = run_fast_compiled(model.apply, variables, images, c2ws, ks, mask)
    out_b = run_fast_compiled(model.apply, cast, images, c2ws, ks, mask)
    for a, b in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    same = inference_variables(variables, model_config.tiny_model_config())  # float32 config: nothing cast
    assert all(x.dtype == y.dtype for x, y in zip(jax.tree.leaves(same), jax.tree.leaves(variables), strict=True))


def test_scan_unroll_changes_nothing_but_the_loop():
    from geolrm_jax import inference

    config = model_config.tiny_model_config()
    variables = inference.random_variables(config, seed=2)
    images, c2ws, ks, mask = tiny_inputs(batch=1, views=2)
    want = run_fast_compiled(GeoLRM(config).apply, variables, images, c2ws, ks, mask)
    config.scan_unroll = config.reconstruction.layers
    got = run_fast_compiled(GeoLRM(config).apply, variables, images, c2ws, ks, mask)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch, cin, use_bias", [(4, 9, False), (14, 3, True)])
def test_patch_conv_equals_strided_conv(patch, cin, use_bias):
    from geolrm_jax.model.dinov2 import PatchConv

    rng = np.random.default_rng(patch)
    x = jnp.asarray(rng.normal(size=(2, 2 * patch, 3 * patch, cin)), jnp.float32)
    conv = nn.Conv(16, (patch, patch), strides=(patch, patch), padding="VALID", use_bias=use_bias)
    params = conv.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    want = np.asarray(conv.apply(params, x))
    got = np.asarray(PatchConv(16, patch, use_bias=use_bias).apply(params, x))
    assert got.shape == want.shape == (2, 2, 3, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PatchConv(16, patch).init(jax.random.PRNGKey(0), x[:, 1:])


def test_rope3d_rotates_each_third_by_its_axis_angle():
    from geolrm_jax.model.transformer import apply_rope3d

    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 5, 3, 12)).astype(np.float32)
    xyz = jnp.asarray(rng.uniform(-0.5, 0.5, size=(2, 5, 3)), jnp.float32)
    cos, sin = rope3d_tables(rope_grid_index(xyz, 0.5, 16), 12)
    got = np.asarray(apply_rope3d(jnp.asarray(x), cos, sin))
    c, s = np.asarray(cos)[:, :, None], np.asarray(sin)[:, :, None]  # (B, S, 1, 3, Q)
    xr = x.reshape(2, 5, 3, 3, 2, 2)
    u, v = xr[..., 0, :], xr[..., 1, :]
    want = np.stack([u * c - v * s, v * c + u * s], axis=-2).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(got - x).max() > 1e-2  # it did rotate
