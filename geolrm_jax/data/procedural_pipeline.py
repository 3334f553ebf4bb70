"""Training batches of procedural objects (``data.source = "procedural"``), rendered on the default device.

Yields the same batch dict as ``pipeline.make_iterator`` (see its module doc), with Vi = ``input_views`` and
Vt = ``target_views`` slots. Per example (a function of ``(seed, split, index)`` only):

* an object of ``procedural.sample_object`` (family drawn with ``family_weights``);
* an input rig, drawn with ``rig_weights`` from the camera set-ups users feed:
  ``zero123pp`` (6 views: azimuth 30 + 60k, elevation +20/-10 alternating, radius 4, fov 30 degrees, as
  ``geometry.zero123pp_cameras``), ``sv3d`` (2-Vi of the 21 SV3D orbit views, evenly spaced from a random
  start: elevation 10 degrees, radius 1.5, fov 39.6) and ``random`` (2-Vi views at random azimuths, elevation
  U[-15, 50] degrees, radius U[1.6, 4], the fov framing the object);
* targets: in training, up to half of them re-render input cameras, the rest are random novel views; in
  evaluation all are novel views;
* a background U[0, 1]^3 for the targets in training (``random_background``), white otherwise; inputs on white.

Object streams: split ``train`` uses stream 0 and any other split stream 1, so validation objects are never
training objects. The iterator's state is the next example index (``get_state``/``set_state``).
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np

from geolrm_jax import geometry
from geolrm_jax.data import procedural

RIGS = ("zero123pp", "sv3d", "random")


def default_procedural_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.source = "procedural"
    c.input_size = 256
    c.render_size = 128
    c.grid_size = 64
    c.input_views = 6
    c.target_views = 6
    c.supersample = 2  # rays per pixel (per axis) of the targets
    c.input_supersample = 1  # and of the inputs
    c.steps = 96
    c.family_weights = (1.0, 1.0, 1.0)  # procedural.FAMILIES
    c.rig_weights = (0.5, 0.25, 0.25)  # RIGS
    c.random_background = True
    c.num_epochs = -1  # -1: forever; else one pass over num_examples
    c.num_examples = 512  # examples per pass when num_epochs = 1 (evaluation)
    return c


_HOST = jax.devices("cpu")[0]


@functools.cache
def _preset(name: str):
    with jax.default_device(_HOST):
        cams = geometry.CAMERA_PRESETS[name]()
        return np.asarray(cams.c2w, np.float32), np.asarray(cams.K, np.float32)


def _fov_framing(radius):
    """Field of view (degrees) that frames the [-0.5, 0.5]^3 object's bounding sphere from ``radius``."""
    return np.degrees(2 * np.arcsin(np.minimum(0.75 / np.asarray(radius), 0.99)))


def input_rig(rng: np.random.Generator, rig: str, max_views: int):
    """-> c2w (n, 4, 4), K (n, 3, 3) float32 of one rig."""
    if rig == "zero123pp":
        c2w, K = _preset("zero123pp")
        return c2w[:max_views], K[:max_views]
    n = int(rng.integers(2, max_views + 1))
    if rig == "sv3d":
        c2w, K = _preset("sv3d")
        start, step = rng.integers(21), 21 / n
        index = (start + np.round(np.arange(n) * step).astype(int)) % 21
        return c2w[index], K[index]
    return random_views(rng, n)


def random_views(rng: np.random.Generator, n: int):
    az = rng.uniform(0, 360, n)
    el = rng.uniform(-15, 50, n)
    radius = rng.uniform(1.6, 4.0, n)
    with jax.default_device(_HOST):  # small host-side math: no accelerator round trips per example
        c2w = np.asarray(geometry.spherical_c2w(az, el, radius), np.float32)
        K = np.asarray(geometry.fov_to_intrinsics(_fov_framing(radius)), np.float32)
    return c2w, K


def _pad(c2w, K, slots):
    n = len(c2w)
    index = np.concatenate([np.arange(n), np.zeros(slots - n, int)])
    return c2w[index], K[index], np.arange(slots) < n


