"""Errors a user can fix; the CLI prints them as one line instead of a traceback.

Each kind has its own exit status, so that a scheduler or a sweep can tell "fix the
input" from "rerun the same command":
  2   UserError (config, data, workdir, a stale or damaged stage): change something first
  3   NonFiniteError: the loss became NaN/Inf; nothing bad was saved
  74  DiskFullError: out of disk space; what was saved is intact: free space, rerun
  75  Interrupted (SIGTERM, pre-emption, Ctrl-C): saved, rerun the same command (EX_TEMPFAIL)
"""


class UserError(Exception):
  """Bad input or environment: the message says what to change."""

  exit_code = 2


class ConfigError(UserError):
  """A config field has a value the method cannot use."""


class DatasetNotFoundError(UserError):
  """The dataset is not where the config or environment says it is."""


class WorkdirError(UserError):
  """The workdir cannot hold a run, or holds stages this config must not reuse."""


class StaleStageError(WorkdirError):
  """A finished or partial stage in the workdir was made by a different config or data."""


class CheckpointError(WorkdirError):
  """No checkpoint of a stage can be read back."""


class NonFiniteError(UserError):
  """The loss or the parameters became NaN/Inf: training stopped, nothing bad was saved."""

  exit_code = 3


class Interrupted(UserError):
  """SIGTERM or SIGINT arrived: inside a training loop the state was saved first; anywhere
  else, what finished is kept. The same command resumes."""

  exit_code = 75


class DiskFullError(UserError):
  """Out of disk space: nothing saved before is damaged; free space and rerun the same
  command, which resumes (EX_IOERR)."""

  exit_code = 74


def disk_full(path: str, needed: int | None = None) -> DiskFullError:
  """The one-line error for a full disk at `path` (`needed`: bytes, when known)."""
  import shutil  # pylint: disable=g-import-not-at-top

  try:
    free = f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
  except OSError:
    free = "free space unknown"
  need = f"about {needed / 2**20:.1f} MiB needed, " if needed else ""
  return DiskFullError(f"out of disk space writing {path} ({need}{free}): free space and "
                       "rerun the same command; what was saved before is intact, and the "
                       "run resumes from it")


def is_disk_full(e: BaseException | None) -> bool:
  """ENOSPC, also wrapped (orbax and TensorStore report it as RESOURCE_EXHAUSTED)."""
  import errno  # pylint: disable=g-import-not-at-top

  while e is not None:
    if isinstance(e, DiskFullError) or isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e) or "RESOURCE_EXHAUSTED" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False
