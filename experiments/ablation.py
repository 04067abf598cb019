r"""Evaluation-time ablation: stage-2 and read-out variants on finished stage-1 runs.

Training-time knobs (memory.mode / memory.train, the alignment term) need their own
stage-1 runs: mscm_jax/sweep.py trains them into ROOT/<class>.oneclass.s<seed>.<variant>
(the commands are in results/ablation.md; older roots named runs <variant>_c<class>_s<seed>).
This script then evaluates every finished stage-1 workdir under ROOT with each
evaluation-time variant (retrieval sharpness: top-k; unit-sphere vs Euclidean maps): the
whole command runs in ROOT/<run>/eval/<variant>/ on the run's stage 1 (`pipeline.run`
with `stage1_from`, which checks that the stage 1 is the one the variant describes),
all scores are computed, and one JSON line per (run, variant) goes to
ROOT/ablation.jsonl (resumable: done pairs are skipped). Every AUROC it records is the
validation split's (held-out normal training images against other classes' training
images): the split choices are read on (docs/method.md section 4). Scale subsets feeding
the detector are compared from the same per-scale detectors (each scale's detector is
trained independently).

  TFDS_DATA_DIR=../shared/tfds python experiments/ablation.py --root=/work/ablation \
      --variants=default,top1,beta1,shrink,euclidean
  python experiments/ablation.py --root=/work/ablation --table > experiments/results/ablation.md
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time

import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import evaluate, pipeline, stage2
from mscm_jax.names import PROBE_KEYS, split_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

# Evaluation-time variants: overrides of the saved stage-1 config.
VARIANTS = {
    "default": {},
    "top1": {"stage2.top_k": 1},  # read the single nearest prototype
    "top4": {"stage2.top_k": 4},
    # `beta1` (memory.beta=1) and `shrink` (memory.shrink_threshold=0.02) changed stage-1
    # fields at evaluation time; stage identity now refuses that (results/ablation.md
    # keeps their rows; commit 3abfed7 has the script that made them).
    "euclidean": {"stage2.inputs": "squared_distance"},  # maps off the unit sphere
    "difference": {"stage2.inputs": "difference"},  # the detector sees f - r itself
    # one detector for each kind (detector_sweep)
    "joined": {"stage2.inputs": "cosine_distance+difference"},
    # CSI's turned normals as the detector's labelled anomalies (needs shift.rotations > 1)
    "rotated": {"stage2.rotated_anomalies": True},
    "rotated_difference": {"stage2.rotated_anomalies": True, "stage2.inputs": "difference"},
    # the same detector on f alone: what the memory's read-out r adds to it
    "rotated_feature": {"stage2.rotated_anomalies": True, "stage2.inputs": "feature"},
}
# A sweep cell (mscm_jax/sweep.py), or the older <variant>_c<class index>_s<seed>.
RUN = re.compile(r"^(?:(?P<name>[^.]+)\.oneclass\.s(?P<sseed>\d+)\.(?P<strain>[A-Za-z0-9_-]+)"
                 r"|(?P<train>[a-z0-9]+)_c(?P<cls>\d+)_s(?P<seed>\d+))$")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def parse_run(name: str) -> dict[str, int | str] | None:
  """{'train', 'class' (CIFAR-10 index), 'seed'} of a run's directory name, or None."""
  m = RUN.search(name)
  if m is None:
    return None
  if m["name"] is not None:
    if m["name"] not in CIFAR10:
      return None
    return {"train": m["strain"], "class": CIFAR10.index(m["name"]), "seed": int(m["sseed"])}
  return {"train": m["train"], "class": int(m["cls"]), "seed": int(m["seed"])}


def _override(config, overrides):
  c = config_lib.set_fields(config.copy_and_resolve_references(), overrides)
  c.stop_after = ""
  c.evaluate.report = False
  return config_lib.validate(c)


