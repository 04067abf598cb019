"""The tap filter gradient equals XLA's own convolution gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax.models import conv


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, 1, 8), (3, 2, 1, 8), (1, 2, 0, 8),
                                                   (3, 2, 1, 7), (1, 1, 0, 5)])
def test_tap_gradients_match_xla(k, stride, padding, size):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (4, size, size, 3))
  w = jax.random.normal(kw, (k, k, 3, 5))
  y_ref = conv.conv2d(x, w, stride, padding, tap_grad=False)
  y = conv.conv2d(x, w, stride, padding, tap_grad=True)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  dy = jax.random.normal(kd, y.shape)

  def grads(tap):
    return jax.grad(lambda x_, w_: jnp.sum(conv.conv2d(x_, w_, stride, padding, tap) * dy),
                    (0, 1))(x, w)

  (dx, dw), (dx_ref, dw_ref) = jax.jit(grads, static_argnums=0)(True), grads(False)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


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
