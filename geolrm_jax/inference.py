"""Finding and loading a model, and its jitted stages: what ``reconstruct``, ``eval`` and ``bench`` share.

Weights, first found wins (:func:`find_checkpoint`):

1. an explicit path (``--checkpoint``): an Orbax folder written by ``geolrm-jax convert``, or a state dict
   (.safetensors / .ckpt / .pt) converted on the fly;
2. ``$GEOLRM_CHECKPOINT`` (same kinds);
3. the newest entry (by modification time) in ``$GEOLRM_CACHE`` (default ``~/.cache/geolrm_jax``): an Orbax
   folder or a state dict file (where ``geolrm-jax convert`` puts the released weights);
4. the newest entry of the bundled ``geolrm_jax/assets/checkpoints``: the demo model (``checkpoints/demo``,
   trained by this project on procedural objects, ``configs/demo.py``).

Unreadable cache or bundled entries are skipped with a warning. With none, ``find_checkpoint`` returns None:
``reconstruct`` then stops unless ``--random-weights`` asked for seeded random weights (:func:`random_variables`,
a pipeline test), which every command says in its output; :func:`describe_model` is the line naming the model.

The architecture (:func:`resolve_model`): ``--model-config``, else the config ``geolrm-jax convert`` saved beside
an Orbax checkpoint (``geolrm_model_config.json``), else ``official`` with a checkpoint and ``tiny`` without.
:func:`load_model` loads the weights into a :class:`Reconstructor`, the jitted stages (proposal -> anchors,
reconstruction -> Gaussians); :func:`render_views` renders its Gaussians.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
from typing import NamedTuple

import numpy as np

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
BUNDLED_CHECKPOINTS = pathlib.Path(__file__).parent / "assets" / "checkpoints"
DEFAULT_IMAGE_SIZE = {"official": 448, "tiny": 56}
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: the output is NOT a reconstruction"
DEMO_DESCRIPTION = ("the demo model, trained by geolrm-jax on procedural objects (configs/demo.py); for real "
                    "objects convert the released weights (geolrm-jax convert)")


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GEOLRM_CACHE", pathlib.Path.home() / ".cache" / "geolrm_jax"))


def _is_checkpoint(path: pathlib.Path) -> bool:
    return path.is_dir() or path.suffix.lower() in CHECKPOINT_SUFFIXES


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_checkpoint(explicit: str | None = None, warn=_warn) -> tuple[pathlib.Path | None, str]:
    """(checkpoint path or None, how it was found); see the module doc for the search order.

    An explicit or ``$GEOLRM_CHECKPOINT`` path that is missing raises ``FileNotFoundError``, one that is not a
    readable checkpoint ``convert.CheckpointError``; unreadable cache entries are skipped, each with a
    ``warn(message)``."""
    from geolrm_jax.model import convert

    for value, how in ((explicit, "--checkpoint"), (os.environ.get("GEOLRM_CHECKPOINT"), "$GEOLRM_CHECKPOINT")):
        if not value:
            continue
        path = pathlib.Path(value)
        if not path.exists():
            named = "" if how == "--checkpoint" else " named by $GEOLRM_CHECKPOINT"
            raise FileNotFoundError(f"{path}: checkpoint{named} not found")
        problem = convert.checkpoint_problem(path)
        if problem:
            raise convert.CheckpointError(f"{path}: {problem} ({how})")
        return path, how
    for folder in (cache_dir(), BUNDLED_CHECKPOINTS):  # the user's converted weights before the bundled model
        candidates = []
        if folder.is_dir():
            for p in folder.iterdir():
                if not _is_checkpoint(p) or p.name.startswith("."):
                    continue
                problem = convert.checkpoint_problem(p)
                if problem:
                    warn(f"{p}: skipped, not a readable checkpoint ({problem})")
                else:
                    candidates.append(p)
        if candidates:
            newest = max(candidates, key=lambda p: p.stat().st_mtime)
            how = "bundled" if folder == BUNDLED_CHECKPOINTS else f"newest in {newest.parent}"
            return newest, how
    return None, "none found"


def load_variables(checkpoint: pathlib.Path, config):
    """{"params", "batch_stats"} from an Orbax folder or a torch/safetensors state dict, checked against the
    shapes of ``GeoLRM(config)``; errors (``convert.CheckpointError`` / ``ConversionError``) name the file."""
    from geolrm_jax.model import convert

    if checkpoint.is_dir():
        variables = convert.restore_variables(checkpoint)
        convert.check_variables(variables, config, checkpoint)
        return variables
    try:
        variables, _ = convert.convert_state_dict(convert.load_state_dict(checkpoint), config)
    except convert.ConversionError as err:
        raise convert.ConversionError(f"{checkpoint}: {err}") from err
    return variables


class ModelChoice(NamedTuple):
    """Weights and architecture of a run: ``checkpoint`` (None = random weights), ``how`` it was found,
    ``config``, ``config_name`` (as shown to the user) and ``preset`` ('official', 'tiny' or None)."""

    checkpoint: pathlib.Path | None
    how: str
    config: object
    config_name: str
    preset: str | None


def resolve_model(checkpoint_arg: str | None, model_config_arg: str | None, dtype: str | None = None,
                  warn=_warn, random_weights: bool = False) -> ModelChoice:
    """Find the checkpoint (none with ``random_weights``) and the architecture (``--model-config``, else the
    config saved with an Orbax checkpoint, else official with a checkpoint and tiny without); nothing is loaded
    yet."""
    from geolrm_jax.model import convert

    checkpoint, how = (None, "--random-weights") if random_weights else find_checkpoint(checkpoint_arg, warn)
    saved = None if checkpoint is None else checkpoint / convert.CONFIG_FILE
    if model_config_arg:
        config, name = convert.config_from_arg(model_config_arg), model_config_arg
    elif saved is not None and saved.is_file():
        config, name = convert.restore_config(checkpoint), str(saved)
    else:
        name = "official" if checkpoint is not None else "tiny"
        config = convert.config_from_arg(name)
    if dtype:
        config.dtype = dtype
    preset = name if name in DEFAULT_IMAGE_SIZE else convert.preset_name(config)
    return ModelChoice(checkpoint, how, config, name, preset)


def describe_model(choice: ModelChoice) -> str:
    """One line naming the weights a run uses (the first line ``reconstruct`` prints; ``summary.json``'s
    ``model``)."""
    if choice.checkpoint is None:  # how: "--random-weights", or "none found" where a command falls back (eval)
        why = choice.how if choice.how == "--random-weights" else "no checkpoint found"
        return f"RANDOM WEIGHTS ({why}): the output is NOT a reconstruction; architecture {choice.config_name}"
    info_file = choice.checkpoint / "training.json" if choice.checkpoint.is_dir() else None
    if info_file is not None and info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            info = {}
        if str(info.get("config", "")).startswith("configs/demo.py"):
            return f"{DEMO_DESCRIPTION} [{choice.checkpoint}]"
        if info.get("config"):
            return (f"a model trained by geolrm-jax ({info['config']}, step {info.get('workdir_step', '?')}) "
                    f"[{choice.checkpoint}]")
    return f"{choice.checkpoint} ({choice.how}); architecture {choice.config_name}"


def random_variables(config, seed: int = 0, inference: bool = False):
    """Seeded random weights with the shapes of ``GeoLRM(config)``: kernels and embeddings N(0, 0.02^2),
    biases 0, norm scales 1, BatchNorm running mean 0 and variance 1. ``inference``: kernels are cast to the
    compute dtype on the host (as ``model.geolrm.inference_variables``), so no float32 copy reaches the device.

    Built with numpy from ``jax.eval_shape`` of the initializer, so nothing is compiled (``init`` itself
    runs the whole forward pass).
    """
    import jax
    import jax.numpy as jnp

    from geolrm_jax.model.convert import expected_variables
    from geolrm_jax.model.geolrm import kernel_dtype

    shapes = expected_variables(config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    values = []
    for path, leaf in leaves:
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("bias", "mean"):
            value = np.zeros(leaf.shape, np.float32)
        elif name in ("scale", "var", "weight"):
            value = np.ones(leaf.shape, np.float32)
        else:
            value = (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if inference and name == "kernel":
            value = value.astype(kernel_dtype(config, path))
        values.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, values)


def peak_device_memory() -> int | None:
    """Peak bytes in use on the first local device, or None where the backend does not report it (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def format_bytes(n: int | None) -> str:
    return "n/a on CPU" if n is None else f"{n / 2**30:.2f} GiB"


@functools.lru_cache(maxsize=16)
def _jitted_render(height: int, width: int, capacity: int):
    import jax

    from geolrm_jax.render.splat import render

    return jax.jit(lambda g, c2w, K, bg: render(g, c2w, K, height, width, bg, capacity=capacity))


def render_views(gaussians, c2w, K, size: int, chunk: int = 8, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Render one scene's Gaussians (fields (1, N, ...)) into cameras (C, 4, 4) -> (C, size, size, 3) in [0, 1].

    On a CPU backend: ``render.preview.render_preview`` (the same image, much faster there). Elsewhere cameras go
    in chunks of ``chunk`` (the last one padded by repetition) through one compiled splatter; the
    tile-intersection capacity grows (power of two) and the chunk is redone whenever it overflows.
    """
    import jax
    import jax.numpy as jnp

    if jax.default_backend() == "cpu":
        from geolrm_jax.render.preview import render_preview

        return render_preview(gaussians, c2w, K, size, size, background)

    from geolrm_jax.render.splat import default_capacity, grown_capacity

    capacity = default_capacity(gaussians.means.shape[-2], size, size)
    bg = jnp.asarray(background, jnp.float32)
    frames = []
    for start in range(0, len(c2w), chunk):
        index = np.minimum(np.arange(start, start + chunk), len(c2w) - 1)
        cw, k = jnp.asarray(c2w[index])[None], jnp.asarray(K[index])[None]
        while True:
            out = _jitted_render(size, size, capacity)(gaussians, cw, k, bg)
            overflow = int(out.overflow)
            if overflow == 0:
                break
            capacity = grown_capacity(capacity, overflow)
        frames.append(np.asarray(out.rgb[0])[: len(c2w) - start])
    return np.concatenate(frames)


_COMPILED_STAGES: dict[str, tuple] = {}


class Reconstructor:
    """Jitted stages of one model: ``propose`` -> anchors, ``reconstruct`` -> Gaussians.

    The jitted functions are shared by every Reconstructor of the same config (so repeated runs in one process,
    e.g. ``eval`` over objects, reuse compilations).
    """

    def __init__(self, config, variables):
        import jax

        from geolrm_jax.model.geolrm import GeoLRM, inference_variables
        from geolrm_jax.model.proposal import select_anchors

        self.variables = inference_variables(variables, config)  # pass these to propose / reconstruct
        key = config.to_json_best_effort(sort_keys=True)
        if key not in _COMPILED_STAGES:
            model = GeoLRM(config)
            pc = config.proposal

            def propose(variables, images, c2ws, Ks, view_mask):
                logits = model.apply(variables, images, c2ws, Ks, view_mask, method=GeoLRM.propose)
                return select_anchors(logits, pc.capacity, pc.xyz_scale)

            def reconstruct(variables, images, c2ws, Ks, view_mask, anchors, anchor_mask):
                return model.apply(variables, images, c2ws, Ks, view_mask, anchors, anchor_mask,
                                   method=GeoLRM.reconstruct)

            _COMPILED_STAGES[key] = (jax.jit(propose), jax.jit(reconstruct))
        self.propose, self.reconstruct = _COMPILED_STAGES[key]

    def predict(self, images, c2w, K):
        """One scene's views (V, H, W, 3), cameras (V, 4, 4), (V, 3, 3) -> its Gaussians (fields (1, N, ...))."""
        import jax
        import jax.numpy as jnp

        batch = (jnp.asarray(images)[None], jnp.asarray(c2w)[None], jnp.asarray(K)[None],
                 jnp.ones((1, len(images)), bool))
        anchors, mask = self.propose(self.variables, *batch)
        return jax.block_until_ready(self.reconstruct(self.variables, *batch, anchors, mask))


class LoadedModel(NamedTuple):
    """A model ready to run: ``model`` (its jitted stages and weights), ``weights`` (a description for the
    user), ``random_weights`` (no checkpoint: seeded random weights)."""

    model: Reconstructor
    weights: str
    random_weights: bool


def load_model(choice: ModelChoice, seed: int = 0) -> LoadedModel:
    """Load the weights of ``choice`` (random ones, seeded, when it has no checkpoint) into a Reconstructor."""
    if choice.checkpoint is None:
        variables = random_variables(choice.config, seed)
        weights = f"random, seed {seed}; architecture {choice.config_name}"
    else:
        variables = load_variables(choice.checkpoint, choice.config)
        weights = f"{choice.checkpoint} ({choice.how}); architecture {choice.config_name}"
    return LoadedModel(Reconstructor(choice.config, variables), weights, choice.checkpoint is None)
