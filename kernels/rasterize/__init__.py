"""The splatter's rasterization stage: the op (``api``), its pure-jnp reference and tile layout (``reference``),
the Pallas Triton kernels (``forward_triton``, ``backward_triton``, ``triton_common``, and ``tile_keys_triton``
for the tile-intersection stage's sort keys) and their tuning parameters (``config``)."""
from geolrm_kernels.rasterize.api import IMPLEMENTATIONS, RASTERIZE, rasterize, rasterize_tiles
from geolrm_kernels.rasterize.config import DEFAULT_CONFIG, RasterizeConfig
from geolrm_kernels.rasterize.reference import (
    ALPHA_MAX,
    ALPHA_MIN,
    NUM_FEATURES,
    PIXELS,
    T_MIN,
    TILE_SIZE,
    TileImage,
    backward_xla,
    forward_xla,
    image_to_tiles,
    pack_features,
    rasterize_dense_reference,
    tile_pixel_coords,
    tile_rect,
    tiles_grid,
    tiles_to_image,
)

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "DEFAULT_CONFIG", "IMPLEMENTATIONS", "NUM_FEATURES", "PIXELS", "RASTERIZE",
           "T_MIN", "TILE_SIZE", "RasterizeConfig", "TileImage", "backward_xla", "forward_xla", "image_to_tiles",
           "pack_features", "rasterize", "rasterize_dense_reference", "rasterize_tiles", "tile_pixel_coords",
           "tile_rect", "tiles_grid", "tiles_to_image"]
