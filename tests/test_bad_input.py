"""Wrong inputs, as a user gives them: each one is refused with one `error:` line.

One table per way in: the command line (config fields, flags, data, workdirs, stale
workdirs), and in-process (stale or damaged workdirs via `pipeline.run` and
`AnoMemDetector.load`, arrays via the Python API). A refused CLI run must exit with
status 2, print no traceback, end stderr with exactly one `error: ...` line that names
the field or path, and leave nothing in the workdir that a rerun would trust
(config.json, checkpoints, results). Config errors must come before any work: their
workdir is never even created.

The CLI rows run once per pytest run, concurrently (`conftest.once_per_run`); each
parametrized test looks up its own row's result, so a failure names the row.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import cpu_devices_env, once_per_run, workdir_digest, write_folder_tree

from mscm_jax import config as config_lib
from mscm_jax import pipeline
from mscm_jax.runtime import checkpoints
from mscm_jax.api import AnoMemDetector, InputError, NotFittedError
from mscm_jax.errors import (CheckpointError, ConfigError, DiskFullError, StaleStageError,
                             UserError, is_disk_full)
from mscm_jax.errors import WorkdirError
from mscm_jax.runtime.workdir import saved_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = ("--config=configs/folder_oneclass.py:smoke", "--config.dataset.data_dir={tree}",
        "--config.dataset.image_size=16", "--config.dataset.normal_class=apple")
TRUSTED_FILES = ("config.json", "results.json", "scores.npz", "run_summary.json")


@dataclasses.dataclass(frozen=True)
class CliRow:
  """One refused command line. `{name}` in args/expect is filled from the fixture paths;
  `{w}` is the row's own (not yet existing) workdir, appended unless args give one."""

  id: str
  args: tuple[str, ...]
  expect: tuple[str, ...]
  base: bool = True  # prepend BASE
  early: bool = False  # refused before any work: the workdir is never created
  add_workdir: bool = True  # append --workdir={w} when args give none
  env: dict[str, str] | None = None
  max_seconds: float = 60.0


def cfg(override: str, expect: str | None = None, *extra: str) -> CliRow:
  """A config-field row: BASE plus `--config.<override>` (and extras); the message must
  name the field (the override's name unless `expect` says otherwise)."""
  field = override.split("=", 1)[0]
  args = (f"--config.{override}",) + tuple(f"--config.{e}" for e in extra)
  return CliRow(f"config:{override}", args, (expect or field,), early=True, max_seconds=15)


