r"""AUROC of a finished run's scores against each anomaly class of the test split alone.

  TFDS_DATA_DIR=../shared/tfds python experiments/per_class_auroc.py WORKDIR [WORKDIR ...]

The unbalanced variant whose labelled anomalies come from some classes only is tested on
all; this splits its AUROC into the classes stage 2 saw labelled and those it never saw.
It reads the run's `config.json` and `scores.npz` and the test split alone through the
library (`sources.load_splits`), and checks that the split's labels give the run's
`is_anomaly` before it trusts the order. Prints a Markdown table per workdir.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import metrics
from mscm_jax.data import sources
from mscm_jax.errors import UserError


def per_class(workdir: str, scores: Sequence[str] = ("mscm", "knn")
              ) -> tuple[list[str], dict[str, dict[str, float]], tuple[str, ...]]:
  """(anomaly classes, {score: {class: AUROC of normals vs that class}}, labelled ones)."""
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  with np.load(os.path.join(workdir, "scores.npz")) as z:
    run = {k: z[k] for k in z.files}
  (test,) = sources.load_splits(config.dataset, [config.dataset.test_split])
  normal = test.class_names.index(config.dataset.normal_class)
  if test.labels.shape != run["is_anomaly"].shape or not np.array_equal(
      test.labels != normal, run["is_anomaly"]):
    raise UserError(f"{workdir}: the test split's labels do not give the run's is_anomaly "
                    "(another split or order): per-class AUROC would be wrong")
  others = [c for i, c in enumerate(test.class_names) if i != normal]
  out: dict[str, dict[str, float]] = {}
  for s in scores:
    out[s] = {}
    for c in others:
      keep = (test.labels == normal) | (test.labels == test.class_names.index(c))
      out[s][c] = metrics.auroc(run[s][keep], run["is_anomaly"][keep])
  if config.setting != "unbalanced":
    labelled: tuple[str, ...] = ()
  else:  # labelled anomalies drawn from the named classes, or from every other class
    labelled = tuple(config.get("anomaly_classes", ()) or ()) or tuple(others)
  return others, out, labelled


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
