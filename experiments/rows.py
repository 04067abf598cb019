"""What the scripts here share: a step timed past its compile, the stage-1 program of
K models timed so, a finished run loaded for rescoring and the command line that rescores
runs, and the resumable JSON-lines file each writes a row at a time."""

import argparse
import json
import os
import time
from collections.abc import Callable
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


def read(path: str) -> list[dict[str, Any]]:
  """The rows of a JSON-lines file, [] before its first row: what a rerun skips. A last
  line cut short by a kill is dropped from the file, so that the next row starts a line."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    text = f.read()
  whole = text.rfind(b"\n") + 1  # bytes up to the last complete line
  if whole < len(text):
    print(f"{path}: dropping its unfinished last line ({len(text) - whole} bytes)",
          flush=True)
    with open(path, "r+b") as f:
      f.truncate(whole)
  return [json.loads(line) for line in text[:whole].decode().splitlines() if line.strip()]


def emit(row: dict[str, Any], path: str, summary: str | None = None) -> None:
  """Appends `row` to `path` (a line at a time, so an interrupted script loses at most the
  row it was making) and prints `summary`, or the row itself."""
  print(json.dumps(row) if summary is None else summary, flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def known(names: list[str], choices: dict[str, Any], what: str = "variants") -> list[str]:
  """`names`, or exit with one line naming the unknown ones and the choices."""
  unknown = [n for n in names if n not in choices]
  if unknown:
    raise SystemExit(f"unknown {what} {unknown}; choose from {list(choices)}")
  return names


def finished(workdir: str):
  """(config, split, Scorer) of a finished run, for rescoring without training: its stage 1
  and stage 2 loaded (a config saved before the stage-2 renames of names.py read under the
  new names), the k-NN bank and the detectors' spread made from them when the run predates
  them (`stage2.complete_extras`)."""
  # pylint: disable=g-import-not-at-top
  from mscm_jax import config as config_lib, pipeline, scoring, stage1, stage2
  from mscm_jax.runtime import sharding

  c = config_lib.load_json(os.path.join(workdir, "config.json"), old_names=True)
  c.evaluate.report = False
  mesh = sharding.make_mesh(c.train.num_devices)
  split = pipeline.load_split(c)
  s1, shape = stage1.load_finished(c, workdir, mesh, repair=False)
  s2 = stage2.load_finished(c, workdir, shape, mesh, repair=False)
  stage2.complete_extras([c], [split], [s1], [s2], sharding.member_mesh(mesh))
  return c, split, scoring.Scorer(c, s1, s2)


def rescoring_parser(doc: str) -> argparse.ArgumentParser:
  """The command line of a script that rescores finished runs into a JSON-lines file:
  WORKDIR ..., --out, --table (`doc`'s first line describes it)."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("workdirs", nargs="*")
  p.add_argument("--out", required=True, help="JSON lines, one per run (appended)")
  p.add_argument("--table", action="store_true", help="print the markdown tables of --out")
  return p


def rescore_each(workdirs: list[str], out: str, done: set[str],
                 rescore: Callable[[str], dict[str, Any]],
                 summary: Callable[[str, dict[str, Any]], str]) -> None:
  """`rescore(path)` of every workdir whose absolute path is not in `done`, each row
  written to `out` as soon as it is made, with `summary(workdir, row)` printed."""
  for w in workdirs:
    path = os.path.abspath(w)
    if path not in done:
      record = rescore(path)
      emit(record, out, summary(w, record))
