"""`geolrm-jax train --config=configs/stage1.py --workdir=DIR [--config.optim.lr=1e-4 ...]`.

flax-examples shape: an ml_collections config file (`get_config()`, an argument after ':' is passed to it,
e.g. `configs/train_tiny.py:2`), `--config.<field>=<value>` overrides, and `--workdir` for checkpoints and
TensorBoard events; running again with the same workdir resumes from its latest checkpoint.

The config, its overrides and every path in it (the dataset's first record included) are checked before the
workdir is created; a bad one is a one-line error with exit code 2. Ctrl-C (SIGINT) or SIGTERM saves a
checkpoint after the current step and stops (exit code 130 / 143); the same command resumes from it exactly.
A second Ctrl-C stops at once without saving.
"""
import logging
import os
import shutil
import signal
import sys

from absl import flags
from ml_collections import config_flags

PROG = "geolrm-jax train"


def _config_path(argv) -> str | None:
    """The file named by --config (without a ':argument'), as config_flags will read it."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def _parse(argv):
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        raise flags.Error(f"--config {path}: training config file not found")
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                             flag_values=flag_values, lock_config=True,
                                             sys_argv=[PROG, *argv])
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.",
                                  flag_values=flag_values)
    try:
        flag_values([PROG, *argv])
        value = config.value
    except flags.Error:
        raise
    except (AttributeError, KeyError) as err:  # an override of a field the config does not have
        raise flags.Error(f"a --config.<field> override names no field of the config ({err})") from err
    except Exception as err:  # the config file is user code: it may raise anything
        message = " ".join(str(err).split())
        raise flags.Error(f"cannot load the training config {path}: {type(err).__name__}: {message}") from err
    if value is None or not workdir.value:
        raise flags.Error("both --config and --workdir are required")
    return value, workdir.value


def _only_folders(path: str) -> bool:
    """True when ``path`` holds no file at any depth (what a failed start leaves)."""
    return all(not files for _, _, files in os.walk(path))


def _train(argv) -> int:
    try:
        config, workdir = _parse(argv)
    except flags.Error as err:
        print(f"{PROG}: error: {' '.join(str(err).split())} (see {PROG} --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    from geolrm_jax.train.trainer import train_and_evaluate

    created = not os.path.exists(workdir)
    try:
        result = train_and_evaluate(config, workdir)
    except BaseException:
        if created and os.path.isdir(workdir) and _only_folders(workdir):
            shutil.rmtree(workdir, ignore_errors=True)  # made by this run, nothing written yet
        raise
    if isinstance(result, dict) and result.get("stop_signal"):
        signum = int(result["stop_signal"])
        print(f"{PROG}: stopped by {signal.Signals(signum).name} after step {result['step']}, checkpoint saved in "
              f"{workdir}; run the same command to resume", file=sys.stderr)
        return 128 + signum
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return 0
    from geolrm_jax import io_atomic

    expected = (*io_atomic.EXPECTED_ERRORS, FloatingPointError)
    try:
        from geolrm_jax.data.pipeline import BadDataError

        expected = (*expected, BadDataError)
    except ImportError:
        pass
    return io_atomic.run_command(PROG, lambda: _train(argv), expected=expected)


if __name__ == "__main__":
    sys.exit(main())
