r"""A grid of whole runs: classes x settings x seeds x variants, one workdir per cell.

  python -m mscm_jax.sweep --root=sweeps/oc \
      --config=configs/cifar10_oneclass.py:cpu --classes=airplane,cat --seeds=0,1 \
      --settings=oneclass,unbalanced:0.05,unbalanced:0.05:bird+frog \
      [--variant codebook memory.train=codebook] [--set train.epochs=30]
  python -m mscm_jax.sweep --root=sweeps/oc --table   # aggregate only
  ... --table --export=experiments/results/oc   # keep the results of a grid, not its runs
  ... --stack   # the classes of a (setting, seed, variant) as one program (stack.classes)

Each cell is `python -m mscm_jax.main` in ROOT/<class>.<setting>.s<seed>[.<variant>], so a
cell's workdir, results.json and report are exactly a separate run's, and a killed cell
resumes from its checkpoints. Every cell's config is built and validated before the first
one starts (a bad override or class name is one line, at once).

With `--stack`, the unfinished cells that differ only in their class run as one program
(`--config.stack.classes`, one jitted step for all: what fills an accelerator or a pod
slice), each class still in its cell's workdir, with its own claim, results.json and report.
A stacked cell's workdir is an ordinary run's, so stacked and separate workers resume and
skip each other's cells; a group with one cell left runs it alone.

Several workers (one per host or accelerator) may share ROOT on a shared file system:
a worker claims a cell by creating ROOT/.sweep/<cell>/claim.<n> with O_EXCL, which
exactly one creator wins; a claim stays held while its worker lives (same host: its pid;
other hosts: a heartbeat on the file's mtime, `--stale_after`). A cell whose worker died
is claimed again (attempt n+1) and resumes. Finished cells (ROOT/.sweep/<cell>/done.json
with this grid's command) are skipped without starting anything.

The table (ROOT/results.md, ROOT/results.csv) aggregates every finished cell under ROOT:
per group (setting, variant) and class, each score's AUROC as mean and spread over seeds,
method.md section 5's reference numbers beside the one-class class-set mean, which is given
only when every class of the dataset is present (a partial grid's row is the mean of the
classes run, named so).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import functools
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mscm_jax import errors
from mscm_jax.names import HEADLINE, PROBE_KEYS, renamed_hint, split_scores, test_scores
from mscm_jax.runtime.identity import TRAINED
from mscm_jax.runtime.workdir import FINAL_MARKER, lock_holder, saved_steps, stage_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = ".sweep"
# method.md section 5: one-class mean AUROC (%) over the classes, from-scratch unless noted.
REFERENCE = {
    "cifar10": {"GEOM": 86.0, "GOAD": 88.2, "SimCLR": 87.9, "Rot+Trans": 90.1, "DROC": 92.5,
                "CSI": 94.3, "AnoMem (paper target)": 96.3},
    "cifar100": {"GEOM": 78.7, "DROC": 86.5, "CSI": 89.6, "AnoMem (paper target)": 94.8},
}


class SweepError(Exception):
  """A grid that cannot run as given: one line for the user."""


# ---------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Setting:
  """`oneclass`, or `unbalanced:RATIO[:CLASS+CLASS...]` (anomalies drawn from those only)."""

  kind: str
  ratio: float | None = None
  anomaly_classes: tuple[str, ...] = ()

  @classmethod
  def parse(cls, text: str) -> Setting:
    parts = text.strip().split(":")
    if parts == ["oneclass"]:
      return cls("oneclass")
    if parts[0] == "unbalanced" and len(parts) in (2, 3):
      try:
        ratio = float(parts[1])
      except ValueError:
        ratio = -1.0
      if not 0 < ratio <= 1:
        raise SweepError(f"--settings: {text!r}: the ratio must be a number in (0, 1]")
      classes = tuple(c for c in parts[2].split("+") if c) if len(parts) == 3 else ()
      return cls("unbalanced", ratio, classes)
    raise SweepError(f"--settings: {text!r} is not oneclass, unbalanced:RATIO or "
                     "unbalanced:RATIO:CLASS+CLASS")

  @property
  def tag(self) -> str:
    if self.kind == "oneclass":
      return "oneclass"
    return f"unb{self.ratio:g}" + (f"-from-{'+'.join(self.anomaly_classes)}"
                                   if self.anomaly_classes else "")

  @classmethod
  def from_tag(cls, tag: str) -> Setting | None:
    """The inverse of `tag` (done.json keeps the tag); None for one `tag` does not make."""
    if tag == "oneclass":
      return cls("oneclass")
    m = re.fullmatch(r"unb(.+?)(?:-from-(.+))?", tag)
    try:
      ratio = float(m.group(1)) if m else None
    except ValueError:
      ratio = None
    if ratio is None:
      return None
    return cls("unbalanced", ratio, tuple(m.group(2).split("+")) if m.group(2) else ())

  def overrides(self) -> list[str]:
    if self.kind == "oneclass":
      return ["setting=oneclass"]
    out = ["setting=unbalanced", f"anomaly_ratio={self.ratio}"]
    if self.anomaly_classes:
      out.append(f"anomaly_classes={tuple(self.anomaly_classes)!r}")
    return out


def _class_override(cls: str) -> str:
  return f"dataset.normal_class={cls!r}"


@dataclasses.dataclass(frozen=True)
class Cell:
  cls: str
  setting: Setting
  seed: int
  variant: str  # "" for none
  argv: tuple[str, ...]  # the main command's flags, --workdir excepted
  dataset_classes: tuple[str, ...]  # every class of the dataset: is the table complete?
  ignored: tuple[str, ...] = ()  # `config.ignored_fields` of its config: said at the start

  @property
  def name(self) -> str:
    return f"{self.cls}.{self.setting.tag}.s{self.seed}" + (f".{self.variant}"
                                                            if self.variant else "")

  @property
  def class_flag(self) -> str:
    return f"--config.{_class_override(self.cls)}"

  def spec(self) -> dict[str, Any]:
    return {"cell": self.name, "class": self.cls, "setting": self.setting.tag,
            "seed": self.seed, "variant": self.variant, "argv": list(self.argv),
            "dataset_classes": list(self.dataset_classes)}


def parse_config(config_arg: str, overrides: Sequence[str]):
  """The config the main command builds from these flags (its own flag parser, reused)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mscm_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  argv = ["sweep", f"--config={config_arg}", *(f"--config.{o}" for o in overrides)]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)  # it reads the overrides from here
  try:
    fv(argv)
    return config_lib.validate(fv.config)
  except (flags.Error, UserError, KeyError, AttributeError, TypeError, ValueError,
          OSError) as e:
    text = " ".join(str(e).split())
    if isinstance(e, (KeyError, AttributeError)):
      text += "".join(renamed_hint(o.split("=", 1)[0]) for o in overrides)
    raise SweepError(f"--config={config_arg} {' '.join(overrides)}: {text}") from None


