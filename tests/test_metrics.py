"""Metrics against brute-force references written independently here, plus edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mscm_jax import metrics


# ---------------------------------------------------------------- references


def ref_auroc(s: np.ndarray, y: np.ndarray) -> float:
  """Mean over all (anomaly, normal) pairs of 1[s_a > s_n] + 0.5 * 1[s_a == s_n]."""
  a, n = s[y == 1], s[y == 0]
  total = 0.0
  for sa, sn in itertools.product(a, n):
    total += 1.0 if sa > sn else 0.5 if sa == sn else 0.0
  return total / (len(a) * len(n))


def ref_ap(s: np.ndarray, y: np.ndarray) -> float:
  """Step-wise AP: loop over distinct thresholds, highest first, flag score >= t."""
  n_pos = int(np.sum(y == 1))
  ap, prev_recall = 0.0, 0.0
  for t in sorted(set(s.tolist()), reverse=True):
    flagged = s >= t
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    recall = tp / n_pos
    ap += (recall - prev_recall) * (tp / (tp + fp))
    prev_recall = recall
  return ap


def ref_fpr_at_tpr(s: np.ndarray, y: np.ndarray, tpr: float) -> float:
  """Lowest FPR over thresholds t (score >= t) whose TPR reaches `tpr`."""
  best = np.inf
  for t in set(s.tolist()):
    flagged = s >= t
    if np.sum(flagged & (y == 1)) / np.sum(y == 1) >= tpr:
      best = min(best, np.sum(flagged & (y == 0)) / np.sum(y == 0))
  return float(best)


def random_case(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
  """Both classes guaranteed; anomalies shifted up so the metrics are not all trivial."""
  y = rng.integers(0, 2, size=n)
  y[0], y[1] = 0, 1
  rng.shuffle(y)
  s = rng.normal(size=n) + 0.8 * y
  if ties:
    s = np.round(s * 2) / 2  # few distinct values, many ties across classes
  return s, y


CASES = [(n, ties, seed) for n in (2, 3, 7, 50, 301) for ties in (False, True) for seed in range(3)]


# ---------------------------------------------------------------- vs references


@pytest.mark.parametrize("n,ties,seed", CASES)
def test_auroc_matches_pairwise_reference(n, ties, seed):
  s, y = random_case(np.random.default_rng(seed), n, ties)
  assert metrics.auroc(s, y) == pytest.approx(ref_auroc(s, y), abs=1e-12)


@pytest.mark.parametrize("n,ties,seed", CASES)
def test_aupr_matches_threshold_loop(n, ties, seed):
  s, y = random_case(np.random.default_rng(seed), n, ties)
  assert metrics.aupr(s, y, positive=1) == pytest.approx(ref_ap(s, y), abs=1e-12)
  assert metrics.aupr(s, y, positive=0) == pytest.approx(ref_ap(-s, 1 - y), abs=1e-12)


@pytest.mark.parametrize("n,ties,seed", CASES)
@pytest.mark.parametrize("tpr", [0.5, 0.95, 1.0])
def test_fpr_at_tpr_matches_threshold_loop(n, ties, seed, tpr):
  s, y = random_case(np.random.default_rng(seed), n, ties)
  assert metrics.fpr_at_tpr(s, y, tpr) == pytest.approx(ref_fpr_at_tpr(s, y, tpr), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_aupr_in_out_symmetry(seed):
  s, y = random_case(np.random.default_rng(seed), 80, ties=seed % 2 == 0)
  assert metrics.aupr(s, y, positive=1) == pytest.approx(
    metrics.aupr(-s, 1 - y, positive=0), abs=1e-12
  )


# ---------------------------------------------------------------- known values


def test_known_values_from_sklearn_docs():
  # average_precision_score and roc_auc_score docstring example.
  s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
  assert metrics.aupr(s, y) == pytest.approx(5 / 6)
  assert metrics.auroc(s, y) == pytest.approx(0.75)


def test_perfect_separation():
  y = np.array([0] * 10 + [1] * 10)
  s = np.arange(20.0)
  assert metrics.auroc(s, y) == 1.0
  assert metrics.fpr_at_tpr(s, y) == 0.0
  assert metrics.aupr(s, y, 1) == 1.0 and metrics.aupr(s, y, 0) == 1.0


def test_inverted_ranking():
  y = np.array([0] * 10 + [1] * 10)
  s = -np.arange(20.0)
  assert metrics.auroc(s, y) == 0.0
  assert metrics.fpr_at_tpr(s, y) == 1.0


def test_constant_scores():
  y = np.array([0, 0, 0, 1])
  s = np.full(4, 3.0)
  assert metrics.auroc(s, y) == 0.5
  assert metrics.fpr_at_tpr(s, y) == 1.0
  assert metrics.aupr(s, y, 1) == pytest.approx(0.25)  # prevalence
  assert metrics.aupr(s, y, 0) == pytest.approx(0.75)


def test_fpr_tie_straddling_target_counts_whole_tie():
  # 20 anomalies: 18 at 5.0, 2 tied at 1.0 with 4 normals; 6 normals lower.
  # 95% needs 19 anomalies, so the 1.0 group is taken whole: FPR = 4 / 10.
  s = np.array([5.0] * 18 + [1.0] * 2 + [1.0] * 4 + [0.0] * 6)
  y = np.array([1] * 20 + [0] * 10)
  assert metrics.fpr_at_tpr(s, y, 0.95) == pytest.approx(0.4)
  assert metrics.fpr_at_tpr(s, y, 0.90) == 0.0  # 18/20 reached before the tie


def test_two_items_and_bool_labels():
  assert metrics.auroc([0.0, 1.0], np.array([False, True])) == 1.0
  assert metrics.auroc([1.0, 1.0], [0, 1]) == 0.5


def test_large_input_is_fast_and_exact():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, size=200_000)
  s = np.round(rng.normal(size=y.size) + y, 1)
  got = metrics.auroc(s, y)
  # Independent O(n log n) check via average ranks (Mann-Whitney).
  order = np.argsort(s, kind="stable")
  ranks = np.empty(s.size)
  sorted_s = s[order]
  _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
  ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
  n1, n0 = y.sum(), (1 - y).sum()
  expected = (ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
  assert got == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- evaluate


def test_evaluate_gives_every_metric_as_its_reference():
  rng = np.random.default_rng(1)
  s, y = random_case(rng, 64, ties=True)
  got = metrics.evaluate(s, y)
  assert set(got) == {"auroc", "aupr_in", "aupr_out", "fpr95_anomalies_positive",
                      "fpr95_normals_positive"}
  assert got["auroc"] == pytest.approx(ref_auroc(s, y))
  assert got["fpr95_anomalies_positive"] == pytest.approx(ref_fpr_at_tpr(s, y, 0.95))
  assert got["fpr95_normals_positive"] == pytest.approx(ref_fpr_at_tpr(-s, 1 - y, 0.95))


def test_both_fpr95_conventions_by_hand():
  # Normals score 0..19, anomalies 10.5..19.5. Catching all 10 anomalies (9.5 is short of
  # 95 %) flags the normals 11..19: 9/20. Accepting 19 of 20 normals (score <= 18) lets
  # the anomalies 10.5..17.5 through: 8/10.
  s = np.r_[np.arange(20.0), np.arange(10) + 10.5]
  y = np.r_[np.zeros(20, int), np.ones(10, int)]
  got = metrics.evaluate(s, y)
  assert got["fpr95_anomalies_positive"] == pytest.approx(0.45)
  assert got["fpr95_normals_positive"] == pytest.approx(0.8)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "fn",
  [
    metrics.auroc,
    lambda s, y: metrics.aupr(s, y, 1),
    lambda s, y: metrics.aupr(s, y, 0),
    metrics.fpr_at_tpr,
    metrics.evaluate,
  ],
)
def test_errors(fn):
  with pytest.raises(ValueError, match="length"):
    fn([0.1, 0.2, 0.3], [0, 1])
  with pytest.raises(ValueError, match="0 .normal. or 1"):
    fn([0.1, 0.2, 0.3], [0, 1, 2])
  with pytest.raises(ValueError, match="both classes"):
    fn([0.1, 0.2, 0.3], [1, 1, 1])
  with pytest.raises(ValueError, match="both classes"):
    fn([0.1, 0.2], [0, 0])
  with pytest.raises(ValueError, match="2 non-finite"):
    fn([0.1, np.nan, np.inf, 0.3], [0, 1, 0, 1])


def test_argument_errors():
  with pytest.raises(ValueError, match="positive"):
    metrics.aupr([0.1, 0.2], [0, 1], positive=2)
  with pytest.raises(ValueError, match="tpr"):
    metrics.fpr_at_tpr([0.1, 0.2], [0, 1], tpr=0.0)
