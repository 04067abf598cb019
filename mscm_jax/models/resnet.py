"""CIFAR ResNet (3x3 stride-1 stem, no max-pool) that exposes every stage output.

The pieces (`Stem`, `ResNetStage`) are separate modules so that `AnoMem` can put a
memory between stages; `ResNet` is the plain encoder built from the same pieces and
the same parameter names ('stem', 'res1'..'res4'), so its params can be read from an
AnoMem checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mscm_jax.models.conv import Conv
from mscm_jax.names import STAGE_NAMES

__all__ = [
  "CIFAR_MEAN",
  "CIFAR_STD",
  "STAGE_NAMES",
  "normalize_images",
  "BasicBlock",
  "ResNetStage",
  "Stem",
  "ResNet",
]

Dtype = Any

# Per-channel statistics of the CIFAR-10 training set, for images in [0, 1].
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

# He init on fan-out, as torchvision's ResNet: keeps activations at scale from scratch.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def normalize_images(x: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """[B,H,W,3] in [0,1] -> CIFAR-standardised, in `dtype`."""
  mean = jnp.asarray(CIFAR_MEAN, jnp.float32)
  std = jnp.asarray(CIFAR_STD, jnp.float32)
  return ((x.astype(jnp.float32) - mean) / std).astype(dtype)


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  # Under jit with a batch sharded on a mesh, the batch statistics are global
  # (averaged over devices) without an axis name.
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
  )


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers plus a shortcut (1x1 conv + BN when the shape changes)."""

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(
      self.features,
      3,
      self.strides,
      padding=1,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name="conv1",
    )(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = Conv(
      self.features, 3, 1, padding=1, kernel_init=_conv_init, dtype=self.dtype, name="conv2"
    )(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = Conv(
        self.features, 1, self.strides, kernel_init=_conv_init, dtype=self.dtype, name="proj_conv"
      )(x)
      shortcut = _batch_norm(train, self.dtype, "proj_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNetStage(nn.Module):
  """`num_blocks` BasicBlocks; the first one downsamples by `strides`."""

  num_blocks: int
  features: int
  strides: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, self.strides if i == 0 else 1, self.dtype, name=f"block{i}")(
        x, train
      )
    return x


class Stem(nn.Module):
  """CIFAR stem: 3x3 stride-1 conv + BN + relu, no max-pool (keeps 32x32)."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(self.features, 3, 1, padding=1, kernel_init=_conv_init, dtype=self.dtype, name="conv")(
      x
    )
    return nn.relu(_batch_norm(train, self.dtype, "bn")(x))


def check_stages(stage_sizes: tuple[int, ...], widths: tuple[int, ...]) -> None:
  """One block count and one width for each of res1..res4."""
  if len(stage_sizes) != 4 or len(widths) != 4:
    raise ValueError("stage_sizes and widths need 4 entries (res1..res4), got "
                     f"{stage_sizes} and {widths}")


class ResNet(nn.Module):
  """Plain encoder: {'res1'..'res4': [B,h,w,C] stage outputs, 'pooled': [B,C]}.

  Input: float images [B,H,W,3] in [0,1], standardised inside. (2,2,2,2) with widths
  (64,128,256,512) is ResNet-18; (1,1,1,1) with (16,32,64,128) is the small preset.
  """

  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  widths: tuple[int, ...] = (64, 128, 256, 512)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    check_stages(self.stage_sizes, self.widths)
    h = Stem(self.widths[0], self.dtype, name="stem")(normalize_images(x, self.dtype), train)
    out: dict[str, jax.Array] = {}
    for i, name in enumerate(STAGE_NAMES):
      h = ResNetStage(
        self.stage_sizes[i], self.widths[i], 1 if i == 0 else 2, self.dtype, name=name
      )(h, train)
      out[name] = h
    out["pooled"] = jnp.mean(h, axis=(1, 2))
    return out
