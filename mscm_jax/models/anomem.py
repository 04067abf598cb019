"""AnoMem stage-1 model: a CIFAR ResNet with a Hopfield memory at chosen scales.

Scales: 'res1'..'res4' (stage outputs, a memory read at every position) and 'pooled'
(the global-average-pooled embedding). `memory_mode` says what the encoder does with
the read-out r of a scale's feature f:
  'replace'  — the next stage (or, for 'pooled', the embedding) receives r;
  'residual' — it receives f + r;
  'branch'   — features flow unchanged; with memory_train='contrastive' each scale's
               read-out is pooled and projected by its own head (for its own NT-Xent
               term), with 'codebook' the memory reads stop_gradient(f) and learns only
               from a codebook loss (`losses.feature_alignment`), costing the encoder nothing.
With a `memory_gate` g in [0, 1] (the memory entering the path during a warm-up),
'residual' gives f + g r and 'replace' f + g (r - f); None is g = 1: exactly f + r and r.

Unbalanced setting: rows flagged by `anomaly_mask` (labelled anomalies) get the read-out
f + stop_gradient(r - f) instead of r (computed as stop_gradient(r) + (f - stop_gradient(f)),
which has the same gradient and is bit-identical to r). The forward pass, the outputs and
stage-2 deviations are unchanged, but no gradient from any loss reaches the memory's
parameters (prototypes, projections, beta) through those rows: labelled anomalies do not
train the prototypes. The gradient that r would carry goes to f instead (in codebook mode
f is the stop-gradient memory input, so it goes nowhere).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mscm_jax.models.heads import ProjectionHead
from mscm_jax.models.memory import HopfieldMemory
from mscm_jax.models.resnet import ResNetStage, Stem, check_stages, normalize_images
from mscm_jax.names import MEMORY_MODES, MEMORY_TRAIN, SCALES, STAGE_NAMES

__all__ = [
  "AnoMem",
  "SCALES",
  "MEMORY_MODES",
  "MEMORY_TRAIN",
  "mask_anomaly_readout",
  "cosine_deviation",
]

Dtype = Any



def mask_anomaly_readout(f: jax.Array, r: jax.Array, anomaly_mask: jax.Array | None) -> jax.Array:
  """r with rows where anomaly_mask[b] is True replaced by f + stop_gradient(r - f).

  Same values; those rows pass gradient to f but none to the memory that made r.
  Written as sg(r) + (f - sg(f)) so the value is exactly r, not r up to rounding.
  """
  if anomaly_mask is None:
    return r
  m = jnp.asarray(anomaly_mask, bool).reshape((-1,) + (1,) * (r.ndim - 1))
  sg = jax.lax.stop_gradient
  return jnp.where(m, sg(r) + (f - sg(f)).astype(r.dtype), r)


def cosine_deviation(f: jax.Array, r: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Stage-2 deviation map 1 - cos(f, r) over the channel axis: [..., C] -> [...], float32."""
  f = f.astype(jnp.float32)
  r = r.astype(jnp.float32)
  dot = jnp.sum(f * r, axis=-1)
  norms = jnp.linalg.norm(f, axis=-1) * jnp.linalg.norm(r, axis=-1)
  return 1.0 - dot / jnp.maximum(norms, eps)


