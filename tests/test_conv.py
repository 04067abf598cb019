"""The CPU convolution gradients equal XLA's own, for every stride, padding, size and chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax.models import conv


def _data(batch, size, cin, cout, k, stride, padding, seed=0):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (batch, size, size, cin))
  w = jax.random.normal(kw, (k, k, cin, cout))
  ho = (size + 2 * padding - k) // stride + 1
  return x, w, jax.random.normal(kd, (batch, ho, ho, cout))


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, 1, 8), (3, 2, 1, 8), (1, 2, 0, 8),
                                                   (3, 2, 1, 7), (1, 1, 0, 5), (1, 2, 0, 7),
                                                   (3, 2, 1, 9), (3, 1, 0, 6)])
def test_gradients_match_xla(k, stride, padding, size):
  x, w, dy = _data(4, size, 3, 5, k, stride, padding)
  y_ref = conv.conv2d(x, w, stride, padding, cpu_grads=False)
  y = conv.conv2d(x, w, stride, padding, cpu_grads=True)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)

  def grads(cpu):
    return jax.grad(lambda x_, w_: jnp.sum(conv.conv2d(x_, w_, stride, padding, cpu) * dy),
                    (0, 1))(x, w)

  (dx, dw), (dx_ref, dw_ref) = jax.jit(grads, static_argnums=0)(True), grads(False)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("batch,chunk", [(12, 4), (12, 5), (7, 3), (5, 1), (6, 6)])
def test_filter_grad_chunks_sum_to_the_whole_batch(batch, chunk):
  # 5 and 3 do not divide 12 and 7: the batch is padded with zero images.
  x, w, dy = _data(batch, 6, 4, 3, 3, 1, 1, seed=batch)
  ref = jax.vjp(lambda w_: conv.conv2d(x, w_, 1, 1, cpu_grads=False), w)[1](dy)[0]
  got = conv.filter_grad(x, dy, w.shape, 1, 1, chunk=chunk)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_input_grad_of_every_formulation():
  for k, stride, padding in ((3, 2, 1), (1, 2, 0), (3, 1, 1), (5, 2, 2)):  # the last: XLA's
    for size in (6, 7):
      x, w, dy = _data(2, size, 3, 4, k, stride, padding, seed=size)
      ref = jax.vjp(lambda x_: conv.conv2d(x_, w, stride, padding, cpu_grads=False), x)[1](dy)[0]
      got = conv.input_grad(dy, w, x.shape, stride, padding)
      assert got.shape == x.shape
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_agree_within_bfloat16_precision():
  x, w, dy = _data(4, 8, 8, 8, 3, 2, 1)
  x, w, dy = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)

  def grads(cpu):
    return jax.vjp(lambda a, b: conv.conv2d(a, b, 2, 1, cpu), x, w)[1](dy)

  for got, ref in zip(grads(True), grads(False)):
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
    np.testing.assert_allclose(got.astype(jnp.float32), ref.astype(jnp.float32),
                               atol=0.02 * scale)


def test_chunk_size_fits_the_budget_and_prefers_a_divisor():
  # 32x32x16 float32 padded to 34x34: 74 kB per image, 14 fit in 1 MiB, 8 divides 512.
  assert conv.chunk_size((512, 32, 32, 16), 4, 1) == 8
  assert conv.chunk_size((509, 32, 32, 16), 4, 1) == 14  # prime batch: pad, not 1-image chunks
  assert conv.chunk_size((4, 32, 32, 16), 4, 1) == 4
  assert conv.chunk_size((512, 4, 4, 128), 4, 1) == 32  # 18 kB per image: 56 fit
  assert conv.chunk_size((3, 512, 512, 64), 4, 1) == 1


def test_cpu_grads_context_selects_the_traced_formulation():
  x, w, dy = _data(2, 6, 3, 4, 3, 1, 1)

  def jaxpr():
    return str(jax.make_jaxpr(jax.grad(lambda w_: jnp.sum(conv.conv2d(x, w_, 1, 1) * dy)))(w))

  # The CPU filter gradient is made of matrix products; XLA's is one more convolution.
  with conv.cpu_grads(True):
    assert "dot_general" in jaxpr()
  with conv.cpu_grads(False):
    assert "dot_general" not in jaxpr()
  assert ("dot_general" in jaxpr()) == (jax.default_backend() == "cpu")


def test_compiler_options_compile_and_keep_the_values():
  options = conv.compiler_options()
  if jax.default_backend() == "cpu":
    assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
  x, w, _ = _data(2, 8, 3, 4, 3, 2, 1)
  f = lambda a, b: conv.conv2d(a, b, 2, 1)  # noqa: E731
  np.testing.assert_allclose(jax.jit(f, compiler_options=options)(x, w), jax.jit(f)(x, w),
                             rtol=1e-5, atol=1e-5)


def test_conv_module_matches_flax_layout():
  from flax import linen as nn
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 4))
  ours = conv.Conv(7, 3, 2, padding=1)
  theirs = nn.Conv(7, (3, 3), (2, 2), padding=1, use_bias=False)
  params = ours.init(jax.random.PRNGKey(2), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         theirs.init(jax.random.PRNGKey(2), x))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5,
                             atol=1e-6)