CONFIG_ROWS = [
    cfg("seed=-1"),
    cfg("setting=foo"),
    cfg("stop_after=everything"),
    cfg("anomaly_ratio=0", None, "setting=unbalanced"),
    cfg("anomaly_ratio=11.0", None, "setting=unbalanced"),
    cfg("dataset.name="),
    cfg("dataset.label_key="),
    cfg("dataset.train_split="),
    cfg("dataset.test_split="),
    cfg("dataset.normal_class=()"),
    cfg("dataset.image_size=4"),
    cfg("augment.crop_scale=(0.5,0.1)"),
    cfg("augment.crop_scale=(0.5,1.5)"),
    cfg("augment.crop_ratio=(0.0,1.0)"),
    cfg("augment.flip_prob=1.5"),
    cfg("augment.jitter_prob=-0.1"),
    cfg("augment.grayscale_prob=2.0"),
    cfg("augment.brightness=-0.1"),
    cfg("augment.contrast=1.5"),
    cfg("augment.saturation=-1.0"),
    cfg("augment.hue=0.9"),
    cfg("model.stage_sizes=(1,1,0,1)"),
    cfg("model.widths=(8,8,16)"),
    cfg("model.head_dims=()"),
    cfg("model.dtype=float16"),
    cfg("memory.scales=('res3','res3')"),
    cfg("memory.scales=()"),
    cfg("memory.scales=('res9',)"),
    cfg("memory.mode=foo"),
    cfg("memory.train=foo"),
    cfg("memory.train=codebook", None, "memory.mode=replace"),
    cfg("memory.num_prototypes=0"),
    cfg("memory.proto_dim=0"),
    cfg("memory.beta=-1.0"),
    cfg("memory.shrink_threshold=1.0"),
    cfg("memory.retrieval_steps=0"),
    cfg("memory.top_k=9"),  # the smoke preset has 8 prototypes
    cfg("memory.path_warmup_epochs=1.0"),  # = the smoke preset's train.epochs
    cfg("memory.path_warmup_epochs=-1.0"),
    cfg("loss.temperature=0"),
    cfg("loss.temperature=-0.5"),
    cfg("loss.scale_weight=-1.0"),
    cfg("loss.variance_weight=-1.0"),
    cfg("loss.alignment_weight=-1.0"),
    cfg("loss.codebook_weight=-1.0"),
    cfg("loss.rotation_weight=-1.0"),
    cfg("loss.rotation_weight=1.0", "shift.rotations"),
    cfg("shift.rotations=5"),
    cfg("shift.rotations=0"),
    cfg("optim.name=adagrad"),
    cfg("optim.learning_rate=0"),
    cfg("optim.warmup_epochs=-1"),
    cfg("optim.weight_decay=-1.0"),
    cfg("optim.momentum=1.5"),
    cfg("optim.clip_norm=-1.0"),
    cfg("train.batch_size=1"),
    cfg("train.epochs=0"),
    cfg("train.epochs=-3"),
    cfg("train.log_every_steps=0"),
    cfg("train.checkpoint_every_steps=0"),
    cfg("train.probe_every_steps=-1"),
    cfg("train.num_devices=-1"),
    cfg("stage2.scales=('pooled',)"),  # base memory.scales: res2, res3, res4
    cfg("stage2.scales=('res3','res3')"),
    cfg("stage2.deviation_scales=('pooled',)"),
    cfg("stage2.weights=(1.0,2.0)"),  # three stage-2 scales
    cfg("stage2.weights=(1.0,-1.0,1.0)"),
    cfg("stage2.inputs=foo"),
    cfg("stage2.inputs=difference+difference"),
    cfg("stage2.inputs=cosine", "renamed 'cosine_distance'"),
    cfg("stage2.deviation=difference", "stage2.deviation was renamed stage2.inputs"),
    cfg("evaluate.batch_size=64", "evaluate.batch_size was renamed frozen.batch_size"),
    cfg("stage2.top_k=-2"),
    cfg("stage2.top_k=9"),
    cfg("stage2.widths=()"),
    cfg("stage2.out_dim=0"),
    cfg("stage2.bce_weight=-1.0"),
    cfg("stage2.eta=0"),
    cfg("stage2.rotated_anomalies=True", "shift.rotations"),
    cfg("stage2.learning_rate=0"),
    cfg("stage2.weight_decay=-1.0"),
    cfg("stage2.batch_size=0"),
    cfg("stage2.epochs=0"),
    cfg("stage2.holdout_fraction=0.9"),
    cfg("validation.fraction=0.6"),
    cfg("validation.anomalies=-1"),
    cfg("stage2.log_every_steps=0"),
    cfg("stage2.checkpoint_every_steps=0"),
    cfg("evaluate.knn_k=0"),
    cfg("evaluate.knn_weight=-1"),
    cfg("evaluate.rotation_weight=-1"),
    cfg("evaluate.rotation_weight=1"),  # the smoke preset has no rotation head
    cfg("frozen.batch_size=0"),
    cfg("preview.num_images=0"),
    cfg("stack.model_axis=-1"),
    cfg("stack.classes=3.5"),
    cfg("stack.within_group=parallel"),
    cfg("stack.workdir_name=runs"),  # no {class}: every class in one workdir
]

# Checked against the mesh, so after JAX starts (and after the data is read).
DEVICE_ROWS = [
    CliRow("devices:train.num_devices=1000", ("--config.train.num_devices=1000",),
           ("train.num_devices",)),
    CliRow("devices:train.batch_size=16 on 3 devices", (), ("train.batch_size",),
           env=cpu_devices_env(3)),
    CliRow("devices:stage2.batch_size=16 on 3 devices", ("--config.train.batch_size=18",),
           ("stage2.batch_size",), env=cpu_devices_env(3)),
]

