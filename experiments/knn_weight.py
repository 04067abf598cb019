r"""`mscm` = `detector` + w x the k-NN score, rescored on finished runs (evaluate.knn_weight).

No training: each workdir's finished stage 1 and stage 2 are loaded (a config saved before
the stage-2 renames of names.py is read under the new names, `load_json(old_names=True)`),
the k-NN bank and the detectors' spread are made from them (`stage2.complete_extras`), and
the library's evaluation scores both splits (`evaluate.compute_scores`). One JSON line per
run: validation AUROC of `detector` (the run's own `mscm` before the k-NN term, recorded
beside it as a check), `knn`, `knn_rot` and `mscm` at every weight; test AUROC of the
weights the table reports (0: the paper's score, and the default). Choices are read on
the validation split only.

With a rotation head the record also holds `mscm` plus v x `rotation` in units of its
spread on the normal training images (`evaluate.rotation_weight` = v), at the default k-NN
weight and without the k-NN term. --validation_only skips the test split (a screen at a
fifth of the cost; such records hold no test AUROC).

  TFDS_DATA_DIR=../shared/tfds python experiments/knn_weight.py \
      --out=experiments/results/mscm_knn.jsonl WORKDIR [WORKDIR ...]
  python experiments/knn_weight.py --out=experiments/results/mscm_knn.jsonl --table
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from mscm_jax import evaluate, metrics
from mscm_jax.names import split_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
REPORTED = (0.0, 1.0)  # test AUROC: the paper's score and the default
ROTATION = (0.25, 0.5, 1.0, 2.0)  # evaluate.rotation_weight, beside knn_weight 1
ROTATION_COLUMNS = ["detector", "knn_rot", "rotation", "mscm@1"] + [
    f"mscm@1+rot@{v:g}" for v in ROTATION] + ["mscm@0+rot@1"]


def rescore(workdir: str, validation_only: bool = False) -> dict:
  t = time.time()
  c, split, scorer = rows.finished(workdir)
  if validation_only:
    parts = [("validation", scorer.as_members.scores_and_read([split.val_images])[0][0],
              split.val_is_anomaly)]
  else:
    out, = evaluate.compute_scores([c], [split], scorer.as_members)
    parts = [("validation", out["validation"], split.val_is_anomaly),
             ("test", out["scores"], split.test_is_anomaly)]
  (mean, std), (d_mean, d_std) = scorer.knn_spread, scorer.s2.detector_spread
  term = "knn_rot" if c.shift.rotations > 1 else "knn"
  with open(os.path.join(workdir, "results.json")) as f:
    saved = split_scores(json.load(f), "validation")  # an old run's `mscm` as `detector`
  record = {"run": workdir, "class": c.dataset.normal_class, "seed": c.seed,
            "epochs": c.train.epochs, "term": term,
            "knn_spread": [mean, std], "detector_spread": [d_mean, d_std],
            "rotation_spread": scorer.rotation_spread,
            "saved_validation_mscm": saved["detector"]["auroc"]}
  for part, scores, labels in parts:
    aurocs = {n: metrics.auroc(scores[n], labels)
              for n in ("detector", "knn", "knn_rot", "rotation", "pixel_knn") if n in scores}
    z_detector = (scores["detector"] - d_mean) / d_std
    for w in WEIGHTS if part == "validation" else REPORTED:
      aurocs[f"mscm@{w:g}"] = metrics.auroc(z_detector + w * (scores[term] - mean) / std,
                                            labels)
    if scorer.rotation_spread is not None:
      r_mean, r_std = scorer.rotation_spread
      z_rotation = (scores["rotation"] - r_mean) / r_std
      for w, v in [(1.0, v) for v in ROTATION] + [(0.0, 1.0)]:
        aurocs[f"mscm@{w:g}+rot@{v:g}"] = metrics.auroc(
            z_detector + w * (scores[term] - mean) / std + v * z_rotation, labels)
    record[part] = aurocs
  record["seconds"] = round(time.time() - t, 1)
  return record


def table(records: list[dict]) -> str:
  """Per stage-1 budget (epochs): validation AUROC at every weight, then the test split's."""
  lines = []
  for epochs in sorted({r["epochs"] for r in records}):
    runs = sorted((r for r in records if r["epochs"] == epochs),
                  key=lambda r: (r["class"], r["seed"]))
    lines += [f"### Stage 1 of {epochs} epochs, {len(runs)} runs", ""]
    for part, head in (("validation", ["detector", "knn", "knn_rot"]
                        + [f"mscm@{w:g}" for w in WEIGHTS]),
                       ("test", ["detector", "knn", "knn_rot", "pixel_knn"]
                        + [f"mscm@{w:g}" for w in REPORTED])):
      if not any(part in r for r in runs):  # screens (--validation_only) hold no test split
        continue
      lines += [f"{part.capitalize()} split AUROC" + (
          " (read once, for the table: nothing was chosen on it)" if part == "test" else "")
                + ":", "", "| run | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
      lines += _rows([r for r in runs if part in r], part, head)
    with_rotation = [r for r in runs if "mscm@1+rot@1" in r["validation"]]
    if with_rotation:
      lines += ["With the rotation head's score (`evaluate.rotation_weight` = v at "
                "`knn_weight` w: `mscm@w+rot@v`), validation split AUROC:", "",
                "| run | " + " | ".join(ROTATION_COLUMNS) + " |",
                "|---" * (len(ROTATION_COLUMNS) + 1) + "|"]
      lines += _rows(with_rotation, "validation", ROTATION_COLUMNS)
  return "\n".join(lines)


def _rows(runs: list[dict], part: str, head: list[str]) -> list[str]:
  """One markdown row per run of `part`'s AUROCs in `head` (- for a score the run lacks:
  `knn_rot` without rotations), then their mean where every run has the score."""
  labels = [f"{r['class']} s{r['seed']}" for r in runs]
  labels = [f"{x} ({_variant(r)})" if labels.count(x) > 1 and _variant(r) else x
            for x, r in zip(labels, runs)]
  lines = [f"| {x} | " + " | ".join(
      f"{r[part][h]:.3f}" if h in r[part] else "-" for h in head) + " |"
           for x, r in zip(labels, runs)]
  if len(runs) > 1:
    lines.append(f"| **mean of {len(runs)}** | " + " | ".join(
        f"**{np.mean([r[part][h] for r in runs]):.3f}**"
        if all(h in r[part] for r in runs) else "-" for h in head) + " |")
  return lines + [""]


def _variant(record: dict) -> str:
  """The sweep variant in a run's cell name (`cat.oneclass.s0.hue0` -> `hue0`), or ''."""
  for part in record["run"].split(os.sep):
    cell = part.split(".")
    if cell[0] == record["class"] and len(cell) > 3:
      return ".".join(cell[3:])
  return ""


def main() -> None:
  parser = rows.rescoring_parser(__doc__)
  parser.add_argument("--validation_only", action="store_true",
                      help="score the validation split only (a screen)")
  args = parser.parse_args()
  records = rows.read(args.out)
  if args.table:
    print(table(records))
    return

  def summary(w: str, record: dict) -> str:
    v = record["validation"]
    return (f"{w}: validation detector {v['detector']:.3f} (saved mscm "
            f"{record['saved_validation_mscm']:.3f}) {record['term']} "
            f"{v[record['term']]:.3f} mscm@1 {v['mscm@1']:.3f} ({record['seconds']} s)")

  rows.rescore_each(args.workdirs, args.out, {r["run"] for r in records},
                    lambda w: rescore(w, args.validation_only), summary)


if __name__ == "__main__":
  main()
