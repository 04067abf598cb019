r"""Throughput of the stage-1 train step (views/s: two augmented views per image).

  python experiments/bench_stage1.py --preset=cpu --steps=20
  python experiments/bench_stage1.py --preset=full --batch_size=64 --steps=5   # ResNet-18
  python experiments/bench_stage1.py --preset=cpu --scales=res2,res3,res4        # memory cost

Random uint8 images stand in for the data (the step's cost does not depend on pixel
values). Prints compile time and steady-state views/s, and appends a JSON line to
experiments/results/bench_stage1.jsonl.
"""

import os
import platform
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

_PRESET = flags.DEFINE_string("preset", "cpu", "config preset: cpu, smoke or full")
_BATCH = flags.DEFINE_integer("batch_size", 0, "override train.batch_size (0: the preset's)")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps after the compile step")
_MODE = flags.DEFINE_string("mode", "", "override memory.mode")
_TRAIN = flags.DEFINE_string("train", "", "override memory.train (contrastive or codebook)")
_SCALES = flags.DEFINE_list("scales", None, "override memory.scales, e.g. res2,res3,res4")
_DTYPE = flags.DEFINE_string("dtype", "", "override model.dtype")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                               "bench_stage1.jsonl"), "JSONL to append to")


def main(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  c = config_lib.apply_preset(config_lib.base_config(), "" if _PRESET.value == "full"
                              else _PRESET.value)
  if _BATCH.value:
    c.train.batch_size = _BATCH.value
  if _MODE.value:
    c.memory.mode = _MODE.value
  if _TRAIN.value:
    c.memory.train = _TRAIN.value
  if _SCALES.value is not None:
    c.memory.scales = tuple(_SCALES.value)
  if _DTYPE.value:
    c.model.dtype = _DTYPE.value
  config_lib.validate(c)
  mesh = sharding.make_mesh(c.train.num_devices)
  n = 5000
  images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  compile_s, step_s = rows.stage1_members(c, [images], sharding.member_mesh(mesh),
                                          _STEPS.value)
  views = 2 * c.train.batch_size / step_s
  row = {
      "preset": _PRESET.value, "batch_size": c.train.batch_size,
      "widths": list(c.model.widths), "stage_sizes": list(c.model.stage_sizes),
      "memory_mode": c.memory.mode, "memory_train": c.memory.train,
      "memory_scales": list(c.memory.scales),
      "dtype": c.model.dtype, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "host": f"{platform.machine()} {os.cpu_count()} cpus", "compile_s": round(compile_s, 1),
      "step_s": round(step_s, 4), "views_per_s": round(views, 1),
  }
  rows.emit(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
