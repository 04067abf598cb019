"""k-NN cosine scores against a brute-force reference."""

import numpy as np
import pytest

from mscm_jax import knn


def _reference(train, test, k, center=False):
  train = train.reshape(len(train), -1).astype(np.float64)
  test = test.reshape(len(test), -1).astype(np.float64)
  if center:
    mean = train.mean(0)
    train, test = train - mean, test - mean
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  test /= np.linalg.norm(test, axis=1, keepdims=True)
  sims = test @ train.T
  return 1 - np.sort(sims, axis=1)[:, ::-1][:, :k].mean(1)


@pytest.mark.parametrize("k,center,chunk", [(1, False, 7), (5, False, 1024), (3, True, 4)])
def test_matches_brute_force(k, center, chunk):
  rng = np.random.default_rng(0)
  train, test = rng.normal(size=(40, 2, 3)), rng.normal(size=(23, 2, 3))
  np.testing.assert_allclose(knn.knn_scores(train, test, k, chunk=chunk, center=center),
                             _reference(train, test, k, center), atol=1e-5)


def test_training_points_score_zero_and_outliers_high():
  rng = np.random.default_rng(1)
  train = rng.normal(size=(30, 8)) + 5.0
  scores = knn.knn_scores(train, np.concatenate([train[:3], -train[:3]]), k=1)
  np.testing.assert_allclose(scores[:3], 0.0, atol=1e-5)
  assert scores[3:].min() > 1.5


def test_k_out_of_range():
  with pytest.raises(ValueError, match="k=11"):
    knn.knn_scores(np.ones((10, 2)), np.ones((2, 2)), k=11)


@pytest.mark.parametrize("k", [1, 4])
def test_leave_one_out_scores_each_row_against_the_others(k):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(25, 6))
  x[3] = x[7]  # an exact duplicate keeps its twin as a neighbour
  want = [_reference(np.delete(x, i, axis=0), x[i:i + 1], k)[0] for i in range(len(x))]
  np.testing.assert_allclose(knn.leave_one_out_scores(x, k), want, atol=1e-5)
  assert knn.leave_one_out_scores(x, 1)[3] < 1e-5


def test_leave_one_out_needs_k_below_the_rows():
  with pytest.raises(ValueError, match="k=3"):
    knn.leave_one_out_scores(np.ones((3, 2)), k=3)
