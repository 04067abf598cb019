r"""The scales read on the validation split: each scale's detector and deviation alone.

Every finished run reports, beside its all-scale scores, each stage-2 detector alone
(`mscm_<detector>`) and each memory scale's training-free deviation alone
(`deviation_<scale>`). This tables their validation AUROC over the finished cells of each
sweep root, so that `memory.scales`, `stage2.scales` and `stage2.deviation_scales` are read
where choices are read. Subsets of two scales need the per-image scores
(`experiments/ablation.py`); this reads only what results.json keeps.

  python experiments/scales.py experiments/results/cpu10 experiments/results/cpu_long
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from mscm_jax import sweep
from mscm_jax.names import split_scores


def scale_aurocs(results: dict[str, Any], split: str = "validation"
                 ) -> dict[str, tuple[float, str]]:
  """{row: (AUROC, the row it is read against)} of one run: the detectors together and
  each alone (against them together), the deviation over its scales and each scale's alone
  (against that). `split_scores` reads an old run's `mscm` as `detector`."""
  scores = split_scores(results, split)
  s2 = results["stage2"]
  detectors = f"detectors: {' + '.join(s2['detectors'])}"
  deviation = f"deviation: {' + '.join(s2['deviation_scales'])}"
  out = {detectors: (scores["detector"]["auroc"], "")}
  out.update({f"detector: {d} alone": (scores[f"mscm_{d}"]["auroc"], detectors)
              for d in s2["detectors"]})
  out[deviation] = (scores["deviation"]["auroc"], "")
  out.update({f"deviation: {s} alone": (scores[f"deviation_{s}"]["auroc"], deviation)
              for s in s2["norm"]["deviation"] if [s] != list(s2["deviation_scales"])})
  return out


def table(roots: Sequence[str], split: str = "validation") -> str:
  """Markdown: one row per scale reading, per root its mean over the root's finished cells
  and its paired difference from the row it is read against (how many runs it is lower)."""
  per_root = {root: [scale_aurocs(r, split) for _, r in sweep.finished_cells(root)]
              for root in roots}
  empty = [root for root, runs in per_root.items() if not runs]
  if empty:
    raise SystemExit(f"no finished cell with scores under {', '.join(empty)}")
  names = list(dict.fromkeys(k for runs in per_root.values() for r in runs for k in r))
  md = [f"{split} AUROC, mean over the runs; paired difference from the readings together "
        "(runs where it is lower).", "",
        "| | " + " | ".join(f"{root} (n = {len(runs)}) | difference" for root, runs
                             in per_root.items()) + " |",
        "|---|" + "---|---|" * len(roots)]
  for name in names:
    cells = []
    for runs in per_root.values():
      pairs = [(r[name][0], r[r[name][1]][0] if r[name][1] else None) for r in runs
               if name in r]
      vals = np.array([v for v, _ in pairs])
      cells.append(f"{vals.mean():.3f}" if len(vals) else "-")
      diffs = np.array([v - ref for v, ref in pairs if ref is not None])
      cells.append(f"{diffs.mean():+.3f} ({int((diffs < 0).sum())} of {len(diffs)})"
                   if len(diffs) else "")
    md.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(md)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("roots", nargs="+", help="sweep roots (or their --export copies)")
  p.add_argument("--split", default="validation", choices=sweep.SPLITS)
  a = p.parse_args(argv)
  print(table(a.roots, a.split))
  return 0


if __name__ == "__main__":
  sys.exit(main())
