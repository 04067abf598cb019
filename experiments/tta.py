r"""Test-time flip ensembles (evaluate.flip_tta), rescored on finished runs.

No training: each workdir's finished stage 1 and stage 2 are loaded (`rows.finished`) and
the library's scorer reads the validation split twice, without and with
`evaluate.flip_tta` (every score the mean of the image's and its mirror image's). One JSON
line per run: validation AUROC of every score both ways; with --test the test split's too
(the final reading, once a choice is made on validation).

  TFDS_DATA_DIR=../shared/tfds python experiments/tta.py \
      --out=experiments/results/tta.jsonl WORKDIR [WORKDIR ...]
  python experiments/tta.py --out=experiments/results/tta.jsonl --table
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from mscm_jax import config as config_lib, metrics, scoring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

SCORES = ("mscm", "detector", "deviation", "knn", "knn_rot", "rotation")


def rescore(workdir: str, test: bool) -> dict:
  t = time.time()
  c, split, plain = rows.finished(workdir)
  flipped = scoring.Scorer(config_lib.set_fields(c.copy_and_resolve_references(),
                                                 {"evaluate.flip_tta": True}),
                           plain.s1, plain.s2)
  record = {"run": workdir, "class": c.dataset.normal_class, "seed": c.seed,
            "epochs": c.train.epochs}
  parts = [("validation", split.val_images, split.val_is_anomaly)]
  if test:
    parts.append(("test", split.test_images, split.test_is_anomaly))
  for part, images, labels in parts:
    for name, scorer in (("plain", plain), ("flip", flipped)):
      scores = scorer.scores(images)
      record[f"{part}_{name}"] = {n: metrics.auroc(scores[n], labels)
                                  for n in SCORES if n in scores}
  record["seconds"] = round(time.time() - t, 1)
  return record


def table(records: list[dict], part: str = "validation") -> str:
  """Per stage-1 budget (epochs): each score's AUROC without / with the flip ensemble."""
  records = list({r["run"]: r for r in records}.values())  # a --test row supersedes
  lines = []
  for epochs in sorted({r["epochs"] for r in records}):
    runs = sorted((r for r in records if r["epochs"] == epochs and f"{part}_plain" in r),
                  key=lambda r: (r["class"], r["seed"]))
    if not runs:
      continue
    names = [n for n in SCORES if all(n in r[f"{part}_plain"] for r in runs)]
    lines += [f"### Stage 1 of {epochs} epochs, {len(runs)} runs, {part} split", "",
              "| run | " + " | ".join(f"`{n}` plain / flip" for n in names) + " |",
              "|---" * (len(names) + 1) + "|"]

    def cells(values):
      return " | ".join(f"{p:.3f} / {f:.3f}" for p, f in values)

    for r in runs:
      lines.append(f"| {r['class']} s{r['seed']} | " + cells(
          (r[f"{part}_plain"][n], r[f"{part}_flip"][n]) for n in names) + " |")
    if len(runs) > 1:
      mean = [(np.mean([r[f"{part}_plain"][n] for r in runs]),
               np.mean([r[f"{part}_flip"][n] for r in runs])) for n in names]
      lines.append(f"| **mean of {len(runs)}** | " + cells(mean) + " |")
      wins = [sum(r[f"{part}_flip"][n] > r[f"{part}_plain"][n] for r in runs) for n in names]
      lines.append("| flip higher on | " + " | ".join(f"{w} of {len(runs)}" for w in wins)
                   + " |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  p = rows.rescoring_parser(__doc__)
  p.add_argument("--test", action="store_true", help="also read the test split")
  args = p.parse_args()
  records = rows.read(args.out)
  if args.table:
    print(table(records))
    if any("test_plain" in r for r in records):
      print(table(records, "test"))
    return

  def summary(w: str, record: dict) -> str:
    v, f = record["validation_plain"], record["validation_flip"]
    return (f"{w}: validation mscm {v['mscm']:.3f} -> {f['mscm']:.3f}, "
            f"knn {v['knn']:.3f} -> {f['knn']:.3f} ({record['seconds']} s)")

  # a run rescored without the test split is done unless --test asks for it
  done = {r["run"] for r in records if "test_plain" in r or not args.test}
  rows.rescore_each(args.workdirs, args.out, done,
                    lambda w: rescore(w, args.test), summary)


if __name__ == "__main__":
  main()