FLAG_ROWS = [
    CliRow("flags:config file missing", ("--config=configs/nope.py", "--workdir={w}"),
           ("configs/nope.py",), base=False, early=True),
    CliRow("flags:unknown preset", ("--config=configs/folder_oneclass.py:foo", "--workdir={w}"),
           ("'foo'",), base=False, early=True),
    CliRow("flags:--config.foo=1", ("--config.foo=1",), ("--config.foo",), early=True),
    CliRow("flags:--config.train.foo=1", ("--config.train.foo=1",), ("--config.train.foo",),
           early=True),
    CliRow("flags:--config.train.epochs=abc", ("--config.train.epochs=abc",),
           ("train.epochs",), early=True),
    CliRow("flags:--config.evaluate.report=maybe", ("--config.evaluate.report=maybe",),
           ("evaluate.report",), early=True),
    CliRow("flags:--config.dataset.download=maybe", ("--config.dataset.download=maybe",),
           ("dataset.download",), early=True),
    CliRow("flags:--config.memory.learnable_beta=maybe",
           ("--config.memory.learnable_beta=maybe",), ("memory.learnable_beta",), early=True),
    CliRow("flags:--config.stage2.classifier=maybe", ("--config.stage2.classifier=maybe",),
           ("stage2.classifier",), early=True),
    CliRow("flags:--config.evaluate.flip_tta=maybe", ("--config.evaluate.flip_tta=maybe",),
           ("evaluate.flip_tta",), early=True),
    CliRow("flags:unclosed tuple", ("--config.memory.scales=('res3',",), ("memory.scales",),
           early=True),
    CliRow("flags:missing --workdir", BASE, ("--workdir",), base=False, early=True,
           add_workdir=False),
    CliRow("flags:missing --config", ("--workdir={w}",), ("--config",), base=False,
           early=True),
    CliRow("flags:--bogus=1", ("--bogus=1",), ("bogus",), early=True),
    CliRow("flags:positional argument", ("extra",), ("extra",), early=True),
]

DATA_ROWS = [
    CliRow("data:normal_class=durian", ("--config.dataset.normal_class=durian",),
           ("durian",)),
    CliRow("data:normal_class=7 of 3", ("--config.dataset.normal_class=7",),
           ("dataset.normal_class",)),
    CliRow("data:anomaly_classes=('durian',)",
           ("--config.setting=unbalanced", "--config.anomaly_classes=('durian',)"),
           ("anomaly_classes",)),
    CliRow("data:anomaly_ratio=5 larger than the pool",
           ("--config.setting=unbalanced", "--config.anomaly_ratio=5.0"), ("anomaly_ratio",)),
    CliRow("data:data_dir missing", ("--config.dataset.data_dir={tmp}/nowhere",),
           ("{tmp}/nowhere",)),
    CliRow("data:no test split", ("--config.dataset.data_dir={notest}",), ("{notest}/test",)),
    CliRow("data:undecodable png", ("--config.dataset.data_dir={garbage}",),
           ("{garbage}/train/apple/zzz_bad.png",)),
    CliRow("data:tfds not prepared", ("--config=configs/cifar10_oneclass.py",
                                      "--config.dataset.data_dir={empty}"),
           ("{empty}",), base=False, max_seconds=30),
    # Checks that need only the class folders or file counts must not wait for (or be
    # hidden by) the decoding: the tree has an undecodable image.
    CliRow("before-decode:normal_class=durian",
           ("--config.dataset.data_dir={garbage}", "--config.dataset.normal_class=durian"),
           ("durian",)),
    CliRow("before-decode:normal class without training images",
           ("--config.dataset.data_dir={garbage}", "--config.dataset.normal_class=durian2"),
           ("durian2",)),
    CliRow("before-decode:normal class without test images",
           ("--config.dataset.data_dir={garbage}", "--config.dataset.normal_class=elder"),
           ("elder", "test split")),
    CliRow("before-decode:test split of normals only",
           ("--config.dataset.data_dir={normalsonly}",), ("only the normal", "apple")),
    CliRow("before-decode:anomaly_classes includes the normal class",
           ("--config.dataset.data_dir={garbage}", "--config.setting=unbalanced",
            "--config.anomaly_classes=('apple',)"), ("anomaly_classes",)),
    CliRow("before-decode:anomaly_ratio=5 larger than the pool",
           ("--config.dataset.data_dir={garbage}", "--config.setting=unbalanced",
            "--config.anomaly_ratio=5.0"), ("anomaly_ratio",)),
]

WORKDIR_ROWS = [
    CliRow("workdir:a file", ("--workdir={file}",), ("{file}",)),
    CliRow("workdir:under a file", ("--workdir={file}/sub",), ("{file}/sub",)),
    CliRow("workdir:/proc/mscm_x", ("--workdir=/proc/mscm_x",), ("/proc/mscm_x",)),
    CliRow("workdir:empty string", ("--workdir=",), ("--workdir",), early=True),
]

CLI_ROWS = CONFIG_ROWS + DEVICE_ROWS + FLAG_ROWS + DATA_ROWS + WORKDIR_ROWS


@dataclasses.dataclass
class CliResult:
  returncode: int
  stderr: str
  seconds: float
  workdir: pathlib.Path  # the row's own {w} (unused when args give another --workdir)
  argv: list[str]


