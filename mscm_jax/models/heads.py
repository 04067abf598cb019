"""MLP projection heads: the final embedding's head and the per-scale branch heads."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["ProjectionHead"]

Dtype = Any


class ProjectionHead(nn.Module):
  """Dense -> BN -> relu -> ... -> Dense; no BN or relu on the output (SimCLR head).

  `dims` lists every layer's width, the last one being the output: (512, 128) is one
  hidden layer of 512 and a 128-d output. Returns [..., dims[-1]] in float32.
  """

  dims: tuple[int, ...] = (512, 128)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not self.dims:
      raise ValueError("ProjectionHead needs at least one layer width")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.dims[:-1]):
      x = nn.Dense(width, use_bias=False, dtype=self.dtype, name=f"dense{i}")(x)
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}"
      )(x)
      x = nn.relu(x)
    x = nn.Dense(self.dims[-1], dtype=self.dtype, name="out")(x)
    return x.astype(jnp.float32)
