"""Stage 2: the anomaly distance detector, one small CNN per scale (method.md section 3).

It maps a scale's deviation input (the map 1 - cos(f, r), [B, h, w, 1], or the difference
f - r, [B, h, w, C]) to a vector phi whose distance to a fixed centre c is the score.
Deep SVDD's rules against the trivial solution (phi constant = c): no bias terms and no
affine normalisation anywhere, and a centre fixed from the initial mean.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mscm_jax.models.anomem import cosine_deviation
from mscm_jax.models.conv import Conv

Dtype = Any


def deviation_input(f: jax.Array, r: jax.Array, kind: str = "cosine_distance") -> jax.Array:
  """The detector's input for one scale: [B, h, w, 1] deviation map or [B, h, w, C] f - r.

  'cosine_distance' compares on the unit sphere (1 - cos); 'cosine_similarity' is cos
  itself, the same map upside down; 'squared_distance' is the mean squared difference over
  channels;
  'difference' is the tensor f - r itself; 'feature' is f alone, without the memory (the
  ablation that says what the read-out adds).

  Why 'cosine_similarity': the detector is bias-free and positively homogeneous, so phi(0) = 0.
  fed 1 - cos, the most typical (lowest-deviation) inputs sit near 0, far from the
  centre, and score as anomalous; fed cos, typical inputs are the large ones and the
  "too typical" side is bounded by cos <= 1 (measured in experiments/detector_sweep.py).

  Pooled ([B, C]) features become 1x1 maps, so every scale has the same form.
  """
  if f.ndim == 2:
    f, r = f[:, None, None, :], r[:, None, None, :]
  if kind == "cosine_distance":
    return cosine_deviation(f, r)[..., None]
  if kind == "cosine_similarity":
    return 1.0 - cosine_deviation(f, r)[..., None]
  if kind == "squared_distance":  # no unit sphere: norms count too
    d = f.astype(jnp.float32) - r.astype(jnp.float32)
    return jnp.mean(jnp.square(d), axis=-1, keepdims=True)
  if kind == "difference":
    return (f - r).astype(jnp.float32)
  if kind == "feature":  # no read-out at all: the control that measures what r adds
    return f.astype(jnp.float32)
  raise ValueError(f"detector input kind {kind!r} is not 'cosine_distance', "
                   "'cosine_similarity', 'squared_distance', "
                   "'difference' or 'feature'")


class DistanceDetector(nn.Module):
  """Bias-free CNN: 3x3 convs (stride 2 after the first while the map is larger than 2x2),
  leaky ReLU, global average pooling, a bias-free linear map to `out_dim`.

  With `classifier`, also returns a logit from a separate head (unbalanced setting, BCE);
  that head may have a bias, since it does not take part in the distance.
  """

  widths: tuple[int, ...] = (16, 32)
  out_dim: int = 32
  classifier: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    h = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      stride = 2 if i > 0 and min(h.shape[1:3]) > 2 else 1
      h = Conv(width, 3, stride, padding=1, dtype=self.dtype, name=f"conv{i}")(h)
      h = nn.leaky_relu(h, 0.1)
    pooled = jnp.mean(h, axis=(1, 2))
    out = {"phi": nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                           name="out")(pooled).astype(jnp.float32)}
    if self.classifier:
      out["logit"] = nn.Dense(1, dtype=self.dtype, name="classifier")(pooled)[:, 0].astype(
          jnp.float32)
    return out
