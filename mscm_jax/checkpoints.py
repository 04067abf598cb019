"""Orbax checkpoints of a stage's state: periodic saves, resume of the latest, final marker.

Saves are atomic (orbax writes to a temporary directory and renames), so a run killed
mid-save resumes from the previous checkpoint. A save never happens with non-finite
parameters: the caller checks first (see `all_finite`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

FINAL_MARKER = "FINISHED.json"


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves and waits: the checkpoint is complete on disk when this returns."""
  mngr.save(int(step), args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, template: Any) -> tuple[Any, int | None]:
  """(state, step) from the latest checkpoint, placed like `template`; (template, None) if none."""
  step = mngr.latest_step()
  if step is None:
    return template, None
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), step


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf is free of NaN and Inf."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def mark_finished(directory: str, info: dict[str, Any]) -> None:
  """Written after the final save: later runs skip the stage instead of resuming it."""
  path = os.path.join(directory, FINAL_MARKER)
  with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
  os.replace(path + ".tmp", path)


def finished_info(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, FINAL_MARKER)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
