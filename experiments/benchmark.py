r"""The stage-1 step in JAX and in PyTorch, side by side, in one process run.

  pip install -e '.[bench]'    # PyTorch 2.13 (CPU build): benchmarks only
  python experiments/benchmark.py --preset cpu --out b.json
  python experiments/benchmark.py --preset resnet18 --out b18.json   # ResNet-18, batch 64

Rows (median of `--steps` timed steps after `--warmup`):
  stage `step`:    the update on augmented views (forward, losses, backward, optimiser),
                   JAX's `stage1.make_update` against `experiments/torch_step.py`'s mirror;
  stage `augment`: the two SimCLR views of a batch, in each framework.
JAX variants: `default` (the library as it runs), `xla_options` (the same with XLA:CPU's
default compiler options, YNNPACK on: `conv.compiler_options`), `xla_grads` (XLA's own
convolution gradients and default options: a plain Flax step). PyTorch variants: `default` (NCHW),
`channels_last`, `compile` (torch.compile, default layout), each where it runs.

FLOP per step: XLA's cost analysis of the JAX step with XLA's own convolution gradients
(the same network in both frameworks, so the torch rows use the same count; with the CPU
gradients the scan over batch chunks would be counted once, not per chunk). Peak: cores x
clock (from /proc/cpuinfo) x `--flop_per_cycle` per core (32 FP32 FLOP/cycle: two 256-bit
FMA pipes, the way AMD Zen 4 runs AVX-512; bfloat16 rows use twice that, AVX512_BF16's
dot-product rate).

Nothing else should run on the machine meanwhile: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

PRESETS = {
  # name: (config preset, batch size or None for the preset's own)
  "cpu": ("cpu", 256),  # 512 views a step, as the preset's (64 images x 4 rotations x 2)
  "resnet18": ("", 64),
  "smoke": ("smoke", None),  # seconds: the tests' check of this script
}


def build_config(preset: str, batch: int | None, dtype: str):
  from mscm_jax import config as config_lib

  name, default_batch = PRESETS[preset]
  c = config_lib.apply_preset(config_lib.base_config(), name)
  # The network's step on 2 x batch views: the rotations change which views are drawn
  # (and add a 4-way linear head), which the PyTorch mirror leaves out.
  c.shift.rotations, c.loss.rotation_weight = 1, 0.0
  c.train.batch_size = batch or default_batch or c.train.batch_size
  c.model.dtype = dtype
  return config_lib.validate(c)


def machine(flop_per_cycle: int) -> dict[str, Any]:
  mhz, flags = 0.0, ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz") and not mhz:
          mhz = float(line.split(":")[1])
        elif line.startswith("flags") and not flags:
          flags = line
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  peak = cores * mhz * 1e6 * flop_per_cycle
  return {"host": f"{platform.machine()} {platform.processor() or ''}".strip(), "cores": cores,
          "mhz": mhz, "bf16": "avx512_bf16" in flags, "flop_per_cycle": flop_per_cycle,
          "peak_gflops_float32": round(peak / 1e9, 1),
          "peak_gflops_bfloat16": round(2 * peak / 1e9, 1)}


def median_time(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, float]:
  """(median seconds of `steps` timed calls, seconds of the first call) after `warmup`."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  for _ in range(max(0, warmup - 1)):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


# ------------------------------------------------------------------------------ JAX