def trusted_leftovers(workdir: pathlib.Path) -> list[str]:
  """What a rerun would take as made by a run: config.json, results, stage contents."""
  if not workdir.is_dir():
    return []
  out = [n for n in TRUSTED_FILES if (workdir / n).exists()]
  for stage in ("stage1", "stage2"):
    d = workdir / stage
    if d.is_dir() and any(not n.startswith(".") for n in os.listdir(d)):
      out.append(f"{stage}/{sorted(os.listdir(d))}")
  return out


def one_line_problems(returncode: int, stderr: str, expect: tuple[str, ...]) -> list[str]:
  """The CLI contract for a user error; [] when it holds."""
  problems = []
  if returncode != 2:
    problems.append(f"exit status {returncode}, not 2")
  if "Traceback" in stderr:
    problems.append("a traceback was printed")
  lines = [l for l in stderr.splitlines() if l.strip()]
  last = lines[-1] if lines else ""
  if not last.startswith("error: "):
    problems.append(f"the last stderr line is not `error: ...`: {last!r}")
  n_errors = sum(l.startswith("error:") for l in lines)
  if n_errors != 1:
    problems.append(f"{n_errors} `error:` lines, not one")
  missing = [s for s in expect if s not in last]
  if missing:
    problems.append(f"the message does not name {missing}")
  return problems


def _fill(text: str, paths: dict[str, str]) -> str:
  return text.format(**paths)


def _run(row: CliRow, paths: dict[str, str]) -> CliResult:
  argv = [_fill(a, paths) for a in ((BASE if row.base else ()) + row.args)]
  if row.add_workdir and not any(a.startswith("--workdir") for a in argv):
    argv.append(f"--workdir={paths['w']}")
  start = time.time()
  r = subprocess.run([sys.executable, "-m", "mscm_jax.main", *argv], cwd=ROOT,
                     capture_output=True, text=True, timeout=180,
                     env={**os.environ, **(row.env or {})})
  own = pathlib.Path(paths["w"])
  return CliResult(r.returncode, r.stderr, time.time() - start, own, argv)


def _row_paths(base: dict[str, str], tmp: pathlib.Path, row: CliRow) -> dict[str, str]:
  slug = re.sub(r"[^A-Za-z0-9]+", "_", row.id).strip("_")
  return {**base, "w": str(tmp / "work" / slug / "w")}


def _make_trees(tmp: pathlib.Path) -> dict[str, str]:
  counts = {"train": {"apple": 6, "berry": 5, "cherry": 4},
            "test": {"apple": 3, "berry": 3, "cherry": 2}}
  write_folder_tree(tmp / "tree", counts)
  write_folder_tree(tmp / "notest", {"train": counts["train"]})
  write_folder_tree(tmp / "garbage", {"train": {**counts["train"], "elder": 2},
                                      "test": {**counts["test"], "durian2": 2}})
  write_folder_tree(tmp / "normalsonly", {**counts, "test": {"apple": 3}})
  for tree in ("garbage", "normalsonly"):
    (tmp / tree / "train" / "apple" / "zzz_bad.png").write_bytes(b"\x89PNG garbage" * 9)
  (tmp / "empty").mkdir()
  (tmp / "afile").write_text("not a directory\n")
  return {"tmp": str(tmp), "tree": str(tmp / "tree"), "notest": str(tmp / "notest"),
          "garbage": str(tmp / "garbage"), "normalsonly": str(tmp / "normalsonly"),
          "empty": str(tmp / "empty"), "file": str(tmp / "afile")}


def _run_rows(tmp: pathlib.Path) -> dict[str, Any]:
  """The trees, and every CLI row run on them three at a time (each is mostly interpreter
  start-up), as JSON."""
  trees = _make_trees(tmp)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {row.id: pool.submit(_run, row, _row_paths(trees, tmp, row)) for row in CLI_ROWS}
    results = {k: {**dataclasses.asdict(f.result()), "workdir": str(f.result().workdir)}
               for k, f in futures.items()}
  return {"trees": trees, "results": results}


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory, worker_id) -> dict[str, Any]:
  return once_per_run(tmp_path_factory, worker_id, "bad_input_cli", _run_rows)


@pytest.fixture(scope="session")
def trees(cli_runs) -> dict[str, str]:
  return cli_runs["trees"]


@pytest.fixture(scope="session")
def cli_results(cli_runs) -> dict[str, CliResult]:
  return {k: CliResult(**{**v, "workdir": pathlib.Path(v["workdir"])})
          for k, v in cli_runs["results"].items()}


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli_row(row: CliRow, cli_results, trees):
  res = cli_results[row.id]
  expect = tuple(_fill(e, trees) for e in row.expect)
  problems = one_line_problems(res.returncode, res.stderr, expect)
  if row.early and res.workdir.exists():
    problems.append(f"the workdir {res.workdir} was created: the check came after work began")
  left = trusted_leftovers(res.workdir)
  if left:
    problems.append(f"the workdir holds {left}")
  if res.seconds > row.max_seconds:
    problems.append(f"took {res.seconds:.1f} s (limit {row.max_seconds} s)")
  assert not problems, f"{res.argv}\n{problems}\nstderr:\n{res.stderr[-2000:]}"


