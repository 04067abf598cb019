"""experiments/benchmark.py writes the rows it promises; its PyTorch mirror is the same network."""

import importlib.util
import json

import jax
import numpy as np
import pytest

from conftest import load_experiment

from mscm_jax import config as config_lib
from mscm_jax.data import augment
from mscm_jax.frozen import build_model


def test_benchmark_rows_have_every_field(tmp_path):
  benchmark = load_experiment("benchmark")
  out = tmp_path / "b.json"
  benchmark.main(["--preset", "smoke", "--dtypes", "float32", "--steps", "1", "--warmup", "1",
                  "--torch_variants", "default", "--out", str(out)])
  result = json.loads(out.read_text())
  rows = result["rows"]
  jax_steps = [r for r in rows if r["framework"] == "jax" and r["stage"] == "step"]
  assert [r["variant"] for r in jax_steps] == ["default", "xla_options", "xla_grads"]
  assert {"jax", "augment"} <= {r["framework"] for r in rows} | {r["stage"] for r in rows}
  for r in rows:
    for field in ("framework", "variant", "stage", "preset", "dtype", "batch", "views_per_s",
                  "ms_per_step"):
      assert field in r, field
    assert r["views_per_s"] > 0 and r["batch"] == 16 and r["dtype"] == "float32"
  for r in jax_steps:
    assert r["flops"] > 0 and 0 < r["fraction_of_peak"]
  if importlib.util.find_spec("torch") is not None:
    assert any(r["framework"] == "torch" for r in rows)
    assert all("ratio_vs_torch" in r for r in jax_steps)
  assert result["machine"]["cores"] >= 1


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_torch_mirror_has_the_same_parameters(preset):
  torch = pytest.importorskip("torch")
  torch_step = load_experiment("torch_step")
  c = config_lib.apply_preset(config_lib.base_config(), preset)
  c.shift.rotations, c.loss.rotation_weight = 1, 0.0  # as benchmark.build_config
  params = build_model(c).init(jax.random.PRNGKey(0), np.zeros((2, 32, 32, 3), np.float32),
                               train=False)["params"]
  n_jax = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  model = torch_step.AnoMem(c)
  assert sum(p.numel() for p in model.parameters()) == n_jax
  opt = torch_step.optimizer(model, c)
  step = torch_step.make_step(model, opt, c, torch.float32)
  views = torch_step.two_views(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8),
                               torch.Generator().manual_seed(0), augment.AugmentParams())
  assert views.shape == (16, 3, 32, 32) and 0 <= float(views.min()) <= float(views.max()) <= 1
  assert np.isfinite(float(step(views)))