def build_grid(config_arg: str, classes: Sequence[str], settings: Sequence[Setting],
               seeds: Sequence[int], variants: dict[str, list[str]],
               common: Sequence[str]) -> tuple[list[Cell], tuple[str, ...]]:
  """Every cell, each config validated; also the dataset's class names."""
  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mscm_jax.data import protocols, sources  # pylint: disable=g-import-not-at-top
  from mscm_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  path, _, preset = config_arg.partition(":")
  config_arg = os.path.abspath(path) + (f":{preset}" if preset else "")
  base = parse_config(config_arg, common)
  try:
    names = tuple(sources.class_names(base.dataset))
    counts = sources.split_counts(base.dataset, names)
  except UserError as e:
    raise SweepError(str(e)) from None
  resolved = []
  for c in classes:
    try:  # the run's own rule: a name first, then a bare index; `#k` is index k
      k, = protocols.resolve_classes(c.strip(), names, "--classes")
    except (UserError, ValueError):
      raise SweepError(f"--classes: no class {c.strip()!r} in {base.dataset.name} "
                       f"(classes: {', '.join(names)}; `#k` is the k-th)") from None
    resolved.append(names[k])
  cells = []
  for setting in settings:
    for cls in resolved:
      for seed in seeds:
        for variant, extra in (variants or {"": []}).items():
          overrides = [*common, _class_override(cls), f"seed={seed}", *setting.overrides(),
                       *extra]
          config = parse_config(config_arg, overrides)  # every cell, before any runs
          try:  # the classes it names, as the run checks them before decoding
            protocols.config_classes(config, names, *counts)
          except UserError as e:
            raise SweepError(f"{cls}, {setting.tag}: {e}") from None
          argv = (f"--config={config_arg}", *(f"--config.{o}" for o in overrides))
          cells.append(Cell(cls, setting, seed, variant, argv, names,
                            tuple(config_lib.ignored_fields(config))))
  return cells, names


