"""LPIPS (VGG16 trunk, v0.1 linear layers) as a Flax module, and weight conversion.

This re-implements the network of the `lpips` PyPI package (Zhang et al. 2018, ``lpips.LPIPS(net='vgg')``,
which is also what torchmetrics' ``LearnedPerceptualImagePatchSimilarity(net_type='vgg')`` used by GeoLRM
wraps):

    x  in [-1, 1]  ->  (x - shift) / scale                 (ScalingLayer, per RGB channel)
    VGG16 ``features[0:30]`` -> taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 ch.)
    f_hat = f / (||f||_channels + 1e-10)                    (per pixel unit normalization)
    d     = sum_l  mean_{h,w}  sum_c  w_l[c] * (f_hat0 - f_hat1)^2      (lin_l: 1x1 conv, no bias)

Images are channel-last: ``(..., H, W, 3)``; the distance has shape ``(...)``.

Parameters (a plain nested dict, ``{"params": {...}}``):

* ``vgg/conv{s}_{k}/{kernel (3, 3, Cin, Cout), bias (Cout,)}`` — the 13 VGG16 conv layers;
* ``lin{l}/kernel (C_l, 1)`` for l = 0..4 — the LPIPS linear layers.

Where the weights come from (see docs/losses.md):

* real training / evaluation: ``geolrm-jax lpips-weights`` converts the torchvision ImageNet VGG16 state dict
  (``vgg16-397923af.pth``) plus the lpips package's ``weights/v0.1/vgg.pth`` into an ``.npz`` that
  :func:`load_lpips_params` reads;
* tests and the tiny CPU config: :func:`random_vgg16_state_dict` builds a *random* VGG16 from a numpy seed
  (NOT a perceptual metric — only a deterministic stand-in with the right architecture).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (name, index of the conv in torchvision's vgg16().features, in channels, out channels)
VGG16_CONVS = (
    ("conv1_1", 0, 3, 64), ("conv1_2", 2, 64, 64),
    ("conv2_1", 5, 64, 128), ("conv2_2", 7, 128, 128),
    ("conv3_1", 10, 128, 256), ("conv3_2", 12, 256, 256), ("conv3_3", 14, 256, 256),
    ("conv4_1", 17, 256, 512), ("conv4_2", 19, 512, 512), ("conv4_3", 21, 512, 512),
    ("conv5_1", 24, 512, 512), ("conv5_2", 26, 512, 512), ("conv5_3", 28, 512, 512),
)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# ScalingLayer constants of lpips v0.1 (ImageNet statistics expressed for inputs in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _stage_of(name: str) -> int:
    return int(name[4]) - 1


class VGG16Features(nn.Module):
    """VGG16 conv trunk; returns the 5 post-ReLU feature maps LPIPS taps, each (N, H_l, W_l, C_l)."""

    dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        taps = []
        stage = 0
        for name, _, _, cout in VGG16_CONVS:
            if _stage_of(name) != stage:  # a new stage starts after a 2x2/2 max-pool (floor, like torch)
                taps.append(x)
                stage = _stage_of(name)
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            x = nn.Conv(cout, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        precision=self.precision, name=name)(x)
            x = nn.relu(x)
        taps.append(x)
        return taps


def _unit_normalize(f, eps=1e-10):
    """f / (||f||_2 over channels + eps), with a finite gradient where the feature vector is exactly 0."""
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return f / (norm + eps)


class LPIPS(nn.Module):
    """LPIPS distance between two image batches in [-1, 1].

    ``__call__(x0, x1, return_per_layer=False)`` with x0, x1 of shape (..., H, W, 3) (H, W >= 16) returns
    distances (...,) in float32, or ``(distances, per_layer (..., 5))`` when ``return_per_layer``.
    Features are computed in ``dtype`` (float32 by default; parity with the lpips package is tested in
    float32), the normalization and the distance in float32.
    """

    dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x0, x1, return_per_layer: bool = False):
        if x0.shape != x1.shape or x0.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two (..., H, W, 3) arrays of one shape, got {x0.shape}, {x1.shape}")
        lead, (h, w) = x0.shape[:-3], x0.shape[-3:-1]
        if min(h, w) < 16:
            raise ValueError(f"LPIPS needs images of at least 16x16 pixels (4 max-pools), got {h}x{w}")
        shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
        scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
        x = jnp.concatenate([x0.reshape((-1, h, w, 3)), x1.reshape((-1, h, w, 3))], axis=0)
        x = ((x.astype(jnp.float32) - shift) / scale).astype(self.dtype)
        feats = VGG16Features(dtype=self.dtype, precision=self.precision, name="vgg")(x)
        n = x.shape[0] // 2
        per_layer = []
        for l, f in enumerate(feats):
            f = _unit_normalize(f.astype(jnp.float32))
            diff = jnp.square(f[:n] - f[n:])
            weighted = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                                precision=self.precision, name=f"lin{l}")(diff)
            per_layer.append(jnp.mean(weighted, axis=(1, 2, 3)))
        per_layer = jnp.stack(per_layer, axis=-1).reshape(lead + (len(feats),))
        dist = jnp.sum(per_layer, axis=-1)
        return (dist, per_layer) if return_per_layer else dist


def lpips_distance(params, x0, x1, *, dtype=jnp.float32):
    """Pure-function form: LPIPS distances (...,) of images (..., H, W, 3) in [-1, 1].

    ``params`` is ``{"params": {...}}`` as returned by :func:`lpips_params` / :func:`load_lpips_params`.
    """
    return LPIPS(dtype=dtype).apply(params, x0, x1)


# ----------------------------------------------------------------------------------------------------------
# Weights: random (seeded) VGG16, conversion from PyTorch state dicts, .npz round trip.


def random_vgg16_state_dict(seed: int) -> dict[str, np.ndarray]:
    """A random VGG16 ``features`` state dict in torchvision layout, from a numpy seed.

    Keys ``features.{i}.weight`` (Cout, Cin, 3, 3) and ``features.{i}.bias`` (Cout,), float32. Weights are
    He-normal (std sqrt(2 / fan_in)) so that activations keep their scale through the 13 layers; biases are
    N(0, 0.01^2). Deterministic for a given seed on every platform (numpy PCG64).
    """
    rng = np.random.default_rng(seed)
    sd = {}
    for _, idx, cin, cout in VGG16_CONVS:
        std = np.sqrt(2.0 / (cin * 9))
        sd[f"features.{idx}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        sd[f"features.{idx}.bias"] = (rng.standard_normal((cout,)) * 0.01).astype(np.float32)
    return sd


def _as_numpy(value, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().float().numpy()
    arr = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"non-finite values in weight {key!r}")
    return arr


def _lookup(sd: Mapping, candidates: tuple[str, ...], shape: tuple[int, ...], what: str) -> np.ndarray:
    for key in candidates:
        if key in sd:
            arr = _as_numpy(sd[key], key)
            if arr.shape != shape:
                raise ValueError(f"{what}: weight {key!r} has shape {arr.shape}, expected {shape}")
            return arr
    raise KeyError(f"{what}: none of the keys {list(candidates)} is in the state dict "
                   f"(first keys: {sorted(sd)[:6]})")


def convert_vgg16_state_dict(sd: Mapping) -> dict:
    """torchvision VGG16 state dict (full model or lpips' ``net.slice*`` layout) -> Flax ``vgg`` subtree.

    Conv weights (Cout, Cin, kh, kw) become kernels (kh, kw, Cin, Cout). Classifier weights are ignored.
    """
    out = {}
    for name, idx, cin, cout in VGG16_CONVS:
        slice_no = 1 + _stage_of(name)
        candidates_w = (f"features.{idx}.weight", f"net.slice{slice_no}.{idx}.weight")
        candidates_b = (f"features.{idx}.bias", f"net.slice{slice_no}.{idx}.bias")
        weight = _lookup(sd, candidates_w, (cout, cin, 3, 3), "VGG16")
        bias = _lookup(sd, candidates_b, (cout,), "VGG16")
        out[name] = {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), "bias": bias}
    return out


def convert_lpips_lin_state_dict(sd: Mapping) -> dict:
    """lpips ``weights/v0.1/vgg.pth`` state dict -> Flax ``lin0..lin4`` subtrees with kernels (C, 1).

    Accepts ``lin{l}.model.1.weight`` (with dropout, the package file) or ``lin{l}.model.0.weight``.
    """
    out = {}
    for l, c in enumerate(LPIPS_CHANNELS):
        weight = _lookup(sd, (f"lin{l}.model.1.weight", f"lin{l}.model.0.weight"), (1, c, 1, 1), "LPIPS lin")
        out[f"lin{l}"] = {"kernel": np.ascontiguousarray(weight.reshape(1, c).T)}
    return out


def lpips_params(vgg_state_dict: Mapping, lin_state_dict: Mapping) -> dict:
    """Flax variables ``{"params": {"vgg": ..., "lin0": ..., ...}}`` from the two PyTorch state dicts."""
    params = {"vgg": convert_vgg16_state_dict(vgg_state_dict)}
    params.update(convert_lpips_lin_state_dict(lin_state_dict))
    return {"params": params}


def save_lpips_params(path: str | os.PathLike, variables: Mapping, **metadata: str) -> None:
    """Write variables to an ``.npz`` with flat keys ``vgg/conv1_1/kernel``, ``lin0/kernel``, ...

    ``metadata`` strings are stored under ``meta/<name>`` (e.g. where the VGG weights came from).
    """
    flat = {"/".join(str(getattr(k, "key", k)) for k in keypath): np.asarray(leaf, np.float32)
            for keypath, leaf in jax.tree_util.tree_flatten_with_path(dict(variables["params"]))[0]}
    flat.update({f"meta/{k}": np.asarray(v) for k, v in metadata.items()})
    np.savez(path, **flat)


def load_lpips_params(path: str | os.PathLike) -> dict:
    """Read an ``.npz`` written by :func:`save_lpips_params` / ``geolrm-jax lpips-weights``; checks shapes."""
    with np.load(path) as data:
        params: dict = {}
        for key in data.files:
            if key.startswith("meta/"):
                continue
            node = params
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = data[key].astype(np.float32)
    expected = {"vgg": {name: {"kernel": (3, 3, cin, cout), "bias": (cout,)}
                        for name, _, cin, cout in VGG16_CONVS}}
    expected.update({f"lin{l}": {"kernel": (c, 1)} for l, c in enumerate(LPIPS_CHANNELS)})
    got_shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    if got_shapes != expected:
        raise ValueError(f"{path}: not an LPIPS-VGG16 parameter file (tree/shapes differ from the expected "
                         f"vgg/conv*_*, lin0..lin4 layout)")
    return {"params": params}


def load_lpips_lin_npz(path: str | os.PathLike) -> dict:
    """Read the lpips linear layers stored as an ``.npz`` of the package's state dict keys."""
    with np.load(path) as data:
        return convert_lpips_lin_state_dict({k: data[k] for k in data.files})


def seeded_lpips_params(seed: int, lin_path: str | os.PathLike) -> dict:
    """Random VGG16 from ``seed`` plus the real LPIPS linear layers from ``lin_path`` (tests / tiny config).

    This is NOT a perceptual metric (the trunk is random); use a converted file for real training.
    """
    params = {"vgg": convert_vgg16_state_dict(random_vgg16_state_dict(seed))}
    params.update(load_lpips_lin_npz(lin_path))
    return {"params": params}
