"""SimCLR augmentations in JAX: vectorised over the batch, deterministic per key.

They run inside the jitted training step, on device, so the host never touches a
pixel during training. Order as in SimCLR: random resized crop, horizontal flip,
colour jitter (its four ops in random order) with probability p, grayscale with
probability p. Output: float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601 luma, as torchvision. NumPy: a module-level jax array would start the JAX
# backend at import, before a multi-process run could call jax.distributed.initialize.
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)
_CROP_TRIES = 10


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Static augmentation settings (hashable, so they can be a jit static argument)."""

  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_prob: float = 0.5
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2

  @classmethod
  def from_config(cls, augment) -> "AugmentParams":
    """From a `config.augment` section."""
    return cls(**{f.name: (tuple(float(v) for v in augment[f.name])
                           if isinstance(augment[f.name], (tuple, list))
                           else float(augment[f.name]))
                  for f in dataclasses.fields(cls)})

  @classmethod
  def identity(cls) -> "AugmentParams":
    """Every op off: the output equals the input (a check on the pipeline)."""
    return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
               jitter_prob=0.0, grayscale_prob=0.0)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


# ------------------------------------------------------------------- random resized crop


def crop_box(u: jax.Array, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> jax.Array:
  """(top, left, h, w) of one crop from 22 uniforms, as torchvision's RandomResizedCrop.

  Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the first of ten tries
  that fits wins, else the largest centred crop with a clamped ratio. Continuous
  coordinates: the resize interpolates, so no rounding is needed.
  """
  chex.assert_shape(u, (2 * _CROP_TRIES + 2,))
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:_CROP_TRIES])
  lo, hi = jnp.log(ratio[0]), jnp.log(ratio[1])
  log_r = lo + (hi - lo) * u[_CROP_TRIES:2 * _CROP_TRIES]
  w = jnp.sqrt(area * jnp.exp(log_r))
  h = jnp.sqrt(area / jnp.exp(log_r))
  fits = (w <= width) & (h <= height)
  first = jnp.argmax(fits)
  in_ratio = width / height
  fb_w = jnp.where(in_ratio > ratio[1], height * ratio[1], width)
  fb_h = jnp.where(in_ratio < ratio[0], width / ratio[0], height)
  h = jnp.where(fits.any(), h[first], fb_h)
  w = jnp.where(fits.any(), w[first], fb_w)
  pos = u[2 * _CROP_TRIES:]
  top = jnp.where(fits.any(), pos[0] * (height - h), (height - h) / 2)
  left = jnp.where(fits.any(), pos[1] * (width - w), (width - w) / 2)
  return jnp.stack([top, left, h, w])


def _interp_matrix(start: jax.Array, length: jax.Array, n_out: int, n_in: int) -> jax.Array:
  """[n_out, n_in] bilinear weights sampling [start, start + length) at n_out pixel centres."""
  src = start + (jnp.arange(n_out) + 0.5) * (length / n_out) - 0.5
  src = jnp.clip(src, 0.0, n_in - 1.0)
  return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - jnp.arange(n_in)[None, :]))


