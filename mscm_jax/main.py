"""Command line: `python -m mscm_jax.main --config=configs/X.py[:preset] --workdir=DIR`.

Flags and logging only; the work is `mscm_jax.pipeline.run`, importable from a notebook.
The workdir is the resume key: the same command again continues where it stopped.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mscm_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/cifar10_oneclass.py:cpu",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # JAX logs an INFO line for every accelerator plugin it does not find, orbax a dozen
  # per checkpoint: not news. Their warnings and errors still show.
  py_logging.getLogger("jax._src.xla_bridge").setLevel(py_logging.WARNING)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  from mscm_jax import pipeline  # pylint: disable=g-import-not-at-top

  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    # Something the user can fix: one line, no traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def entry_point():
  app.run(main)


if __name__ == "__main__":
  entry_point()
