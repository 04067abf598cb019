r"""K classes' stage 1 as one program (`stage1.train_stacked`) against K separate runs.

  python experiments/bench_stacked.py --preset=cpu --classes=3 --steps=10

Times, in one process: the compile and the steady-state step of one model's step
(`stage1.make_train_step`, what each of K separate runs compiles and runs), and of the
stacked step over K models (`stage1.make_stacked_train_step`, vmapped over a `model`
mesh axis). K separate runs pay K compiles (one per process) and K steps per step; the
stacked run pays one compile and one (K-wide) step. Random uint8 images stand in for
the data (the step's cost does not depend on pixel values). Appends a JSON line to
experiments/results/bench_stacked.jsonl.
"""

import json
import os
import platform
import time

from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "cpu", "config preset: cpu, smoke or full")
_K = flags.DEFINE_integer("classes", 3, "models trained at once")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps after the compile step")
_MODEL_AXIS = flags.DEFINE_integer("model_axis", 0, "model mesh axis (0: the largest "
                                   "divisor of the device count that is <= classes)")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                               "bench_stacked.jsonl"), "JSONL to append to")


def _time(step, state, images, flags_, steps):
  import jax  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  state, logged = step(state, images, flags_)
  jax.block_until_ready(logged)
  compile_s = time.time() - t0
  t0 = time.time()
  for _ in range(steps):
    state, logged = step(state, images, flags_)
  jax.block_until_ready(logged)
  return compile_s, (time.time() - t0) / steps


def main(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mscm_jax import sharding, stage1  # pylint: disable=g-import-not-at-top
  from mscm_jax.data import device  # pylint: disable=g-import-not-at-top

  c = config_lib.validate(config_lib.apply_preset(
      config_lib.base_config(), "" if _PRESET.value == "full" else _PRESET.value))
  k, n = _K.value, 5000
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for _ in range(k)]
  flags_ = [np.zeros(n, bool)] * k

  mesh = sharding.make_mesh(c.train.num_devices)
  parts = stage1.components(c, n, (32, 32, 3), mesh)
  data = device.put_on_device(images[0], flags_[0], mesh)
  one_compile, one_step = _time(parts.step_fn, parts.init_fn(jax.random.PRNGKey(0)),
                                data.images, data.is_anomaly, _STEPS.value)
  del data

  axis = _MODEL_AXIS.value or sharding.default_model_axis(mesh.devices.size, k)
  model_mesh = sharding.make_model_mesh(axis, c.train.num_devices)
  members = stage1.Stacked([f"m{i}" for i in range(k)], model_mesh)
  stacked = device.put_stacked(members.pad(images), members.pad(flags_), model_mesh)
  sparts = stage1.components(c, n, (32, 32, 3), model_mesh)
  state = members.join([sparts.init_fn(jax.random.PRNGKey(i)) for i in range(k)])
  step = stage1.make_stacked_train_step(c, sparts.model, sparts.tx, sparts.schedule, n,
                                        model_mesh)
  k_compile, k_step = _time(step, state, stacked.images, stacked.is_anomaly, _STEPS.value)
  row = {
      "preset": _PRESET.value, "classes": k, "batch_size": c.train.batch_size,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "mesh": dict(model_mesh.shape), "host": f"{platform.machine()} {os.cpu_count()} cpus",
      "separate_compile_s": round(k * one_compile, 1), "stacked_compile_s": round(k_compile, 1),
      "separate_step_s": round(k * one_step, 4), "stacked_step_s": round(k_step, 4),
      "compile_ratio": round(k_compile / (k * one_compile), 3),
      "step_ratio": round(k_step / (k * one_step), 3), "steps": _STEPS.value,
  }
  print(json.dumps(row))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "a") as f:
    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
