"""Checkpoint conversion: .pt vs .safetensors, error reporting, the full released manifest, Orbax round trip,
and the standalone Hugging Face DINOv2 converter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from geolrm_jax.model import convert
from geolrm_jax.model.config import config_from_fixture, official_model_config
from geolrm_jax.model.dinov2 import Dinov2Backbone, imagenet_normalize


def _fixture(name):
    return shared_path("geolrm_small", name)


@pytest.fixture(scope="module")
def small():
    config = config_from_fixture(json.loads(_fixture("config.json").read_text()))
    sd = convert.load_state_dict(_fixture("state_dict.safetensors"))
    variables, unknown = convert.convert_state_dict(sd, config)
    return config, sd, variables, unknown


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pt_matches_safetensors(small):
    pytest.importorskip("torch")
    config, sd, variables, unknown = small
    assert unknown == []
    sd_pt = convert.load_state_dict(_fixture("state_dict.pt"))
    assert any(k.endswith("num_batches_tracked") for k in sd_pt)  # only in the .pt; skipped silently
    variables_pt, unknown_pt = convert.convert_state_dict(sd_pt, config)
    assert unknown_pt == []
    _assert_trees_equal(variables, variables_pt)
    layers = variables["params"]["reconstruction"]["transformer"]["layers"]
    wq = sd["lrm_generator.transformer.layers.1.self_attention.wq.weight"]
    np.testing.assert_array_equal(np.asarray(layers["self_attention"]["wq"]["kernel"][1]), wq.T)


def test_missing_misshaped_and_unknown_keys(small):
    config, sd, _, _ = small
    key = "lrm_generator.transformer.layers.1.feed_forward.w2.weight"
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(convert.ConversionError, match=key.replace(".", r"\.")):
        convert.convert_state_dict(missing, config)
    bad = dict(sd)
    key = "serializer.upsample.weight"
    bad[key] = np.zeros((63, 96), np.float32)
    with pytest.raises(convert.ConversionError, match=key.replace(".", r"\.")):
        convert.convert_state_dict(bad, config)
    bad = dict(sd)
    key = "lrm_generator.transformer.layers.0.cross_attention.output_proj.bias"
    bad[key] = np.zeros((95,), np.float32)
    with pytest.raises(convert.ConversionError, match=key.replace(".", r"\.")):
        convert.convert_state_dict(bad, config)


def test_cli_writes_orbax_and_lists_unknown_keys(small, tmp_path, capsys):
    from safetensors.numpy import save_file

    _, sd, variables, _ = small
    extra = dict(sd)
    extra["lpips.net.slice1.0.weight"] = np.ones((2, 2), np.float32)
    src = tmp_path / "with_lpips.safetensors"
    save_file(extra, str(src))
    out = tmp_path / "ckpt"
    assert convert.main([str(src), str(out), "--config", str(_fixture("config.json"))]) == 0
    assert "lpips.net.slice1.0.weight" in capsys.readouterr().out
    restored = convert.restore_variables(out)
    _assert_trees_equal(variables, restored)
    assert convert.restore_config(out).to_dict() == small[0].to_dict()
    broken = dict(sd)
    del broken["serializer.transformer.norm.weight"]
    save_file(broken, str(tmp_path / "broken.safetensors"))
    rc = convert.main([str(tmp_path / "broken.safetensors"), str(tmp_path / "x"), "--config",
                       str(_fixture("config.json"))])
    assert rc == 2 and "serializer.transformer.norm.weight" in capsys.readouterr().err


def test_full_manifest_maps_onto_official_config():
    manifest = json.loads(shared_path("geolrm_full_manifest.json").read_text())
    shapes = {k: v["shape"] for k, v in manifest["keys"].items()}
    variables, unknown = convert.check_key_shapes(shapes, official_model_config())
    assert unknown == []
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    n_stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["batch_stats"]))
    unused = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(("mask_token", "num_batches_tracked")))
    assert n_params + n_stats + unused == manifest["total_numel"]
    with pytest.raises(convert.ConversionError, match="lrm_generator.renderer.latent_decoder.2.weight"):
        convert.check_key_shapes({**shapes, "lrm_generator.renderer.latent_decoder.2.weight": [448, 447]},
                                 official_model_config())


@pytest.mark.parametrize("old_names", [False, True])
def test_hf_dinov2_converter(small, old_names):
    config, sd, _, _ = small
    prefix = "lrm_generator.encoder.model."
    hf = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if old_names:  # the layout of the Hugging Face hub files (transformers < 5)
        for old, new in convert._HF_RENAMES:
            hf = {k.replace(new, old): v for k, v in hf.items()}
        assert any(".attention.attention.query." in k for k in hf)
    params = convert.dinov2_from_hf(hf, config.encoder.dino_layers)
    enc = config.encoder
    model = Dinov2Backbone(enc.dino_hidden, enc.dino_layers, enc.dino_heads, enc.dino_mlp_ratio, enc.dino_patch,
                           enc.dino_pos_grid, enc.dino_ln_eps)
    images = np.load(_fixture("inputs.npz"))["images"][0].transpose(0, 2, 3, 1)
    feats = jax.jit(model.apply)({"params": params}, imagenet_normalize(jnp.asarray(images)))
    ref = np.load(_fixture("outputs.npz"))["lrm_generator__dino_last_feature_map"]
    ours = np.asarray(feats).transpose(0, 3, 1, 2)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
