"""The device mesh: a `data` axis, over which each model's batch is split, and a `model`
axis, over which K models trained as one program (`stage1.train_members`) split their
stacked states and data. A single run is K = 1 on a model axis of 1 (`member_mesh`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
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


def over_members(body, mesh: Mesh, within_group: str = "vmap"):
  """`body` (one member's function) over K stacked members: vmapped across the `model`
  groups of devices, and within a group either vmapped too ("vmap": one wide
  computation) or run member after member ("sequential": `lax.map`, one member's
  activations at a time). The leading axis of every argument and output is the member
  axis (its size a multiple of the model axis: `stack`). One member (a single run) runs
  `body` itself on the member, not a vmapped batch of one: XLA then compiles exactly one
  model's program."""
  stacked = _over_members(body, mesh, within_group)

  def fn(*args):
    if jax.tree.leaves(args)[0].shape[0] == 1:
      out = body(*jax.tree.map(lambda x: x[0], args))
      return jax.tree.map(lambda x: x[None], out)
    return stacked(*args)

  return fn


def jit_members_step(make_body, mesh: Mesh, within_group: str, compiler_options: dict):
  """A training step `make_body(mesh)(state, data, flags)` of one member, jitted over K
  stacked members (`over_members`) on `member_mesh(mesh)`: states split over `model` and
  donated, each member's rows over `data`."""
  mesh = member_mesh(mesh)
  ms, ds = model_sharding(mesh), stacked_data_sharding(mesh)
  return jax.jit(over_members(make_body(mesh), mesh, within_group), in_shardings=(ms, ds, ds),
                 out_shardings=(ms, ms), donate_argnums=(0,), compiler_options=compiler_options)


def _over_members(body, mesh: Mesh, within_group: str):
  if within_group == "vmap":
    return jax.vmap(body, spmd_axis_name=MODEL_AXIS)
  groups = mesh.shape[MODEL_AXIS]

  def one_group(*args):
    return jax.lax.map(lambda member: body(*member), args)

  if groups == 1:
    return one_group

  def fn(*args):
    # [K] -> [groups, K / groups]: `stack` puts group g's members in block g, so the
    # reshape keeps every member on its devices.
    split = jax.tree.map(lambda x: x.reshape((groups, -1) + x.shape[1:]), args)
    out = jax.vmap(one_group, spmd_axis_name=MODEL_AXIS)(*split)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

  return fn


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


def member_mesh(mesh: Mesh) -> Mesh:
  """`mesh` as a (model, data) mesh: itself when it has a `model` axis, else its devices
  as one group (model axis 1). Every stage runs K stacked members on such a mesh; a
  single run is K = 1."""
  if MODEL_AXIS in mesh.axis_names:
    return mesh
  return Mesh(mesh.devices.reshape(1, -1), (MODEL_AXIS, DATA_AXIS))


def one_member_mesh(tree: Any) -> Mesh:
  """The (model, data) mesh on which one state (replicated over its mesh, or on one
  device) runs as K = 1 stacked members: the same devices, all in one group (a model
  axis of 1, even for the member of a stacked run: no padding copies)."""
  mesh = mesh_of(tree)
  devices = mesh.devices.ravel() if mesh is not None else np.asarray(jax.devices()[:1])
  return member_mesh(Mesh(devices, (DATA_AXIS,)))


def as_one_member(tree: Any) -> tuple[Any, Mesh]:
  """One state as a stack of K = 1 members on `one_member_mesh`: a single run goes
  through the stacked code."""
  mesh = one_member_mesh(tree)
  return stack([tree], mesh), mesh


def stack_padding(k: int, mesh: Mesh) -> int:
  """How many copies of member 0 pad K stacked members to a multiple of the model axis."""
  return -k % mesh.shape[MODEL_AXIS]


def stack(trees: list[Any], mesh: Mesh) -> Any:
  """K pytrees of one structure as one, stacked on a leading axis split over `model`,
  padded with copies of the first to a multiple of the model axis."""
  trees = list(trees) + [trees[0]] * stack_padding(len(trees), mesh)
  return _stack_fn(mesh)(*trees)


def unstack(tree: Any, mesh: Mesh, k: int) -> list[Any]:
  """The first `k` members of a stacked pytree, each replicated over the mesh."""
  take = _take_fn(mesh)
  return [take(tree, i) for i in range(k)]


@functools.lru_cache(maxsize=None)
def _stack_fn(mesh: Mesh):
  return jax.jit(lambda *parts: jax.tree.map(lambda *xs: jnp.stack(xs), *parts),
                 out_shardings=model_sharding(mesh))


@functools.lru_cache(maxsize=None)
def _take_fn(mesh: Mesh):
  return jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree),
                 out_shardings=replicated(mesh))


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
