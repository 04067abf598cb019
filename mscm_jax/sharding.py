"""The device mesh: one `data` axis; batches are split over it, state is replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mscm_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all of them)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"train.num_devices={num_devices} but only {len(devices)} "
                        f"{devices[0].platform} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`: batches and the on-device training set."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
  """Pads the leading axis (repeating the first rows) so that it splits evenly over devices."""
  extra = -len(x) % multiple
  if not extra:
    return x
  return np.concatenate([x, np.resize(x[:1], (extra,) + x.shape[1:])])
