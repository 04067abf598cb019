"""What the benchmarks here share: a step timed past its compile, the stage-1 program of
K models timed so, and the row each ends with, printed and appended to a JSONL file."""

import json
import os
import time
from typing import Any


def timed_step(step, state, data: tuple, steps: int) -> tuple[float, float]:
  """(seconds of the first, compiling call, seconds per call after it) of
  `state, logged = step(state, *data)`, each waited for."""
  import jax  # pylint: disable=g-import-not-at-top

  t = time.time()
  state, logged = step(state, *data)
  jax.block_until_ready(logged)
  first = time.time() - t
  t = time.time()
  for _ in range(steps):
    state, logged = step(state, *data)
  jax.block_until_ready(logged)
  return first, (time.time() - t) / steps


def stage1_members(config, images: list, mesh, steps: int) -> tuple[float, float]:
  """`timed_step` of stage 1's program for len(images) models of `config`, each with its
  training set (uint8 [N, H, W, 3]), on `mesh` (a single run: one set, K = 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import stage1  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import loop  # pylint: disable=g-import-not-at-top
  from mscm_jax.data import device  # pylint: disable=g-import-not-at-top

  n, k = len(images[0]), len(images)
  parts = stage1.components(config, n, images[0].shape[1:], mesh)
  data = device.put_stacked(images, [np.zeros(n, bool)] * k, mesh)
  state = loop.Stacked([f"m{i}" for i in range(k)], mesh).join(
      [parts.init_fn(jax.random.PRNGKey(i)) for i in range(k)])
  return timed_step(parts.step_fn, state, (data.images, data.is_anomaly), steps)


def emit(row: dict[str, Any], path: str) -> None:
  print(json.dumps(row), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
