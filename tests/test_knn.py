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


def test_turned_scores_read_each_turn_against_its_own_bank():
  rng = np.random.default_rng(3)
  banks, queries = rng.normal(size=(3, 20, 5)), rng.normal(size=(3, 9, 5))
  got = knn.turned_scores(banks, list(queries), k=2)
  assert got.shape == (3, 9)
  for r in range(3):
    np.testing.assert_allclose(got[r], _reference(banks[r], queries[r], 2), atol=1e-5)
  # a query that is bank row 0 under turn 1 only: near under its turn, not under another
  queries[1, 0], queries[2, 0] = banks[1, 0], banks[1, 0]
  got = knn.turned_scores(banks, queries, k=1)
  assert got[1, 0] < 1e-5 < got[2, 0]


def test_turned_scores_need_as_many_turns_of_queries_as_of_the_bank():
  with pytest.raises(ValueError, match="2 turns of queries against 3"):
    knn.turned_scores(np.ones((3, 4, 2)), np.ones((2, 1, 2)))
