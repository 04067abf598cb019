"""The frozen read-out: compiled once per (model, request) whatever the state, and each
state's own outputs."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import frozen


def _model_and_states(n: int):
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  model = frozen.frozen_model(c)
  states = []
  for seed in range(n):
    v = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, 16, 16, 3)), train=False)
    states.append(types.SimpleNamespace(params=v["params"], batch_stats=v["batch_stats"]))
  return c, model, states


def test_read_compiles_once_for_every_state_and_gives_each_its_own_outputs():
  c, model, states = _model_and_states(2)
  images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
  traced = []

  def select(out):
    traced.append(1)  # runs while tracing only
    return out["embedding"]

  got = [frozen.outputs(model, s, images, select, batch_size=4) for s in states]
  assert len(traced) == 1  # the second state reused the first one's program
  for s, g in zip(states, got, strict=True):
    want = model.apply({"params": s.params, "batch_stats": s.batch_stats},
                       images.astype(np.float32) / 255.0, train=False)["embedding"]
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got[0], got[1])
  scales = tuple(c.memory.scales)
  a, b = (frozen.read(model, s, images, scales, batch_size=4) for s in states)
  assert frozen._reader(model, list(scales), "cosine_distance", None) is frozen._reader(
      model, scales, "cosine_distance", {})  # one reader per distinct request
  assert set(a["maps"]) == set(scales) and a["embedding"].shape == got[0].shape
  np.testing.assert_allclose(a["embedding"], got[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(a["deviation"][scales[0]], b["deviation"][scales[0]])
