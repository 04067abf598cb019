"""Stage identity: a workdir never hands back a stage that another config or data made."""

import json
import os

import numpy as np
import pytest

from conftest import workdir_digest

from mscm_jax import config as config_lib, pipeline
from mscm_jax.runtime import identity
from mscm_jax.runtime import workdir as workdir_lib
from mscm_jax.api import AnoMemDetector
from mscm_jax.errors import StaleStageError, WorkdirError


@pytest.mark.parametrize("field, value, stage", [
    ("loss.temperature", 0.3, "stage1"),
    ("optim.learning_rate", 0.2, "stage1"),
    ("train.epochs", 3, "stage1"),  # more epochs: refused, the schedule would differ
    ("model.widths", (8, 8, 16, 32), "stage1"),
    ("memory.train", "codebook", "stage1"),
    ("augment.hue", 0.0, "stage1"),
    ("seed", 1, "stage1"),
    ("stage2.inputs", "cosine_similarity", "stage2"),  # same tensor shapes as cosine
    ("stage2.inputs", "difference", "stage2"),  # other shapes: no orbax traceback
    ("stage2.epochs", 5, "stage2"),
])
def test_changed_field_is_refused_and_the_workdir_is_untouched(finished_copy, field,
                                                               value, stage):
  c, w, _ = finished_copy
  config_lib.set_fields(c, {field: value})
  before = workdir_digest(w)
  with pytest.raises(StaleStageError) as e:
    pipeline.run(c, str(w))
  message = str(e.value)
  assert "\n" not in message and f"{stage} in " in message, message
  assert field in message and "--discard_stale" in message, message
  assert workdir_digest(w) == before  # config.json included: AnoMemDetector.load still works
  AnoMemDetector.load(str(w))


def test_other_normal_class_is_refused_naming_the_data(finished_copy):
  c, w, _ = finished_copy
  c.dataset.normal_class = "c1"
  with pytest.raises(StaleStageError, match=r"data.normal_classes: \["):
    pipeline.run(c, str(w))


def test_operational_fields_do_not_make_a_stage_stale(finished_copy):
  c, w, results = finished_copy
  c.train.log_every_steps = 7
  c.train.checkpoint_every_steps = 9
  c.frozen.batch_size = 13
  c.dataset.normal_class = "c0,"  # the same class, spelt otherwise: names are compared
  again = pipeline.run(c, str(w))
  assert again == json.loads(json.dumps(results))


def test_discard_stale_retrains_the_stale_stage_and_keeps_the_rest(finished_run, finished_copy):
  c, w, results = finished_copy
  s1_sums = (w / "stage1" / "checksums.json").read_text()
  c.stage2.epochs = 2
  out = pipeline.run(c, str(w), discard_stale=True)
  assert (w / "stage1" / "checksums.json").read_text() == s1_sums  # stage 1 kept
  assert json.loads((w / "stage2" / "FINISHED.json").read_text())["step"] < json.loads(
      (finished_run[1] / "stage2" / "FINISHED.json").read_text())["step"]
  assert out["identity"] != results["identity"]
  assert json.loads((w / "config.json").read_text())["stage2"]["epochs"] == 2
  records = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if r["stage"] == "stage2"]
  assert steps == sorted(set(steps)), "stage-2 records of the discarded run remain"
  assert pipeline.run(c, str(w)) == out  # and the retrained workdir is now reused


def test_stage1_from_refuses_a_stage1_of_another_config(finished_run, tmp_path):
  config, workdir, _ = finished_run
  c = config.copy_and_resolve_references()
  c.loss.temperature = 0.3
  with pytest.raises(StaleStageError, match="--stage1_from=.*loss.temperature"):
    pipeline.run(c, str(tmp_path / "new"), stage1_from=str(workdir))
  assert not (tmp_path / "new" / "stage1").exists()
  assert not (tmp_path / "new" / "config.json").exists()
  with pytest.raises(WorkdirError, match="no finished stage 1"):
    pipeline.run(config, str(tmp_path / "new"), stage1_from=str(tmp_path / "nothing"))


def test_a_stage_without_identity_is_never_trusted(finished_copy):
  c, w, _ = finished_copy
  os.remove(w / "stage1" / "IDENTITY.json")
  with pytest.raises(StaleStageError, match="no IDENTITY.json"):
    pipeline.run(c, str(w))
  (w / "stage1" / "IDENTITY.json").write_text('{"stage": "stage1", "conf')  # cut short
  with pytest.raises(StaleStageError, match="damaged"):
    pipeline.run(c, str(w))


