"""metrics.jsonl, TensorBoard events and the progress line."""

import json
import logging
import os

from mscm_jax.runtime import monitoring


def test_writer_appends_json_and_tensorboard(tmp_path):
  w = monitoring.MetricWriter(str(tmp_path), "stage1")
  w.write(1, {"loss": 2.5, "nan_metric": float("nan")})
  w.write(2, {"loss": 2.0})
  w.close()
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] == 2.0
  assert all(r["stage"] == "stage1" for r in rows)
  assert os.listdir(tmp_path / "tensorboard" / "stage1")


def test_truncate_after_drops_only_this_stages_later_steps(tmp_path):
  a = monitoring.MetricWriter(str(tmp_path), "stage1")
  b = monitoring.MetricWriter(str(tmp_path), "stage2")
  for step in (1, 2, 3):
    a.write(step, {"loss": 1.0})
  b.write(5, {"loss": 1.0})
  a.truncate_after(1)
  rows = [(r["stage"], r["step"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
  assert rows == [("stage1", 1), ("stage2", 5)]
  a.close()
  b.close()


def test_progress_eta_ignores_the_first_step(caplog, monkeypatch):
  clock = iter([0.0, 30.0, 40.0])  # start, step 1 after a 30 s compile, step 11 10 s later

  class FakeTime:
    time = staticmethod(lambda: next(clock))

  monkeypatch.setattr(monitoring, "time", FakeTime)
  p = monitoring.Progress("stage1", total=101)
  p.tty = False
  with caplog.at_level(logging.INFO):
    p.update(1, "loss 3")
    p.update(11, "loss 2")
  assert "ETA ?" in caplog.text
  assert "ETA 1m30s" in caplog.text  # 90 steps left at 1 step/s, not at 30 s/step
  assert monitoring.format_seconds(3725) == "1h02m05s"
