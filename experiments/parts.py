r"""What each part of the method adds, on the validation split: tables from ablation records.

Reads the JSON lines that experiments/ablation.py writes (one per stage-1 run and
evaluation-time variant, every AUROC on the validation split, per scale subset too) and
prints two markdown tables:

- the parts on one stage 1 (`--train`, default the `:cpu` preset's `rot4` runs): the
  adopted detector, then that detector without the memory's read-out, without the turned
  anomalies, on fewer scales, and the baselines; one column per run, then the mean;
- the stage-1 training (memory mode) under the adopted detector: one row per training
  variant, one column per (class, seed) that the preset's runs have.

  python experiments/parts.py experiments/results/detector_shifted/ablation.jsonl \
      > experiments/results/parts.md
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

ADOPTED = "rotated_difference"
SCALES = ("res3", "res4", "pooled")


def load(paths: Sequence[str]) -> list[dict[str, Any]]:
  """The validation records of every file, the last one kept where (run, variant) repeats."""
  out: dict[tuple[str, str], dict[str, Any]] = {}
  for r in (r for path in paths for r in rows.read(path)):
    if r.get("split") == "validation":
      out[(r["run"], r["variant"])] = r
  return list(out.values())


def _row(label: str, values: list[float | None]) -> str:
  cells = ["-" if v is None or v != v else f"{v:.3f}" for v in values]
  real = [v for v in values if v is not None and v == v]
  mean = f"{np.mean(real):.3f}" if len(real) == len(values) and real else "-"
  return f"| {label} | " + " | ".join(cells) + f" | {mean} |"


def _get(records, run: str, variant: str, key: str) -> float | None:
  for r in records:
    if r["run"] == run and r["variant"] == variant:
      return r["auroc"].get(key)
  return None


def parts_table(records: list[dict[str, Any]], train: str) -> str:
  runs = sorted({r["run"] for r in records if r["train"] == train and r["variant"] == ADOPTED},
                key=lambda n: (n.split(".")[0], n))
  if not runs:
    raise SystemExit(f"no {ADOPTED!r} records of stage-1 runs {train!r}")
  label = {r["run"]: f"{r['run'].split('.')[0]} s{r['seed']}" for r in records}
  head = ["| validation AUROC | " + " | ".join(label[r] for r in runs) + " | mean |",
          "|---|" + "---|" * (len(runs) + 1)]
  rows = [(f"`mscm`, the adopted detector (`{ADOPTED}`)", ADOPTED, "mscm"),
          ("without the memory's read-out (f alone: `rotated_feature`)", "rotated_feature",
           "mscm"),
          ("without the turned anomalies (`difference`)", "difference", "mscm"),
          ("the detectors before (`similarity+difference`, no turned anomalies)", "default",
           "mscm")]
  for k in (1, 2):
    for subset in itertools.combinations(SCALES, k):
      rows.append((f"adopted, scales {'+'.join(subset)} only", ADOPTED,
                   f"mscm[{'+'.join(subset)}]"))
  rows += [("training-free `deviation` (1 - cos(f, r))", ADOPTED, "deviation"),
           ("baseline `knn` (stage-1 embedding)", ADOPTED, "knn"),
           ("baseline `knn_rot`", ADOPTED, "knn_rot"),
           ("baseline `rotation` (the rotation head)", ADOPTED, "rotation"),
           ("baseline `pixel_knn`", ADOPTED, "pixel_knn")]
  body = [_row(label, [_get(records, run, variant, key) for run in runs])
          for label, variant, key in rows]
  return "\n".join(head + body)


def modes_table(records: list[dict[str, Any]], train: str) -> str:
  adopted = [r for r in records if r["variant"] == ADOPTED]
  cells = sorted({(r["class"], r["seed"]) for r in adopted if r["train"] == train})
  trains = [train] + sorted({r["train"] for r in adopted} - {train})
  names = {(r["class"], r["seed"]): r["run"].split(".")[0] for r in adopted}
  head = ["| stage 1 (`" + ADOPTED + "` detector) | "
          + " | ".join(f"{names[c]} s{c[1]} `mscm` (probe)" for c in cells) + " |",
          "|---|" + "---|" * len(cells)]
  body = []
  for t in trains:
    vals = []
    for c in cells:
      r = next((r for r in adopted if r["train"] == t and (r["class"], r["seed"]) == c), None)
      vals.append("-" if r is None else f"{r['auroc']['mscm']:.3f} ({r['probe']:.3f})")
    body.append(f"| `{t}` | " + " | ".join(vals) + " |")
  return "\n".join(head + body)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("records", nargs="+", help="ablation.jsonl files")
  p.add_argument("--train", default="rot4", help="the preset's stage-1 runs (run suffix)")
  args = p.parse_args(argv)
  records = load(args.records)
  print(parts_table(records, args.train))
  print()
  print(modes_table(records, args.train))


if __name__ == "__main__":
  main()
