"""The training loop both stages share: resume, checkpoints, NaN guard, metrics, SIGTERM.

A stage supplies a jitted `step(state) -> (state, logged scalars)` and a state whose
`step` field counts updates; this loop owns everything around it, so stage 1 and the
stage-2 detector resume, stop and report the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from mscm_jax import checkpoints, monitoring
from mscm_jax.errors import Interrupted, NonFiniteError

__all__ = ["Interrupted", "LoopResult", "NonFiniteError", "run", "sigterm_flag"]


@contextlib.contextmanager
def sigterm_flag():
  """Turns SIGTERM into a flag the loop checks, so it can save before exiting."""
  flag = {"set": False}
  try:
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(set=True))
  except ValueError:  # not the main thread: no handler, the default applies
    previous = None
  try:
    yield flag
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int  # the step reached (== total when the stage is complete)
  finished: dict[str, Any] | None  # FINISHED.json of a stage that was already complete
  rate: float | None  # items per second over the logged intervals (None: too few steps)


def run(name: str, workdir: str, state: Any, step_fn: Callable[[Any], tuple[Any, dict]], *,
        total: int, log_every: int, checkpoint_every: int, items_per_step: int,
        steps_per_epoch: int, stop_after: int | None = None, unit: str = "views",
        advice: Callable[[list[str]], str] | None = None) -> LoopResult:
  """Restores the newest intact checkpoint of `workdir/name`, trains to `total` (or
  `stop_after`).

  Returns at once when FINISHED.json says the stage is complete. Every `log_every` steps
  the logged scalars are checked for NaN/Inf (a NonFiniteError names the step range, the
  terms and `advice(terms)`; nothing non-finite is ever saved), written to
  `workdir/metrics.jsonl` and TensorBoard, and the progress bar moves. The caller writes
  FINISHED.json (with its own summary) once the stage's final work is done.
  """
  ckpt_dir = os.path.join(workdir, name)
  state, restored = checkpoints.restore_latest(ckpt_dir, state)
  start = int(state.step)
  finished = checkpoints.finished_info(ckpt_dir)
  if finished is not None and start >= total:
    logging.info("%s already finished at step %d: loaded from %s", name, start, ckpt_dir)
    return LoopResult(state, start, finished, finished.get(f"{unit}_per_second"))
  if restored is not None:
    logging.info("%s resumes from step %d of %d (%s)", name, start, total, ckpt_dir)
  mngr = checkpoints.manager(ckpt_dir)
  try:
    return _train(name, workdir, mngr, state, step_fn, start, total, log_every,
                  checkpoint_every, items_per_step, steps_per_epoch, stop_after, unit,
                  advice or (lambda _: "lower the learning rate or check the data"))
  finally:
    mngr.close()


def _train(name, workdir, mngr, state, step_fn, start, total, log_every, ckpt_every,
           items_per_step, steps_per_epoch, stop_after, unit, advice) -> LoopResult:
  ckpt_dir = os.path.join(workdir, name)
  writer = monitoring.MetricWriter(workdir, name)
  writer.truncate_after(start)
  end = total if stop_after is None else min(total, stop_after)
  progress = monitoring.Progress(name, total, start)
  last_good, t_log, steps_since, rate = start, time.time(), 0, None

  def save_checked(step: int) -> None:
    if not bool(checkpoints.all_finite(state.params)):
      raise NonFiniteError(f"{name}: parameters became NaN/Inf between steps {last_good} and "
                           f"{step}; stopped without saving (last checkpoint: step "
                           f"{mngr.latest_step()}): {advice(['parameters'])}")
    checkpoints.save(mngr, step, state)

  step = start
  try:
    with sigterm_flag() as sigterm:
      while step < end:
        state, logged = step_fn(state)
        step += 1
        steps_since += 1
        if step % log_every == 0 or step == end or step == start + 1:
          logged = jax.device_get(logged)
          bad = sorted(k for k, v in logged.items() if not np.isfinite(v))
          if bad:
            terms = [k for k in bad if k != "loss"] or bad
            raise NonFiniteError(
                f"{name}: {', '.join(terms)} became NaN/Inf between steps {last_good} and "
                f"{step}; stopped without saving (last checkpoint: step "
                f"{mngr.latest_step()}): {advice(terms)}")
          last_good = step
          now = time.time()
          if step > start + 1:  # the first step's time is mostly compilation
            rate = items_per_step * steps_since / (now - t_log)
          t_log, steps_since = now, 0
          logged.update({"epoch": step / steps_per_epoch,
                         f"{unit}_per_second": rate or float("nan")})
          writer.write(step, logged)
          progress.update(step, f"loss {logged['loss']:.4f}"
                          + (f" | {rate:.0f} {unit}/s" if rate else ""))
        if sigterm["set"]:
          save_checked(step)
          raise Interrupted(f"SIGTERM at step {step}: checkpoint saved in {ckpt_dir}; run "
                            f"the same command to resume")
        if step % ckpt_every == 0 and step < end:
          save_checked(step)
      if step > start or mngr.latest_step() is None:
        save_checked(step)
  finally:
    progress.close()
    writer.close()
  return LoopResult(state, step, None, rate)