def test_load_refuses_a_config_json_that_does_not_match_the_stages(finished_copy):
  _, w, _ = finished_copy
  saved = json.loads((w / "config.json").read_text())
  saved["loss"]["temperature"] = 0.3
  (w / "config.json").write_text(json.dumps(saved))
  with pytest.raises(StaleStageError, match="loss.temperature"):
    AnoMemDetector.load(str(w))


def test_fit_refuses_a_workdir_fitted_on_other_images(tmp_path):
  from conftest import smoke_config
  rng = np.random.default_rng(0)
  apples = rng.integers(0, 60, (32, 16, 16, 3), dtype=np.uint8)
  c = smoke_config(tmp_path, **{"stage2.epochs": 1})
  AnoMemDetector(c, str(tmp_path / "w")).fit(apples)
  berries = rng.integers(100, 160, (32, 16, 16, 3), dtype=np.uint8)
  with pytest.raises(StaleStageError, match="data.train_digest"):
    AnoMemDetector(c, str(tmp_path / "w")).fit(berries)
  det = AnoMemDetector(c, str(tmp_path / "w")).fit(berries, discard_stale=True)
  assert np.isfinite(det.score(berries[:4])).all()


def test_identity_fields_and_fingerprints(finished_run):
  config, _, _ = finished_run
  split = pipeline.load_split(config)
  plan = identity.plan(config, split)
  assert "loss.temperature" in plan["stage1"].config
  assert "train.log_every_steps" not in plan["stage1"].config
  assert "stage2.inputs" in plan["stage2"].config and not plan["stage2"].data
  assert plan["stage2"].reads == plan["stage1"].fingerprint
  assert plan["evaluation"].reads == plan["stage2"].fingerprint
  assert plan["stage1"].data["normal_classes"] == ["c0"]
  again = identity.plan(config.copy_and_resolve_references(), split)
  assert {k: v.fingerprint for k, v in again.items()} == {
      k: v.fingerprint for k, v in plan.items()}
  recorded = identity.Identity.from_json(plan["stage1"].to_json())
  assert recorded == plan["stage1"]
  other = config.copy_and_resolve_references()
  other.loss.temperature = 0.25
  assert identity.differences(recorded, identity.plan(other, split)["stage1"]) == [
      "loss.temperature: 0.5 -> 0.25"]


def test_a_field_at_its_neutral_value_leaves_older_identities_valid():
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  assert not set(identity.NEUTRAL) & set(identity.config_fields(c, "stage1"))
  c.optim.clip_norm = 5.0
  assert identity.config_fields(c, "stage1")["optim.clip_norm"] == 5.0


def test_workdir_that_cannot_hold_a_run(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(WorkdirError, match="is a file"):
    workdir_lib.prepare(tmp_path / "file")
  with pytest.raises(WorkdirError, match="cannot be written"):
    workdir_lib.prepare("/proc/mscm_jax_test")
  with pytest.raises(WorkdirError, match="empty"):
    workdir_lib.prepare("")


def test_stop_after_on_a_finished_workdir_keeps_its_results(finished_copy):
  c, w, _ = finished_copy
  saved = (w / "results.json").read_text()
  c.stop_after = "stage1"
  out = pipeline.run(c, str(w))
  assert out["not_run"] == ["stage2", "evaluation"]
  assert (w / "results.json").read_text() == saved  # still this identity's evaluation


def test_a_workdir_in_use_is_refused_and_freed_when_its_holder_dies(finished_copy):
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  config, w, results = finished_copy
  before = workdir_digest(w)
  with workdir_lib.locked(str(w)):
    with pytest.raises(WorkdirError, match=r"in use by another run \(pid \d+ on .* since"):
      pipeline.run(config, str(w))
  assert workdir_digest(w) == before
  # Another process holds it, then is killed: its lock dies with it.
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mscm_jax.runtime import workdir\n"
       "with workdir.locked(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)",
       str(w)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match=f"pid {holder.pid} "):
      pipeline.run(config, str(w))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  again = pipeline.run(config, str(w))  # finished: returns its results at once
  assert again["identity"] == results["identity"]