def test_file_workdir_is_left_alone(cli_results, trees):
  assert cli_results["workdir:a file"].returncode == 2
  assert pathlib.Path(trees["file"]).read_text() == "not a directory\n"


def test_debug_shows_the_traceback(tmp_path):
  r = subprocess.run([sys.executable, "-m", "mscm_jax.main", "--debug",
                      *(a.format(tree=tmp_path) for a in BASE), "--config.train.epochs=0",
                      f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 2 and "Traceback" in r.stderr
  assert r.stderr.strip().splitlines()[-1] == "error: train.epochs=0 must be > 0"


def test_every_ranged_config_field_has_a_row():
  """Each leaf of the schema is set to a wrong value by some row (a value out of its
  range, of the wrong type, or one the data does not have)."""
  named = {a.split("=", 1)[0][len("--config."):] for r in CLI_ROWS for a in r.args
           if a.startswith("--config.")}

  def leaves(d: Any, prefix: str = "") -> set[str]:
    if isinstance(d, dict):
      return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in d.items()))
    return {prefix[:-1]}

  flat = leaves(config_lib.base_config().to_dict())
  missing = sorted(flat - named)
  assert not missing, f"config fields without a bad-input row: {missing}"


# ------------------------------------------------------------------ stale workdirs


def _finished_argv(config, workdir: pathlib.Path, *extra: str) -> list[str]:
  """The command line of conftest's `finished_run`."""
  return ["--config=configs/folder_oneclass.py:smoke",
          f"--config.dataset.data_dir={config.dataset.data_dir}",
          "--config.dataset.image_size=16", "--config.dataset.normal_class=c0",
          "--config.memory.scales=('res3','pooled')", "--config.train.epochs=2",
          "--config.stage2.epochs=4", *extra, f"--workdir={workdir}"]


def test_cli_refuses_a_stale_workdir_in_one_line(finished_copy):
  config, workdir, _ = finished_copy
  before = workdir_digest(workdir)
  argv = _finished_argv(config, workdir, "--config.loss.temperature=0.3")
  r = subprocess.run([sys.executable, "-m", "mscm_jax.main", *argv], cwd=ROOT,
                     capture_output=True, text=True, timeout=180)
  problems = one_line_problems(r.returncode, r.stderr, ("loss.temperature", "--discard_stale"))
  assert not problems, f"{problems}\nstderr:\n{r.stderr[-2000:]}"
  assert workdir_digest(workdir) == before  # config.json, checkpoints, results: all untouched


# ------------------------------------------------------------------ in-process rows


@dataclasses.dataclass
class Ctx:
  """What an in-process row needs: the finished run, a loaded detector, a scratch dir."""

  config: Any
  source: pathlib.Path  # finished_run's workdir: only ever copied
  det: Any
  tmp: pathlib.Path
  watched: dict[pathlib.Path, dict[str, str]] = dataclasses.field(default_factory=dict)

  def workdir(self, tamper: Callable[[pathlib.Path], None] | None = None,
              watch: bool = True) -> str:
    """A copy of the finished workdir (tampered with first); when `watch`, the test
    checks that the refused call left it byte-identical."""
    w = self.tmp / f"copy{len(self.watched)}_{time.time_ns()}"
    shutil.copytree(self.source, w)
    if tamper:
      tamper(w)
    if watch:
      self.watched[w] = workdir_digest(w)
    return str(w)

  def changed(self, **overrides: Any):
    return config_lib.set_fields(self.config.copy_and_resolve_references(), overrides)


@dataclasses.dataclass(frozen=True)
class InRow:
  id: str
  call: Callable[[Ctx], Any]
  expect: tuple[str, ...]
  exc: type[BaseException] = UserError


def _rerun(**overrides: Any) -> Callable[[Ctx], Any]:
  return lambda c: pipeline.run(c.changed(**overrides), c.workdir())


def _rerun_tampered(tamper: Callable[[pathlib.Path], None]) -> Callable[[Ctx], Any]:
  return lambda c: pipeline.run(c.changed(), c.workdir(tamper))


def _load_tampered(tamper: Callable[[pathlib.Path], None],
                   watch: bool = True) -> Callable[[Ctx], Any]:
  return lambda c: AnoMemDetector.load(c.workdir(tamper, watch))


