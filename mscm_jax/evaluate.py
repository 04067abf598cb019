"""Evaluation: every score side by side on the whole test split, exact metrics, results.json.

Scores (higher = more anomalous): those of `scoring.Scorer` (its module docstring lists
them: `mscm`, `detector`, `deviation`, `knn`, `knn_rot`, `rotation` and their parts), and
  pixel_knn     k-NN cosine distance of the raw, mean-centred pixels to the normal training
                set: the floor a learned score must clear
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from mscm_jax import knn, metrics, stage2
from mscm_jax.data import protocols
from mscm_jax.names import HEADLINE, test_scores
from mscm_jax.scoring import MemberScorers


def compute_scores(configs: Sequence[ml_collections.ConfigDict],
                   splits: Sequence[protocols.ADSplit],
                   scorers: MemberScorers) -> list[dict[str, Any]]:
  """Per member: {'scores': {name: [M] float64}, 'maps': {scale: [M, h, w] deviation
  maps}, 'validation': {name: [V] float64} or None}, every score on the test split and on
  the validation split when the splits have one. The K members' models run as one
  program (a single run: K = 1); a test split that every member shares (the one-class
  protocols') is read once for all."""
  first = splits[0].test_images
  shared = all(s.test_images is first or (s.test_images.shape == first.shape
                                           and np.array_equal(s.test_images, first))
               for s in splits)
  tests = scorers.scores_and_read(first if shared else [s.test_images for s in splits])
  outs = [{"scores": _with_pixel_knn(c, split, scores, split.test_images),
           "maps": test["maps"], "validation": None}
          for c, split, (scores, test) in zip(configs, splits, tests, strict=True)]
  if all(s.has_validation for s in splits):  # each member's own held-out images
    vals = scorers.scores_and_read([s.val_images for s in splits])
    for out, c, split, (scores, _) in zip(outs, configs, splits, vals, strict=True):
      out["validation"] = _with_pixel_knn(c, split, scores, split.val_images)
  return outs


def _with_pixel_knn(config, split, scores, images) -> dict[str, np.ndarray]:
  """`scores` with `pixel_knn` of `images` against the normal training images added."""
  normal = ~split.train_is_anomaly
  scores["pixel_knn"] = knn.knn_scores(split.train_images[normal], images,
                                       k=min(config.evaluate.knn_k, int(normal.sum())),
                                       center=True)
  return scores


def subset_aurocs(per: dict[str, np.ndarray], norm: dict[str, Sequence[float]],
                  labels: np.ndarray, names: Sequence[str],
                  sizes: Iterable[int]) -> dict[str, float]:
  """{'a+b': AUROC} of every equal-weight `stage2.combine` of `names` taken `sizes` at a
  time: which scales or detectors are worth summing (the ablation scripts' question)."""
  return {"+".join(sub): metrics.auroc(stage2.combine(per, norm, dict.fromkeys(sub, 1.0)),
                                       labels)
          for k in sizes for sub in itertools.combinations(names, k)}


def score_metrics(scores: dict[str, np.ndarray], is_anomaly: np.ndarray) -> dict[str, Any]:
  labels = np.asarray(is_anomaly, int)
  return {name: metrics.evaluate(v, labels) for name, v in scores.items()}


def class_aurocs(scores: dict[str, np.ndarray], classes: np.ndarray, is_anomaly: np.ndarray,
                 class_names: Sequence[str], names: Sequence[str] = HEADLINE
                 ) -> dict[str, dict[str, float]]:
  """{class: {score: AUROC}} against each anomaly class of the test split alone (every
  normal test image vs that class's images): an unbalanced run whose labels come from some
  classes is read on the classes it never saw."""
  classes, is_anomaly = np.asarray(classes), np.asarray(is_anomaly, bool)
  labels = is_anomaly.astype(int)
  out = {}
  for c in np.unique(classes[is_anomaly]):
    keep = ~is_anomaly | (classes == c)
    out[class_names[c]] = {n: metrics.auroc(scores[n][keep], labels[keep])
                           for n in names if n in scores}
  return out


def summary_table(results: dict[str, Any]) -> str:
  """The headline scores, then the per-scale ones, as a fixed-width text table: the
  test split's metrics, and each score's validation AUROC beside them."""
  test = test_scores(results)
  val = results.get("validation_scores") or {}
  names = [n for n in HEADLINE if n in test]
  names += sorted(n for n in test if n not in HEADLINE)
  w = max(18, max(len(n) for n in names) + 2)  # detector names can be scale_kind
  val_note = (f"; validation: {results['n_val']} images, {results['n_val_anomalous']} "
              "anomalous" if val else "; no validation split")
  lines = [f"{results['dataset']} {results['setting']} normal={results['normal_classes']} "
           f"seed={results['seed']}  test: {results['n_test']} images, "
           f"{results['n_test_anomalous']} anomalous{val_note}",
           f"{'score':<{w}}{'AUROC':>8}{'AUPR-in':>9}{'AUPR-out':>10}{'FPR95-AD':>10}"
           f"{'FPR95-OOD':>11}{'val AUROC':>11}"]
  for n in names:
    m = test[n]
    # .get: a results.json written before both FPR95 conventions were named lacks them
    fpr = [m.get(k) for k in ("fpr95_anomalies_positive", "fpr95_normals_positive")]
    v = val.get(n, {}).get("auroc")
    lines.append(f"{n:<{w}}{m['auroc']:>8.4f}{m['aupr_in']:>9.4f}{m['aupr_out']:>10.4f}"
                 + "".join("-".rjust(width) if x is None else f"{x:>{width}.4f}"
                           for x, width in zip(fpr + [v], (10, 11, 11), strict=True)))
  lines.append("AUROC to FPR95-OOD: the test split. FPR95-AD: normals flagged where 95 % of "
               "anomalies are caught;\nFPR95-OOD: anomalies accepted where 95 % of normals "
               "are accepted (OpenOOD). val AUROC: the validation split\n(held-out normal "
               "training images against other classes' training images), where choices "
               "are made.")
  per = results.get("per_anomaly_class")  # absent from a results.json written before it
  if per and per["auroc"]:
    first = next(iter(per["auroc"].values()))
    shown = [n for n in HEADLINE if n in first]
    w = max(12, max(len(c) for c in per["auroc"]) + 3)
    lines.append("AUROC against each anomaly class alone (* = labelled in training)")
    lines.append(f"{'class':<{w}}" + "".join(f"{n:>11}" for n in shown))
    for c, m in per["auroc"].items():
      name = c + (" *" if c in per["labelled"] else "")
      lines.append(f"{name:<{w}}" + "".join(f"{m[n]:>11.4f}" for n in shown))
  return "\n".join(lines)


def write_results(workdir: str, results: dict[str, Any], scores: dict[str, np.ndarray],
                  is_anomaly: np.ndarray, classes: np.ndarray | None = None, *,
                  validation: dict[str, np.ndarray] | None = None,
                  val_is_anomaly: np.ndarray | None = None,
                  val_classes: np.ndarray | None = None) -> str:
  """results.json (atomically), scores.npz (every test score, for later analysis; with
  `classes`, each test image's original class index as `class`) and, given `validation`,
  validation_scores.npz (the same for the validation split)."""
  for name, part, labels, cls in (("scores", scores, is_anomaly, classes),
                                  ("validation_scores", validation, val_is_anomaly,
                                   val_classes)):
    if part is None:
      continue
    tmp = os.path.join(workdir, f"{name}.tmp.npz")  # atomic, as results.json
    extra = {} if cls is None else {"class": np.asarray(cls)}
    np.savez_compressed(tmp, is_anomaly=labels, **extra, **part)
    os.replace(tmp, os.path.join(workdir, f"{name}.npz"))
  path = os.path.join(workdir, "results.json")
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(path + ".tmp", path)
  logging.info("Results written to %s", path)
  return path
