"""The training loop both stages share: resume, checkpoints, NaN guard, metrics, SIGTERM.

A stage supplies a jitted `step(state) -> (state, logged scalars)` and a state whose
`step` field counts updates; this loop owns everything around it, so stage 1 and the
stage-2 detector resume, stop and report the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mscm_jax.runtime import checkpoints, distributed, monitoring, sharding
from mscm_jax.errors import CheckpointError, Interrupted, NonFiniteError

__all__ = ["Interrupted", "MembersResult", "NonFiniteError", "Stacked", "run_members",
           "stop_flag"]


@contextlib.contextmanager
def stop_flag():
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after every step, so it
  can save before exiting; `flag['set']` is the signal's name once one arrived. Over
  several processes SIGTERM is left to JAX's pre-emption notifier (`_stop_now`)."""
  flag: dict[str, Any] = {"set": None}
  previous = {}
  signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
  for sig in signals:
    try:
      previous[sig] = signal.signal(sig, lambda n, _: flag.update(set=signal.Signals(n).name))
    except ValueError:  # not the main thread: no handler, the default applies
      pass
  try:
    yield flag
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


class Stacked:
  """How one trained state maps onto workdirs: K members' states stacked on a leading axis
  split over `model` (a single run: K = 1), each member with its own workdir. A member's
  state, as its checkpoints hold it, is replicated over the mesh. When K does not divide
  by the model axis, copies of member 0 pad the stack (they train alongside, and nothing
  of them is saved or logged)."""

  def __init__(self, workdirs: list[str], mesh: jax.sharding.Mesh):
    self.workdirs = list(workdirs)
    self.mesh = mesh

  def split(self, state: Any) -> list[Any]:
    """Each member's state, in workdir order."""
    return sharding.unstack(state, self.mesh, len(self.workdirs))

  def join(self, parts: list[Any]) -> Any:
    """The one state the step function takes, from the members' states."""
    return sharding.stack(parts, self.mesh)

  def scalars(self, logged: dict[str, Any]) -> list[dict[str, float]]:
    """Each member's logged values, from the step's (host) output."""
    return [{k: float(v[i]) for k, v in logged.items()} for i in range(len(self.workdirs))]


def finished_apart(name: str, workdirs: list[str], load: Callable[[int], Any],
                   train_rest: Callable[[list[int]], list[Any]]) -> list[Any] | None:
  """For K members of one program: when some, not all, have finished stage `name`, those
  are loaded one by one (`load(i)`) and the others trained together (`train_rest(indices)`);
  the results in member order. None when none or all have finished (`run_members` loads
  a finished program's members)."""
  finished = [checkpoints.finished_info(os.path.join(w, name)) is not None for w in workdirs]
  if all(finished) or not any(finished):
    return None
  rest = [i for i, f in enumerate(finished) if not f]
  out = {i: load(i) for i, f in enumerate(finished) if f}
  out.update(zip(rest, train_rest(rest) if rest else [], strict=True))
  return [out[i] for i in range(len(workdirs))]


@dataclasses.dataclass
class MembersResult:
  state: Any  # joined
  step: int
  finished: list[dict[str, Any] | None]  # per member; all set when the stage was complete
  rate: float | None
  start: int = 0  # the step every member began from in this call


def run_members(name: str, members: Stacked, state: Any,
                step_fn: Callable[[Any], tuple[Any, dict]], *, total: int, log_every: int,
                checkpoint_every: int, items_per_step: int, steps_per_epoch: int,
                stop_after: int | None = None, unit: str = "views",
                advice: Callable[[list[str]], str] | None = None,
                probe: Callable[[Any], list[dict[str, float]]] | None = None,
                probe_every: int = 0) -> MembersResult:
  """Restores the newest intact checkpoint of each member's `workdir/name` and trains
  the members' state (`Stacked`: K >= 1 models) to `total` (or `stop_after`); each member
  is saved to and logged in its own workdir, so its files read as a run of its own.

  Returns at once when every member's FINISHED.json says the stage is complete. Every
  `log_every` steps the logged scalars are checked for NaN/Inf (a NonFiniteError names
  the step range, the member, the terms and `advice(terms)`; nothing non-finite is ever
  saved), written to `workdir/metrics.jsonl` and TensorBoard, and the progress bar moves.
  The caller writes FINISHED.json (with its own summary) once the stage's final work is
  done. `probe(state)` -> one dict of scalars per member is written every `probe_every`
  steps (0: never) before the end: a learning curve.

  Members resume from the newest step they all hold intact (a run killed between two
  members' saves leaves them one checkpoint apart; orbax keeps two); when there is none,
  a CheckpointError says so. A member further ahead than one checkpoint (trained alone
  for a while) is not rolled back: a CheckpointError says how to go on.
  """
  dirs = [os.path.join(w, name) for w in members.workdirs]
  templates = members.split(state)
  restored = [checkpoints.restore_latest(d, t) for d, t in zip(dirs, templates, strict=True)]
  steps = [0 if r is None else r for _, r in restored]
  common = min(steps)
  for d, step in zip(dirs, steps, strict=True):
    if step - common > checkpoint_every:
      raise CheckpointError(
          f"{d} stands at step {step}, another member at {common}: finish this one alone "
          f"(a finished stage joins the program as it is), or remove {d} to train it "
          f"with the others from step {common}")
  parts = []
  for d, t, (part, step) in zip(dirs, templates, restored, strict=True):
    if step is not None and step > common:
      logging.warning("%s: back from step %d to %d, where the other members stand", d, step,
                      common)
      part, step = checkpoints.restore_latest(d, t, max_step=common) if common else (t, None)
      if (step or 0) != common:
        raise CheckpointError(
            f"{d}: no checkpoint at step {common}, where the other members stand: train "
            "this class alone, or rerun with --discard_stale")
      checkpoints.drop_after(d, common)
    parts.append(part)
  start = common
  state = members.join(parts)
  finished = [checkpoints.finished_info(d) for d in dirs]
  if all(f is not None for f in finished) and start >= total:
    logging.info("%s already finished at step %d: loaded from %s", name, start,
                 ", ".join(dirs))
    return MembersResult(state, start, finished, finished[0].get(f"{unit}_per_second"), start)
  if start:
    logging.info("%s resumes from step %d of %d (%s)", name, start, total, ", ".join(dirs))
  mngrs = [checkpoints.manager(d) for d in dirs]
  try:
    res = _train(name, members, mngrs, state, step_fn, start, total, log_every,
                 checkpoint_every, items_per_step, steps_per_epoch, stop_after, unit,
                 advice or (lambda _: "lower the learning rate or check the data"),
                 probe if probe_every else None, probe_every)
  finally:
    for m in mngrs:
      m.close()
  return res


