r"""The `:cpu` command on several CIFAR-10 classes, and the table of their results.json.

Each class runs `python -m mscm_jax.main` in ROOT/c<class> (resumable: a finished class
returns at once, a workdir holding only a finished stage 1 trains stage 2 and
evaluates); `--table` prints every score's AUROC and the seconds per stage, and the
AUROC of the training-free `deviation` over every subset of scales (from scores.npz and
the spreads in results.json, combined as the pipeline does).

  TFDS_DATA_DIR=../shared/tfds python experiments/class_runs.py --root=/work/val2 \
      --classes=0,2,4,5,6,7,8,9
  python experiments/class_runs.py --root=/work/val2 --table
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

from mscm_jax import evaluate

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck")
HEADLINE = ("mscm", "deviation", "knn", "pixel_knn")


def run(root: str, cls: int, extra: list[str]) -> None:
  workdir = os.path.join(root, f"c{cls}")
  cmd = [sys.executable, "-m", "mscm_jax.main", "--config=configs/cifar10_oneclass.py:cpu",
         f"--config.dataset.normal_class={cls}", f"--workdir={workdir}", *extra]
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(f"{workdir}.log", "w") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  print(f"class {cls} ({NAMES[cls]}): exit {rc}, {time.time() - start:.0f} s wall", flush=True)


def table(root: str) -> str:
  lines = ["| class | " + " | ".join(HEADLINE) + " | mscm - pixel_knn | stage-1 probe | "
           "seconds: data / stage 1 / stage 2 / evaluation |", "|" + "---|" * 8]
  for path in sorted(glob.glob(os.path.join(root, "c*", "results.json"))):  # c<class>
    r = json.load(open(path))
    a = {k: v["auroc"] for k, v in r["scores"].items()}
    name = r["normal_classes"][0]
    sec = r.get("seconds", {})
    probe = r.get("stage1", {}).get("probe_knn_auroc")
    lines.append(f"| {NAMES.index(name)} {name} s{r['seed']} | "
                 + " | ".join(f"{a[k]:.3f}" for k in HEADLINE)
                 + f" | {a['mscm'] - a['pixel_knn']:+.3f} | "
                 + (f"{probe:.3f}" if probe is not None else "-") + " | "
                 + " / ".join(f"{sec.get(k, 0):.0f}" for k in
                              ("data", "stage1", "stage2", "evaluation")) + " |")
  return "\n".join(lines)


def deviation_subsets(root: str) -> str:
  rows = {}
  for path in sorted(glob.glob(os.path.join(root, "c*", "results.json"))):
    r = json.load(open(path))
    z = np.load(os.path.join(os.path.dirname(path), "scores.npz"))
    norm = r["stage2"]["norm"]["deviation"]
    scales = sorted(norm)
    labels = z["is_anomaly"].astype(int)
    per = {s: z[f"deviation_{s}"] for s in scales}
    rows[f"{r['normal_classes'][0]} s{r['seed']}"] = evaluate.subset_aurocs(
        per, norm, labels, scales, range(1, len(scales) + 1))
  if not rows:
    return ""
  subsets = list(next(iter(rows.values())))
  lines = ["| deviation scales | " + " | ".join(rows) + " | min |", "|" + "---|" * (len(rows) + 2)]
  for sub in subsets:
    vals = [rows[run][sub] for run in rows]
    lines.append(f"| {sub} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {min(vals):.3f} |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
  p.add_argument("--table", action="store_true", help="print the table and exit")
  args, extra = p.parse_known_args()
  if not args.table:
    for cls in (int(c) for c in args.classes.split(",")):
      run(args.root, cls, extra)
  print(table(args.root))
  print()
  print(deviation_subsets(args.root))


if __name__ == "__main__":
  main()
