"""Errors a user can fix; the CLI prints them as one line instead of a traceback."""


class UserError(Exception):
  """Bad input or environment: the message says what to change."""


class ConfigError(UserError):
  """A config field has a value the method cannot use."""


class DatasetNotFoundError(UserError):
  """The dataset is not where the config or environment says it is."""
