"""A tiny GeoLRM for CPU tests (28 px inputs, 8³ occupancy grid, 2-layer transformers)."""

from geolrm_jax.model.config import tiny_model_config


def get_config():
    return tiny_model_config()
