r"""The prepared device check: what a first GPU or TPU run must show, in one call.

  python experiments/device_check.py --out_dir=$OUT           # on the device (< 8 minutes)
  python experiments/device_check.py --tiny --out_dir=/tmp/dc  # CPU mode, smoke sizes
                                    # (aliases: --cpu --out=/tmp/dc)

On a device without network, carry the wheels: `../shared/device/wheels.sh jax[cuda12]==V
...` (see experiments/README.md), then `pip install` them there first.

Parts, each one JSON file under --out_dir and one row of the printed table; a part that fails
is recorded with its error and the others still run:
  smoke_float32, smoke_bfloat16   the `:smoke` pipeline end to end on generated class
                  folders (both stages, evaluation): seconds and test AUROCs;
  stage1          the preset's stage-1 step (the paper's, or `:smoke` with --tiny) at its
                  batch: compile seconds, ms per step, views/s, and model FLOP
                  utilisation from XLA's FLOP count against the device's dense peak;
                  then the same for --classes stacked as one program;
  stage2          the stage-2 detectors' step on real detector inputs of random images:
                  ms per step and maps/s.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py and step_cost.py, beside this script)
import step_cost  # noqa: E402

_OUT = flags.DEFINE_string("out_dir", None, "directory for the JSON results", required=True)
_TINY = flags.DEFINE_bool("tiny", False, "smoke sizes everywhere: the CPU mode")
flags.DEFINE_alias("cpu", "tiny")
flags.DEFINE_alias("out", "out_dir")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "model.dtype of the step timings")
_CLASSES = flags.DEFINE_integer("classes", 10, "classes stacked in the stacked step")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps after the first (compiling) one")
_PARTS = flags.DEFINE_list("parts", ["smoke_float32", "smoke_bfloat16", "stage1", "stage2"],
                           "which parts to run, in this order")

# Dense peak FLOP/s by device kind (substring of jax's device_kind) and dtype.
PEAKS = {"H100": {"bfloat16": 989e12, "float32": 494e12},
         "H200": {"bfloat16": 989e12, "float32": 494e12},
         "A100": {"bfloat16": 312e12, "float32": 156e12},
         "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
         "TPU v5": {"bfloat16": 197e12, "float32": 197e12}}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  for kind, peaks in PEAKS.items():
    if kind in device_kind:
      return peaks[dtype]
  return None


def smoke(out: str, dtype: str) -> dict:
  """The `:smoke` pipeline end to end on generated folders: two classes of coloured noise.
  Its data and workdir are temporary (a device returns all of `out`); its results.json is
  kept as `out/smoke_<dtype>_results.json`."""
  with tempfile.TemporaryDirectory(prefix="device_check_") as root:
    return _smoke(root, out, dtype)


def _smoke(root: str, out: str, dtype: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from mscm_jax import config as config_lib, pipeline  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for split, n in (("train", 24), ("test", 8)):
    for k, name in enumerate(("a", "b")):
      os.makedirs(os.path.join(root, "data", split, name))
      for i in range(n):
        im = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
        im[..., k] += 150
        Image.fromarray(im).save(os.path.join(root, "data", split, name, f"{i}.png"))
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  c.dataset.name, c.dataset.data_dir = "folder", os.path.join(root, "data")
  c.dataset.image_size, c.dataset.normal_class = 16, "a"
  c.model.dtype, c.evaluate.report = dtype, False
  t = time.time()
  results = pipeline.run(config_lib.validate(c), os.path.join(root, "work"))
  shutil.copy(os.path.join(root, "work", "results.json"),
              os.path.join(out, f"smoke_{dtype}_results.json"))
  test = results["test_scores"]
  return {"seconds": round(time.time() - t, 1), "stage1_steps": results["stage1"]["steps"],
          **{f"auroc_{k}": round(test[k]["auroc"], 4) for k in ("mscm", "knn", "pixel_knn")}}


def stage1_step(config, classes: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import stage1  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  size, n = config.dataset.image_size, 2 * config.train.batch_size
  images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  mesh = sharding.make_model_mesh(1, 1)
  first, per = rows.stage1_members(config, [images], mesh, steps)
  s_first, s_per = rows.stage1_members(config, [images] * classes, mesh, steps)
  views = stage1.views_per_step(config)
  flops = step_cost.step_cost(config, 1, n)["flops_per_step"]
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, config.model.dtype)
  return {"device_kind": kind, "batch": config.train.batch_size, "dtype": config.model.dtype,
          "tflop_per_step": round(flops / 1e12, 4), "compile_s": round(first, 1),
          "ms_per_step": round(1e3 * per, 2), "views_per_s": round(views / per, 1),
          "mfu": None if peak is None else round(flops / per / peak, 4),
          "stacked_classes": classes, "stacked_compile_s": round(s_first, 1),
          "stacked_ms_per_step": round(1e3 * s_per, 2),
          "stacked_views_per_s": round(classes * views / s_per, 1),
          "stacked_mfu": None if peak is None else round(classes * flops / s_per / peak, 4)}


def stage2_step(config, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import frozen, stage1, stage2  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  from mscm_jax.data import device  # pylint: disable=g-import-not-at-top

  size, n = config.dataset.image_size, 4 * config.stage2.batch_size
  images = np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  mesh = sharding.make_model_mesh(1, 1)
  parts = stage1.components(config, n, (size, size, 3), mesh)
  s1 = parts.init_fn(jax.random.PRNGKey(0))
  inputs = frozen.read(frozen.frozen_model(config), s1, images, tuple(config.memory.scales),
                       kind=config.stage2.inputs, inputs=stage2.detectors(config),
                       batch_size=config.frozen.batch_size)["inputs"]
  detector = stage2.build_detector(config)
  total, _ = stage2.num_steps(config, n)
  tx, schedule = stage2.build_optimizer(config, total)
  maps = {s: device.stack_rows([m], mesh) for s, m in inputs.items()}
  first, per = rows.timed_step(stage2.make_train_step(config, detector, tx, schedule, n, mesh),
                               stage2.init_members([config], detector, tx, [inputs], mesh),
                               (maps, device.stack_rows([np.zeros(n, bool)], mesh)), steps)
  return {"detectors": len(inputs), "batch": config.stage2.batch_size,
          "compile_s": round(first, 1), "ms_per_step": round(1e3 * per, 2),
          "maps_per_s": round(config.stage2.batch_size / per, 1)}


def run_parts(out: str, tiny: bool, dtype: str, classes: int, steps: int,
              only: tuple[str, ...] = ()) -> dict:
  """Every part (or those in `only`), each written to out/<part>.json as it finishes;
  {part: record}."""
  os.makedirs(out, exist_ok=True)
  preset = "smoke" if tiny else "full"
  parts = {"smoke_float32": lambda: smoke(out, "float32"),
           "smoke_bfloat16": lambda: smoke(out, "bfloat16"),
           "stage1": lambda: stage1_step(step_cost.config_for(preset, dtype), classes, steps),
           "stage2": lambda: stage2_step(step_cost.config_for(preset, dtype), steps)}
  records = {}
  for name, part in parts.items():
    if only and name not in only:
      continue
    t = time.time()
    try:
      record = {"ok": True, **part()}
    except Exception as e:  # pylint: disable=broad-except
      record = {"ok": False, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:]}
    record["part_seconds"] = round(time.time() - t, 1)
    records[name] = record
    with open(os.path.join(out, f"{name}.json"), "w") as f:
      json.dump(record, f, indent=2)
    print(f"{name:<16} " + ("ok " if record["ok"] else "FAILED ") + json.dumps(
        {k: v for k, v in record.items() if k not in ("ok", "traceback")}), flush=True)
  return records


def main(_):
  import jax  # pylint: disable=g-import-not-at-top

  print(f"devices: {jax.devices()}", flush=True)
  records = run_parts(_OUT.value, _TINY.value, _DTYPE.value, _CLASSES.value, _STEPS.value,
                      tuple(_PARTS.value))
  sys.exit(0 if all(r["ok"] for r in records.values()) else 1)


if __name__ == "__main__":
  app.run(main)
