"""geolrm-jax: a JAX/Flax port of GeoLRM (geometry-aware large reconstruction model)."""

__version__ = "0.1.0"
