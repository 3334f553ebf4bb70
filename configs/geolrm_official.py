"""The released GeoLRM architecture (proposal 384×6, reconstruction 768×16, DINOv2-B/14 encoders)."""

from geolrm_jax.model.config import official_model_config


def get_config():
    return official_model_config()
