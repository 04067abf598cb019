"""Deviation maps read from a (frozen) stage-1 state."""

import jax
import numpy as np
import pytest

from mscm_jax import config as config_lib, sharding, stage1, stage2
from mscm_jax.data import augment
from mscm_jax.models import cosine_deviation


@pytest.fixture(scope="module")
def frozen():
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  c.memory.scales = ("res3", "pooled")
  parts = stage1.components(c, 8, (16, 16, 3), sharding.make_mesh(1))
  return parts.model, parts.init_fn(jax.random.PRNGKey(0))


def test_maps_have_one_entry_per_image_and_scale(frozen):
  model, state = frozen
  images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
  maps = stage2.deviation_maps(model, state, images, ("res3", "pooled"), batch_size=4)
  assert maps["res3"].shape == (7, 4, 4, 1) and maps["pooled"].shape == (7, 1, 1, 1)
  assert ((maps["res3"] >= 0) & (maps["res3"] <= 2)).all()
  out = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                    augment.to_float(images[:2]), train=False)
  np.testing.assert_allclose(maps["res3"][:2, ..., 0],
                             cosine_deviation(out["features"]["res3"], out["readout"]["res3"]),
                             atol=1e-5)
  scores = stage2.mean_deviation(maps)
  np.testing.assert_allclose(scores["res3"], maps["res3"].mean(axis=(1, 2, 3)), rtol=1e-6)
  diff = stage2.deviation_maps(model, state, images, ("res3",), kind="difference")
  assert diff["res3"].shape == (7, 4, 4, 16)


def test_unknown_scale_is_a_clear_error(frozen):
  model, state = frozen
  with pytest.raises(ValueError, match="res2"):
    stage2.deviation_maps(model, state, np.zeros((2, 16, 16, 3), np.uint8), ("res2",))