# One id per step of any loop in this process: every process runs the same steps, so the
# ids agree across processes, and they only grow from one stage to the next.
_SYNC_IDS = itertools.count(1)


def _stop_now(flag: bool, step: int, log_every: int, end: int) -> bool:
  """Whether to save and stop after `step`. One process alone can get the signal, yet the
  save is collective. Over several processes a SIGTERM (a pre-emption notice) reaches JAX's
  coordination service, which picks one step at which every process stops
  (`reached_preemption_sync_point`, what orbax's `reached_preemption` builds on: within a
  step or two); a SIGINT is agreed on at the next logged step."""
  if jax.process_count() == 1:
    return flag
  if multihost_utils.reached_preemption_sync_point(next(_SYNC_IDS)):
    return True
  if step % log_every and step != end:
    return False
  return distributed.any_process(flag)


def _train(name, members, mngrs, state, step_fn, start, total, log_every, ckpt_every,
           items_per_step, steps_per_epoch, stop_after, unit, advice, probe,
           probe_every) -> MembersResult:
  ckpt_dirs = [str(m.directory) for m in mngrs]
  writers = [monitoring.MetricWriter(w, name) for w in members.workdirs]
  for writer in writers:
    writer.truncate_after(start)
  end = total if stop_after is None else min(total, stop_after)
  progress = monitoring.Progress(name, total, start)
  last_good, t_log, steps_since, rate = start, time.time(), 0, None
  several = len(mngrs) > 1

  def where(i: int) -> str:
    return f" (member {i}: {members.workdirs[i]})" if several else ""

  def save_checked(step: int) -> None:
    parts = members.split(state)
    for i, (mngr, part) in enumerate(zip(mngrs, parts, strict=True)):
      if not bool(checkpoints.all_finite(part.params)):
        raise NonFiniteError(f"{name}: parameters became NaN/Inf between steps {last_good} "
                             f"and {step}{where(i)}; stopped without saving (last "
                             f"checkpoint: step {mngr.latest_step()}): "
                             f"{advice(['parameters'])}")
    for mngr, part in zip(mngrs, parts, strict=True):
      checkpoints.save(mngr, step, part)

  step = start
  try:
    with stop_flag() as stop:
      while step < end:
        state, logged = step_fn(state)
        step += 1
        steps_since += 1
        if step % log_every == 0 or step == end or step == start + 1:
          per_member = members.scalars(jax.device_get(logged))
          for i, values in enumerate(per_member):
            bad = sorted(k for k, v in values.items() if not np.isfinite(v))
            if bad:
              terms = [k for k in bad if k != "loss"] or bad
              raise NonFiniteError(
                  f"{name}: {', '.join(terms)} became NaN/Inf between steps {last_good} and "
                  f"{step}{where(i)}; stopped without saving (last checkpoint: step "
                  f"{mngrs[i].latest_step()}): {advice(terms)}")
          last_good = step
          now = time.time()
          if step > start + 1:  # the first step's time is mostly compilation
            rate = items_per_step * steps_since / (now - t_log)
          t_log, steps_since = now, 0
          for writer, values in zip(writers, per_member, strict=True):
            writer.write(step, {**values, "epoch": step / steps_per_epoch,
                                f"{unit}_per_second": rate or float("nan")})
          loss = np.mean([v["loss"] for v in per_member])
          progress.update(step, f"loss {loss:.4f}" + (" (mean)" if several else "")
                          + (f" | {rate:.0f} {unit}/s" if rate else ""))
        if _stop_now(stop["set"] is not None, step, log_every, end):
          save_checked(step)
          raise Interrupted(f"{stop['set'] or 'SIGTERM'} at step {step}: checkpoint saved in "
                            f"{', '.join(ckpt_dirs)}; run the same command to resume")
        if step % ckpt_every == 0 and step < end:
          save_checked(step)
        if probe is not None and step % probe_every == 0 and step < total:
          t_probe = time.time()
          for writer, values in zip(writers, probe(state), strict=True):
            writer.write(step, values)
          t_log += time.time() - t_probe  # the probe's time is not the step's
      if step > start or any(m.latest_step() is None for m in mngrs):
        save_checked(step)
  finally:
    progress.close()
    for writer in writers:
      writer.close()
  return MembersResult(state, step, [None] * len(mngrs), rate, start)
