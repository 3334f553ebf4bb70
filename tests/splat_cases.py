"""A random scene shared by the splatter tests (tests/render/test_splat.py, tests/kernels/test_tpu_rasterize.py)."""
import jax.numpy as jnp
import numpy as np

from geolrm_jax.geometry import fov_to_intrinsics, spherical_c2w
from geolrm_jax.render.gaussians import Gaussians


def random_scene(seed, num=300, size=40):
    """Small GeoLRM-like scene (means in the unit cube) and a camera on a sphere of radius 1.5."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(num, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    f = lambda x: jnp.asarray(x, jnp.float32)
    g = Gaussians(f(rng.uniform(-0.5, 0.5, (num, 3))), f(rng.uniform(0.01, 0.06, (num, 3))), f(quats),
                  f(rng.uniform(0.3, 0.999, num)), f(rng.uniform(0, 1, (num, 3))))
    c2w = spherical_c2w(jnp.float32(rng.uniform(0, 360)), jnp.float32(rng.uniform(-30, 60)), 1.5)
    return g, c2w, fov_to_intrinsics(39.6), size
