r"""AUROC of a finished run's scores against each anomaly class of the test split alone.

  TFDS_DATA_DIR=../shared/tfds python experiments/per_class_auroc.py WORKDIR [WORKDIR ...]

The unbalanced variant whose labelled anomalies come from some classes only is tested on
all; this splits its AUROC into the classes stage 2 saw labelled and those it never saw.
A run evaluated since results.json had `per_anomaly_class` is read from there; an older
one (or a score that field lacks) is recomputed by the library's `evaluate.class_aurocs`
from the run's `config.json` and `scores.npz` and the test split (`sources.load_splits`),
after checking that the split's labels give the run's `is_anomaly`. Prints a Markdown table
per workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import evaluate
from mscm_jax.data import protocols, sources
from mscm_jax.errors import UserError


def per_class(workdir: str, scores: Sequence[str] = ("mscm", "knn")
              ) -> tuple[list[str], dict[str, dict[str, float]], tuple[str, ...]]:
  """(anomaly classes, {score: {class: AUROC of normals vs that class}}, labelled ones)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    raise UserError(f"{workdir}: no results.json (not a finished run's workdir)")
  with open(path) as f:
    saved = json.load(f).get("per_anomaly_class")
  if saved and all(s in m for m in saved["auroc"].values() for s in scores):
    by_class, labelled = saved["auroc"], tuple(saved["labelled"])
  else:
    by_class, labelled = _recomputed(workdir, scores)
  others = list(by_class)
  return others, {s: {c: by_class[c][s] for c in others} for s in scores}, labelled


def _recomputed(workdir: str, scores: Sequence[str]
                ) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  with np.load(os.path.join(workdir, "scores.npz")) as z:
    run = {k: z[k] for k in z.files}
  (test,) = sources.load_splits(config.dataset, [config.dataset.test_split])
  names = test.class_names
  normal, anomaly = protocols.config_classes(config, names)
  if test.labels.shape != run["is_anomaly"].shape or not np.array_equal(
      ~np.isin(test.labels, normal), run["is_anomaly"]):
    raise UserError(f"{workdir}: the test split's labels do not give the run's is_anomaly "
                    "(another split or order): per-class AUROC would be wrong")
  by_class = evaluate.class_aurocs(run, test.labels, run["is_anomaly"], names, scores)
  if config.setting != "unbalanced":
    labelled: tuple[str, ...] = ()
  else:  # the pool the labelled anomalies were drawn from, as the protocol draws them
    labelled = tuple(names[c] for c in protocols.pool_classes(len(names), normal, anomaly))
  return by_class, labelled


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--scores", default="mscm,knn")
  args = p.parse_args(argv)
  try:
    for w in args.workdirs:
      others, out, labelled = per_class(w, args.scores.split(","))
      print(f"{w} (labelled anomalies from: {', '.join(labelled) or 'none'})")
      print("| score | " + " | ".join(others) + " | labelled classes | unlabelled |")
      print("|" + "---|" * (len(others) + 3))
      for s, by_class in out.items():
        seen = [v for c, v in by_class.items() if c in labelled]
        unseen = [v for c, v in by_class.items() if c not in labelled]
        cells = [f"{by_class[c]:.3f}" for c in others]
        cells += [f"{np.mean(v):.3f}" if v else "—" for v in (seen, unseen)]
        print(f"| {s} | " + " | ".join(cells) + " |")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
