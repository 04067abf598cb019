r"""The untrained network as a baseline on both splits: what stage 1 adds to its start.

A run's stage 1 starts from `init_fn(PRNGKey(seed))`; its k-NN probe reads that network on
the validation split only. Here the same network (no training: the config, class and seed
fix it, whatever the budget, so `:cpu` and `:cpu_long` share it) is read as the finished
runs read their trained one: `knn` (the embedding's k-NN score against the normal
training images) and, with shift.rotations > 1, `knn_rot` (the same over CSI's
quarter-turns), on the validation and the test split. One JSON line per (class, seed);
--table sets them beside the trained runs of sweep roots (their results.json).

  TFDS_DATA_DIR=../shared/tfds python experiments/untrained.py \
      --config=configs/cifar10_oneclass.py:cpu --classes=all --seeds=0,1 \
      --out=experiments/results/untrained.jsonl
  python experiments/untrained.py --out=experiments/results/untrained.jsonl --table \
      --runs=experiments/results/cpu10 --runs=experiments/results/cpu_long
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax
import numpy as np

from mscm_jax import frozen, knn, metrics, stage1, sweep
from mscm_jax.data import protocols, sources
from mscm_jax.names import split_scores
from mscm_jax.runtime import sharding

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

SPLITS = ("validation", "test")
SCORES = ("knn", "knn_rot")


def untrained_scores(config, split: protocols.ADSplit) -> dict[str, dict[str, float]]:
  """{split: {score: AUROC}} of the network stage 1 starts from, read as `scoring.Scorer`
  reads a trained one (the bank: the normal training images under each quarter-turn)."""
  mesh = sharding.make_mesh(config.train.num_devices)
  parts = stage1.components(config, split.n_train, split.train_images.shape[1:], mesh)
  model = frozen.frozen_model(config)
  members = sharding.member_mesh(mesh)
  variables = frozen.stack_variables([parts.init_fn(jax.random.PRNGKey(config.seed))],
                                     members)
  turns = range(max(config.shift.rotations, 1))
  bs = config.frozen.batch_size

  def embed(images):  # [R, N, D]: the images under each quarter-turn
    return frozen.embed_turned(model, variables, images, turns, members, 1, bs)[0]

  bank = embed(split.train_images[~split.train_is_anomaly])
  k = min(config.evaluate.knn_k, bank.shape[1] - 1)
  out = {}
  for name, images, labels in (("validation", split.val_images, split.val_is_anomaly),
                               ("test", split.test_images, split.test_is_anomaly)):
    if images is None or not len(images):
      continue
    per_turn = knn.turned_scores(bank, embed(images), k=k)
    out[name] = {"knn": metrics.auroc(per_turn[0], labels)}
    if len(per_turn) > 1:
      out[name]["knn_rot"] = metrics.auroc(per_turn.mean(axis=0), labels)
  return out


def measure(args) -> None:
  base = sweep.parse_config(args.config, [])
  names = sources.class_names(base.dataset)
  classes = names if args.classes == "all" else [
      names[protocols.resolve_classes(c.strip(), names, "--classes")[0]]
      for c in args.classes.split(",")]
  done = {(r["config"], r["class"], r["seed"]) for r in rows.read(args.out)}
  data = None
  for seed in [int(s) for s in args.seeds.split(",")]:
    for name in classes:
      if (args.config, name, seed) in done:
        continue
      t = time.time()
      c = sweep.parse_config(args.config, [f"seed={seed}", f"dataset.normal_class={name!r}"])
      if data is None:  # one decode serves every class
        data = sources.load_splits(c.dataset)
      row = {"config": args.config, "class": name, "seed": seed,
             **untrained_scores(c, protocols.make_split(c, *data))}
      row["seconds"] = round(time.time() - t, 1)
      rows.emit(row, args.out, f"{name} s{seed}: " + ", ".join(
          f"{s} {n} {v:.3f}" for s in SPLITS for n, v in row.get(s, {}).items()))


def _trained(root: str) -> dict[tuple[str, int], dict]:
  """{(class, seed): results.json} of the finished runs under `root`."""
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
    r = json.load(open(path))
    out[(r["normal_classes"][0], r["seed"])] = r
  return out


def table(records: list[dict], root: str, split: str) -> str:
  """Per class that `root` ran, over the seeds it ran: the untrained network's `knn` and
  `knn_rot` beside the trained ones (`mscm` is left out: older runs' results.json name the
  detectors alone so; mscm_knn.md rescores them)."""
  untrained = {(r["class"], r["seed"]): r[split] for r in records if split in r}
  runs: dict[str, dict[int, dict]] = {}
  for (cls, seed), r in _trained(root).items():
    if (cls, seed) in untrained:
      runs.setdefault(cls, {})[seed] = split_scores(r, split)
  cols = [f"{who} `{s}`" for who in ("untrained", "trained") for s in SCORES]
  lines = [f"### {os.path.basename(root.rstrip('/'))}, {split} split: AUROC, mean over "
           "seeds", "", "| class | seeds | " + " | ".join(cols) + " | `knn_rot` gain |",
           "|---" * (len(cols) + 3) + "|"]
  order = [r["class"] for r in records]
  means = []
  for cls in sorted(runs, key=order.index):
    seeds = sorted(runs[cls])
    vals = [np.mean([untrained[(cls, s)].get(n, np.nan) for s in seeds]) for n in SCORES]
    vals += [np.mean([runs[cls][s][n]["auroc"] if n in runs[cls][s] else np.nan
                      for s in seeds]) for n in SCORES]
    means.append(vals)
    lines.append(f"| {cls} | {','.join(map(str, seeds))} | "
                 + " | ".join(f"{v:.3f}" for v in vals) + f" | {vals[3] - vals[1]:+.3f} |")
  if len(means) > 1:
    m = np.mean(means, axis=0)
    lines.append(f"| **mean of {len(means)}** | | " + " | ".join(f"**{v:.3f}**" for v in m)
                 + f" | **{m[3] - m[1]:+.3f}** |")
  return "\n".join(lines + [""])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/cifar10_oneclass.py:cpu")
  p.add_argument("--classes", default="all", help="names or indices, comma-separated")
  p.add_argument("--seeds", default="0")
  p.add_argument("--out", required=True, help="JSON lines, one per (class, seed) (appended)")
  p.add_argument("--table", action="store_true", help="print the markdown tables of --out")
  p.add_argument("--runs", action="append", default=[],
                 help="a root of finished runs (ROOT/<cell>/results.json) to set beside")
  args = p.parse_args()
  if args.table:
    records = rows.read(args.out)
    for root in args.runs:
      for split in SPLITS:
        print(table(records, root, split))
    return
  measure(args)


if __name__ == "__main__":
  main()