def stack_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
  """The cells that differ only in their class, in grid order: one stacked program each."""
  groups: dict[tuple[Setting, int, str], list[Cell]] = {}
  for c in cells:
    groups.setdefault((c.setting, c.seed, c.variant), []).append(c)
  return list(groups.values())


def stacked_argv(group: Sequence[Cell]) -> tuple[str, ...]:
  """The main command's flags that run `group` as one program, each class in its cell's
  workdir under ROOT (`stack.workdir_name`); --workdir=ROOT is added by the caller."""
  first = group[0]
  shared = [a for a in first.argv if a != first.class_flag]
  classes = tuple(c.cls for c in group)
  return (*shared, f"--config.stack.classes={classes!r}",
          "--config.stack.workdir_name={class}" + first.name[len(first.cls):])


def check_stacked(cells: Sequence[Cell]) -> None:
  """Every group's stacked config validates (one line at once, before anything runs)."""
  for group in stack_groups(cells):
    argv = stacked_argv(group)
    parse_config(argv[0][len("--config="):], [a[len("--config."):] for a in argv[1:]])


# ----------------------------------------------------------------------------- claims


def _meta(root: str, cell: str) -> str:
  return os.path.join(root, META, cell)


def _read(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write(path: str, record: dict[str, Any]) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def attempts(root: str, cell: str) -> list[int]:
  """The claim numbers of a cell so far, ascending."""
  out = []
  for p in glob.glob(os.path.join(_meta(root, cell), "claim.*")):
    suffix = os.path.basename(p)[len("claim."):]
    if suffix.isdigit():
      out.append(int(suffix))
  return sorted(out)


def _alive(info: dict[str, Any] | None, path: str, stale_after: float) -> bool:
  if info is not None and info.get("host") == socket.gethostname():
    try:
      os.kill(int(info["pid"]), 0)
      return True
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
  try:
    return time.time() - os.path.getmtime(path) < stale_after
  except OSError:
    return False


def holder(root: str, cell: str, stale_after: float,
           numbers: list[int] | None = None) -> dict[str, Any] | None:
  """The live claim on a cell (its record), or None when it is free to claim."""
  numbers = attempts(root, cell) if numbers is None else numbers
  if not numbers:
    return None
  path = os.path.join(_meta(root, cell), f"claim.{numbers[-1]}")
  if os.path.exists(path + ".end"):
    return None
  info = _read(path)
  if info is None:  # being written by its creator this instant
    return {"worker": "?", "attempt": numbers[-1]} if _alive(None, path, stale_after) else None
  return info if _alive(info, path, stale_after) else None


def claim(root: str, cell: str, worker: str, stale_after: float) -> int | None:
  """Claims the cell's next attempt; None when another worker holds it or won the race.

  One listing decides both whether the cell is free and the attempt number to create, so a
  worker that lost the O_EXCL race on claim.<n> cannot go on to claim.<n+1>: a claim made
  after its listing makes its own create fail.
  """
  os.makedirs(_meta(root, cell), exist_ok=True)
  numbers = attempts(root, cell)
  if holder(root, cell, stale_after, numbers) is not None:
    return None
  n = numbers[-1] + 1 if numbers else 1
  path = os.path.join(_meta(root, cell), f"claim.{n}")
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return None
  with os.fdopen(fd, "w") as f:
    json.dump({"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
               "attempt": n, "started": time.time()}, f)
  return n


def release(root: str, cell: str, n: int, record: dict[str, Any]) -> None:
  _write(os.path.join(_meta(root, cell), f"claim.{n}.end"), record)


def is_done(root: str, cell: Cell) -> bool:
  done = _read(os.path.join(_meta(root, cell.name), "done.json"))
  return done is not None and done.get("argv") == list(cell.argv) and os.path.isdir(
      os.path.join(root, cell.name))


@contextlib.contextmanager
def _heartbeat(paths: Sequence[str], every: float):
  """Touches the claim files while their cells run: other hosts see the worker is alive."""
  stop = threading.Event()

  def beat():
    while not stop.wait(every):
      for path in paths:
        with contextlib.suppress(OSError):
          os.utime(path)

  t = threading.Thread(target=beat, daemon=True)
  t.start()
  try:
    yield
  finally:
    stop.set()
    t.join()


# ----------------------------------------------------------------------------- worker


def progress(root: str, cell: str) -> tuple[str, ...]:
  """Where each trained stage of a cell's workdir stands: 'finished', or the step of its
  newest checkpoint ('0': not started)."""
  out = []
  for stage in TRAINED:
    d = stage_dir(os.path.join(root, cell), stage)
    if os.path.exists(os.path.join(d, FINAL_MARKER)):
      out.append("finished")
    else:
      out.append(str(max(saved_steps(d), default=0)))
  return tuple(out)


def standing_together(root: str, claimed: Sequence[tuple[Cell, int]]
                      ) -> list[list[tuple[Cell, int]]]:
  """The claimed cells of a group split by `progress`: members of one program resume
  from one step (a cell that a plain worker took part-way finishes alone, rather than
  lose its steps or stop the others: `loop.run_members`)."""
  parts: dict[tuple[str, ...], list[tuple[Cell, int]]] = {}
  for cell, n in claimed:
    parts.setdefault(progress(root, cell.name), []).append((cell, n))
  return list(parts.values())


def _log(root: str, cell: str, n: int) -> str:
  return os.path.join(_meta(root, cell), f"attempt{n}.log")


def _die_with_worker(worker_pid: int) -> None:
  """In the child, before `main` starts: SIGTERM when the worker that started it dies
  (Linux `prctl(PR_SET_PDEATHSIG)`), so that a killed worker leaves no run going on
  unsupervised; on SIGTERM the run saves and exits 75, and the cell's next worker resumes
  it. Elsewhere the next worker waits for such an orphan instead (`_wait_for_orphans`)."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  # The worker died before the prctl (the child went to init or a subreaper): nobody
  # supervises this run.
  if os.getppid() != worker_pid:
    os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_orphans(root: str, cells: Sequence[Cell], echo) -> None:
  """Waits while a run of a dead worker still holds a cell's workdir: its claim lapsed,
  but starting now would fail on the workdir's lock. The rerun then resumes (or finds
  finished) what the orphan left, and the cell is recorded once, by this worker."""
  said = False
  while True:
    held = [(c, h) for c in cells
            if (h := lock_holder(os.path.join(root, c.name))) is not None]
    if not held:
      return
    if not said:
      cell, holder = held[0]
      echo(f"{cell.name}: waiting for the run of a dead worker that still holds its "
           f"workdir ({holder}) to stop")
      said = True
    time.sleep(2.0)


def run_cells(root: str, claimed: Sequence[tuple[Cell, int]], stale_after: float,
              child: dict[str, Any], echo=print) -> int:
  """One attempt of each claimed cell: one main command (stacked for several cells), its
  output in the first cell's attempt<n>.log, which the others' logs name."""
  (first, n), rest = claimed[0], claimed[1:]
  if rest:
    cmd = [*stacked_argv([c for c, _ in claimed]), f"--workdir={root}"]
  else:
    cmd = [*first.argv, f"--workdir={os.path.join(root, first.name)}"]
  names = " + ".join(c.name for c, _ in claimed)
  for cell, k in claimed:
    _write(os.path.join(_meta(root, cell.name), "cell.json"), cell.spec())
    if cell is not first:
      with open(_log(root, cell.name, k), "a") as f:
        f.write(f"run as one program ({names}): output in {_log(root, first.name, n)}\n")
  claims = [os.path.join(_meta(root, c.name), f"claim.{k}") for c, k in claimed]
  with open(_log(root, first.name, n), "a") as out, _heartbeat(claims, stale_after / 4):
    _wait_for_orphans(root, [c for c, _ in claimed], echo)
    proc = subprocess.Popen([sys.executable, "-m", "mscm_jax.main", *cmd], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=functools.partial(_die_with_worker, os.getpid()))
    child["proc"] = proc
    rc = proc.wait()
    child["proc"] = None
  return rc


def _last_error(log: str) -> str:
  try:
    with open(log) as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    return ""
  errors = [l for l in lines if l.startswith("error:")]
  return (errors or lines or [""])[-1][:300]


def work(root: str, cells: Sequence[Cell], worker: str, stale_after: float = 600.0,
         echo=print, stack: bool = False) -> dict[str, list[str]]:
  """Runs every cell not finished and not held by another live worker, in grid order;
  with `stack`, the cells of a group (`stack_groups`) that this worker claims together."""
  os.makedirs(os.path.join(root, META), exist_ok=True)
  outcome: dict[str, list[str]] = {"ran": [], "skipped": [], "held": [], "failed": [],
                                   "interrupted": []}
  child: dict[str, Any] = {"proc": None}
  stop = {"signal": None}

  def on_signal(signum, _):
    stop["signal"] = signum
    if child["proc"] is not None:  # the run saves a checkpoint and exits (resumable)
      child["proc"].send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  order = {c.name: i + 1 for i, c in enumerate(cells)}

  def label(cell: Cell) -> str:
    return f"[{order[cell.name]}/{len(cells)}] {cell.name}"

  try:
    for group in stack_groups(cells) if stack else [[c] for c in cells]:
      if stop["signal"] is not None:
        break
      claimed = []
      for cell in group:
        if is_done(root, cell):
          outcome["skipped"].append(cell.name)
          continue
        n = claim(root, cell.name, worker, stale_after)
        if n is None:
          held = holder(root, cell.name, stale_after) or {}
          echo(f"{label(cell)}: held by {held.get('worker', 'another worker')}")
          outcome["held"].append(cell.name)
          continue
        if is_done(root, cell):  # finished by another worker since the first look
          release(root, cell.name, n, {"ran": False, "reason": "already done"})
          outcome["skipped"].append(cell.name)
          continue
        claimed.append((cell, n))
      for part in standing_together(root, claimed):
        if stop["signal"] is not None:  # claimed, not run: free for the next run
          for cell, n in part:
            release(root, cell.name, n, {"ran": False, "reason": "stopped"})
            outcome["interrupted"].append(cell.name)
          continue
        log = _log(root, part[0][0].name, part[0][1])
        names = [c.name for c, _ in part]
        for cell, n in part:
          together = f", one program with {len(part) - 1} more" if len(part) > 1 else ""
          echo(f"{label(cell)}: attempt {n} by {worker}{together} (log: {log})")
        start = time.time()
        rc = run_cells(root, part, stale_after, child, echo)
        seconds = round(time.time() - start, 1)
        for cell, n in part:
          if rc == 0:
            _write(os.path.join(_meta(root, cell.name), "done.json"),
                   {**cell.spec(), "seconds": seconds, "worker": worker, "attempt": n,
                    "program": names})
            outcome["ran"].append(cell.name)
            echo(f"{label(cell)}: finished in {seconds:.0f} s{_headline(root, cell.name)}")
          else:  # an interrupted run (75) saved its checkpoints: the next run resumes it
            outcome["interrupted" if rc == errors.Interrupted.exit_code else "failed"].append(
                cell.name)
            echo(f"{label(cell)}: exit status {rc} after {seconds:.0f} s: {_last_error(log)}")
          release(root, cell.name, n, {"ran": True, "rc": rc, "seconds": seconds,
                                       "worker": worker, "program": names})
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  if stop["signal"] is not None:
    echo(f"stopped by signal {stop['signal']}: the interrupted cell resumes on the next run")
  return outcome


def _headline(root: str, cell: str) -> str:
  r = _read(os.path.join(root, cell, "results.json"))
  if not r or not ({"scores", "test_scores"} & set(r)):
    return ""
  test = test_scores(r)
  return ": test " + ", ".join(f"{k} {test[k]['auroc']:.3f}" for k in HEADLINE if k in test)


# ---------------------------------------------------------------------------- the table


def _cell_results(root: str, cell: str) -> tuple[str, dict[str, Any]] | None:
  """(file name, contents) of what a finished cell measured: results.json with scores, or
  the run_summary.json of a cell stopped after stage 1 (`stop_after=stage1`: a cheap
  screen whose only reading is the stage-1 probe); None for neither."""
  results = _read(os.path.join(root, cell, "results.json"))
  if results and {"scores", "test_scores"} & set(results):
    return "results.json", results
  summary = _read(os.path.join(root, cell, "run_summary.json"))
  if summary and (summary.get("stage1") or {}).get(PROBE_KEYS[0]) is not None:
    return "run_summary.json", summary
  return None


def _finished(root: str) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
  """(done.json, results file name, results) of every finished cell under ROOT that
  measured something (`_cell_results`)."""
  out = []
  for done_path in sorted(glob.glob(os.path.join(root, META, "*", "done.json"))):
    done = _read(done_path)
    found = done and _cell_results(root, done["cell"])
    if found:
      out.append((done, *found))
  return out


def finished_cells(root: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
  """(done.json, results) of every finished cell under ROOT that measured something."""
  return [(done, results) for done, _, results in _finished(root)]


def _groups(root: str) -> dict[tuple[str, str], tuple[list[str], dict[str, dict[int, Any]]]]:
  """{(setting, variant): (the dataset's classes, {class: {seed: results}})}."""
  groups: dict[tuple[str, str], tuple[list[str], dict[str, dict[int, Any]]]] = {}
  for done, results in finished_cells(root):
    names, by_class = groups.setdefault((done["setting"], done["variant"]),
                                        (done.get("dataset_classes") or [], {}))
    by_class.setdefault(done["class"], {})[int(done["seed"])] = results
  return groups


def _any_results(by_class: dict[str, dict[int, Any]]) -> dict[str, Any]:
  """One finished cell's results.json of a group: what its dataset and scores are."""
  return next(iter(next(iter(by_class.values())).values()))


SPLITS = ("validation", "test")  # validation first: where choices are read


def _values(results: dict[str, Any], score: str, split: str = "test") -> float | None:
  if score == "probe_gain":  # the stage-1 probe is read on the validation split only
    s1 = results.get("stage1") or {}
    a, b = (s1.get(k) for k in PROBE_KEYS)
    return None if split != "validation" or a is None or b is None else a - b
  m = split_scores(results, split).get(score)
  return None if m is None else m["auroc"]


def _stats(vals: list[float]) -> tuple[float, float]:
  a = np.asarray(vals, float)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def _fmt(mean: float, std: float) -> str:
  return f"{mean:.3f}" + (f" ± {std:.3f}" if np.isfinite(std) else "")


def _setting_order(tag: str) -> tuple[float, tuple[str, ...], str]:
  """oneclass first, then by ratio; a ratio's drawn-from variants after the plain one."""
  s = Setting.from_tag(tag)
  if s is None or s.ratio is None:
    return (-1.0, (), tag)
  return (s.ratio, s.anomaly_classes, tag)


def _side_by_side(groups: dict[tuple[str, str], tuple[list[str], dict[str, dict[int, Any]]]]
                  ) -> list[str]:
  """Per dataset and variant with several settings: class x setting, one table per score,
  what the unbalanced setting is to be read against (issue 11: beside one-class)."""
  by_key: dict[tuple[str, str], dict[str, dict[str, dict[int, Any]]]] = {}
  order: dict[tuple[str, str], list[str]] = {}
  for (setting, variant), (all_names, by_class) in groups.items():
    dataset = _any_results(by_class)["dataset"]
    by_key.setdefault((dataset, variant), {})[setting] = by_class
    order[(dataset, variant)] = list(all_names)
  md: list[str] = []
  for key, by_setting in sorted(by_key.items()):
    if len(by_setting) < 2:
      continue
    dataset, variant = key
    settings = sorted(by_setting, key=_setting_order)
    present = {c for by_class in by_setting.values() for c in by_class}
    classes = [c for c in order[key] if c in present] + sorted(present - set(order[key]))
    md += [f"### {dataset}" + (f", variant {variant}" if variant else "")
           + ": the settings side by side", "",
           "AUROC on the test split, mean ± spread over seeds; — = no finished cell.", ""]
    runs_all = [r for by_class in by_setting.values() for runs in by_class.values()
                for r in runs.values()]
    # a score no cell has (one added since the grid ran) gets no table of dashes
    for score in [s for s in HEADLINE if any(_values(r, s) is not None for r in runs_all)]:
      md += [f"`{score}`", "", "| class | " + " | ".join(settings) + " |",
             "|" + "---|" * (len(settings) + 1)]
      for c in classes:
        row = []
        for st in settings:
          runs = by_setting[st].get(c, {})
          vals = [v for v in (_values(r, score) for r in runs.values()) if v is not None]
          row.append(_fmt(*_stats(vals)) if vals else "—")
        md.append(f"| {c} | " + " | ".join(row) + " |")
      md.append("")
    differ = [f"{c}: " + "; ".join(f"{st} {','.join(map(str, sorted(by_setting[st][c])))}"
                                   for st in settings if c in by_setting[st])
              for c in classes
              if len({tuple(sorted(by_setting[st][c])) for st in settings
                      if c in by_setting[st]}) > 1]
    if differ:
      md += ["Seeds differ between settings (" + " | ".join(differ) + ").", ""]
  return md


def tables(root: str) -> tuple[str, str]:
  """(Markdown, CSV) of every finished cell under ROOT: the validation split's tables
  first (where choices are read), then the test split's (the final numbers)."""
  groups = _groups(root)
  md, rows = [], []
  for split in SPLITS:
    md += _split_tables(groups, split, rows)
  md += _side_by_side(groups)
  buf = io.StringIO()
  fields = ["dataset", "setting", "variant", "split", "class", "score", "n", "mean", "std",
            "seeds"]
  w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return "\n".join(md), buf.getvalue()


def _split_tables(groups, split: str, rows: list[dict[str, Any]]) -> list[str]:
  """One table per (setting, variant) of `split`'s AUROCs; CSV rows appended to `rows`."""
  md: list[str] = []
  for (setting, variant), (all_names, by_class) in sorted(groups.items()):
    any_results = _any_results(by_class)
    dataset = any_results["dataset"]
    names: dict[str, Any] = {}  # every cell's: one scored before a score existed lacks it
    for runs in by_class.values():
      for r in runs.values():
        names.update(split_scores(r, split))
    probe_only = not names and split == "validation" and _values(any_results, "probe_gain",
                                                                  split) is not None
    if not names and not probe_only:  # evaluated before the validation split existed
      continue
    scores = [s for s in HEADLINE if s in names]
    scores += sorted(s for s in names if s not in HEADLINE)
    scores.append("probe_gain")
    order = list(all_names or sorted(by_class))
    classes = [c for c in order if c in by_class] + sorted(set(by_class) - set(order))
    title = (f"{dataset}, {setting}" + (f", variant {variant}" if variant else "")
             + f": {split} split")
    shown = [s for s in HEADLINE if s in scores]
    gain = ""
    if split == "validation":
      shown.append("probe_gain")
      gain = "; probe_gain = stage-1 k-NN probe minus the untrained network's"
      if probe_only:
        gain += " (stage 1 only: `stop_after=stage1`)"
    md += [f"### {title}", "", f"AUROC, mean ± spread (sample std) over seeds{gain}.", "",
           "| class | seeds | " + " | ".join(shown) + " |", "|" + "---|" * (len(shown) + 2)]
    class_means: dict[str, dict[str, float]] = {}
    for c in classes:
      seeds = sorted(by_class[c])
      cells = []
      for s in scores:
        have = {k: v for k in seeds if (v := _values(by_class[c][k], s, split)) is not None}
        vals = list(have.values())
        if not vals:
          if s in shown:
            cells.append("-")
          continue
        mean, std = _stats(vals)
        class_means.setdefault(c, {})[s] = mean
        rows.append({"dataset": dataset, "setting": setting, "variant": variant,
                     "split": split, "class": c, "score": s, "n": len(vals),
                     "mean": round(mean, 6), "std": round(std, 6) if np.isfinite(std) else "",
                     "seeds": " ".join(map(str, have))})
        if s in shown:  # a score some seeds lack (scored before it existed) says whose
          cells.append(_fmt(mean, std) + ("" if len(have) == len(seeds) else
                                          f" (seed{'s' * (len(have) > 1)} "
                                          f"{','.join(map(str, have))})"))
      md.append(f"| {c} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    complete = bool(all_names) and set(all_names) <= set(by_class)
    if complete or len(classes) > 1:
      # a mean over the classes run is what a partial grid's target reads; a score some
      # class lacks has none (a mean over fewer classes would not compare)
      means = [_fmt(np.mean([class_means[c][s] for c in classes]), float("nan"))
               if all(s in class_means.get(c, {}) for c in classes) else "-" for s in shown]
      label = (f"mean of all {len(all_names)} classes" if complete
               else f"mean of the {len(classes)} classes run")
      md.append(f"| **{label}** | | " + " | ".join(means) + " |")
    if not complete:
      missing = [c for c in (all_names or []) if c not in by_class]
      md.append("")
      md.append(f"No class-set mean: {len(missing)} of the dataset's classes have no finished "
                f"cell ({', '.join(missing)})." if missing else "No class-set mean.")
    ref = REFERENCE.get(dataset)
    if ref and setting == "oneclass" and split == "test":
      md += ["", "Reference (method.md section 5; one-class mean AUROC over all classes, on the "
             "test split): " + ", ".join(f"{k} {v / 100:.3f}" for k, v in ref.items()) + "."]
    md.append("")
  return md


def export(root: str, dest: str) -> list[str]:
  """Copies every finished cell's done.json and results.json (or a stage-1 cell's
  run_summary.json; kilobytes, no checkpoints)
  to DEST in ROOT's layout, so `--table --root=DEST` rebuilds the table from them: what a
  results folder in a repository keeps of a grid whose workdirs are gone."""
  out = []
  for done, name, _ in _finished(root):
    cell = done["cell"]
    for rel in (os.path.join(META, cell, "done.json"), os.path.join(cell, name)):
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copyfile(os.path.join(root, rel), os.path.join(dest, rel))
    out.append(cell)
  return out


def write_tables(root: str) -> str:
  md, table_csv = tables(root)
  for name, text in (("results.md", md), ("results.csv", table_csv)):
    path = os.path.join(root, name)
    with open(path + f".tmp{os.getpid()}", "w") as f:
      f.write(text)
    os.replace(path + f".tmp{os.getpid()}", path)
  return md


# -------------------------------------------------------------------------------- CLI


def _variants(items: list[list[str]] | None) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {}
  for item in items or []:
    name, *overrides = item
    if not name.replace("_", "").replace("-", "").isalnum():
      raise SweepError(f"--variant {name!r}: a variant's name is letters, digits, - and _ "
                       "(then its overrides: key=value ...)")
    if name in out:
      raise SweepError(f"--variant {name!r} is given twice")
    out[name] = [o.removeprefix("--config.") for o in overrides]
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m mscm_jax.sweep",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="one workdir per cell lives here")
  p.add_argument("--config", help="configs/<family>.py[:preset], as for mscm_jax.main")
  p.add_argument("--classes", default="", help="names or indices, comma-separated; "
                 "'all' for every class of the dataset")
  p.add_argument("--settings", default="oneclass",
                 help="comma-separated: oneclass, unbalanced:RATIO[:CLASS+CLASS...]")
  p.add_argument("--seeds", default="0")
  p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                 help="a named set of config overrides; the grid runs every variant")
  p.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                 help="config overrides for every cell")
  p.add_argument("--stack", action="store_true",
                 help="run the cells that differ only in their class as one program")
  p.add_argument("--worker", default=f"{socket.gethostname()}:{os.getpid()}")
  p.add_argument("--stale_after", type=float, default=600.0,
                 help="seconds without a heartbeat after which another host's claim lapses")
  p.add_argument("--table", action="store_true", help="only aggregate the finished cells")
  p.add_argument("--dry_run", action="store_true", help="list the cells and their state")
  p.add_argument("--export", metavar="DEST", help="copy the finished cells' done.json and "
                 "results.json to DEST (then --table --root=DEST rebuilds the table)")
  args = p.parse_args(argv)
  root = os.path.abspath(args.root)
  try:
    if not args.table:
      if not args.config or not args.classes:
        raise SweepError("--config and --classes are required to run a grid (or give --table)")
      try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
      except ValueError:
        raise SweepError(f"--seeds={args.seeds}: give integers, comma-separated") from None
      settings = [Setting.parse(s) for s in args.settings.split(",") if s.strip()]
      common = [o.removeprefix("--config.") for group in args.set for o in group]
      classes = args.classes.split(",")
      if args.classes == "all":
        _, names = build_grid(args.config, ["0"], settings[:1], seeds[:1], {}, common)
        classes = list(names)
      cells, _ = build_grid(args.config, classes, settings, seeds, _variants(args.variant),
                            common)
      names = [c.name for c in cells]
      if len(set(names)) != len(names):
        raise SweepError("two cells share a name: give each variant its own name")
      if args.stack:
        check_stacked(cells)
      for line in dict.fromkeys(line for c in cells for line in c.ignored):  # once each
        print(f"warning: {line} ({sum(line in c.ignored for c in cells)} of "
              f"{len(cells)} cells)", file=sys.stderr, flush=True)
      if args.dry_run:
        for c in cells:
          state = ("done" if is_done(root, c) else
                   "held" if holder(root, c.name, args.stale_after) else "to run")
          print(f"{c.name}: {state}")
        return 0
      print(f"{len(cells)} cells under {root}; worker {args.worker}", flush=True)
      outcome = work(root, cells, args.worker, args.stale_after,
                     echo=lambda s: print(s, flush=True), stack=args.stack)
      print(", ".join(f"{k} {len(v)}" for k, v in outcome.items()), flush=True)
    print(write_tables(root))
    print(f"tables: {os.path.join(root, 'results.md')}, {os.path.join(root, 'results.csv')}")
    if args.export:
      dest = os.path.abspath(args.export)
      if dest == root:
        raise SweepError("--export: give a folder other than --root")
      cells = export(root, dest)
      write_tables(dest)
      print(f"exported {len(cells)} finished cells and their tables to {dest}")
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.table:
    return 0
  if outcome["failed"]:
    return 1
  # stopped by a signal, or a run was: saved, and the same command continues (as main's 75)
  return errors.Interrupted.exit_code if outcome["interrupted"] else 0


if __name__ == "__main__":
  sys.exit(main())