def _garble_checkpoints(stage: str, newest_only: bool = False) -> Callable[[pathlib.Path], None]:
  def tamper(w: pathlib.Path) -> None:
    steps = [w / stage / str(n) for n in saved_steps(str(w / stage))]
    for step in steps[-1:] if newest_only else steps:
      for f in step.rglob("*"):
        if f.is_file():
          f.write_bytes(b"garbage")
  return tamper


def _load_twice_after_damage(c: Ctx) -> Any:
  """A load reports the damaged checkpoints and moves nothing (read-only): a second load
  finds and reports the same damage."""
  w = c.workdir(_garble_checkpoints("stage1"))
  try:
    AnoMemDetector.load(w)
  except UserError:
    pass
  return AnoMemDetector.load(w)


def _stage1_from(source: str, **overrides: Any) -> Callable[[Ctx], Any]:

  def call(c: Ctx) -> Any:
    src = c.workdir() if source == "finished" else str(c.tmp / "not_a_workdir")
    os.makedirs(c.tmp / "not_a_workdir", exist_ok=True)
    new = c.tmp / "fresh"
    c.watched[new] = {}
    return pipeline.run(c.changed(**overrides), str(new), stage1_from=src)
  return call


def _fit(images: Any, is_anomaly: Any = None, **overrides: Any) -> Callable[[Ctx], Any]:
  return lambda c: AnoMemDetector(c.changed(**overrides)).fit(images, is_anomaly)


def _fit_into_finished(c: Ctx) -> Any:
  rng = np.random.default_rng(1)
  images = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
  return AnoMemDetector(c.changed(), c.workdir()).fit(images)


def _score(images: Any) -> Callable[[Ctx], Any]:
  return lambda c: c.det.score(images)


def _unlink(rel: str) -> Callable[[pathlib.Path], None]:
  return lambda w: (w / rel).unlink()


def _write(rel: str, text: str) -> Callable[[pathlib.Path], None]:
  return lambda w: (w / rel).write_text(text)


_U8 = np.zeros((4, 16, 16, 3), np.uint8)

STALE_ROWS = [
    InRow("stale:loss.temperature changed", _rerun(**{"loss.temperature": 0.3}),
          ("loss.temperature", "--discard_stale"), StaleStageError),
    InRow("stale:stage2.inputs changed", _rerun(**{"stage2.inputs": "cosine_similarity"}),
          ("stage2.inputs", "--discard_stale"), StaleStageError),
    InRow("stale:other data (normal class c1)", _rerun(**{"dataset.normal_class": "c1"}),
          ("normal_classes", "--discard_stale"), StaleStageError),
    InRow("stale:stage1/IDENTITY.json deleted", _rerun_tampered(_unlink("stage1/IDENTITY.json")),
          ("IDENTITY.json",), WorkdirError),
    InRow("stale:stage2/IDENTITY.json garbled",
          _rerun_tampered(_write("stage2/IDENTITY.json", "{not json")),
          ("stage2/IDENTITY.json",), WorkdirError),
    InRow("stale:--stage1_from with another config",
          _stage1_from("finished", **{"loss.temperature": 0.3}),
          ("--stage1_from", "loss.temperature"), StaleStageError),
    InRow("stale:--stage1_from not a workdir", _stage1_from("empty"),
          ("--stage1_from", "not_a_workdir"), WorkdirError),
    InRow("load:stage2/FINISHED.json deleted", _load_tampered(_unlink("stage2/FINISHED.json")),
          ("stage2",)),
    InRow("load:stage1/IDENTITY.json deleted", _load_tampered(_unlink("stage1/IDENTITY.json")),
          ("IDENTITY.json",), WorkdirError),
    InRow("load:config.json not JSON", _load_tampered(_write("config.json", "{not json")),
          ("config.json",)),
    InRow("load:stage1 checkpoints garbled",
          _load_tampered(_garble_checkpoints("stage1")), ("stage1", "left as they are"),
          CheckpointError),
    # FINISHED.json names the final step; an older checkpoint is another model, and the
    # stage 2 beside it was trained on the final one.
    InRow("load:newest stage1 checkpoint garbled",
          _load_tampered(_garble_checkpoints("stage1", newest_only=True)),
          ("stage1", "rerun the training"), CheckpointError),
    InRow("load:twice on garbled checkpoints", _load_twice_after_damage, ("stage1",),
          CheckpointError),
    InRow("fit:other images into a finished workdir", _fit_into_finished,
          ("discard_stale",), StaleStageError),
]


