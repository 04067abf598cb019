"""Damaged checkpoints and numerical faults: detected, reported in one line, nothing lost."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from test_stage1 import _config, _split

from mscm_jax import stage1
from mscm_jax.runtime import checkpoints, sharding, workdir
from mscm_jax.errors import CheckpointError, DiskFullError, NonFiniteError, is_disk_full


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted 6-step stage 1 (32 images / 16 per batch x 3 epochs)."""
  split = _split()
  c = _config(**{"train.epochs": 3, "train.checkpoint_every_steps": 1})
  mesh = sharding.make_mesh(1)
  res = stage1.train(c, split, str(tmp_path_factory.mktemp("straight")), mesh, probe=False)
  return c, split, mesh, jax.device_get(res.state)


def _partial(straight, tmp_path, steps=4):
  c, split, mesh, _ = straight
  stage1.train(c, split, str(tmp_path), mesh, stop_after=steps, probe=False)
  return tmp_path / "stage1"


def test_saved_steps_reads_what_orbax_lists(straight, tmp_path):
  """The sweep's jax-free reading of a stage directory agrees with orbax's own."""
  d = _partial(straight, tmp_path)
  (d / "5.orbax-checkpoint-tmp-1700000000").mkdir()  # a save cut before its rename
  (d / "7").write_text("")  # a file, not a checkpoint
  mngr = checkpoints.manager(str(d))
  try:
    assert workdir.saved_steps(str(d)) == sorted(mngr.all_steps()) == [3, 4]
  finally:
    mngr.close()
  assert workdir.saved_steps(str(tmp_path / "absent")) == []


def _data_files(step_dir):
  return sorted(p for p in glob.glob(f"{step_dir}/default/**/d/*", recursive=True)
                if os.path.isfile(p))