def evaluate_run(workdir: str, variants: list[str], out_path: str, done: set) -> None:
  m = parse_run(os.path.basename(workdir))
  base = config_lib.load_json(os.path.join(workdir, "config.json"))
  for name in variants:
    key = (os.path.basename(workdir), name)
    if key in done:
      continue
    c = _override(base, VARIANTS[name])
    t = time.time()
    eval_dir = os.path.join(workdir, "eval", name)
    results = pipeline.run(c, eval_dir, stage1_from=workdir)
    saved = np.load(os.path.join(eval_dir, "validation_scores.npz"))
    labels = saved["is_anomaly"].astype(int)
    aurocs = {k: m["auroc"] for k, m in split_scores(results, "validation").items()}
    norm = results["stage2"]["norm"]
    groups = {"mscm": list(stage2.detectors(c)),  # detector names: the scales, one kind
              "deviation": list(stage2.detector_scales(c))}
    for score, names in groups.items():
      per = {s: saved[f"{score}_{s}"] for s in names}
      subsets = evaluate.subset_aurocs(per, norm[score], labels, names, range(1, len(names)))
      aurocs.update({f"{score}[{tag}]": v for tag, v in subsets.items()})
    record = {"run": key[0], "train": m["train"], "class": m["class"],
              "seed": m["seed"], "variant": name, "split": "validation",
              "probe": results["stage1"][PROBE_KEYS[0]],
              "seconds": round(time.time() - t, 1), "auroc": aurocs}
    rows.emit(record, out_path,
              f"{key[0]:<24}{name:<10} mscm {aurocs['mscm']:.3f} deviation "
              f"{aurocs['deviation']:.3f} knn {aurocs['knn']:.3f} "
              f"pixel {aurocs['pixel_knn']:.3f}")


def table(records: list[dict]) -> str:
  """Mean (and per class/seed) AUROC per (training variant, evaluation variant), on the
  split the records read (records without one predate the validation split: test)."""
  splits = sorted({r.get("split", "test") for r in records})
  if len(splits) > 1:
    raise SystemExit(f"ablation.jsonl mixes splits {splits}: tabulate one root per split")
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r["train"], r["variant"])].append(r)
  cols = ["mscm", "deviation", "knn", "pixel_knn"]
  extra = sorted({k for r in records for k in r["auroc"] if "[" in k or "_" in k}
                 - {"pixel_knn"})
  lines = [f"AUROC on the {splits[0] if splits else 'validation'} split.", "",
           "| stage 1 | evaluation | n | " + " | ".join(cols) + " | runs (class/seed: mscm, "
           "deviation) |", "|" + "---|" * (len(cols) + 4)]
  for (train, variant), rs in sorted(groups.items()):
    means = [np.mean([r["auroc"][c] for r in rs]) for c in cols]
    runs = ", ".join(f"c{r['class']}/s{r['seed']}: {r['auroc']['mscm']:.3f}, "
                     f"{r['auroc']['deviation']:.3f}" for r in sorted(
                         rs, key=lambda r: (r["class"], r["seed"])))
    lines.append(f"| {train} | {variant} | {len(rs)} | "
                 + " | ".join(f"{v:.3f}" for v in means) + f" | {runs} |")
  lines += ["", "Per-scale and scale-subset AUROC (mean over runs):", "",
            "| stage 1 | evaluation | " + " | ".join(extra) + " |",
            "|" + "---|" * (len(extra) + 2)]
  for (train, variant), rs in sorted(groups.items()):
    vals = [np.mean([r["auroc"][k] for r in rs if k in r["auroc"]])
            if any(k in r["auroc"] for r in rs) else float("nan") for k in extra]
    lines.append(f"| {train} | {variant} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
  per_run = ["mscm", "deviation", "knn", "pixel_knn", "knn_rot", "rotation",
             "deviation_res3", "deviation_res4", "deviation_pooled", "mscm_res3",
             "mscm_res4", "mscm_pooled"]
  lines += ["", "Every run, evaluation variant `default`:", "",
            "| run | stage-1 probe | " + " | ".join(per_run) + " |",
            "|" + "---|" * (len(per_run) + 2)]
  for r in sorted((r for r in records if r["variant"] == "default"), key=lambda r: r["run"]):
    lines.append(f"| {r['run']} | {r['probe']:.3f} | "
                 + " | ".join(f"{r['auroc'].get(k, np.nan):.3f}" for k in per_run) + " |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--variants", default="default")
  p.add_argument("--runs", default="*", help="glob of run names under ROOT")
  p.add_argument("--table", action="store_true", help="print the markdown table and exit")
  args = p.parse_args()
  out_path = os.path.join(args.root, "ablation.jsonl")
  records = rows.read(out_path)
  if args.table:
    print(table(records))
    return
  done = {(r["run"], r["variant"]) for r in records}
  variants = rows.known(args.variants.split(","), VARIANTS)
  for wd in sorted(glob.glob(os.path.join(args.root, args.runs))):
    if parse_run(os.path.basename(wd)) and os.path.exists(
        os.path.join(wd, "stage1", "FINISHED.json")):
      evaluate_run(wd, variants, out_path, done)


if __name__ == "__main__":
  main()
