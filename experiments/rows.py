"""What the benchmarks here share: a step timed past its compile, and the row each ends
with, printed and appended to a JSONL file."""

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


def emit(row: dict[str, Any], path: str) -> None:
  print(json.dumps(row), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
