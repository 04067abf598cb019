"""Stage-2 building blocks: deviation inputs, the distance detector, Deep SVDD / SAD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax import losses
from mscm_jax.models.detector import DistanceDetector, deviation_input


def test_deviation_input_shapes_and_values():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(3, 4, 4, 8)), jnp.float32)
  dev = deviation_input(f, f)
  assert dev.shape == (3, 4, 4, 1)
  np.testing.assert_allclose(dev, 0.0, atol=1e-6)  # retrieved == feature: no deviation
  np.testing.assert_allclose(deviation_input(f, -f), 2.0, atol=1e-6)  # opposite: maximal
  assert deviation_input(f, 2 * f, "difference").shape == (3, 4, 4, 8)
  r = jnp.asarray(rng.normal(size=(3, 4, 4, 8)), jnp.float32)
  np.testing.assert_allclose(deviation_input(f, r, "cosine_similarity"),
                             1.0 - deviation_input(f, r, "cosine_distance"), atol=1e-6)
  pooled = deviation_input(f[:, 0, 0], f[:, 0, 0] + 1.0)
  assert pooled.shape == (3, 1, 1, 1)
  np.testing.assert_allclose(deviation_input(f, f + 1.0, "squared_distance"), 1.0, rtol=1e-6)
  np.testing.assert_allclose(deviation_input(f, 3 * f, "squared_distance")[..., 0],
                             np.mean(np.square(2 * f), axis=-1), rtol=1e-5)
  # `feature` ignores the read-out entirely: the no-memory control
  np.testing.assert_array_equal(deviation_input(f, r, "feature"), f)
  np.testing.assert_array_equal(deviation_input(f, -r, "feature"), f)
  assert deviation_input(f[:, 0, 0], r[:, 0, 0], "feature").shape == (3, 1, 1, 8)
  with pytest.raises(ValueError, match="'ratio' is not"):
    deviation_input(f, f, "ratio")


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 4, 4, 1), (2, 1, 1, 16), (2, 8, 8, 32)])
def test_detector_shapes_and_no_bias_in_the_distance(shape):
  model = DistanceDetector(widths=(8, 16), out_dim=6, classifier=True)
  x = jnp.ones(shape)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  assert out["phi"].shape == (2, 6) and out["logit"].shape == (2,)
  # Only the classifier head may carry a bias: the distance path has none (Deep SVDD).
  names = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]]
  assert [n for n in names if n.endswith("bias")] == ["classifier/bias"]
  # Hence a zero input maps exactly to zero: no constant solution is free.
  np.testing.assert_array_equal(model.apply(variables, jnp.zeros(shape))["phi"], 0.0)


def test_deep_svdd_and_sad_values_and_gradients():
  center = jnp.array([1.0, -1.0])
  phi = jnp.array([[1.0, -1.0], [2.0, -1.0], [1.0, 1.0]])
  np.testing.assert_allclose(losses.svdd_distance(phi, center), [0.0, 1.0, 4.0])
  np.testing.assert_allclose(losses.deep_svdd(phi, center), 5.0 / 3.0)
  anomaly = jnp.array([False, False, True])
  np.testing.assert_allclose(losses.deep_sad(phi, center, anomaly, eta=2.0, eps=0.0),
                             (0.0 + 1.0 + 2.0 / 4.0) / 3.0)
  g = jax.grad(lambda p: losses.deep_sad(p, center, anomaly))(phi)
  # normals move towards c (gradient points away from it), anomalies away from c
  assert float(jnp.dot(g[1], phi[1] - center)) > 0
  assert float(jnp.dot(g[2], phi[2] - center)) < 0
  np.testing.assert_allclose(g[0], 0.0)


def test_svdd_training_pulls_normals_in_and_separates_a_planted_pattern():
  """A few steps of Deep SVDD on smooth maps: a map with a hot patch lands farther away."""
  import optax
  rng = np.random.default_rng(1)
  normal = rng.uniform(0.0, 0.2, (64, 8, 8, 1)).astype(np.float32)
  odd = normal[:8].copy()
  odd[:, 2:5, 2:5] = 1.0  # a locally deviating region
  model = DistanceDetector(widths=(8, 16), out_dim=8)
  params = model.init(jax.random.PRNGKey(0), normal)["params"]
  center = jnp.mean(model.apply({"params": params}, normal)["phi"], axis=0)
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(
        lambda p: losses.deep_svdd(model.apply({"params": p}, normal)["phi"], center))(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt, loss

  first = None
  for _ in range(30):
    params, opt, loss = step(params, opt)
    first = loss if first is None else first
  assert float(loss) < float(first)

  def score(x):
    return losses.svdd_distance(model.apply({"params": params}, x)["phi"], center)

  assert float(jnp.min(score(odd))) > float(jnp.max(score(normal[8:])))
