"""The training set lives on the accelerator; batches are drawn there by index.

The uint8 images are copied to the devices once, each model's split over the `data` mesh
axis (K models trained as one program stack theirs over `model`: `put_stacked`). A
training step then draws its batch with `jax.random` inside `jax.jit`: no host work
and no host-to-device copy per step. Batches depend only on (key, step), not on the
number of devices, so a run resumes identically and gives the same batches on 1 or
8 devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mscm_jax.runtime import sharding
from mscm_jax.models import conv
from mscm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DeviceDataset:
  """K training sets on device; rows past `size` are padding, never drawn."""

  images: jax.Array  # uint8 [K_padded, N_padded, H, W, 3], split over (`model`, `data`)
  is_anomaly: jax.Array  # bool [K_padded, N_padded]
  size: int  # number of real images


def stack_rows(parts: list[np.ndarray], mesh: Mesh) -> jax.Array:
  """K arrays of one length as [K_padded, N_padded, ...] on the mesh: members over
  `model` (padded with copies of the first, as `sharding.stack` pads), each member's
  rows over `data` (padded by repeating its first rows; padding rows are never drawn)."""
  n_data = sharding.data_axis_size(mesh)
  parts = list(parts) + [parts[0]] * sharding.stack_padding(len(parts), mesh)
  return jax.device_put(np.stack([sharding.pad_to_multiple(p, n_data) for p in parts]),
                        sharding.stacked_data_sharding(mesh))


def put_stacked(images: list[np.ndarray], is_anomaly: list[np.ndarray],
                mesh: Mesh) -> DeviceDataset:
  """K training sets of one size as [K_padded, N_padded, ...] (`stack_rows`)."""
  size = one_size([len(x) for x in images])
  return DeviceDataset(images=stack_rows(images, mesh),
                       is_anomaly=stack_rows([np.asarray(f, bool) for f in is_anomaly], mesh),
                       size=size)


def one_size(sizes: list[int]) -> int:
  """The one training-set size of K models trained as one program."""
  if len(set(sizes)) != 1:
    raise ConfigError(f"models trained as one program need training sets of one size, got "
                      f"{sorted(set(sizes))} images: train these classes separately")
  return sizes[0]


def sample_indices(key: jax.Array, step: jax.Array, size: int, batch_size: int) -> jax.Array:
  """Indices of batch `step`: epochs are seeded permutations, no repeat within an epoch.

  Sample j of the stream (j = step * batch_size + i) is element j mod size of the
  permutation of epoch j // size, so batches tile every epoch exactly once.
  """
  # A batch spans at most this many epochs (static, so the shapes are fixed).
  span = batch_size // size + 2
  j = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(batch_size)  # < 2**31 samples
  epoch, pos = j // size, j % size
  first = epoch[0]
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), size))(
      first + jnp.arange(span))
  return perms[epoch - first, pos]


def map_members(fn, tree, inputs, batch_size: int, mesh: Mesh, k: int) -> list:
  """`map_batches` of `jax.jit(fn)` for K models as one program: `fn(member, rows)` of every
  member of `tree` (stacked on a leading axis split over `model`, `sharding.stack`) on its
  rows. A single model is K = 1 (`sharding.as_one_member`). The tree is an argument, not a
  constant closed over, so one `fn` compiles once per batch shape whatever its values.

  `inputs` is a list of K pytrees of rows, one per member (their lengths may differ: the
  shorter are padded and cut back), or one pytree of rows that every member reads (the
  shared test split: one copy, replicated over `model`). Each batch of rows is split over
  `data`. Returns K outputs, each with the structure of `fn`'s and its member's rows.
  """
  shared = not isinstance(inputs, list)
  sizes = ([len(jax.tree.leaves(inputs)[0])] * k if shared else
           [len(jax.tree.leaves(x)[0]) for x in inputs])
  if shared:
    rows = inputs
  else:  # [N, K_padded, ...]: rows first, so that map_batches batches them
    n = max(sizes)
    grown = [x if m == n else jax.tree.map(lambda a, m=m: a[np.minimum(np.arange(n), m - 1)], x)
             for x, m in zip(inputs, sizes, strict=True)]
    grown += [grown[0]] * sharding.stack_padding(k, mesh)
    rows = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *grown)
  spec = NamedSharding(mesh, P(sharding.DATA_AXIS, None if shared else sharding.MODEL_AXIS))
  jitted = _member_program(fn, shared, mesh)
  data = sharding.data_axis_size(mesh)
  out = map_batches(lambda batch: jitted(tree, jax.device_put(batch, spec)), rows,
                    -(-batch_size // data) * data)
  return [jax.tree.map(lambda a, i=i, m=m: a[:m, i], out) for i, m in enumerate(sizes)]


@functools.lru_cache(maxsize=64)
def _member_program(fn, shared: bool, mesh: Mesh):
  """The jitted, vmapped `fn` of `map_members`: one per (fn, input layout, mesh), so that
  repeated reads reuse its compilation."""
  return jax.jit(jax.vmap(fn, in_axes=(0, None if shared else 1), out_axes=1),
                 out_shardings=sharding.replicated(mesh),
                 compiler_options=conv.compiler_options())


def map_batches(fn, inputs, batch_size: int):
  """`fn` over host or device arrays in fixed-size batches; outputs concatenated, in order.

  `inputs` is an array or a pytree of arrays sharing the leading axis. The last batch is
  padded (repeating the final row) so a jitted `fn` compiles for one shape, and the pad
  rows are dropped: every row counts exactly once. Returns NumPy arrays with the
  structure of `fn`'s output.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(jax.tree.leaves(inputs)[0])
  if n == 0:
    raise ValueError("map_batches needs at least one image")
  outputs = []
  for start in range(0, n, batch_size):  # dispatch everything before reading anything back
    if start + batch_size <= n:
      rows = slice(start, start + batch_size)
    else:
      rows = np.minimum(np.arange(start, start + batch_size), n - 1)
    outputs.append(fn(jax.tree.map(lambda x, rows=rows: x[rows], inputs)))
  host = jax.tree.map(np.asarray, outputs)
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *host)
