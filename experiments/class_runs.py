r"""Per-run tables of a sweep root (mscm_jax/sweep.py runs the cells).

For every ROOT/<cell>/results.json, on the validation split (`--split=test` for the final
numbers): each score's AUROC with the stage-1 k-NN probe of the
trained and of the untrained network and the seconds per stage; every score (per scale
and per detector too), one column per run; the AUROC of the training-free `deviation`
over every subset of scales, and of `mscm` without each of its detectors in turn (from
scores.npz and the spreads in results.json, combined as the pipeline does).
`python -m mscm_jax.sweep` aggregates over seeds; this is the detail behind it.

  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.sweep --root=/work/lc \
      --config=configs/cifar10_oneclass.py:cpu --classes=0,1,3 --seeds=0,1
  python experiments/class_runs.py --root=/work/lc
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from mscm_jax import evaluate
from mscm_jax.names import HEADLINE, PROBE_KEYS, split_scores



def _results(root: str) -> dict[str, dict]:
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
    r = json.load(open(path))
    out[os.path.basename(os.path.dirname(path))] = r
  return out


NPZ = {"validation": "validation_scores.npz", "test": "scores.npz"}


def table(root: str, split: str = "validation") -> str:
  """One row per run: headline AUROCs on `split`, the probes (always on the validation
  split), seconds per stage."""
  lines = ["| run | class | seed | " + " | ".join(HEADLINE) + " | probe | probe untrained | "
           "probe gain | seconds: data / stage 1 / stage 2 / evaluation |",
           "|" + "---|" * (len(HEADLINE) + 7)]
  for name, r in _results(root).items():
    a = {k: v["auroc"] for k, v in split_scores(r, split).items()}
    if not a:
      continue
    s1 = r.get("stage1", {})
    probe, untrained = (s1.get(k) for k in PROBE_KEYS)
    gain = f"{probe - untrained:+.3f}" if probe is not None and untrained is not None else "-"
    sec = r.get("seconds", {})
    lines.append(f"| {name} | {r['normal_classes'][0]} | {r['seed']} | "
                 + " | ".join(f"{a[k]:.3f}" if k in a else "-" for k in HEADLINE) + " | "
                 + " | ".join(f"{v:.3f}" if v is not None else "-" for v in (probe, untrained))
                 + f" | {gain} | "
                 + " / ".join(f"{sec.get(k, 0):.0f}" for k in
                              ("data", "stage1", "stage2", "evaluation")) + " |")
  return "\n".join(lines)


def all_scores(root: str, split: str = "validation") -> str:
  """Every score's AUROC on `split` (per scale, per detector too), one column per run."""
  runs = {k: split_scores(r, split) for k, r in _results(root).items() if split_scores(r, split)}
  if not runs:
    return ""
  names = sorted({n for r in runs.values() for n in r},
                 key=lambda n: (n not in HEADLINE, HEADLINE.index(n) if n in HEADLINE else 0, n))
  lines = ["| score | " + " | ".join(runs) + " |", "|" + "---|" * (len(runs) + 1)]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(
        f"{r[n]['auroc']:.3f}" if n in r else "-" for r in runs.values())
        + " |")
  return "\n".join(lines)


def subsets(root: str, score: str = "deviation", drop_one: bool = False,
            split: str = "validation") -> str:
  """The AUROC of `score` (`deviation` over its scales, `mscm` over its detectors: the
  run's `detector` score) on `split` when only some of its members are summed,
  equal-weighted as the defaults are, from the split's saved scores and the spreads in
  results.json: every subset, or with `drop_one` the whole set and each set of all members
  but one (which member costs the combination)."""
  rows, label = {}, {}
  for name, r in _results(root).items():
    path = os.path.join(root, name, NPZ[split])
    if not os.path.exists(path):  # evaluated before the validation split existed
      continue
    with np.load(path) as z:
      norm = r["stage2"]["norm"][score]
      members = sorted(norm)
      per = {m: z[f"{score}_{m}"] for m in members}
      labels = z["is_anomaly"].astype(int)
    n = len(members)
    sizes = ((n - 1, n) if n > 1 else (n,)) if drop_one else range(1, n + 1)
    rows[name] = evaluate.subset_aurocs(per, norm, labels, members, sizes)
    if drop_one:  # "all but x" reads better than five names joined
      label.update({"+".join(m for m in members if m != x): f"all but {x}" for x in members})
      label["+".join(members)] = "all"
  if not rows:
    return ""
  keys = list(next(iter(rows.values())))
  kind = "scales" if score == "deviation" else "detectors"
  lines = [f"| {score} {kind} | " + " | ".join(rows) + " | min |",
           "|" + "---|" * (len(rows) + 2)]
  for sub in keys:
    vals = [rows[run][sub] for run in rows]
    lines.append(f"| {label.get(sub, sub)} | " + " | ".join(f"{v:.3f}" for v in vals)
                 + f" | {min(vals):.3f} |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--split", choices=("validation", "test"), default="validation",
                 help="validation: where choices are read; test: the final numbers")
  args = p.parse_args()
  print(table(args.root, args.split))
  print()
  print(all_scores(args.root, args.split))
  print()
  print(subsets(args.root, "deviation", split=args.split))
  print()
  print(subsets(args.root, "mscm", drop_one=True, split=args.split))


if __name__ == "__main__":
  main()