def _api_rows() -> list[InRow]:
  ragged = [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
  return [
      InRow("score:8x8 images", _score(np.zeros((2, 8, 8, 3), np.uint8)),
            ("trained on", "resize"), InputError),
      InRow("score:one image without batch axis", _score(np.zeros((16, 16, 3), np.uint8)),
            ("images[None]",), InputError),
      InRow("score:floats of 2.0", _score(np.full((2, 16, 16, 3), 2.0, np.float32)),
            ("[0, 1]",), InputError),
      InRow("score:NaN", _score(np.full((2, 16, 16, 3), np.nan, np.float32)), ("NaN",),
            InputError),
      InRow("score:Inf", _score(np.full((2, 16, 16, 3), np.inf, np.float64)), ("Inf",),
            InputError),
      InRow("score:int32", _score(np.zeros((2, 16, 16, 3), np.int32)), ("uint8",),
            InputError),
      InRow("score:bool", _score(np.zeros((2, 16, 16, 3), bool)), ("uint8",), InputError),
      InRow("score:4 channels", _score(np.zeros((2, 16, 16, 4), np.uint8)), ("shape",),
            InputError),
      InRow("score:5-d array", _score(np.zeros((2, 2, 16, 16, 3), np.uint8)), ("shape",),
            InputError),
      InRow("score:empty array", _score(np.zeros((0, 16, 16, 3), np.uint8)), ("empty",),
            InputError),
      InRow("score:None", _score(None), ("shape",), InputError),
      InRow("score:ragged list of arrays", _score(ragged), ("shape",), InputError),
      InRow("deviation_maps:NaN",
            lambda c: c.det.deviation_maps(np.full((2, 16, 16, 3), np.nan, np.float32)),
            ("NaN",), InputError),
      InRow("score:before fit or load",
            lambda c: AnoMemDetector(c.changed()).score(_U8), ("fit",), NotFittedError),
      InRow("fit:is_anomaly of wrong length", _fit(_U8, np.zeros(3, bool)),
            ("is_anomaly", "(4,)"), InputError),
      InRow("fit:anomalies in the oneclass setting", _fit(_U8, np.r_[True, False, False, False]),
            ("unbalanced",), InputError),
      InRow("fit:only anomalies", _fit(_U8, np.ones(4, bool), setting="unbalanced"),
            ("normal",), InputError),
      InRow("fit:one image", _fit(_U8[:1]), ("at least 2",), InputError),
      InRow("fit:one image without batch axis", _fit(np.zeros((16, 16, 3), np.uint8)),
            ("images[None]",), InputError),
      InRow("fit:NaN images", _fit(np.full((4, 16, 16, 3), np.nan, np.float32)), ("NaN",),
            InputError),
      InRow("fit:ragged list of arrays", _fit(ragged), ("shape",), InputError),
      InRow("detector:loss.temperature=0",
            lambda c: AnoMemDetector(c.changed(**{"loss.temperature": 0.0})),
            ("loss.temperature",), ConfigError),
      InRow("load:a directory that is not a workdir",
            lambda c: AnoMemDetector.load(str(c.tmp)), ("config.json",)),
      InRow("load:a path that does not exist",
            lambda c: AnoMemDetector.load(str(c.tmp / "nowhere")), ("nowhere",)),
  ]


IN_ROWS = STALE_ROWS + _api_rows()


@pytest.fixture(scope="module")
def loaded_detector(finished_run, tmp_path_factory):
  _, src, _ = finished_run
  copy = tmp_path_factory.mktemp("loaded") / "w"
  shutil.copytree(src, copy)
  return AnoMemDetector.load(str(copy))


@pytest.mark.parametrize("row", IN_ROWS, ids=[r.id for r in IN_ROWS])
def test_in_process_row(row: InRow, finished_run, loaded_detector, tmp_path):
  config, src, _ = finished_run
  ctx = Ctx(config, src, loaded_detector, tmp_path)
  try:
    row.call(ctx)
  except Exception as e:  # pylint: disable=broad-except
    err = e
  else:
    pytest.fail(f"{row.id}: no error was raised")
  message = str(err)
  problems = []
  if not isinstance(err, row.exc):
    problems.append(f"raised {type(err).__module__}.{type(err).__name__}, not "
                    f"{row.exc.__name__}")
  if not isinstance(err, UserError):
    problems.append("not a mscm_jax.errors.UserError (the CLI would print a traceback)")
  if "\n" in message.strip() or not message.strip():
    problems.append("the message is not one line")
  missing = [s for s in row.expect if s not in message]
  if missing:
    problems.append(f"the message does not name {missing}")
  for w, before in ctx.watched.items():
    if before and workdir_digest(w) != before:
      problems.append(f"the refused call changed {w}")
    if not before and trusted_leftovers(w):
      problems.append(f"{w} holds {trusted_leftovers(w)}")
  assert not problems, f"{problems}\n{type(err).__name__}: {message}"


def test_row_count():
  n = len(CLI_ROWS) + 1 + len(IN_ROWS)  # + the stale-workdir CLI row
  print(f"{n} bad-input rows: {len(CLI_ROWS) + 1} command line, {len(IN_ROWS)} in-process")
  assert n >= 30


def test_load_trusts_intact_checkpoints_beside_a_garbled_checksum_file(finished_copy,
                                                                       loaded_detector):
  _, w, _ = finished_copy
  (w / "stage1" / "checksums.json").write_text("{not json")
  before = workdir_digest(w)
  images = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  det = AnoMemDetector.load(str(w))  # restored unverified, with a warning; nothing moved
  assert workdir_digest(w) == before
  np.testing.assert_array_equal(det.score(images), loaded_detector.score(images))


def test_an_interrupted_identity_write_is_not_a_stale_stage(finished_copy):
  """A kill (or a full disk) inside the first IDENTITY.json write of stage 2 leaves only
  IDENTITY.json.tmp: the rerun trains stage 2, and does not refuse it as unverifiable."""
  config, w, results = finished_copy
  shutil.rmtree(w / "stage2")
  (w / "results.json").unlink()  # the run never got that far
  (w / "stage2").mkdir()
  (w / "stage2" / "IDENTITY.json.tmp").write_text('{"stage": "sta')
  again = pipeline.run(config, str(w))
  assert checkpoints.finished_info(str(w / "stage2")) is not None
  assert again["stage2"]["steps"] == results["stage2"]["steps"]


@pytest.fixture
def small_disk(tmp_path):
  """A tmpfs the test can shrink and grow (`resize(bytes)`); skipped where it cannot mount
  one (not root, or no mount permission): test_checkpoints injects ENOSPC instead."""
  mnt = tmp_path / "disk"
  mnt.mkdir()
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                                          str(mnt)], capture_output=True).returncode != 0:
    pytest.skip("needs root and a tmpfs mount")

  def resize(size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

  yield mnt, resize
  subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_in_one_line_and_the_rerun_resumes(finished_run, small_disk):
  """Stage 1 finished, no room for stage 2's checkpoint: one error, nothing of stage 1
  lost, and once space is freed the same command finishes without training stage 1."""
  config, src, _ = finished_run
  mnt, resize = small_disk
  w = mnt / "w"
  shutil.copytree(src, w, ignore=shutil.ignore_patterns("stage2", "results.json", "*.npz",
                                                        "report"))
  used = sum(p.stat().st_size for p in w.rglob("*") if p.is_file())
  resize(max(used + 256 * 2**10, 1 * 2**20) // 4096 * 4096)  # less than a stage-2 save
  stage1_before = workdir_digest(w / "stage1")
  with pytest.raises(Exception) as err:  # DiskFullError from a save, or ENOSPC elsewhere
    pipeline.run(config, str(w))
  assert is_disk_full(err.value), repr(err.value)
  if isinstance(err.value, DiskFullError):
    assert "\n" not in str(err.value) and "out of disk space" in str(err.value)
  assert workdir_digest(w / "stage1") == stage1_before  # what was saved is intact
  resize(64 * 2**20)
  again = pipeline.run(config, str(w))
  assert again["resumed_from"]["stage1"] == again["stage1"]["steps"]  # loaded, not retrained
  assert checkpoints.finished_info(str(w / "stage2")) is not None


def test_a_finished_run_on_a_read_only_mount_shows_its_results(finished_run, small_disk,
                                                               tmp_path):
  config, src, results = finished_run
  mnt, _ = small_disk
  shutil.copytree(src, mnt / "w")
  shutil.copytree(src, mnt / "partial", ignore=shutil.ignore_patterns("results.json"))
  subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
  before = workdir_digest(mnt / "w")
  shown = pipeline.run(config, str(mnt / "w"))
  assert shown["test_scores"] == results["test_scores"] and workdir_digest(mnt / "w") == before
  with pytest.raises(WorkdirError, match="cannot be written"):  # nothing finished to show
    pipeline.run(config, str(mnt / "partial"))
  with pytest.raises(WorkdirError, match="read-only"):  # finished, but not this evaluation
    pipeline.run(config.copy_and_resolve_references(), str(mnt / "w"), split=None,
                 discard_stale=False, stage1_from=str(mnt / "partial"))