def resized_crop(image: jax.Array, box: jax.Array, out_size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of `box` (top, left, h, w) of an [H, W, C] image to `out_size`.

  Two small interpolation matrices instead of `jax.image.scale_and_translate`: the
  same numbers for crops (which only upsample), at half the compile time.
  """
  top, left, h, w = box
  rows = _interp_matrix(top, h, out_size[0], image.shape[0])
  cols = _interp_matrix(left, w, out_size[1], image.shape[1])
  return jnp.einsum("oh,hwc,pw->opc", rows, image, cols)


# --------------------------------------------------------------------------- colour


def grayscale(image: jax.Array) -> jax.Array:
  """Luma broadcast back to three channels."""
  return jnp.broadcast_to((image @ _GRAY)[..., None], image.shape)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.max(rgb, axis=-1)
  c = v - jnp.min(rgb, axis=-1)
  s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
  safe_c = jnp.where(c > 0, c, 1.0)
  h = jnp.where(v == r, (g - b) / safe_c,
                jnp.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
  h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  k = (jnp.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
  return v[..., None] - v[..., None] * s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0, 1)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  mean = jnp.mean(image @ _GRAY)
  return jnp.clip(mean + factor * (image - mean), 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  gray = grayscale(image)
  return jnp.clip(gray + factor * (image - gray), 0.0, 1.0)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
  return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def color_jitter(u: jax.Array, image: jax.Array, p: AugmentParams) -> jax.Array:
  """Brightness, contrast, saturation and hue from 8 uniforms, each op once, in random order."""
  chex.assert_shape(u, (8,))

  def factor(v, strength):
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * v

  b, c, s = factor(u[0], p.brightness), factor(u[1], p.contrast), factor(u[2], p.saturation)
  hue = p.hue * (2.0 * u[3] - 1.0)
  ops = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
         lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, hue)]
  for op_index in jnp.argsort(u[4:8]):  # a uniformly random order
    image = jax.lax.switch(op_index, ops, image)
  return image


# --------------------------------------------------------------------------- pipeline


# Uniforms per view: 22 for the crop, flip, jitter on/off, grayscale on/off, 8 for the jitter.
_N_UNIFORMS = 2 * _CROP_TRIES + 2 + 3 + 8


def augment_image(u: jax.Array, image: jax.Array, p: AugmentParams) -> jax.Array:
  """One SimCLR view of one float [H, W, 3] image in [0, 1], from its uniforms `u`.

  All randomness of a batch comes from one `jax.random.uniform` call: each random call
  costs seconds of XLA compile time on CPU, a vector of uniforms costs one.
  """
  chex.assert_shape(u, (_N_UNIFORMS,))
  n_crop = 2 * _CROP_TRIES + 2
  u_crop, (u_flip, u_jit, u_gray), u_jitter = u[:n_crop], u[n_crop:n_crop + 3], u[n_crop + 3:]
  height, width = image.shape[:2]
  image = resized_crop(image, crop_box(u_crop, height, width, p.crop_scale, p.crop_ratio),
                       (height, width))
  image = jnp.where(u_flip < p.flip_prob, image[:, ::-1], image)
  if p.jitter_prob > 0:
    image = jnp.where(u_jit < p.jitter_prob, color_jitter(u_jitter, image, p), image)
  if p.grayscale_prob > 0:
    image = jnp.where(u_gray < p.grayscale_prob, grayscale(image), image)
  return jnp.clip(image, 0.0, 1.0)


def augment_batch(key: jax.Array, images: jax.Array, p: AugmentParams) -> jax.Array:
  """One view of each image of a batch: uint8 or float [B, H, W, 3] -> float32 [0, 1]."""
  chex.assert_rank(images, 4)
  chex.assert_axis_dimension(images, -1, 3)
  u = jax.random.uniform(key, (images.shape[0], _N_UNIFORMS))
  return jax.vmap(augment_image, in_axes=(0, 0, None))(u, to_float(images), p)


def two_views(key: jax.Array, images: jax.Array,
              p: AugmentParams) -> tuple[jax.Array, jax.Array]:
  """The two independently augmented views that NT-Xent contrasts."""
  both = augment_batch(key, jnp.concatenate([images, images]), p)
  return both[:images.shape[0]], both[images.shape[0]:]


def rotate(images: jax.Array, rotations: int) -> jax.Array:
  """[B, H, H, C] -> [R*B, H, H, C]: rows k*B..(k+1)*B-1 are the images rotated by k*90
  degrees, for k < R = `rotations` (CSI's shifting transformation)."""
  return jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(rotations)])


def rotation_labels(n: int, rotations: int) -> jax.Array:
  """int32 [n]: the rotation index of each row of `rotate`'s output (n = R*B)."""
  return jnp.repeat(jnp.arange(rotations, dtype=jnp.int32), n // rotations)


def shifted_views(key: jax.Array, images: jax.Array, rotations: int,
                  p: AugmentParams) -> tuple[jax.Array, jax.Array]:
  """`two_views` of every image under each of `rotations` rotations: two [R*B] batches
  laid out as `rotate`'s, each rotated image its own instance.

  Each view is flipped before it is rotated, then augmented without a flip, as CSI does:
  a flip after the rotation would make an image's 90-degree rotation its mirror image's
  270-degree one, and the rotation could not be told apart.
  """
  chex.assert_rank(images, 4)
  b = images.shape[0]
  k_flip, k_aug = jax.random.split(key)
  both = jnp.concatenate([images, images])
  flip = jax.random.uniform(k_flip, (2 * b,)) < p.flip_prob
  both = jnp.where(flip[:, None, None, None], both[:, :, ::-1], both)
  rotated = jnp.concatenate([rotate(both[:b], rotations), rotate(both[b:], rotations)])
  out = augment_batch(k_aug, rotated, dataclasses.replace(p, flip_prob=0.0))
  return out[:rotations * b], out[rotations * b:]
