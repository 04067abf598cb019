"""Stage-1 losses: NT-Xent, prototype variance hinge, feature alignment, and a memory-health metric.

Pure jnp functions over full (global) arrays: under jax.jit with the batch sharded on
a mesh, XLA inserts the cross-device communication, so negatives come from every device
without axis names or pmean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
  "nt_xent", "variance_hinge", "feature_alignment", "memory_usage_entropy", "svdd_distance",
  "deep_svdd", "deep_sad",
]

_MASK_VALUE = -1e9  # logit of a self-pair: exp() underflows to exactly 0


def nt_xent(
  z1: jax.Array, z2: jax.Array, temperature: float, is_anomaly: jax.Array | None = None
) -> jax.Array:
  """SimCLR NT-Xent over the whole batch, both views as anchors; scalar float32.

  z1, z2: [B, D], two views of the same B images. Each of the 2B rows is an anchor
  whose positive is the other view of its image and whose negatives are the 2B - 2
  other rows. Unbalanced setting: rows with is_anomaly True are negatives only — they
  add no anchor term (two views of an anomaly are not pulled together, which would
  make anomalies a "normal" cluster) but stay in every anchor's denominator, so normal
  images are pushed away from them. Mean over the anchors that count (0 if none).
  """
  b = z1.shape[0]
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  logits = (z @ z.T) / temperature
  logits = jnp.where(jnp.eye(2 * b, dtype=bool), _MASK_VALUE, logits)
  pos = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
  positive_logit = jnp.take_along_axis(logits, pos[:, None], axis=1)[:, 0]
  log_prob = positive_logit - jax.nn.logsumexp(logits, axis=1)
  if is_anomaly is None:
    weight = jnp.ones((2 * b,), jnp.float32)
  else:
    normal = ~jnp.asarray(is_anomaly, bool)
    weight = jnp.concatenate([normal, normal]).astype(jnp.float32)
  return -jnp.sum(weight * log_prob) / jnp.maximum(jnp.sum(weight), 1.0)


def variance_hinge(prototypes: jax.Array, eps: float = 1e-4) -> jax.Array:
  """VICReg variance term mean_j max(0, 1 - sqrt(Var_i P_ij + eps)) over prototypes i.

  Keeps every coordinate's spread across prototypes >= 1, so the prototypes cannot
  collapse onto one point (a memory that retrieves the same thing everywhere).
  """
  p = prototypes.astype(jnp.float32)
  std = jnp.sqrt(jnp.var(p, axis=0) + eps)
  return jnp.mean(jax.nn.relu(1.0 - std))


def feature_alignment(f: jax.Array, r: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean squared error between stop_gradient(f) and r, over rows, positions and channels.

  A mean over channels, not a sum: with the sum the loss grew with the width (about 250
  at the start of a CPU-preset run) and SGD at lr 0.3 diverged within 20 steps.

  Pulls the read-out towards normal features without moving the features: an optional
  regulariser in the encoder's path and the codebook (k-means) loss in branch/codebook
  mode. f, r: [B, ..., C]; mask: [B] bool, True = the row counts (pass ~is_anomaly so
  labelled anomalies are excluded). Averages over the counted rows and all positions.
  """
  d = jax.lax.stop_gradient(f).astype(jnp.float32) - r.astype(jnp.float32)
  per_pos = jnp.mean(jnp.square(d), axis=-1)  # [B, ...]
  per_row = jnp.mean(per_pos.reshape(per_pos.shape[0], -1), axis=1)  # [B]
  if mask is None:
    return jnp.mean(per_row)
  w = jnp.asarray(mask, bool).astype(jnp.float32)
  return jnp.sum(w * per_row) / jnp.maximum(jnp.sum(w), 1.0)


def memory_usage_entropy(attention: jax.Array) -> jax.Array:
  """Entropy of the batch-averaged attention over the N prototypes, divided by log N.

  A health metric in [0, 1]: near 0 = every read lands on one prototype (collapse),
  1 = prototypes used uniformly. attention: [..., N], rows summing to 1.
  """
  n = attention.shape[-1]
  p = jnp.mean(attention.astype(jnp.float32).reshape(-1, n), axis=0)
  p = p / jnp.maximum(jnp.sum(p), 1e-12)
  h = jnp.sum(jax.scipy.special.entr(p))
  return h / jnp.log(jnp.float32(max(n, 2)))


def svdd_distance(phi: jax.Array, center: jax.Array) -> jax.Array:
  """Squared distance ||phi - c||^2 per row: the stage-2 score of one scale."""
  return jnp.sum(jnp.square(phi.astype(jnp.float32) - center), axis=-1)


def deep_svdd(phi: jax.Array, center: jax.Array) -> jax.Array:
  """One-class objective: mean ||phi - c||^2 over normal training data (Ruff et al. 2018)."""
  return jnp.mean(svdd_distance(phi, center))


def deep_sad(phi: jax.Array, center: jax.Array, is_anomaly: jax.Array, eta: float = 1.0,
             eps: float = 1e-6) -> jax.Array:
  """Unbalanced objective (Ruff et al. 2020): normals pulled to c, labelled anomalies pushed
  away through eta / (||phi - c||^2 + eps); mean over the batch."""
  d = svdd_distance(phi, center)
  anomaly = jnp.asarray(is_anomaly, bool)
  return jnp.mean(jnp.where(anomaly, eta / (d + eps), d))
