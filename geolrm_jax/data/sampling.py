"""View sampling of the original GeoLRM training (``GObjaverseDataset`` + ``prepare_batch_data``).

Per example, with ``num_orbit_views`` = 24 orbit views first in the object:

* orbit views: a random start k in [0, 24) and the 4 views ``(k + j * 24 / 4) % 24`` (90 degrees apart);
* random views: 4 distinct views drawn from all views except those 4 (``rand_target``, ``rand_views=40``);
* inputs (training): ``n_orbit ~ U{1..4}`` orbit views and ``n_random ~ U{0..3}`` random views, each a random
  subset, orbit ones first; padded to a static ``4 + 3`` with a mask;
* targets (training): all 8 sampled views (the original renders and supervises all of them).

Evaluation (``training=False``, as ``prepare_validation_batch_data``): inputs are the 4 orbit views, targets
the 4 random views (novel views only), padded to the same static 8 with a mask.

The original draws ``n_orbit``, ``n_random`` and the subsets once per batch; here they are drawn per example
(the mask carries the difference), so a batch mixes view counts.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from geolrm_jax.data.gobjaverse_io import NUM_ORBIT_VIEWS


class ViewSample(NamedTuple):
    """Indices into the object's views; padded entries repeat the first valid one and are masked out."""

    input_views: np.ndarray  # (max_inputs,) int
    input_mask: np.ndarray  # (max_inputs,) bool
    target_views: np.ndarray  # (num_targets,) int
    target_mask: np.ndarray  # (num_targets,) bool


def _pad(ids: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(size, bool)
    mask[: len(ids)] = True
    padded = np.asarray(list(ids) + [ids[0]] * (size - len(ids)), np.int64)
    return padded, mask


def sample_views(
    rng: np.random.Generator,
    num_views: int,
    *,
    training: bool = True,
    num_orbit_views: int = NUM_ORBIT_VIEWS,
    orbit_inputs: int = 4,
    random_views: int = 4,
    min_orbit_inputs: int = 1,
    max_random_inputs: int = 3,
) -> ViewSample:
    """Sample the views of one example (see the module docstring)."""
    if num_orbit_views % orbit_inputs:
        raise ValueError(f"num_orbit_views={num_orbit_views} is not a multiple of orbit_inputs={orbit_inputs}")
    if num_views < num_orbit_views or num_views - orbit_inputs < random_views:
        raise ValueError(f"object has {num_views} views; need >= {num_orbit_views} and room for random views")
    start = int(rng.integers(num_orbit_views))
    stride = num_orbit_views // orbit_inputs
    orbit = [(start + j * stride) % num_orbit_views for j in range(orbit_inputs)]
    options = np.setdiff1d(np.arange(num_views), orbit)
    rand = [int(v) for v in rng.choice(options, size=random_views, replace=False)]
    max_inputs = orbit_inputs + max_random_inputs
    num_targets = orbit_inputs + random_views
    if training:
        n_orbit = int(rng.integers(min_orbit_inputs, orbit_inputs + 1))
        n_rand = int(rng.integers(0, max_random_inputs + 1))
        inputs = [orbit[i] for i in rng.permutation(orbit_inputs)[:n_orbit]]
        inputs += [rand[i] for i in rng.permutation(random_views)[:n_rand]]
        targets = orbit + rand
    else:
        inputs, targets = orbit, rand
    input_views, input_mask = _pad(inputs, max_inputs)
    target_views, target_mask = _pad(targets, num_targets)
    return ViewSample(input_views, input_mask, target_views, target_mask)
