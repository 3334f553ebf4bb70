"""LPIPS-VGG16 in Flax vs the `lpips` PyPI package (fixture from tools/make_lpips_fixture.py).

The fixture holds images and the package's distances computed with a RANDOM VGG16 drawn from a numpy seed;
the weights are regenerated here from the same seed and converted with the same converter used for the
real torchvision weights. The linear layers are the package's own v0.1 weights.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax.train import lpips as lp

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
LIN = FIXTURES / "lpips_vgg_lin_v0.1.npz"


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURES / "lpips_parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def params(fixture):
    return jax.tree_util.tree_map(jnp.asarray, lp.seeded_lpips_params(int(fixture["vgg_seed"]), LIN))


@pytest.fixture(scope="module")
def apply():
    return jax.jit(lambda p, x0, x1: lp.LPIPS().apply(p, x0, x1, return_per_layer=True))


@pytest.mark.parametrize("group", ["a", "b"])
def test_matches_lpips_package(fixture, params, apply, group):
    x0 = fixture[f"{group}_x0"].astype(np.float32)
    x1 = fixture[f"{group}_x1"].astype(np.float32)
    dist, per_layer = apply(params, x0, x1)
    assert np.all(np.isfinite(dist))
    np.testing.assert_allclose(np.asarray(per_layer), fixture[f"{group}_per_layer"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(dist), fixture[f"{group}_dist"], rtol=1e-5, atol=0)


def test_bfloat16_trunk_close_to_lpips_package(fixture, params):
    x0 = fixture["a_x0"].astype(np.float32)
    x1 = fixture["a_x1"].astype(np.float32)
    dist = jax.jit(lambda p, a, b: lp.lpips_distance(p, a, b, dtype=jnp.bfloat16))(params, x0, x1)
    assert dist.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dist), fixture["a_dist"], rtol=2e-2)


def test_gradient_leading_dims_identity_and_symmetry(fixture, params):
    x0 = jnp.asarray(fixture["g_x0"], jnp.float32)  # (1, 32, 32, 3): small, one compile for all checks
    x1 = jnp.asarray(fixture["g_x1"], jnp.float32)
    a = jnp.concatenate([x0, x1, x0, x0])
    b = jnp.concatenate([x1, x0, x0, x1])

    @jax.jit
    def run(p):
        flat = lp.lpips_distance(p, a, b)
        nested = lp.lpips_distance(p, a.reshape(2, 2, 32, 32, 3), b.reshape(2, 2, 32, 32, 3))
        # d/dx [d(x, x1) + d(x, x0)] at x = x0: the second term sits at identical inputs, where the gradient
        # is 0 (a minimum) and must stay finite (safe channel norm at exactly-zero feature differences).
        grad = jax.grad(lambda x: lp.lpips_distance(p, jnp.concatenate([x, x]),
                                                    jnp.concatenate([x1, x0])).sum())(x0)
        return flat, nested, grad

    flat, nested, grad = run(params)
    assert nested.shape == (2, 2)
    np.testing.assert_allclose(np.asarray(nested).reshape(4), np.asarray(flat), rtol=1e-6)
    np.testing.assert_allclose(float(flat[0]), float(fixture["g_dist"]), rtol=1e-5)
    np.testing.assert_allclose(float(flat[1]), float(flat[0]), rtol=1e-5)  # symmetric
    assert abs(float(flat[2])) < 1e-12  # identical images
    np.testing.assert_allclose(float(flat[3]), float(flat[0]), rtol=1e-6)
    ref = fixture["g_grad_x0"]
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_converter_layouts_and_npz_roundtrip(tmp_path, params):
    sd = lp.random_vgg16_state_dict(3)
    converted = lp.convert_vgg16_state_dict(sd)
    np.testing.assert_array_equal(converted["conv2_1"]["kernel"], sd["features.5.weight"].transpose(2, 3, 1, 0))
    # lpips' own module layout (net.sliceK.i.*) converts to the same thing.
    slice_sd = {}
    for name, idx, _, _ in lp.VGG16_CONVS:
        for kind in ("weight", "bias"):
            slice_sd[f"net.slice{int(name[4])}.{idx}.{kind}"] = sd[f"features.{idx}.{kind}"]
    again = lp.convert_vgg16_state_dict(slice_sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, converted, again)

    path = tmp_path / "lpips.npz"
    lp.save_lpips_params(path, params, vgg_source="random seed")
    loaded = lp.load_lpips_params(path)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, loaded)


def test_converter_errors_name_the_weight(tmp_path):
    sd = lp.random_vgg16_state_dict(0)
    sd["features.7.weight"] = sd["features.7.weight"][:, :10]
    with pytest.raises(ValueError, match=r"features\.7\.weight"):
        lp.convert_vgg16_state_dict(sd)
    sd = lp.random_vgg16_state_dict(0)
    del sd["features.12.bias"]
    with pytest.raises(KeyError, match=r"features\.12\.bias"):
        lp.convert_vgg16_state_dict(sd)
    with pytest.raises(ValueError, match="not an LPIPS"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, **{"vgg/conv1_1/kernel": np.zeros((3, 3, 3, 64), np.float32)})
        lp.load_lpips_params(bad)


def test_lpips_weights_command_from_torch_files(tmp_path, fixture):
    torch = pytest.importorskip("torch")
    from geolrm_jax import cli

    sd = {k: torch.from_numpy(v) for k, v in lp.random_vgg16_state_dict(5).items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    vgg_path, lin_path, out = tmp_path / "vgg16.pth", tmp_path / "lin.pth", tmp_path / "out.npz"
    torch.save(sd, vgg_path)
    with np.load(LIN) as lin:
        torch.save({k: torch.from_numpy(lin[k]) for k in lin.files}, lin_path)
    assert cli.main(["lpips-weights", "--vgg", str(vgg_path), "--lin", str(lin_path), "--out", str(out)]) == 0
    loaded = lp.load_lpips_params(out)
    expected = lp.seeded_lpips_params(5, LIN)
    jax.tree_util.tree_map(np.testing.assert_array_equal, expected, loaded)
