"""Shared fixtures. Eight emulated CPU devices, so that sharding is tested for real.

XLA reads its flags when JAX first initialises its backend, so they are set here, before
any test module imports jax. Tests also ask XLA for cheap compilation: on 2 cores compile
time, not run time, is what a test of a tiny model spends (about half of it is saved),
and they share one compilation cache.

Tests run on the default backend. Those marked `cpu_devices` need the eight emulated CPU
devices: where the default backend is something else (a GPU or TPU host), they are skipped
here and `test_on_cpu_devices.py` runs them in one pytest process on the CPU platform.
"""

import atexit
import fcntl
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = _flags.strip()

# One XLA compilation cache for the whole pytest run, shared by the test processes and by
# every `python -m mscm_jax.main` a test starts (they inherit the environment): otherwise
# each subprocess compiles the same smoke programs again from nothing (measured: a smoke
# run 46 s cold, 11 s warm). Made fresh for each run and removed after it, so nothing
# carries between runs; a JAX_COMPILATION_CACHE_DIR the caller set is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mscm_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def cpu_devices_env(n: int = 8) -> dict[str, str]:
  """Environment overrides for a subprocess on the CPU platform with `n` emulated devices
  (this process's other XLA flags kept)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  return {"JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}


def on_eight_cpu_devices() -> bool:
  """Whether this process's default backend is the eight emulated CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.default_backend() == "cpu" and jax.device_count() == 8


def pytest_configure(config) -> None:
  config.addinivalue_line("markers", "cpu_devices: needs the eight emulated CPU devices")


def pytest_collection_modifyitems(config, items) -> None:
  marked = [item for item in items if "cpu_devices" in item.keywords]
  if marked and not on_eight_cpu_devices():
    skip = pytest.mark.skip(reason="needs the eight emulated CPU devices: "
                                   "test_on_cpu_devices.py runs it on the CPU platform")
    for item in marked:
      item.add_marker(skip)


def load_experiment(name: str):
  """experiments/<name>.py as a module (the folder is scripts, not a package); registered
  in sys.modules, which its dataclasses need."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def once_per_run(tmp_path_factory, worker_id: str, name: str,
                 make: Callable[[pathlib.Path], Any]) -> Any:
  """`make(folder)` (JSON in, JSON out) once per pytest run, shared by the xdist workers:
  the first to ask makes it in a folder beside theirs, the others wait for it and read
  it. For what tests only read afterwards."""
  if worker_id == "master":  # no xdist: the base temp's parent holds other runs too
    return make(tmp_path_factory.mktemp(name))
  shared = tmp_path_factory.getbasetemp().parent / name  # this run's, beside popen-gw*
  with open(f"{shared}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = shared / "made.json"
    if not done.exists():
      shared.mkdir(exist_ok=True)
      value = make(shared)
      done.write_text(json.dumps(value))
    return json.loads(done.read_text())


def write_folder_tree(root, counts: dict[str, dict[str, int]], size: int = 16,
                      seed: int = 0) -> None:
  """root/<split>/<class>/<i>.png with class-coloured noise images (class k: channel k%3)."""
  rng = np.random.default_rng(seed)
  for split, per_class in counts.items():
    for k, (name, n) in enumerate(sorted(per_class.items())):
      d = root / split / name
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        im = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        im[..., k % 3] += 150
        Image.fromarray(im).save(d / f"{i:03d}.png")


@pytest.fixture
def folder_tree(tmp_path):
  """A small three-class tree: train 6/5/4 images, test 3/3/2 (16x16 PNGs)."""
  counts = {"train": {"apple": 6, "berry": 5, "cherry": 4},
            "test": {"apple": 3, "berry": 3, "cherry": 2}}
  write_folder_tree(tmp_path / "tree", counts)
  return tmp_path / "tree"


def smoke_config(data_dir, **overrides):
  """The `smoke` preset on a folder tree, with dotted-name overrides."""
  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  c.dataset.name = "folder"
  c.dataset.data_dir = str(data_dir)
  c.dataset.image_size = 16
  c.memory.scales = ("res3", "pooled")
  config_lib.set_fields(c, overrides)
  return c


def untrained_stage1(config, split, mesh, seed: int = 0):
  """A `stage1.Stage1Result` at the network's initialisation: stage 2's tests need no
  trained stage 1."""
  import jax  # pylint: disable=g-import-not-at-top

  from mscm_jax import stage1  # pylint: disable=g-import-not-at-top

  parts = stage1.components(config, split.n_train, split.train_images.shape[1:], mesh)
  return stage1.Stage1Result(parts.init_fn(jax.random.PRNGKey(seed)), parts.model, 0, None,
                             None, 0.0)


def workdir_digest(root) -> dict[str, tuple[str, int]]:
  """{relative path: (sha256, mtime_ns)} of every file under root but the lock, which says
  who holds the workdir now, not what it holds: equal digests mean nothing was written."""
  from mscm_jax.runtime.workdir import LOCK_FILE  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(root)
  return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def _finished_config(root):
  return smoke_config(root / "tree", **{"dataset.normal_class": "c0", "train.epochs": 2,
                                        "stage2.epochs": 4})


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, worker_id):
  """(config, workdir, results) of one whole smoke run (both stages, evaluation) on two
  synthetic classes, made once per pytest run and shared by the xdist workers.

  Normal: class 'c0' (noise with a bright red channel); anomalies: 'c1' (bright green).
  Tests only read the workdir (copy it to run in it): a worker that finds it changed at the
  end fails, since another worker may have read it meanwhile.
  """

  def make(root: pathlib.Path) -> dict[str, Any]:
    from mscm_jax import pipeline  # pylint: disable=g-import-not-at-top

    write_folder_tree(root / "tree", {"train": {"c0": 53, "c1": 16},
                                      "test": {"c0": 16, "c1": 16}})
    results = pipeline.run(_finished_config(root), str(root / "w"))
    return {"root": str(root), "results": results, "digest": workdir_digest(root / "w")}

  made = once_per_run(tmp_path_factory, worker_id, "finished_run", make)
  root = pathlib.Path(made["root"])
  yield _finished_config(root), root / "w", made["results"]
  assert workdir_digest(root / "w") == {k: tuple(v) for k, v in made["digest"].items()}, (
      "a test wrote into finished_run's workdir: copy it first")


@pytest.fixture
def finished_copy(finished_run, tmp_path):
  """`finished_run` with its workdir copied to tmp_path/w, for a test that runs in it, and
  its config a copy to change."""
  config, workdir, results = finished_run
  shutil.copytree(workdir, tmp_path / "w")
  return config.copy_and_resolve_references(), tmp_path / "w", results
