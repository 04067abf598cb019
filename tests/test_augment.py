"""SimCLR augmentations: invariants that must hold for every key."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax.data import augment as aug

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
OFF = aug.AugmentParams.identity()
AUG = jax.jit(aug.augment_batch, static_argnums=2)


@pytest.fixture(scope="module")
def views():
  return jax.jit(aug.two_views, static_argnums=2)(jax.random.key(0), IMAGES,
                                                 aug.AugmentParams())


def test_shape_dtype_and_range(views):
  for v in views:
    assert v.shape == IMAGES.shape and v.dtype == jnp.float32
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
  assert not np.allclose(views[0], views[1])  # two different views


def test_same_key_same_output_different_key_differs():
  p = aug.AugmentParams()
  a = AUG(jax.random.key(3), IMAGES, p)
  b = AUG(jax.random.key(3), IMAGES, p)
  c = AUG(jax.random.key(4), IMAGES, p)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_all_probabilities_zero_is_identity():
  out = AUG(jax.random.key(1), IMAGES, OFF)
  np.testing.assert_allclose(out * 255.0, IMAGES, atol=1e-4)


def test_flip_is_an_exact_mirror():
  out = AUG(jax.random.key(2), IMAGES, dataclasses.replace(OFF, flip_prob=1.0))
  np.testing.assert_allclose(out * 255.0, IMAGES[:, :, ::-1], atol=1e-4)


def test_flip_probability_is_respected():
  p = dataclasses.replace(OFF, flip_prob=0.5)
  imgs = np.repeat(IMAGES[:1], 400, axis=0)
  out = np.asarray(AUG(jax.random.key(5), imgs, p)) * 255
  flipped = np.isclose(out, imgs[:, :, ::-1], atol=1e-3).all(axis=(1, 2, 3))
  assert 0.4 < flipped.mean() < 0.6


def test_grayscale_probability_one_gives_equal_channels():
  out = AUG(jax.random.key(2), IMAGES,
                          dataclasses.replace(OFF, grayscale_prob=1.0))
  np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
  np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.3, 0.5), (0.5, 2.0)),
                                         ((0.9, 1.0), (1.0, 1.0))])
@pytest.mark.parametrize("shape", [(32, 32), (20, 40)])
def test_crop_area_and_ratio_within_bounds(scale, ratio, shape):
  h_img, w_img = shape
  u = jax.random.uniform(jax.random.key(0), (2000, 22))
  boxes = np.asarray(jax.jit(jax.vmap(lambda v: aug.crop_box(v, h_img, w_img, scale, ratio)))(u))
  top, left, h, w = boxes.T
  assert (top >= -1e-4).all() and (left >= -1e-4).all()
  assert (top + h <= h_img + 1e-3).all() and (left + w <= w_img + 1e-3).all()
  # When no try fits, torchvision's fallback: the largest centred crop with a clamped ratio.
  in_ratio = w_img / h_img
  fb_w = h_img * ratio[1] if in_ratio > ratio[1] else w_img
  fb_h = w_img / ratio[0] if in_ratio < ratio[0] else h_img
  fallback = (np.isclose(h, fb_h) & np.isclose(w, fb_w) & np.isclose(top, (h_img - fb_h) / 2)
              & np.isclose(left, (w_img - fb_w) / 2))
  tried = ~fallback
  area = h * w / (h_img * w_img)
  assert (area[tried] >= scale[0] - 1e-4).all() and (area[tried] <= scale[1] + 1e-4).all()
  r = w / h
  assert (r[tried] >= ratio[0] - 1e-4).all() and (r[tried] <= ratio[1] + 1e-4).all()
  if shape[0] == shape[1]:  # on a square image most first tries fit
    assert tried.mean() > 0.5


def test_crop_uses_the_whole_scale_range():
  u = jax.random.uniform(jax.random.key(1), (4000, 22))
  box_fn = jax.jit(jax.vmap(lambda v: aug.crop_box(v, 32, 32, (0.08, 1.0), (0.75, 4 / 3))))
  boxes = np.asarray(box_fn(u))
  area = boxes[:, 2] * boxes[:, 3] / 1024
  assert area.min() < 0.12 and area.max() > 0.9


def test_resized_crop_matches_jax_image():
  img = jnp.asarray(IMAGES[0] / 255.0, jnp.float32)
  box = jnp.array([2.5, 1.25, 9.0, 11.5])
  ours = aug.resized_crop(img, box, (16, 16))
  scale = jnp.array([16 / 9.0, 16 / 11.5])
  ref = jax.image.scale_and_translate(img, (16, 16, 3), (0, 1), scale, -box[:2] * scale,
                                      method="linear")
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_hsv_round_trip_and_hue_identity():
  x = jnp.asarray(IMAGES / 255.0, jnp.float32)
  np.testing.assert_allclose(aug.hsv_to_rgb(aug.rgb_to_hsv(x)), x, atol=1e-5)
  np.testing.assert_allclose(aug.adjust_hue(x, 0.0), x, atol=1e-5)
  np.testing.assert_allclose(aug.adjust_hue(x, 1.0), x, atol=1e-5)  # a full turn
  assert not np.allclose(aug.adjust_hue(x, 0.25), x, atol=1e-2)


def test_colour_ops_with_unit_factors_are_identity():
  x = jnp.asarray(IMAGES / 255.0, jnp.float32)
  for op in (aug.adjust_brightness, aug.adjust_contrast, aug.adjust_saturation):
    np.testing.assert_allclose(op(x, 1.0), x, atol=1e-6)
  np.testing.assert_allclose(aug.adjust_saturation(x, 0.0), aug.grayscale(x), atol=1e-6)


def test_jitter_changes_colours_but_not_layout():
  p = dataclasses.replace(OFF, jitter_prob=1.0, brightness=0.4, contrast=0.4,
                          saturation=0.4, hue=0.1)
  out = np.asarray(AUG(jax.random.key(7), IMAGES, p))
  assert not np.allclose(out * 255, IMAGES, atol=2)
  x = IMAGES / 255.0
  # every pixel keeps its place: per-image correlation with the input stays clearly positive
  corr = [np.corrcoef(out[i].mean(-1).ravel(), x[i].mean(-1).ravel())[0, 1]
          for i in range(len(x))]
  assert np.median(corr) > 0.5


def test_from_config_round_trip():
  from mscm_jax import config as config_lib
  p = aug.AugmentParams.from_config(config_lib.base_config().augment)
  assert p == aug.AugmentParams()
  hash(p)  # usable as a jit static argument


def test_rotate_layout_and_labels():
  out = np.asarray(aug.rotate(jnp.asarray(IMAGES), 4))
  assert out.shape == (48, 16, 16, 3)
  for k in range(4):
    np.testing.assert_array_equal(out[12 * k:12 * (k + 1)], np.rot90(IMAGES, k, axes=(1, 2)))
  np.testing.assert_array_equal(aug.rotation_labels(48, 4), np.repeat(np.arange(4), 12))


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_shifted_views_flip_before_the_rotation(flip):
  """With every other op off, each view is exactly the (flipped) image rotated by its
  row's rotation: the flip never comes after the rotation, where it would turn a
  90-degree rotation into a 270-degree one of the mirror image."""
  p = dataclasses.replace(OFF, flip_prob=flip)
  v1, v2 = jax.jit(aug.shifted_views, static_argnums=(2, 3))(jax.random.key(0), IMAGES, 4, p)
  source = IMAGES[:, :, ::-1] if flip else IMAGES
  expect = np.rot90(source, 1, axes=(1, 2)).astype(np.float32) / 255
  for v in (v1, v2):
    assert v.shape == (48, 16, 16, 3)
    np.testing.assert_allclose(v[12:24], expect, atol=1e-6)


def test_shifted_views_flip_each_view_apart():
  v1, v2 = jax.jit(aug.shifted_views, static_argnums=(2, 3))(
      jax.random.key(0), IMAGES, 2, dataclasses.replace(OFF, flip_prob=0.5))
  flipped = [not np.allclose(v1[i], v2[i]) for i in range(12)]
  assert any(flipped) and not all(flipped)