def _truncate(step_dir):
  for p in _data_files(step_dir):
    with open(p, "r+b") as f:
      f.truncate(max(1, os.path.getsize(p) // 2))


def _garble(step_dir):
  for p in _data_files(step_dir):
    data = bytearray(open(p, "rb").read())
    for i in range(len(data) // 3, len(data), 97):
      data[i] ^= 0x5A
    open(p, "wb").write(bytes(data))


def _drop_metadata(step_dir):
  for p in glob.glob(f"{step_dir}/default/_METADATA") + glob.glob(
      f"{step_dir}/_CHECKPOINT_METADATA"):
    os.remove(p)


@pytest.mark.parametrize("damage", [_truncate, _garble, _drop_metadata])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(straight, tmp_path, damage,
                                                                caplog):
  c, split, mesh, final = straight
  d = _partial(straight, tmp_path)
  assert workdir.saved_steps(str(d)) == [3, 4]
  damage(d / "4")
  res = stage1.train(c, split, str(tmp_path), mesh, probe=False)  # resumes from step 3
  warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert warned and "checkpoint step 4 is damaged" in warned[0], warned
  assert "\n" not in warned[0]
  assert os.listdir(tmp_path / "damaged") == [f"stage1-4-{n.split('-')[-1]}"
                                              for n in os.listdir(tmp_path / "damaged")]
  assert res.steps == 6
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(jax.device_get(res.state)),
                  strict=True):
    np.testing.assert_array_equal(a, b)  # the recomputed steps are the same steps


def test_no_intact_checkpoint_is_one_line_with_what_to_do(straight, tmp_path):
  c, split, mesh, _ = straight
  d = _partial(straight, tmp_path)
  _garble(d / "3")
  _truncate(d / "4")
  with pytest.raises(CheckpointError) as e:
    stage1.train(c, split, str(tmp_path), mesh, probe=False)
  message = str(e.value)
  assert "no intact checkpoint" in message and "--discard_stale" in message
  assert "\n" not in message


def test_checksums_detect_a_changed_value(straight, tmp_path):
  c, split, mesh, _ = straight
  d = _partial(straight, tmp_path)
  sums = json.loads((d / "checksums.json").read_text())
  sums["4"] = "0" * 32  # as if a value had changed on disk but still decoded
  (d / "checksums.json").write_text(json.dumps(sums))
  parts = stage1.components(c, split.n_train, split.train_images.shape[1:], mesh)
  state, step = checkpoints.restore_latest(str(d), parts.init_fn(jax.random.PRNGKey(0)))
  assert step == 3 and int(state.step) == 3


def test_truncated_finished_marker_completes_the_stage_again(straight, tmp_path):
  c, split, mesh, final = straight
  res = stage1.train(c, split, str(tmp_path), mesh, probe=False)
  marker = tmp_path / "stage1" / "FINISHED.json"
  marker.write_text(marker.read_text()[:7])
  assert checkpoints.finished_info(str(tmp_path / "stage1")) is None
  again = stage1.train(c, split, str(tmp_path), mesh, probe=False)
  assert again.steps == res.steps == 6
  assert json.loads(marker.read_text())["step"] == 6
  np.testing.assert_array_equal(jax.tree.leaves(final)[0],
                                jax.tree.leaves(jax.device_get(again.state))[0])


def test_nan_names_the_term_and_the_step_range_and_saves_nothing(tmp_path):
  split = _split()
  c = _config(**{"train.epochs": 3, "train.checkpoint_every_steps": 1,
                 "optim.learning_rate": 1e12})
  with pytest.raises(NonFiniteError) as e:
    stage1.train(c, split, str(tmp_path), sharding.make_mesh(1), probe=False)
  message = str(e.value)
  assert "between steps" in message and "stopped without saving" in message
  assert "nt_xent" in message or "parameters" in message, message
  assert "optim.learning_rate (now 1000000000000.0)" in message, message
  assert "\n" not in message
  steps = workdir.saved_steps(str(tmp_path / "stage1"))
  for step in steps:  # every checkpoint that was written holds finite parameters
    parts = stage1.components(c, split.n_train, split.train_images.shape[1:],
                              sharding.make_mesh(1))
    template = parts.init_fn(jax.random.PRNGKey(0))
    state, restored = checkpoints.restore_latest(str(tmp_path / "stage1"), template,
                                                 max_step=step, repair=False)
    assert restored == step
    assert bool(checkpoints.all_finite(state.params)), step


def test_nan_advice_follows_the_term():
  c = _config()
  advice = stage1.nan_advice(c)
  assert "loss.temperature" in advice(["nt_xent"])
  assert "loss.*_weight" in advice(["variance_res3"])
  assert "optim.learning_rate" in advice(["grad_norm"])


def test_a_save_without_room_is_one_line_and_keeps_what_was_saved(straight, tmp_path,
                                                                  monkeypatch):
  c, _, _, state = straight
  d = _partial(straight, tmp_path)
  free = {"bytes": 10 * 2**20}
  monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                      lambda path: type("Usage", (), {"free": free["bytes"]})())
  mngr = checkpoints.manager(str(d))
  try:
    free["bytes"] = 1000  # an injected full disk (the suite's tmpfs test is the real one)
    with pytest.raises(DiskFullError) as err:
      checkpoints.save(mngr, 5, state)
    assert mngr.all_steps() == [3, 4]  # nothing half-written, nothing lost
  finally:
    mngr.close()
  message = str(err.value)
  assert "\n" not in message and str(d) in message and "MiB needed" in message
  assert err.value.exit_code == 74
  _, step = checkpoints.restore_latest(str(d), jax.device_put(state))
  assert step == 4


def test_disk_full_is_recognised_when_wrapped():
  import errno  # pylint: disable=g-import-not-at-top

  inner = OSError(errno.ENOSPC, "No space left on device", "/w/stage1/5/x")
  try:
    try:
      raise inner
    except OSError as e:
      raise RuntimeError("RESOURCE_EXHAUSTED: write failed") from e
  except RuntimeError as wrapped:
    assert is_disk_full(wrapped) and is_disk_full(inner)
  assert not is_disk_full(ValueError("bad value"))
  assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
