"""The device mesh: a `data` axis, batches are split over it and state is replicated; for
K models trained as one program (`stage1.train_stacked`) a `model` axis next to it, over
which the models' stacked states and data are split."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mscm_jax.errors import ConfigError

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all of them).

  Over several processes the devices are every process's, in process order, so process
  i holds the i-th contiguous block of every array sharded on `data`.
  """
  devices = jax.devices()
  if num_devices and jax.process_count() > 1 and num_devices != len(devices):
    raise ConfigError(f"train.num_devices={num_devices}: a run over {jax.process_count()} "
                      f"processes uses all their {len(devices)} devices (give 0)")
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"train.num_devices={num_devices} but only {len(devices)} "
                        f"{devices[0].platform} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def make_model_mesh(model_axis: int, num_devices: int = 0) -> Mesh:
  """A (model, data) mesh: `model_axis` groups of devices, each splitting a batch over
  `data`; model k lives on group k mod `model_axis`."""
  devices = make_mesh(num_devices).devices.ravel()
  if model_axis < 1 or len(devices) % model_axis:
    raise ConfigError(f"a model axis of {model_axis} does not divide the {len(devices)} "
                      "devices")
  return Mesh(devices.reshape(model_axis, -1), (MODEL_AXIS, DATA_AXIS))


def default_model_axis(num_devices: int, num_models: int) -> int:
  """The most device groups that divide the devices and are no more than the models."""
  return max(d for d in range(1, min(num_devices, num_models) + 1) if num_devices % d == 0)


def data_axis_size(mesh: Mesh) -> int:
  """How many devices split one model's batch."""
  return mesh.shape[DATA_AXIS]


def model_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (model) axis split over `model`: K stacked states."""
  return NamedSharding(mesh, P(MODEL_AXIS))


def stacked_data_sharding(mesh: Mesh) -> NamedSharding:
  """[K, N, ...]: models over `model`, each model's rows over `data`."""
  return NamedSharding(mesh, P(MODEL_AXIS, DATA_AXIS))


def mesh_of(tree: Any) -> Mesh | None:
  """The mesh of several devices that `tree`'s arrays live on (a trained or restored
  state), or None (host arrays, one device)."""
  leaves = jax.tree.leaves(tree)
  s = getattr(leaves[0], "sharding", None) if leaves else None
  return s.mesh if isinstance(s, NamedSharding) and s.mesh.size > 1 else None


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
