"""The on-device training set and the batches drawn from it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax.runtime import sharding
from mscm_jax.data import device
from mscm_jax.errors import ConfigError


def _images(n):
  x = np.zeros((n, 4, 4, 3), np.uint8)
  x[:, 0, 0, 0] = np.arange(n) % 256  # the row index, readable from the pixels
  x[:, 0, 0, 1] = np.arange(n) // 256
  return x


def _ids(images):
  images = np.asarray(images)
  return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


@pytest.mark.cpu_devices
def test_eight_emulated_devices_are_visible():
  assert jax.device_count() == 8, "tests/conftest.py should emulate 8 CPU devices"


@pytest.mark.parametrize("size,batch", [(50, 8), (7, 16), (64, 64)])
def test_every_epoch_is_a_permutation(size, batch):
  key = jax.random.key(0)
  steps = 3 * size // batch + 2
  idx = np.concatenate([np.asarray(device.sample_indices(key, jnp.asarray(s), size, batch))
                        for s in range(steps)])
  for e in range(len(idx) // size):
    assert sorted(idx[e * size:(e + 1) * size]) == list(range(size))
  assert not np.array_equal(idx[:size], idx[size:2 * size])  # epochs reshuffle


@pytest.mark.cpu_devices
def test_put_stacked_pads_and_shards():
  mesh = sharding.make_model_mesh(2)  # 2 groups of 4 devices
  images = [_images(50), _images(50)[::-1], _images(50)]  # 3 members pad to 4
  data = device.put_stacked(images, [np.arange(50) % 5 == 0] * 3, mesh)
  assert data.size == 50 and data.images.shape[:2] == (4, 52)
  assert data.images.sharding.spec == jax.sharding.PartitionSpec("model", "data")
  assert len(data.images.addressable_shards) == 8
  np.testing.assert_array_equal(_ids(data.images[1, :50]), np.arange(50)[::-1])
  np.testing.assert_array_equal(data.images[3], data.images[0])  # the padding member
  with pytest.raises(ConfigError, match="one size"):
    device.put_stacked([_images(50), _images(40)], [np.zeros(50, bool)] * 2, mesh)


@pytest.mark.cpu_devices
def test_mesh_size_errors():
  with pytest.raises(ConfigError, match="only 8"):
    sharding.make_mesh(16)


@pytest.mark.cpu_devices
def test_map_members_runs_each_member_on_its_rows_as_one_program():
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_model_mesh(2)
  k = 3  # pads to 4 over the model axis
  weights = [np.full((4,), i + 1.0, np.float32) for i in range(k)]
  tree = sharding.stack([{"w": w} for w in weights], mesh)
  assert tree["w"].shape == (4, 4)  # the padding member
  rng = np.random.default_rng(0)
  own = [rng.normal(size=(n, 4)).astype(np.float32) for n in (7, 12, 5)]  # uneven, cut back

  def fn(member, rows):
    return {"dot": rows @ member["w"], "sum": rows.sum(-1)}

  out = device.map_members(fn, tree, own, 4, mesh, k)
  assert len(out) == k
  for i, (x, w) in enumerate(zip(own, weights)):
    np.testing.assert_allclose(out[i]["dot"], x @ w, rtol=1e-6)
    np.testing.assert_allclose(out[i]["sum"], x.sum(-1), rtol=1e-6)
  shared = rng.normal(size=(9, 4)).astype(np.float32)
  out = device.map_members(fn, tree, shared, 8, mesh, k)
  for i, w in enumerate(weights):
    assert out[i]["dot"].shape == (9,)
    np.testing.assert_allclose(out[i]["dot"], shared @ w, rtol=1e-6)
  back = sharding.unstack(tree, mesh, k)
  assert [float(b["w"][0]) for b in back] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("n,batch_size", [(10, 4), (7, 7), (3, 8), (1, 1), (13, 5)])
def test_map_batches_keeps_order_counts_each_row_once_and_compiles_one_shape(n, batch_size):
  images = (np.arange(n * 6) % 251).astype(np.uint8).reshape(n, 2, 3)
  traces = []

  @jax.jit
  def fn(x):
    traces.append(x.shape)  # runs once per compilation only
    return {"sum": jnp.sum(x.astype(jnp.float32), axis=(1, 2))}

  got = device.map_batches(fn, images, batch_size)
  np.testing.assert_array_equal(got["sum"], images.astype(np.float64).sum(axis=(1, 2)))
  assert traces == [(batch_size, 2, 3)]
  with pytest.raises(ValueError, match="batch_size"):
    device.map_batches(fn, images, 0)


@pytest.mark.cpu_devices
def test_one_member_of_a_stacked_run_is_read_as_one_group_without_padding():
  """A member's state, unstacked from a 2 x 4 (model, data) mesh, reads as K = 1 on all 8
  devices: no padding copy of it is computed alongside."""
  mesh = sharding.make_model_mesh(2)
  members = [{"w": np.full(4, i + 1.0, np.float32)} for i in range(2)]
  second = sharding.unstack(sharding.stack(members, mesh), mesh, 2)[1]
  stacked, one = sharding.as_one_member(second)
  assert dict(one.shape) == {"model": 1, "data": 8}
  assert stacked["w"].shape == (1, 4)
  np.testing.assert_array_equal(stacked["w"][0], 2.0)
