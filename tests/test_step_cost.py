"""experiments/step_cost.py: a step's FLOP and memory from XLA's analysis, no step run."""

import pytest

from conftest import load_experiment

step_cost = load_experiment("step_cost")


def test_stacked_classes_cost_k_times_one():
  c = step_cost.config_for("smoke", "float32")
  one = step_cost.step_cost(c, 1, 64)
  two = step_cost.step_cost(c, 2, 64)
  assert one["flops_per_step"] > 0 and one["peak_bytes"] > one["argument_bytes"] > 0
  # K classes in one program do K models' arithmetic, and hold K states
  assert two["flops_per_step"] == pytest.approx(2 * one["flops_per_step"], rel=0.02)
  assert two["argument_bytes"] > 1.8 * one["argument_bytes"]
  assert two["views_per_step"] == 2 * one["views_per_step"]
