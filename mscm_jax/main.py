"""Command line: `python -m mscm_jax.main --config=configs/X.py[:preset] --workdir=DIR`.

Flags and logging only; the work is `mscm_jax.pipeline.run`, importable from a notebook.
The workdir is the resume key: the same command again continues where it stopped.
Anything the user can fix is one `error:` line on stderr and a non-zero exit status
(`mscm_jax.errors` lists them); `--debug` shows the traceback as well.
"""

from __future__ import annotations

import logging as py_logging
import signal
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from mscm_jax.errors import Interrupted, UserError, disk_full, is_disk_full
from mscm_jax.names import renamed_hint

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/cifar10_oneclass.py:cpu",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
_DISCARD = flags.DEFINE_bool(
    "discard_stale", False, "Delete the stages of the workdir that another config or other "
    "data made (and every stage after them), then train them again.")
_STAGE1_FROM = flags.DEFINE_string(
    "stage1_from", None, "A workdir whose finished stage 1 this run copies and reuses; its "
    "identity (stage-1 config fields and data) must match this run's.")
_DEBUG = flags.DEFINE_bool("debug", False, "On an error, show the traceback too.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a run over several processes "
    "started by hand (a CPU cluster); SLURM, Open MPI and TPU pods need no flags.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (with "
                                      "--coordinator_address and --process_id).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0 to "
                                   "--num_processes - 1; process 0 writes the workdir.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a cluster that JAX detects by itself (every worker of a "
    "Cloud TPU VM slice, Kubernetes); srun, mpirun and the three flags above need no flag.")


def _debug() -> bool:
  """--debug, also when the error came while the flags were being parsed."""
  if flags.FLAGS.is_parsed():
    return _DEBUG.value
  return any(a.lower() in ("--debug", "--debug=true", "--debug=1") for a in sys.argv)


def _fail(message: str, code: int = 2) -> None:
  if _debug():
    traceback.print_exc()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing with the CLI's contract: a bad flag is one `error:` line, status 2."""
  try:
    rest = flags.FLAGS(argv)
    if any(a.split("=", 1)[0] == "--config" for a in argv):
      _ = _CONFIG.value.seed  # a file that failed to load raises on first use: here
  except flags.Error as e:
    text = " ".join(str(e).split())
    if "invalid literal for int()" in text or "could not convert string to float" in text:
      text += " (give a number)"
    elif "Non-boolean argument" in text:
      text += " (give true or false)"
    elif "Unknown command line flag" in text:
      text += (" (flags: --config, --config.<field>, --workdir, --discard_stale, "
               "--stage1_from, --coordinator_address, --num_processes, --process_id, "
               "--distributed, --debug)")
    _fail(text)
  except UserError as e:  # an unknown preset, raised while the config file loads
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of no field
    field = str(e).strip("\"'")
    path = _override_path(argv, field)
    _fail(f"--config.{path}: the config has no field {field!r}{renamed_hint(path)} "
          "(see mscm_jax/config.py for the schema)")
  except OSError as e:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
    _fail(f"--config={path}: cannot load the config file ({_last_line(e)}); give "
          "configs/<family>.py[:preset]")
  except (TypeError, ValueError, SyntaxError, ImportError) as e:
    _fail(f"--config: {type(e).__name__}: {_last_line(e)}")
  for name in ("config", "workdir"):
    if flags.FLAGS[name].value in (None, ""):
      _fail(f"--{name} is required (python -m mscm_jax.main --config=configs/<family>.py"
            "[:preset] --workdir=DIR)")
  return rest


def _override_path(argv: list[str], field: str) -> str:
  """The dotted override that named `field`, for the message."""
  for a in argv:
    if a.startswith("--config.") and field in a.split("=", 1)[0].split("."):
      return a.split("=", 1)[0][len("--config."):]
  return field


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


class _Signalled(BaseException):
  """Raised by the signal handler outside the training loops. A BaseException, as
  KeyboardInterrupt is, so that no `except Exception` on its way (logging's own, around
  every log line) can swallow it."""


def _interrupted(signum: int, _) -> None:
  raise _Signalled(signal.Signals(signum).name)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]} (flags take the form --name=value)")
  # JAX logs an INFO line for every accelerator plugin it does not find, orbax a dozen
  # per checkpoint, tfds four per split (TensorFlow's C++ notes: sources._import_tensorflow):
  # not news. Their warnings and errors still show.
  py_logging.getLogger("jax._src.xla_bridge").setLevel(py_logging.WARNING)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING
      or not any(lib in r.pathname for lib in ("/orbax/", "/tensorflow_datasets/")))
  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  # Outside the training loops (which save first: loop.stop_flag), a signal ends the run
  # at once, in one line: what finished is kept (every file is written atomically).
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _interrupted)
  try:
    config = config_lib.validate(_CONFIG.value)  # before JAX starts: errors within a second
    from mscm_jax import pipeline  # pylint: disable=g-import-not-at-top
    from mscm_jax.runtime import distributed  # pylint: disable=g-import-not-at-top
    if distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                              auto=_DISTRIBUTED.value):
      if not distributed.is_writer():  # process 0 logs for the run; the others only warn
        logging.set_verbosity(logging.WARNING)
    if config.stack.classes:
      if _STAGE1_FROM.value:
        _fail("--stage1_from copies one stage 1; with stack.classes run each class alone")
      pipeline.run_classes(config, _WORKDIR.value, discard_stale=_DISCARD.value)
    else:
      pipeline.run(config, _WORKDIR.value, discard_stale=_DISCARD.value,
                   stage1_from=_STAGE1_FROM.value)
  except UserError as e:
    # Something the user can fix: one line, no traceback.
    _fail(str(e), e.exit_code)
  except _Signalled as e:
    stop = Interrupted(f"{e} outside a training loop (reading data or features, evaluating, "
                       "writing results): finished stages are kept and a stage in progress "
                       "resumes from its last checkpoint; run the same command to continue")
    _fail(str(stop), stop.exit_code)
  except Exception as e:  # pylint: disable=broad-except
    if not is_disk_full(e):  # a bug: the traceback is what helps
      raise
    full = disk_full(getattr(e, "filename", None) or _WORKDIR.value)  # a JSON, a picture
    _fail(str(full), full.exit_code)


def entry_point() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry_point()