class AnoMem(nn.Module):
  """Encoder + per-scale Hopfield memories + projection heads (see the module docstring).

  `__call__(x, train, anomaly_mask=None, memory_gate=None)` takes images [B,H,W,3] in [0,1]
  and returns
    'features':  {scale: f_s} encoder feature before the memory ([B,h,w,C] or [B,C]),
    'readout':   {scale: r_s} same shapes (anomaly rows masked as described above),
    'attention': {scale: a_s} [B,h,w,N] or [B,N], float32,
    'embedding': [B,C] final pooled embedding (after the 'pooled' memory if any),
    'projection': [B,D] head(embedding), float32,
    'scale_projection': {scale: [B,D']} only in branch mode with contrastive training,
    'rotation_logits': [B,R] float32, only with `rotation_classes` = R > 0.
  features/readout/embedding are in `dtype`. Parameter names: 'stem', 'res1'..'res4'
  (as `ResNet`), 'memory_<scale>', 'head', 'scale_head_<scale>', 'rotation_head'.
  """

  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  widths: tuple[int, ...] = (64, 128, 256, 512)
  dtype: Dtype = jnp.float32
  memory_scales: tuple[str, ...] = ("res2", "res3", "res4")
  memory_mode: str = "branch"  # as config.py; the CIFAR-10 ablation decides
  memory_train: str = "contrastive"
  num_prototypes: int = 256
  proto_dim: int = 128
  beta: float | None = None
  learnable_beta: bool = False
  shrink_threshold: float = 0.0
  retrieval_steps: int = 1
  top_k: int = 0
  head_dims: tuple[int, ...] = (512, 128)
  scale_head_dims: tuple[int, ...] = (512, 128)
  rotation_classes: int = 0  # > 0: a linear head on the embedding predicts the rotation

  def __post_init__(self) -> None:
    if self.memory_mode not in MEMORY_MODES:
      raise ValueError(f"memory_mode={self.memory_mode!r} is not one of {MEMORY_MODES}")
    if self.memory_train not in MEMORY_TRAIN:
      raise ValueError(f"memory_train={self.memory_train!r} is not one of {MEMORY_TRAIN}")
    if self.memory_train == "codebook" and self.memory_mode != "branch":
      raise ValueError(
        "memory_train='codebook' needs memory_mode='branch' (a codebook "
        "memory must not sit in the encoder's path), got "
        f"{self.memory_mode!r}"
      )
    bad = [s for s in self.memory_scales if s not in SCALES]
    if bad or len(set(self.memory_scales)) != len(self.memory_scales):
      raise ValueError(f"memory_scales={self.memory_scales} must be distinct names from {SCALES}")
    check_stages(self.stage_sizes, self.widths)
    super().__post_init__()

  def _memory(
    self, scale: str, f: jax.Array, anomaly_mask: jax.Array | None, out: dict[str, Any],
    gate: jax.Array | None = None,
  ) -> jax.Array:
    """Reads the memory of `scale`, records f, r, a; returns what flows on."""
    codebook = self.memory_train == "codebook"
    f_in = jax.lax.stop_gradient(f) if codebook else f
    r, a = HopfieldMemory(
      self.num_prototypes,
      self.proto_dim,
      self.beta,
      self.learnable_beta,
      self.shrink_threshold,
      self.retrieval_steps,
      self.dtype,
      top_k=self.top_k,
      name=f"memory_{scale}",
    )(f_in)
    r = mask_anomaly_readout(f_in, r, anomaly_mask)
    out["features"][scale] = f
    out["readout"][scale] = r
    out["attention"][scale] = a
    if self.memory_mode == "branch":
      return f
    g = None if gate is None else jnp.asarray(gate, jnp.float32).astype(r.dtype)
    if self.memory_mode == "replace":
      return r if g is None else f + g * (r - f)
    return f + r if g is None else f + g * r

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool, anomaly_mask: jax.Array | None = None,
    memory_gate: jax.Array | None = None,
  ) -> dict[str, Any]:
    out: dict[str, Any] = {"features": {}, "readout": {}, "attention": {}}
    h = Stem(self.widths[0], self.dtype, name="stem")(normalize_images(x, self.dtype), train)
    for i, scale in enumerate(STAGE_NAMES):
      h = ResNetStage(
        self.stage_sizes[i], self.widths[i], 1 if i == 0 else 2, self.dtype, name=scale
      )(h, train)
      if scale in self.memory_scales:
        h = self._memory(scale, h, anomaly_mask, out, memory_gate)
    emb = jnp.mean(h, axis=(1, 2))
    if "pooled" in self.memory_scales:
      emb = self._memory("pooled", emb, anomaly_mask, out, memory_gate)
    out["embedding"] = emb
    out["projection"] = ProjectionHead(self.head_dims, self.dtype, name="head")(emb, train)
    if self.rotation_classes:
      out["rotation_logits"] = nn.Dense(self.rotation_classes, name="rotation_head")(
          emb.astype(jnp.float32))
    if self.memory_mode == "branch" and self.memory_train == "contrastive":
      out["scale_projection"] = {}
      for scale in self.memory_scales:
        r = out["readout"][scale]
        pooled = r if r.ndim == 2 else jnp.mean(r, axis=tuple(range(1, r.ndim - 1)))
        out["scale_projection"][scale] = ProjectionHead(
          self.scale_head_dims, self.dtype, name=f"scale_head_{scale}"
        )(pooled, train)
    return out
