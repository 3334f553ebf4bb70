"""clu metric writers without TensorFlow.

`clu.metric_writers` imports its TensorFlow SummaryWriter at package import time. When TensorFlow is missing,
`import_clu_metric_writers()` registers a placeholder for that one submodule first (its SummaryWriter raises on
use), so the rest of clu (interface, LoggingWriter, MultiWriter, periodic_actions) imports normally, and
`create_writer` uses `TensorboardXWriter`, clu's MetricWriter interface on tensorboardX event files.
"""
import importlib.util
import logging
import sys
import types

import numpy as np

log = logging.getLogger(__name__)

HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


def import_clu_metric_writers():
    """Import clu.metric_writers whether or not TensorFlow is installed."""
    name = "clu.metric_writers.summary_writer"
    if not HAS_TENSORFLOW and name not in sys.modules:
        placeholder = types.ModuleType(name)

        class SummaryWriter:  # noqa: D401 - placeholder
            def __init__(self, *args, **kwargs):
                raise ImportError("clu's SummaryWriter needs TensorFlow; use geolrm_jax.train.writers."
                                  "TensorboardXWriter")

        placeholder.SummaryWriter = SummaryWriter
        sys.modules[name] = placeholder
    from clu import metric_writers

    return metric_writers


metric_writers = import_clu_metric_writers()
# clu modules that import clu.metric_writers, re-exported so users import them after the placeholder is set.
from clu import metrics as clu_metrics  # noqa: E402
from clu import parameter_overview, periodic_actions  # noqa: E402
from clu.metric_writers import interface  # noqa: E402

__all__ = ["TensorboardXWriter", "clu_metrics", "create_writer", "image_grid", "import_clu_metric_writers",
           "metric_writers", "parameter_overview", "periodic_actions"]


class TensorboardXWriter(interface.MetricWriter):
    """clu MetricWriter writing TensorBoard event files with tensorboardX."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(logdir))

    def write_summaries(self, step, values, metadata=None):
        for key, value in values.items():
            value = np.asarray(value)
            if value.ndim == 0:
                self._writer.add_scalar(key, float(value), int(step))
            else:
                self._writer.add_histogram(key, value, int(step))

    def write_scalars(self, step, scalars):
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(np.asarray(value)), int(step))

    def write_images(self, step, images):
        for key, value in images.items():
            value = np.asarray(value)
            if value.ndim == 3:
                value = value[None]
            if value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image summary {key!r}: expected [N,] H, W, C with C in 1/3/4, got {value.shape}")
            self._writer.add_images(key, value, int(step), dataformats="NHWC")

    def write_videos(self, step, videos):
        for key, value in videos.items():
            value = np.asarray(value)
            if value.ndim == 4:
                value = value[None]
            self._writer.add_video(key, np.transpose(value, (0, 1, 4, 2, 3)), int(step))

    def write_audios(self, step, audios, *, sample_rate):
        for key, value in audios.items():
            value = np.asarray(value)
            self._writer.add_audio(key, value[0, :, 0], int(step), sample_rate=sample_rate)

    def write_texts(self, step, texts):
        for key, value in texts.items():
            self._writer.add_text(key, value, int(step))

    def write_histograms(self, step, arrays, num_buckets=None):
        for key, value in arrays.items():
            bins = (num_buckets or {}).get(key, "tensorflow")
            self._writer.add_histogram(key, np.asarray(value), int(step), bins=bins)

    def write_hparams(self, hparams):
        text = "\n".join(f"{k}: {v}" for k, v in sorted(hparams.items()))
        self._writer.add_text("hparams", f"```\n{text}\n```", 0)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


def create_writer(logdir, *, write: bool = True):
    """Console + TensorBoard writer. write=False (processes other than 0) → a writer that writes nothing."""
    if not write:
        return metric_writers.MultiWriter([])
    if HAS_TENSORFLOW:
        return metric_writers.create_default_writer(str(logdir), asynchronous=False)
    return metric_writers.MultiWriter([metric_writers.LoggingWriter(), TensorboardXWriter(str(logdir))])


def image_grid(images, columns: int | None = None, pad: int = 2):
    """(N, H, W, C) float in [0, 1] → one (H', W', C) grid image (rows of `columns` tiles)."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    columns = columns or n
    rows = -(-n // columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid
