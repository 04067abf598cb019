r"""Stage-2 detector inputs and settings, measured on frozen stage-1 checkpoints.

The issue-4 ablation (ablation.py) trains stage 2 through the pipeline, one workdir per
variant; that is faithful but pays for the frozen pass every time. Once the stage-1
knobs were settled, the open question was the detector alone (on airplane, the 1 - cos
maps' detector ranked the classes backwards), so this script reads each finished stage-1
run once -- features f and read-outs r at every memory scale, for the normal training
images and the validation split's images, cached as .npz -- and then trains detector
variants on the cache with the library's own stage-2 functions (holdout, centre, jitted
step, spread, combine). Every AUROC is the validation split's (docs/method.md section 4).
One JSON line per (run, variant) goes to CACHE/detector_sweep.jsonl.

  # 1. cache every finished run (NAME=WORKDIR; about 30 s each)
  TFDS_DATA_DIR=../shared/tfds python experiments/detector_sweep.py cache \
      --cache=/work/sweep c0_s0=/work/final/c0 c3_s1=/work/ablation/codebook_c3_s1
  # 2. train detector variants on every cached run (10-60 s per run and variant)
  python experiments/detector_sweep.py train --cache=/work/sweep --variants=cosine,difference
  # 3. the table
  python experiments/detector_sweep.py table --cache=/work/sweep
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import evaluate, frozen, knn, metrics, pipeline, stage1, stage2
from mscm_jax.runtime import sharding
from mscm_jax.models.detector import deviation_input

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

ALL = ("res3", "res4", "pooled")
SPATIAL = ("res3", "res4")


def _inputs(kind: str, scales=ALL) -> dict[str, tuple[str, str]]:
  return stage2.detector_inputs(scales, kind)


# name: ({detector: (scale, input kind)}, stage-2 overrides, detector seed offset).
VARIANTS = {
    "cosine": (_inputs("cosine_distance"), {}, 0),  # the preset before this sweep
    "cosine_seed1": (_inputs("cosine_distance"), {}, 1),  # detector-only noise
    "cosine_ep10": (_inputs("cosine_distance"), {"epochs": 10}, 0),
    "cosine_ep100": (_inputs("cosine_distance"), {"epochs": 100}, 0),
    "cosine_lr1e-4": (_inputs("cosine_distance"), {"learning_rate": 1e-4}, 0),
    "cosine_wide": (_inputs("cosine_distance"), {"out_dim": 128, "widths": (32, 64)}, 0),
    "euclidean": (_inputs("squared_distance"), {}, 0),
    "difference": (_inputs("difference"), {}, 0),
    "difference_seed1": (_inputs("difference"), {}, 1),
    "difference_ep10": (_inputs("difference"), {"epochs": 10}, 0),
    "similarity": (_inputs("cosine_similarity"), {}, 0),  # cos itself: typical inputs are not ~0
    "cosine+difference": (_inputs("cosine_distance+difference"), {}, 0),  # two detectors per scale
    "similarity+difference": (_inputs("cosine_similarity+difference"), {}, 0),
    "similarity+difference_seed1": (_inputs("cosine_similarity+difference"), {}, 1),
}


# ----------------------------------------------------------------------------- cache


def cache_run(name: str, workdir: str, cache: str) -> None:
  path = os.path.join(cache, f"{name}.npz")
  if os.path.exists(path):
    return
  c = config_lib.load_json(os.path.join(workdir, "config.json"))
  c.stop_after = ""
  mesh = sharding.make_mesh(c.train.num_devices)
  split = pipeline.load_split(c)
  s1, _ = stage1.load_finished(c, workdir, mesh)
  model = frozen.frozen_model(c)

  def select(out):  # float16 halves the cache; maps are recomputed in float32
    d = {"embedding": out["embedding"]}
    for s in c.memory.scales:
      d[f"f_{s}"] = out["features"][s].astype(jnp.float16)
      d[f"r_{s}"] = out["readout"][s].astype(jnp.float16)
    return d

  if not split.has_validation:
    raise SystemExit(f"{workdir}: its data has no validation split")
  normal = ~split.train_is_anomaly
  arrays = {}
  for part, images in (("train", split.train_images[normal]), ("val", split.val_images)):
    out = frozen.outputs(model, s1.state, images, select, c.frozen.batch_size)
    arrays.update({f"{part}_{k}": np.asarray(v) for k, v in out.items()})
  labels = split.val_is_anomaly.astype(np.int8)
  pixel = knn.knn_scores(split.train_images[normal], split.val_images,
                         k=c.evaluate.knn_k, center=True)
  embed = knn.knn_scores(arrays["train_embedding"], arrays["val_embedding"],
                         k=c.evaluate.knn_k)
  np.savez(path, labels=labels, workdir=workdir, **arrays,
           auroc_pixel_knn=metrics.auroc(pixel, labels), auroc_knn=metrics.auroc(embed, labels))
  print(f"cached {name} from {workdir}", flush=True)


# ----------------------------------------------------------------------------- train


def _input(z, part: str, scale: str, kind: str) -> np.ndarray:
  f = jnp.asarray(z[f"{part}_f_{scale}"], jnp.float32)
  r = jnp.asarray(z[f"{part}_r_{scale}"], jnp.float32)
  return np.asarray(deviation_input(f, r, kind))


def train_variant(name: str, cache: str, variant: str) -> dict:
  inputs, overrides, seed_offset = VARIANTS[variant]
  z = np.load(os.path.join(cache, f"{name}.npz"))
  if "val_embedding" not in z:
    raise SystemExit(f"{name}.npz caches the test split (made before the validation split): "
                     "delete it and cache again")
  c = config_lib.load_json(os.path.join(str(z["workdir"]), "config.json"))
  for k, v in overrides.items():
    c.stage2[k] = v
  c.seed += seed_offset
  mesh = sharding.make_mesh(1)
  labels = z["labels"].astype(int)
  train = {name: _input(z, "train", s, k) for name, (s, k) in inputs.items()}
  test = {name: _input(z, "val", s, k) for name, (s, k) in inputs.items()}
  n = len(next(iter(train.values())))
  t = time.time()
  with tempfile.TemporaryDirectory() as workdir:  # a fresh fit every time: nothing reused
    fit = stage2.fit(c, train, np.zeros(n, bool), workdir, mesh)
  seconds = time.time() - t
  per = stage2.distances(fit.detector, fit.state, test)
  auroc = {d: metrics.auroc(v, labels) for d, v in per.items()}
  auroc.update(evaluate.subset_aurocs(per, fit.norm, labels, sorted(per),
                                      range(2, len(per) + 1)))
  # 'all': the mscm score of these inputs; 'spatial': without the pooled scale
  auroc["all"] = metrics.auroc(stage2.combine(per, fit.norm, dict.fromkeys(per, 1.0)), labels)
  spatial = [d for d, (s, _) in inputs.items() if s in SPATIAL]
  auroc["spatial"] = metrics.auroc(
      stage2.combine(per, fit.norm, dict.fromkeys(spatial, 1.0)), labels)
  return {"run": name, "variant": variant, "auroc": auroc, "seconds": round(seconds, 1),
          "pixel_knn": float(z["auroc_pixel_knn"]), "knn": float(z["auroc_knn"])}


# ----------------------------------------------------------------------------- table


def table(records: list[dict], keys=("all", "spatial")) -> str:
  runs = sorted({r["run"] for r in records})
  base = {r["run"]: r for r in records}
  by = collections.defaultdict(dict)
  for r in records:
    by[r["variant"]][r["run"]] = r
  lines = []
  for key in keys:
    lines += [f"AUROC of the detectors' summed score, `{key}` detectors; mean and min "
              "over runs", "",
              "| variant | " + " | ".join(runs) + " | mean | min | runs above pixel_knn |",
              "|" + "---|" * (len(runs) + 4)]
    lines.append("| pixel_knn | " + " | ".join(f"{base[r]['pixel_knn']:.3f}" for r in runs)
                 + " | | | |")
    lines.append("| knn | " + " | ".join(f"{base[r]['knn']:.3f}" for r in runs) + " | | | |")
    for variant in VARIANTS:
      if variant not in by:
        continue
      cells, vals, wins = [], [], 0
      for run in runs:
        rec = by[variant].get(run)
        if rec is None:
          cells.append("-")
          continue
        a = rec["auroc"]
        v = a[key]
        vals.append(v)
        wins += v > rec["pixel_knn"]
        cells.append(f"{v:.3f}")
      lines.append(f"| {variant} | " + " | ".join(cells) +
                   f" | {np.mean(vals):.3f} | {min(vals):.3f} | {wins}/{len(vals)} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("command", choices=("cache", "train", "table"))
  p.add_argument("runs", nargs="*", help="cache: NAME=WORKDIR pairs")
  p.add_argument("--cache", required=True)
  p.add_argument("--variants", default="cosine,difference")
  p.add_argument("--only", default="*", help="train: glob of cached run names")
  args = p.parse_intermixed_args()
  os.makedirs(args.cache, exist_ok=True)
  out_path = os.path.join(args.cache, "detector_sweep.jsonl")
  records = rows.read(out_path)
  if args.command == "cache":
    for pair in args.runs:
      name, _, workdir = pair.partition("=")
      cache_run(name, workdir, args.cache)
  elif args.command == "table":
    print(table(records))
  else:
    variants = rows.known(args.variants.split(","), VARIANTS)
    done = {(r["run"], r["variant"]) for r in records}
    names = sorted(os.path.basename(p)[:-4]
                   for p in glob.glob(os.path.join(args.cache, f"{args.only}.npz")))
    for variant in variants:
      for name in names:
        if (name, variant) in done:
          continue
        rec = train_variant(name, args.cache, variant)
        a = rec["auroc"]
        rows.emit(rec, out_path,
                  f"{name:<10}{variant:<24} all {a['all']:.3f} spatial {a['spatial']:.3f} "
                  f"pixel_knn {rec['pixel_knn']:.3f} knn {rec['knn']:.3f} "
                  f"({rec['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
