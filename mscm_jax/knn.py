"""k-nearest-neighbour anomaly scores: cosine distance to the normal training set.

The cheap, strong baseline (CSI-like) that every learned score is compared with, and
the stage-1 health probe.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mscm_jax.data import device


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_distance(queries: jax.Array, bank: jax.Array, k: int) -> jax.Array:
  sims = l2_normalize(queries) @ bank.T
  return 1.0 - jnp.mean(jax.lax.top_k(sims, k)[0], axis=-1)


def knn_scores(train_features: np.ndarray, test_features: np.ndarray, k: int = 5,
               chunk: int = 1024, center: bool = False) -> np.ndarray:
  """1 - mean cosine similarity to the k nearest training features (higher = anomalous).

  `center` subtracts the training mean first (helps raw pixels, method.md section 7).
  """
  train = np.asarray(train_features, np.float32).reshape(len(train_features), -1)
  test = np.asarray(test_features, np.float32).reshape(len(test_features), -1)
  if not 1 <= k <= len(train):
    raise ValueError(f"k={k} needs 1 <= k <= {len(train)} training features")
  if center:
    mean = train.mean(axis=0, keepdims=True)
    train, test = train - mean, test - mean
  bank = l2_normalize(jnp.asarray(train))
  return device.map_batches(lambda q: _knn_distance(q, bank, k), test,
                            min(chunk, len(test))).astype(np.float64)


def turned_scores(banks: np.ndarray, queries, k: int = 5) -> np.ndarray:
  """[R, M]: `knn_scores` of the queries under each of R quarter-turns against the bank
  under the same turn (banks [R, N, D], queries [R, M, D] or R arrays). Row 0 is `knn`;
  the mean over the rows is CSI's `knn_rot`."""
  if len(banks) != len(queries):
    raise ValueError(f"{len(queries)} turns of queries against {len(banks)} of the bank")
  return np.stack([knn_scores(b, q, k=k) for b, q in zip(banks, queries)])


def leave_one_out_scores(features: np.ndarray, k: int = 5) -> np.ndarray:
  """`knn_scores` of every row of `features` against all the other rows: what a held-out
  image of the same distribution would score, with no image held out. Sets the spread of a
  k-NN score over the normal training set (`scoring.Scorer`)."""
  n = len(features)
  if not 1 <= k < n:
    raise ValueError(f"k={k} needs 1 <= k < {n} features (one is the row itself)")
  # each row's nearest neighbour is itself, at cosine similarity 1: take it back out
  with_self = knn_scores(features, features, k=k + 1)
  return 1.0 - ((k + 1) * (1.0 - with_self) - 1.0) / k
