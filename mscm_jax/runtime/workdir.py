"""What a workdir holds, and when its stages may be reused.

  config.json          the config of the last run that passed the checks below
  stage1/, stage2/     orbax checkpoints, IDENTITY.json (written before the first
                       checkpoint), checksums.json, FINISHED.json once complete
  results.json, scores.npz, validation_scores.npz, report/
                       the evaluation, keyed on its identity
  metrics.jsonl, tensorboard/<stage>/ every logged step

`check` compares each stage's recorded identity with this run's and refuses, in one
line naming the fields, when they differ; nothing in the workdir changes before it
passes. `discard` (the `--discard_stale` flag) deletes the stale stages and every stage
after them instead. `check_stage1_source` and `copy_stage1` (`--stage1_from`) check
another workdir's finished stage 1 against this run's identity and copy it in: the way
to share one stage 1 across stage-2 runs.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

from absl import logging

from mscm_jax.runtime import identity as identity_lib
from mscm_jax.errors import StaleStageError, WorkdirError
from mscm_jax.runtime.identity import Identity

IDENTITY_FILE = "IDENTITY.json"
FINAL_MARKER = "FINISHED.json"
RESULT_FILES = ("results.json", "scores.npz", "validation_scores.npz", "run_summary.json")
DISCARD_HINT = ("use a new --workdir, or rerun with --discard_stale to delete it and the "
                "stages after it and train them again")


def prepare(workdir: str | os.PathLike, *, read_only_ok: bool = False) -> str:
  """The workdir as an absolute path, created if missing; a WorkdirError if unusable.
  `read_only_ok`: a workdir that cannot be written but holds results.json is returned
  too (a finished run on a read-only mount can still show its results; `writable`)."""
  path = os.fspath(workdir) if workdir is not None else ""
  if not path.strip():
    raise WorkdirError("--workdir is empty: give a directory for checkpoints and results")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"workdir {path} is a file, not a directory: choose another --workdir")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    error = e
  else:
    error = _write_error(path)
  if error is not None:
    if read_only_ok and os.path.isfile(os.path.join(path, "results.json")):
      return path
    raise WorkdirError(f"workdir {path} cannot be written ({error.strerror or error}): "
                       "choose a directory you can write")
  return path


def _write_error(directory: str) -> OSError | None:
  """Why no file can be created in the (existing) directory, or None when one can."""
  try:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
      return None
  except OSError as e:
    return e


def writable(workdir: str) -> bool:
  """Whether files can be created in the (existing) workdir."""
  return _write_error(workdir) is None


LOCK_FILE = ".lock"


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for a run: a second run on the same workdir (two `main`s,
  a sweep cell started twice) is refused in one line instead of both writing its
  checkpoints. An flock: released when the holder exits or dies, so a killed run never
  leaves a stale lock behind."""
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      raise WorkdirError(f"workdir {workdir} is in use by another run ({_holder(path)}): "
                         "wait for it to finish, stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    since = datetime.datetime.now().isoformat(timespec="seconds")
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
    yield
  finally:
    os.close(fd)  # releases the lock


def lock_holder(workdir: str) -> str | None:
  """Who holds the workdir's lock (`locked`) now, or None when nobody does. Probes with a
  lock taken and dropped at once: nothing of the holder's is touched."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError:
    return _holder(path)
  finally:
    os.close(fd)
  return None


def _holder(lock_path: str) -> str:
  """What the holder of a lock file wrote into it (`locked`)."""
  with open(lock_path) as f:
    return f.read().strip() or "another process"


def write_json(path: str, record: Any) -> None:
  """Atomic: a reader sees the old file or the new one, never half of it."""
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def read_json(path: str) -> Any:
  """The parsed file; None when missing; a WorkdirError naming it when damaged."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise damaged(path, e) from None


def damaged(path: str, e: Exception) -> WorkdirError:
  return WorkdirError(f"{path} is damaged ({type(e).__name__}: {e})")


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def saved_steps(directory: str) -> list[int]:
  """The steps of a stage directory's finalised checkpoints, read without JAX or orbax
  (for the sweep runner): orbax names each by its step and writes an unfinished save
  under '<step>.orbax-checkpoint-tmp-*' first. test_checkpoints pins this to orbax's own
  `CheckpointManager.all_steps`."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def has_content(directory: str) -> bool:
  """Anything but hidden entries and the `*.tmp` files an interrupted `write_json` leaves
  (an interrupted write is not a stage that needs an identity)."""
  return os.path.isdir(directory) and any(not n.startswith(".") and not n.endswith(".tmp")
                                          for n in os.listdir(directory))


def recorded_identity(workdir: str, stage: str) -> Identity | None:
  """The identity a stage directory records; None when the directory is empty.

  A directory with checkpoints but no readable IDENTITY.json cannot be verified and is
  reported as stale (a WorkdirError), never trusted.
  """
  d = stage_dir(workdir, stage)
  if not has_content(d):
    return None
  path = os.path.join(d, IDENTITY_FILE)
  try:
    record = read_json(path)
    if record is None:
      raise WorkdirError(f"{d} has no {IDENTITY_FILE} (made by an mscm_jax before stage "
                         "identities, or damaged), so it cannot be verified")
    return Identity.from_json(record)
  except (KeyError, TypeError) as e:
    raise damaged(path, e) from None


def record_identity(workdir: str, ident: Identity) -> None:
  """Written before the stage's first checkpoint, so every checkpoint has an identity."""
  d = stage_dir(workdir, ident.stage)
  os.makedirs(d, exist_ok=True)
  write_json(os.path.join(d, IDENTITY_FILE), ident.to_json())


def stale_stages(workdir: str, plan: dict[str, Identity],
                 config_only: bool = False) -> dict[str, str]:
  """{stage: why} for every trained stage whose recorded identity differs from `plan`."""
  stale: dict[str, str] = {}
  for stage in identity_lib.TRAINED:
    try:
      recorded = recorded_identity(workdir, stage)
    except WorkdirError as e:
      stale[stage] = str(e)
      continue
    if recorded is None:
      continue
    diffs = identity_lib.differences(recorded, plan[stage], config_only)
    if diffs:
      stale[stage] = (f"{stage} in {workdir} was made with another config or data ("
                      f"{identity_lib.describe(diffs)})")
  return stale


def check(workdir: str, plan: dict[str, Identity], *, discard_stale: bool,
          config_only: bool = False) -> list[str]:
  """Refuses (StaleStageError) when a stage is stale, unless `discard_stale`; then returns
  the stages to delete: the stale ones and every stage after them."""
  stale = stale_stages(workdir, plan, config_only)
  if not stale:
    return []
  trained = identity_lib.TRAINED
  first = next(s for s in trained if s in stale)
  if not discard_stale:
    raise StaleStageError(f"{stale[first]}: {DISCARD_HINT}")
  return list(trained[trained.index(first):])


def discard(workdir: str, stages: list[str]) -> None:
  """Deletes the stages' checkpoints and logged metrics. The evaluation made from them no
  longer matches its identity (it reads the discarded stage), so the pipeline's
  `discard_results` removes it before it writes anything."""
  from mscm_jax.runtime import monitoring  # pylint: disable=g-import-not-at-top

  for stage in stages:
    logging.warning("Discarding %s (--discard_stale): it was made with another config or "
                    "data", stage_dir(workdir, stage))
    shutil.rmtree(stage_dir(workdir, stage), ignore_errors=True)
    shutil.rmtree(os.path.join(workdir, "tensorboard", stage), ignore_errors=True)
    monitoring.MetricWriter(workdir, stage).truncate_after(0)


def discard_results(workdir: str) -> None:
  """Removes an evaluation that another identity made (or a partial one)."""
  for name in RESULT_FILES:
    if os.path.exists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))
  shutil.rmtree(os.path.join(workdir, "report"), ignore_errors=True)


