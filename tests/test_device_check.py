"""experiments/device_check.py in its CPU mode: parts run, record, and fail apart."""

import json

from conftest import load_experiment

device_check = load_experiment("device_check")


def test_parts_are_recorded_and_a_failing_part_does_not_stop_the_others(tmp_path,
                                                                        monkeypatch):
  def broken(out, dtype):
    raise RuntimeError(f"no {dtype} here")

  monkeypatch.setattr(device_check, "smoke", broken)
  records = device_check.run_parts(str(tmp_path), tiny=True, dtype="float32", classes=2,
                                   steps=2, only=("smoke_float32", "stage2"))
  assert list(records) == ["smoke_float32", "stage2"]
  failed = json.loads((tmp_path / "smoke_float32.json").read_text())
  assert not failed["ok"] and failed["error"] == "RuntimeError: no float32 here"
  stage2 = json.loads((tmp_path / "stage2.json").read_text())
  assert stage2["ok"] and stage2["ms_per_step"] > 0 and stage2["maps_per_s"] > 0
  assert stage2["detectors"] == 3  # the smoke preset's memory scales, one detector each


def test_peak_flops_by_device_kind():
  assert device_check.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert device_check.peak_flops("TPU v4", "float32") == 275e12
  assert device_check.peak_flops("cpu", "float32") is None
