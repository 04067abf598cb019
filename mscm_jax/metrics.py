"""Exact anomaly-detection metrics: AUROC, AUPR-in/out, FPR at 95 % TPR in both conventions.

FPR95 means two different numbers in the literature, so each has its own name:
  fpr95_anomalies_positive  anomalies are the positives: the fraction of normals flagged
                            at the threshold that catches 95 % of the anomalies (the
                            anomaly-detection papers' FPR95)
  fpr95_normals_positive    normals (in-distribution) are the positives: the fraction of
                            anomalies accepted at the threshold that accepts 95 % of the
                            normals (the OOD literature's, OpenOOD's FPR@95)

Convention throughout: label 1 = anomaly, 0 = normal, and a higher score means
more anomalous. Everything is computed in float64 NumPy on the host, on the full
score vector, with ties handled exactly, so the numbers do not depend on batch
size, device or evaluation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["auroc", "aupr", "fpr_at_tpr", "evaluate"]


def _validate(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns (float64 scores, bool labels), raising on anything that would skew a metric."""
  s = np.asarray(scores, dtype=np.float64)
  y = np.asarray(labels)
  if s.ndim != 1 or y.ndim != 1:
    raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
  if s.shape[0] != y.shape[0]:
    raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
  if y.dtype != np.bool_:
    if not np.issubdtype(y.dtype, np.number):
      raise ValueError(f"labels must be numeric or bool, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
      raise ValueError(
        f"labels must be 0 (normal) or 1 (anomaly); {int(bad.sum())} of "
        f"{y.shape[0]} are not, e.g. {y[bad][:5].tolist()}"
      )
  y = y.astype(bool)
  n_bad = int((~np.isfinite(s)).sum())
  if n_bad:
    raise ValueError(f"scores contain {n_bad} non-finite values (NaN or Inf) out of {s.shape[0]}")
  n_pos = int(y.sum())
  if n_pos == 0 or n_pos == y.shape[0]:
    raise ValueError(
      f"need both classes, got {n_pos} anomalies and {y.shape[0] - n_pos} "
      f"normals; the metric is undefined"
    )
  return s, y


def _counts_by_threshold(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per distinct score, highest first: (anomaly count, normal count).

  Grouping equal scores is what makes every metric below exact under ties:
  a threshold can only ever take or leave a tied group whole.
  """
  _, inverse = np.unique(s, return_inverse=True)
  k = int(inverse.max()) + 1
  pos = np.bincount(inverse[y], minlength=k)[::-1]
  neg = np.bincount(inverse[~y], minlength=k)[::-1]
  return pos.astype(np.int64), neg.astype(np.int64)


def auroc(scores: Any, labels: Any) -> float:
  """Area under the ROC curve, exactly, as the Mann-Whitney U statistic.

  Equals the mean over all (anomaly, normal) pairs of 1[s_a > s_n] + 0.5 * 1[s_a == s_n],
  computed in O(n log n) from per-score counts (integer arithmetic until the end).
  """
  s, y = _validate(scores, labels)
  pos, neg = _counts_by_threshold(s, y)
  n_neg = int(neg.sum())
  neg_below = n_neg - np.cumsum(neg)  # normals strictly lower than each group
  u2 = int(np.sum(pos * (2 * neg_below + neg)))  # 2U, an integer
  return u2 / (2.0 * int(pos.sum()) * n_neg)


def aupr(scores: Any, labels: Any, positive: int = 1) -> float:
  """Average precision with `positive` as the positive class.

  AP = sum_k (R_k - R_{k-1}) * P_k over distinct thresholds t_k, highest first,
  predicting positive when score >= t_k, with R_0 = 0 (scikit-learn's
  average_precision_score). positive=1 is AUPR-out (anomaly positive, score as
  is); positive=0 is AUPR-in (normal positive, ranked by -score).
  """
  if positive not in (0, 1):
    raise ValueError(f"positive must be 0 or 1, got {positive!r}")
  s, y = _validate(scores, labels)
  if positive == 0:
    s, y = -s, ~y
  pos, neg = _counts_by_threshold(s, y)
  tps = np.cumsum(pos)
  fps = np.cumsum(neg)
  precision = tps / (tps + fps)
  recall = tps / tps[-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def fpr_at_tpr(scores: Any, labels: Any, tpr: float = 0.95) -> float:
  """False-positive rate on normals at the operating point where TPR first reaches `tpr`.

  An image is flagged anomalous when score >= t. TPR(t) is the fraction of
  anomalies flagged, FPR(t) the fraction of normals flagged. The result is
  FPR(t*) with t* the highest threshold, among the distinct score values, with
  TPR(t*) >= tpr; since FPR only grows as t falls, this is the lowest FPR of
  any threshold meeting the TPR target. Tied scores are taken or left together,
  so a tie straddling the target counts all its normals (no interpolation).
  """
  if not 0.0 < tpr <= 1.0:
    raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
  s, y = _validate(scores, labels)
  pos, neg = _counts_by_threshold(s, y)
  tps = np.cumsum(pos)
  fps = np.cumsum(neg)
  reached = tps / tps[-1] >= tpr  # monotone; last entry is TPR = 1 >= tpr
  k = int(np.argmax(reached))
  return float(fps[k] / fps[-1])


def evaluate(scores: Any, labels: Any) -> dict[str, float]:
  """Every metric (both FPR95 conventions: see the module docstring)."""
  s, y = _validate(scores, labels)
  return {
    "auroc": auroc(s, y),
    "aupr_in": aupr(s, y, positive=0),
    "aupr_out": aupr(s, y, positive=1),
    "fpr95_anomalies_positive": fpr_at_tpr(s, y, tpr=0.95),
    "fpr95_normals_positive": fpr_at_tpr(-s, 1 - y, tpr=0.95),
  }

