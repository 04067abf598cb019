"""Errors a user can fix; the CLI prints them as one line instead of a traceback.

Each kind has its own exit status, so that a scheduler or a sweep can tell "fix the
input" from "rerun the same command":
  2   UserError (config, data, workdir, a stale or damaged stage): change something first
  3   NonFiniteError: the loss became NaN/Inf; nothing bad was saved
  75  Interrupted (SIGTERM, pre-emption): state saved, rerun the same command (EX_TEMPFAIL)
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
  """SIGTERM arrived: the state was saved and the run can be resumed with the same command."""

  exit_code = 75
