"""`geolrm-jax train --config=configs/stage1.py --workdir=DIR [--config.optim.lr=1e-4 ...]`.

flax-examples shape: an ml_collections config file (`get_config()`, an argument after ':' is passed to it,
e.g. `configs/train_tiny.py:2`), `--config.<field>=<value>` overrides, and `--workdir` for checkpoints and
TensorBoard events; running again with the same workdir resumes from its latest checkpoint.
"""
import logging
import sys

from absl import flags
from ml_collections import config_flags


def _parse(argv):
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                             flag_values=flag_values, lock_config=True,
                                             sys_argv=["geolrm-jax train", *argv])
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.",
                                  flag_values=flag_values)
    flag_values(["geolrm-jax train", *argv])
    if config.value is None or not workdir.value:
        raise flags.Error("both --config and --workdir are required")
    return config.value, workdir.value


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return 0
    try:
        config, workdir = _parse(argv)
    except flags.Error as err:
        print(f"geolrm-jax train: {err}\n{__doc__}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    from geolrm_jax.train.trainer import train_and_evaluate

    train_and_evaluate(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