def finished_results(workdir: str, evaluation: Identity) -> dict[str, Any] | None:
  """results.json when it was computed with exactly this evaluation identity."""
  try:
    results = read_json(os.path.join(workdir, "results.json"))
  except WorkdirError as e:
    logging.warning("%s: evaluating again", e)
    return None
  if results is None or results.get("identity") != evaluation.fingerprint:
    return None
  return results


def check_stage1_source(source: str, expected: Identity) -> str:
  """The stage-1 directory of `source` (`--stage1_from`) once it is finished and its
  identity equals `expected`; a one-line error otherwise."""
  root = os.path.abspath(os.path.expanduser(source))
  src = stage_dir(root, "stage1")
  if read_json(os.path.join(src, FINAL_MARKER)) is None:
    raise WorkdirError(f"--stage1_from={source}: {src} holds no finished stage 1")
  diffs = identity_lib.differences(recorded_identity(root, "stage1"), expected)
  if diffs:
    raise StaleStageError(f"--stage1_from={source}: its stage 1 was made with another "
                          f"config or data ({identity_lib.describe(diffs)}), so it cannot serve "
                          "this run")
  return src


def copy_stage1(src: str, workdir: str) -> None:
  """Copies a checked stage-1 directory in, unless this workdir already has it."""
  dst = stage_dir(workdir, "stage1")
  if os.path.realpath(src) == os.path.realpath(dst) or has_content(dst):
    return  # the same identity is already here (a stale one was refused or discarded)
  shutil.rmtree(dst + ".incoming", ignore_errors=True)
  shutil.copytree(src, dst + ".incoming")
  shutil.rmtree(dst, ignore_errors=True)
  os.replace(dst + ".incoming", dst)
  logging.info("Stage 1 copied from %s", src)


def check_loadable(workdir: str, config_plan: dict[str, Identity]) -> None:
  """For `AnoMemDetector.load`: both stages finished, made with config.json's fields,
  and stage 2 trained on this stage 1."""
  idents = {}
  for stage in identity_lib.TRAINED:
    d = stage_dir(workdir, stage)
    if read_json(os.path.join(d, FINAL_MARKER)) is None:
      raise WorkdirError(f"{d} holds no finished {stage}: run the training first")
    ident = recorded_identity(workdir, stage)
    if ident is None:
      raise WorkdirError(f"{d} is empty: run the training first")
    diffs = identity_lib.differences(ident, config_plan[stage], config_only=True)
    if diffs:
      raise StaleStageError(f"{d} was made with another config than {workdir}/config.json "
                            f"({identity_lib.describe(diffs)}): rerun the training in this "
                            "workdir")
    idents[stage] = ident
  if idents["stage2"].reads != idents["stage1"].fingerprint:
    raise StaleStageError(f"{workdir}/stage2 was trained on another stage 1 than the one "
                          "in the workdir: rerun the training")