def jax_rows(config, args) -> tuple[list[dict[str, Any]], float]:
  """The JAX rows of one configuration, and its FLOP per step."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mscm_jax import stage1
  from mscm_jax.runtime import sharding
  from mscm_jax.data import augment
  from mscm_jax.frozen import build_model
  from mscm_jax.models import conv

  b = config.train.batch_size
  mesh = sharding.make_mesh(1)
  model = build_model(config)
  schedule = stage1.learning_rate_schedule(config, 1000, 10)
  tx = stage1.build_optimizer(config, schedule)
  init = stage1.make_init_fn(model, tx, (32, 32, 3), mesh)
  rng = np.random.default_rng(0)
  views = jnp.asarray(rng.random((2 * b, 32, 32, 3), np.float32))
  images = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), np.uint8))
  flags = jnp.zeros((b,), bool)
  update = stage1.make_update(config, model, tx, schedule)

  # A fresh function object per jit: jit's trace cache ignores `conv.cpu_grads`.
  with conv.cpu_grads(False):
    cost = jax.jit(lambda *a: update(*a)).lower(init(jax.random.PRNGKey(0)), views, flags).compile()
    flops = float((cost.cost_analysis() or {}).get("flops", 0.0))

  rows = []
  for variant in args.jax_variants:
    options = conv.compiler_options() if variant == "default" else None
    with conv.cpu_grads(False if variant == "xla_grads" else None):
      step = jax.jit(lambda *a: update(*a), donate_argnums=(0,), compiler_options=options)
      holder = [init(jax.random.PRNGKey(0))]

      def run():
        holder[0], logged = step(holder[0], views, flags)
        jax.block_until_ready(logged)

      seconds, first = median_time(run, args.steps, args.warmup)
    rows.append(dict(framework="jax", variant=variant, stage="step", seconds=seconds,
                     compile_s=first, flops=flops))
  params = augment.AugmentParams.from_config(config.augment)
  aug = jax.jit(lambda key, x: augment.two_views(key, x, params),
                compiler_options=conv.compiler_options())
  seconds, first = median_time(lambda: jax.block_until_ready(aug(jax.random.PRNGKey(1), images)),
                               args.steps, args.warmup)
  rows.append(dict(framework="jax", variant="default", stage="augment", seconds=seconds,
                   compile_s=first, flops=None))
  return rows, flops


# -------------------------------------------------------------------------- PyTorch


def torch_rows(config, args, flops: float) -> list[dict[str, Any]]:
  try:
    import torch
  except ImportError:
    print("PyTorch is not installed (pip install -e '.[bench]'): JAX rows only", file=sys.stderr)
    return []
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_step

  from mscm_jax.data import augment

  torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
  dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
  b = config.train.batch_size
  rows = []
  for variant in args.torch_variants:
    torch.manual_seed(0)
    model = torch_step.AnoMem(config)
    x = torch.rand(2 * b, 3, 32, 32)
    if variant == "channels_last":
      model = model.to(memory_format=torch.channels_last)
      x = x.contiguous(memory_format=torch.channels_last)
    step = torch_step.make_step(model, torch_step.optimizer(model, config), config, dtype)
    if variant == "compile":
      step = torch.compile(step)
    try:
      seconds, first = median_time(lambda: step(x), args.steps, args.warmup)
    except Exception as e:  # pylint: disable=broad-except
      # A variant that does not run on this CPU is reported, not fatal.
      print(f"torch {variant} {config.model.dtype}: does not run here ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]})", file=sys.stderr)
      continue
    rows.append(dict(framework="torch", variant=variant, stage="step", seconds=seconds,
                     compile_s=first, flops=flops))
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8)
  params = augment.AugmentParams.from_config(config.augment)
  seconds, first = median_time(lambda: torch_step.two_views(images, gen, params),
                               args.steps, args.warmup)
  rows.append(dict(framework="torch", variant="default", stage="augment", seconds=seconds,
                   compile_s=first, flops=None))
  return rows


# ---------------------------------------------------------------------------- table


def finish(rows: list[dict[str, Any]], preset: str, config, info: dict[str, Any]) -> None:
  """Adds the derived fields, and each JAX row's ratio to the fastest PyTorch variant."""
  dtype, b = config.model.dtype, config.train.batch_size
  peak = info[f"peak_gflops_{dtype}"] * 1e9
  for r in rows:
    r.update(preset=preset, dtype=dtype, batch=b, views=2 * b,
             ms_per_step=round(1000 * r["seconds"], 1),
             views_per_s=round(2 * b / r["seconds"], 1))
    if r["flops"]:
      achieved = r["flops"] / r["seconds"]
      r["gflops_per_s"] = round(achieved / 1e9, 1)
      r["fraction_of_peak"] = round(achieved / peak, 3) if peak else None
    r["compile_s"] = round(r["compile_s"], 1)
  for r in rows:
    if r["framework"] != "jax":
      continue
    torch_same = [t for t in rows if t["framework"] == "torch" and t["stage"] == r["stage"]]
    if torch_same:
      best = max(torch_same, key=lambda t: t["views_per_s"])
      r["ratio_vs_torch"] = round(r["views_per_s"] / best["views_per_s"], 3)
      r["fastest_torch_variant"] = best["variant"]
      default = [t for t in torch_same if t["variant"] == "default"]
      if default:
        r["ratio_vs_torch_default"] = round(r["views_per_s"] / default[0]["views_per_s"], 3)


def print_table(rows: list[dict[str, Any]]) -> None:
  cols = ["framework", "variant", "stage", "preset", "dtype", "batch", "ms_per_step",
          "views_per_s", "gflops_per_s", "fraction_of_peak", "ratio_vs_torch",
          "ratio_vs_torch_default"]
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in cols) + " |")


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  p.add_argument("--batch", type=int, default=0, help="images per step (0: the preset's)")
  p.add_argument("--dtypes", default="float32,bfloat16",
                 help="comma-separated; bfloat16 only where the CPU has AVX512_BF16")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--jax_variants", default="default,xla_options,xla_grads")
  p.add_argument("--torch_variants", default="default,channels_last,compile")
  p.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: every core)")
  p.add_argument("--flop_per_cycle", type=int, default=32, help="FP32 FLOP per cycle per core")
  p.add_argument("--out", default="", help="JSON file to write")
  args = p.parse_args(argv)
  args.jax_variants = [v for v in args.jax_variants.split(",") if v]
  args.torch_variants = [v for v in args.torch_variants.split(",") if v]
  bad = set(args.jax_variants) - {"default", "xla_options", "xla_grads"}
  bad |= set(args.torch_variants) - {"default", "channels_last", "compile"}
  if bad:
    p.error(f"unknown variants {sorted(bad)}")
  info = machine(args.flop_per_cycle)
  dtypes = [d for d in args.dtypes.split(",") if d]
  if "bfloat16" in dtypes and not info["bf16"]:
    print("this CPU has no AVX512_BF16: bfloat16 rows skipped", file=sys.stderr)
    dtypes.remove("bfloat16")
  rows = []
  for dtype in dtypes:
    config = build_config(args.preset, args.batch, dtype)
    print(f"timing {args.preset} {dtype} batch {config.train.batch_size} ...", file=sys.stderr)
    part, flops = jax_rows(config, args)
    part += torch_rows(config, args, flops)
    finish(part, args.preset, config, info)
    rows += part
  for r in rows:
    r.pop("seconds")
  print_table(rows)
  import jax
  import jaxlib

  result = {"machine": info, "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__},
            "command": " ".join(["python", "experiments/benchmark.py"] + (argv or sys.argv[1:])),
            "rows": rows}
  try:
    import torch
    result["versions"]["torch"] = torch.__version__
  except ImportError:
    pass
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
