r"""What a stage-1 training step costs, from XLA's own analysis: no step is run.

  python experiments/step_cost.py --preset=full --dtypes=float32,bfloat16 --stacked=1,10

For the preset's stage-1 step (and the step of K classes stacked as one program,
`stack.classes`), on abstract inputs of the preset's batch:
  flops         XLA's HLO cost analysis of the lowered program (multiply-adds count 2);
  memory        the buffers of the program compiled for this machine's backend
                (arguments + outputs + temporaries - donated aliases): the peak device
                memory of one step. Buffer assignment differs between backends, so on
                a CPU this estimates a GPU's; a device run measures it.
  estimate      the time of one class's whole schedule (preset epochs over 5,000 images)
                and of 10 classes, on one H100 at --mfu of its dense peak (989 TFLOP/s
                bfloat16; 494 TFLOP/s float32, which XLA runs as TF32): an estimate,
                labelled so, until experiments/device_check.py measures it.
One JSON line per (dtype, K) goes to --jsonl.
"""

import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

_PRESET = flags.DEFINE_string("preset", "full", "config preset: full (the paper's), cpu, smoke")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "model.dtype values")
_STACKED = flags.DEFINE_list("stacked", ["1", "10"], "classes per program (1 = a plain run)")
_N_TRAIN = flags.DEFINE_integer("n_train", 5000, "training images per class (CIFAR-10: 5,000)")
_MFU = flags.DEFINE_float("mfu", 0.3, "assumed model FLOP utilisation of the estimate")
_OUT = flags.DEFINE_string("jsonl", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "step_cost.jsonl"), "JSONL file")

H100_PEAK = {"bfloat16": 989e12, "float32": 494e12}  # dense tensor-core FLOP/s (SXM)


def config_for(preset: str, dtype: str):
  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.apply_preset(config_lib.base_config(), "" if preset == "full" else preset)
  c.model.dtype = dtype
  return config_lib.validate(c)


def step_cost(c, k: int, n_train: int) -> dict:
  """FLOP and buffer bytes of one step of `c` for K = `k` stacked classes (abstract)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mscm_jax import stage1  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  size = c.dataset.image_size
  mesh = sharding.make_model_mesh(1, 1)
  parts = stage1.components(c, n_train, (size, size, 3), mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((k,) + x.shape, x.dtype),
                       jax.eval_shape(parts.init_fn, jax.random.PRNGKey(0)))
  images = jax.ShapeDtypeStruct((k, n_train, size, size, 3), jnp.uint8)
  flags_ = jax.ShapeDtypeStruct((k, n_train), jnp.bool_)
  t = time.time()
  lowered = parts.step_fn.lower(state, images, flags_)
  flops = float(lowered.cost_analysis()["flops"])
  compiled = lowered.compile()
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  total, _ = stage1.num_steps(c, n_train)
  return {"flops_per_step": flops, "peak_bytes": int(peak),
          "argument_bytes": int(m.argument_size_in_bytes),
          "temp_bytes": int(m.temp_size_in_bytes), "steps": total,
          "views_per_step": stage1.views_per_step(c) * k,
          "compile_seconds": round(time.time() - t, 1)}


def main(_):
  import jax  # pylint: disable=g-import-not-at-top

  for dtype in _DTYPES.value:
    for k in map(int, _STACKED.value):
      c = config_for(_PRESET.value, dtype)
      cost = step_cost(c, k, _N_TRAIN.value)
      seconds = cost["flops_per_step"] * cost["steps"] / (H100_PEAK[dtype] * _MFU.value)
      rows.emit({"bench": "step_cost", "preset": _PRESET.value, "dtype": dtype,
                 "classes": k, "batch": c.train.batch_size, "epochs": c.train.epochs,
                 **cost, "tflop_per_step": round(cost["flops_per_step"] / 1e12, 3),
                 "peak_gib": round(cost["peak_bytes"] / 2**30, 2),
                 "estimate_h100_hours": round(seconds / 3600, 2),
                 "estimate_assumes": f"H100 {H100_PEAK[dtype] / 1e12:.0f} TFLOP/s x MFU "
                                     f"{_MFU.value}: not measured",
                 "backend": jax.default_backend(), "machine": platform.machine()},
                _OUT.value)


if __name__ == "__main__":
  app.run(main)
