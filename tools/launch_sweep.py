"""Thin wrapper kept for old commands: `python tools/launch_sweep.py ...` = `geolrm-jax sweep ...`
(geolrm_jax/train/sweep.py)."""
import sys

from geolrm_jax.train.sweep import main

if __name__ == "__main__":
    sys.exit(main())
