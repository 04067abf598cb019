"""Modern Hopfield memory with learnable prototypes (docs/method.md section 2).

At every position the feature f (C channels) queries N stored prototypes P (N x d):
q = LN(W_q f), K = LN(W_k P), a = softmax(beta q K^T), read-out r = W_o (a P) in C
channels. r is "the prototype retrieved for this location"; stage 2 scores the
deviation between f and r.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["HopfieldMemory", "hard_shrink"]

Dtype = Any


def hard_shrink(a: jax.Array, threshold: float, eps: float = 1e-12) -> jax.Array:
  """MemAE hard shrinkage: zero the weights below `threshold`, then renormalise to sum 1.

  Sparse addressing keeps an input from being rebuilt from a blend of many prototypes.
  """
  a = nn.relu(a - threshold) * a / (jnp.abs(a - threshold) + eps)
  return a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), eps)


class HopfieldMemory(nn.Module):
  """Retrieves a prototype for every feature vector; returns (read-out r, attention a).

  Works on any leading shape: f [..., C] -> r [..., C] (in `dtype`), a [..., N] (float32,
  softmax always in float32). `steps > 1` runs extra Hopfield updates: xi = a P becomes
  the next query through the same key projection, q = LN(W_k xi); shrinkage, when on,
  applies at every step, as does `top_k` (sparse retrieval: top_k=1 returns the single
  nearest prototype, whatever beta). `beta` None (or <= 0) means 1/sqrt(proto_dim); with
  `learnable_beta` it is the initial value of a scalar param stored as 'log_beta'.
  """

  num_prototypes: int = 256
  proto_dim: int = 128
  beta: float | None = None
  learnable_beta: bool = False
  shrink_threshold: float = 0.0
  steps: int = 1
  dtype: Dtype = jnp.float32
  proto_init_std: float = 1.0  # prototypes start spread (the variance hinge's target is 1)
  top_k: int = 0  # > 0: attend only to the k best-matching prototypes (0 = all)

  def _beta(self) -> jax.Array:
    beta0 = self.beta if self.beta is not None and self.beta > 0 else None
    if beta0 is None:
      beta0 = 1.0 / math.sqrt(self.proto_dim)
    if not self.learnable_beta:
      return jnp.asarray(beta0, jnp.float32)
    log_beta = self.param("log_beta", nn.initializers.constant(math.log(beta0)), (), jnp.float32)
    return jnp.exp(log_beta)

  @nn.compact
  def __call__(self, f: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    prototypes = self.param(
      "prototypes",
      nn.initializers.normal(self.proto_init_std),
      (self.num_prototypes, self.proto_dim),
      jnp.float32,
    )
    key_proj = nn.Dense(self.proto_dim, dtype=self.dtype, name="key")
    key_norm = nn.LayerNorm(dtype=self.dtype, name="key_norm")
    keys = key_norm(key_proj(prototypes)).astype(jnp.float32)  # [N, d]
    q = nn.LayerNorm(dtype=self.dtype, name="query_norm")(
      nn.Dense(self.proto_dim, dtype=self.dtype, name="query")(f)
    )
    beta = self._beta()

    xi = None  # the retrieved pattern, set by the first step
    for step in range(self.steps):
      if step > 0:  # Hopfield update: the retrieved pattern is the next query.
        q = key_norm(key_proj(xi.astype(self.dtype)))
      logits = beta * jnp.einsum("...d,nd->...n", q.astype(jnp.float32), keys)
      if 0 < self.top_k < self.num_prototypes:
        kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
      a = jax.nn.softmax(logits, axis=-1)
      if self.shrink_threshold > 0:
        a = hard_shrink(a, self.shrink_threshold)
      xi = jnp.einsum("...n,nd->...d", a, prototypes)  # float32

    r = nn.Dense(f.shape[-1], dtype=self.dtype, name="out")(xi.astype(self.dtype))
    return r, a
