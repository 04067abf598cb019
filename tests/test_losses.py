"""Tests for mscm_jax.losses against float64 NumPy references written independently."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_devices_env

from mscm_jax.losses import feature_alignment, memory_usage_entropy, nt_xent, variance_hinge


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def _nt_xent_reference(
  z1: np.ndarray, z2: np.ndarray, temperature: float, is_anomaly: np.ndarray | None = None
) -> float:
  """SimCLR NT-Xent, one anchor at a time; anomalies are never anchors."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  b, n = len(z1), 2 * len(z1)
  anomaly = np.zeros(b, bool) if is_anomaly is None else np.asarray(is_anomaly, bool)
  terms = []
  for i in range(n):
    if anomaly[i % b]:
      continue
    positive = (i + b) % n
    denominator = sum(np.exp(z[i] @ z[k] / temperature) for k in range(n) if k != i)
    terms.append(-np.log(np.exp(z[i] @ z[positive] / temperature) / denominator))
  return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize(
  "anomaly",
  [None, (0, 0, 1, 0, 0, 1), (0,) * 6, (1,) * 6],
  ids=["none", "two", "no-anomaly", "all-anomalies"],
)
def test_nt_xent_matches_numpy(temperature: float, anomaly: tuple[int, ...] | None) -> None:
  rng = _rng(1)
  z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  mask = None if anomaly is None else np.asarray(anomaly, bool)
  loss = nt_xent(
    jnp.asarray(z1, jnp.float32),
    jnp.asarray(z2, jnp.float32),
    temperature,
    None if mask is None else jnp.asarray(mask),
  )
  chex.assert_shape(loss, ())
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(
    loss, _nt_xent_reference(z1, z2, temperature, mask), rtol=1e-5, atol=1e-5
  )


def test_nt_xent_rewards_alignment() -> None:
  rng = _rng(2)
  z = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  other = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  assert float(nt_xent(z, z, 0.5)) < float(nt_xent(z, other, 0.5))
  # Scale-invariant: the loss is on cosine similarities.
  np.testing.assert_allclose(nt_xent(3 * z, z, 0.5), nt_xent(z, z, 0.5), rtol=1e-5)


def test_nt_xent_anomalies_are_negatives_only() -> None:
  rng = _rng(3)
  z1 = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  z2 = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  anomaly = jnp.asarray([False, False, False, False, True, True])
  swapped = z2[jnp.asarray([0, 1, 2, 3, 5, 4])]  # pair each anomaly with the other's view
  # Anomalies are not positives of each other: re-pairing their views changes nothing...
  np.testing.assert_allclose(
    nt_xent(z1, swapped, 0.5, anomaly), nt_xent(z1, z2, 0.5, anomaly), rtol=1e-6
  )
  # ...whereas without labels it is a different loss.
  assert abs(float(nt_xent(z1, swapped, 0.5)) - float(nt_xent(z1, z2, 0.5))) > 1e-3
  # But they stay in the normal anchors' denominators: they receive gradient, and pulling
  # an anomaly onto a normal image raises the loss.
  grad = jax.grad(lambda a: nt_xent(z1.at[4].set(a), z2, 0.5, anomaly))(z1[4])
  assert float(jnp.abs(grad).max()) > 0
  assert float(nt_xent(z1.at[4].set(z1[0]), z2, 0.5, anomaly)) > float(
    nt_xent(z1.at[4].set(-z1[0]), z2, 0.5, anomaly)
  )


def test_nt_xent_jit_and_bfloat16() -> None:
  rng = _rng(4)
  z1 = jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)
  z2 = jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)
  loss = jax.jit(nt_xent, static_argnums=2)(z1, z2, 0.2)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(
    loss, _nt_xent_reference(np.asarray(z1, np.float64), np.asarray(z2, np.float64), 0.2), rtol=1e-5
  )


def test_variance_hinge() -> None:
  rng = _rng(5)
  spread = jnp.asarray(3.0 * rng.normal(size=(256, 8)), jnp.float32)
  assert float(variance_hinge(spread)) == 0.0
  collapsed = jnp.asarray(1.0 + 0.01 * rng.normal(size=(64, 8)), jnp.float32)
  value = float(variance_hinge(collapsed))
  var = np.var(np.asarray(collapsed, np.float64), axis=0)
  reference = np.mean(np.maximum(0, 1 - np.sqrt(var + 1e-4)))
  np.testing.assert_allclose(value, reference, rtol=1e-5)
  assert value > 0.9
  # One gradient step pushes the collapsed prototypes apart.
  moved = collapsed - 10.0 * jax.grad(variance_hinge)(collapsed)
  assert np.all(np.std(moved, axis=0) > np.std(collapsed, axis=0))
  assert float(variance_hinge(moved)) < value


def test_feature_alignment() -> None:
  rng = _rng(6)
  f = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  r = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  sq = np.mean((np.asarray(f, np.float64) - np.asarray(r, np.float64)) ** 2, axis=-1)
  np.testing.assert_allclose(feature_alignment(f, r), sq.mean(), rtol=1e-5)
  mask = jnp.asarray([True, False, True])
  np.testing.assert_allclose(feature_alignment(f, r, mask), sq[[0, 2]].mean(), rtol=1e-5)
  assert float(feature_alignment(f, r, jnp.zeros(3, bool))) == 0.0
  # The features are a fixed target: only the read-out moves.
  g_f, g_r = jax.grad(feature_alignment, argnums=(0, 1))(f, r, mask)
  assert float(jnp.abs(g_f).max()) == 0.0
  assert float(jnp.abs(g_r[0]).max()) > 0 and float(jnp.abs(g_r[1]).max()) == 0.0
  # Pooled ([B, C]) inputs work too.
  np.testing.assert_allclose(
    feature_alignment(f[:, 0, 0], r[:, 0, 0]), sq[:, 0, 0].mean(), rtol=1e-5
  )


def test_memory_usage_entropy() -> None:
  n = 8
  uniform = jnp.full((2, 3, 3, n), 1.0 / n)
  np.testing.assert_allclose(memory_usage_entropy(uniform), 1.0, rtol=1e-6)
  collapsed = jnp.zeros((5, n)).at[:, 2].set(1.0)
  np.testing.assert_allclose(memory_usage_entropy(collapsed), 0.0, atol=1e-7)
  # Each read is one-hot but the batch spreads over half the prototypes: log(4) / log(8).
  half = jax.nn.one_hot(jnp.arange(8) % 4, n)
  np.testing.assert_allclose(memory_usage_entropy(half), 2.0 / 3.0, rtol=1e-6)


_SHARDED_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mscm_jax.losses import nt_xent
assert jax.device_count() == 2
rng = np.random.default_rng(0)
z1, z2 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
anomaly = np.arange(8) % 3 == 0
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
args = [jax.device_put(a, rows) for a in (z1, z2, anomaly)]
loss = jax.jit(lambda a, b, m: nt_xent(a, b, 0.5, m))(*args)
print(float(loss), float(nt_xent(z1, z2, 0.5, anomaly)))
"""


def test_nt_xent_global_batch_when_sharded() -> None:
  """Batch split over 2 (fake CPU) devices: negatives still come from the whole batch."""
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, **cpu_devices_env(2),
         "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  sharded, single = map(float, result.stdout.split())
  np.testing.assert_allclose(sharded, single, rtol=1e-6)
