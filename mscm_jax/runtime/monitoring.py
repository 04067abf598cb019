"""What a long run shows while it works: metrics.jsonl, TensorBoard events, a progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from absl import logging

from mscm_jax.runtime import distributed


def _to_python(value: Any) -> Any:
  try:
    return float(value)
  except (TypeError, ValueError):
    return value


class MetricWriter:
  """Appends one JSON object per logged step to `workdir/metrics.jsonl` and TensorBoard.

  On resume, `truncate_after` drops the lines a killed run wrote after its last
  checkpoint, so the file reads as one uninterrupted run. Only process 0 of a
  multi-process run writes; elsewhere every method does nothing.
  """

  def __init__(self, workdir: str, stage: str):
    self.stage = stage
    self.active = distributed.is_writer()
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tensorboard", stage)

  def truncate_after(self, step: int) -> None:
    self._drop(lambda record: record.get("step", -1) > step)

  def drop_key(self, key: str) -> None:
    """Removes this stage's records holding `key`: a once-per-stage record (the probe) is
    then written exactly once, even by a run resumed after a kill that followed it."""
    self._drop(lambda record: key in record)

  def _drop(self, condition) -> None:
    if not self.active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a kill mid-write
        continue
      if not (record.get("stage") == self.stage and condition(record)):
        keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    record = {"stage": self.stage, "step": int(step), "time": round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(self._tb_dir, flush_secs=10)
    for k, v in record.items():
      if k not in ("stage", "step", "time") and isinstance(v, float) and math.isfinite(v):
        self._tb.add_scalar(f"{self.stage}/{k}", v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def format_seconds(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """A progress bar with ETA on a terminal; a log line per update elsewhere (CI, files)."""

  def __init__(self, name: str, total: int, start: int = 0, width: int = 24):
    self.name, self.total, self.start, self.width = name, total, start, width
    self.t0 = time.time()
    self.first: tuple[int, float] | None = None  # the ETA ignores the compile-heavy first step
    self.tty = sys.stderr.isatty()
    self.active = distributed.is_writer()  # one progress line for a multi-process run

  def update(self, step: int, note: str = "") -> None:
    if not self.active:
      return
    now = time.time()
    elapsed = now - self.t0
    if self.first is None:
      self.first = (step, now)
    done, since = step - self.first[0], now - self.first[1]
    eta = since / done * (self.total - step) if done > 0 else float("nan")
    frac = step / max(self.total, 1)
    bar = "#" * int(frac * self.width)
    text = (f"[{self.name}] [{bar:<{self.width}}] {step}/{self.total} "
            f"{100 * frac:5.1f}% | {note} | elapsed {format_seconds(elapsed)}"
            f" | ETA {format_seconds(eta) if math.isfinite(eta) else '?'}")
    if self.tty:
      sys.stderr.write("\r" + text + "\x1b[K")
      sys.stderr.flush()
    else:
      logging.info(text)

  def close(self) -> None:
    if self.tty and self.active:
      sys.stderr.write("\n")
      sys.stderr.flush()