def sample_example(config, seed: int, stream: int, index: int, training: bool) -> dict:
    """The numpy half of one example: object, cameras, background (no images)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, index]))
    fw = np.asarray(config.family_weights, np.float64)
    family = procedural.FAMILIES[rng.choice(len(fw), p=fw / fw.sum())]
    scene, _ = procedural.sample_object(rng, family)
    rw = np.asarray(config.rig_weights, np.float64)
    rig = RIGS[rng.choice(len(rw), p=rw / rw.sum())]
    c2w, K = input_rig(rng, rig, config.input_views)
    input_c2w, input_K, input_mask = _pad(c2w, K, config.input_views)
    vt = config.target_views
    reuse = min(len(c2w), vt // 2) if training else 0
    picked = rng.permutation(len(c2w))[:reuse]
    novel_c2w, novel_K = random_views(rng, vt - reuse)
    background = rng.uniform(0, 1, 3) if (training and config.random_background) else np.ones(3)
    return {"scene": scene, "family": procedural.FAMILIES.index(family), "rig": RIGS.index(rig),
            "input_c2w": input_c2w, "input_K": input_K, "input_mask": input_mask,
            "target_c2w": np.concatenate([c2w[picked], novel_c2w]).astype(np.float32),
            "target_K": np.concatenate([K[picked], novel_K]).astype(np.float32),
            "target_mask": np.ones(vt, bool), "background": background.astype(np.float32)}


@functools.partial(jax.jit, static_argnames=("input_size", "render_size", "grid_size", "supersample", "steps",
                                             "input_supersample"))
def render_batch(examples: dict, *, input_size: int, render_size: int, grid_size: int, supersample: int,
                 steps: int, input_supersample: int = 1) -> dict:
    """The JAX half: render a stacked batch of ``sample_example`` outputs into the training batch dict."""

    def one(ex):
        scene = ex["scene"]
        rgba, _, _ = procedural.render_views(scene, ex["input_c2w"], ex["input_K"], input_size, input_supersample,
                                             steps)
        alpha = rgba[..., 3:]
        inputs = (rgba[..., :3] * alpha + (1 - alpha)) * ex["input_mask"][:, None, None, None]
        rgba_t, depth, _ = procedural.render_views(scene, ex["target_c2w"], ex["target_K"], render_size,
                                                   supersample, steps)
        alpha_t = rgba_t[..., 3:]
        targets = rgba_t[..., :3] * alpha_t + (1 - alpha_t) * ex["background"]
        return {"input_images": inputs, "target_images": targets, "target_alpha": alpha_t[..., 0],
                "target_depth": depth, "occupancy": procedural.occupancy(scene, grid_size)}

    rendered = jax.vmap(one)(examples)
    keep = ("input_c2w", "input_K", "input_mask", "target_c2w", "target_K", "target_mask", "background",
            "family", "rig")
    return dict(rendered, **{k: examples[k] for k in keep})


def stack_examples(examples: list[dict]) -> dict:
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k != "scene"}
    out["scene"] = procedural.stack_scenes([e["scene"] for e in examples])
    return out


class ProceduralIterator:
    """Batches of ``batch_size`` examples (numpy dicts); ``get_state``/``set_state`` hold the next index."""

    def __init__(self, config, split: str, *, seed: int, batch_size: int, training: bool | None = None):
        self.config = config
        self.training = split == "train" if training is None else training
        self.stream = 0 if split == "train" else 1
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.index = 0
        self.examples = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        c = self.config
        if c.num_epochs == 1 and self.index + self.batch_size > c.num_examples:
            raise StopIteration
        examples = [sample_example(c, self.seed, self.stream, self.index + i, self.training)
                    for i in range(self.batch_size)]
        self.index += self.batch_size
        batch = render_batch(stack_examples(examples), input_size=c.input_size, render_size=c.render_size,
                             grid_size=c.grid_size, supersample=c.supersample, steps=c.steps,
                             input_supersample=c.get("input_supersample", 1))
        self.examples += self.batch_size
        return jax.tree.map(np.asarray, batch)

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])

    def reshard_state(self, states: list[dict], process_index: int, process_count: int) -> dict:
        """The state for process ``process_index`` of ``process_count`` from the states of a run with another
        process count: each new process continues its own object stream after the average number of examples
        the old processes had consumed."""
        del process_index
        return {"index": sum(int(s["index"]) for s in states) // process_count}

    def metrics(self) -> dict:
        return {"data/examples": float(self.examples), "data/bad_examples": 0.0}

    def close(self) -> None:
        pass

