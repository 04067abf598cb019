"""K one-class models trained as one program: the same workdirs and numbers as K runs."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import untrained_stage1

from mscm_jax import config as config_lib, errors, stage1
from mscm_jax.runtime import checkpoints, sharding
from mscm_jax.data import protocols, sources

SIZE = 16
CLASSES = ("stripes", "noise", "checker", "rings")


def _images(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
  yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
  out = []
  for _ in range(n):
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
      im = 0.5 + 0.4 * np.sin(8 * xx + phase)
    elif kind == "noise":
      im = rng.uniform(0, 1, (SIZE, SIZE))
    elif kind == "checker":
      im = ((np.floor(4 * xx + phase) + np.floor(4 * yy)) % 2) * 0.8 + 0.1
    else:
      im = 0.5 + 0.4 * np.cos(12 * np.hypot(xx - 0.5, yy - 0.5) + phase)
    out.append(np.stack([im * rng.uniform(0.7, 1.0) for _ in range(3)], -1))
  return np.clip(np.asarray(out, np.float32), 0, 1)


def _data(n_train=16, n_test=8):
  rng = np.random.default_rng(0)
  train = sources.from_arrays(np.concatenate([_images(k, n_train, rng) for k in CLASSES]),
                              np.repeat(np.arange(len(CLASSES)), n_train), CLASSES)
  test = sources.from_arrays(np.concatenate([_images(k, n_test, rng) for k in CLASSES]),
                             np.repeat(np.arange(len(CLASSES)), n_test), CLASSES)
  return train, test


def _config(normal: int, **overrides):
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  c.memory.scales = ("res3", "pooled")
  c.train.batch_size = 8
  c.train.epochs = 2  # 16 images / 8 per batch x 2 epochs = 4 steps
  c.train.log_every_steps = 1
  c.dataset.normal_class = normal
  return config_lib.validate(config_lib.set_fields(c, overrides))


def _losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.cpu_devices
def test_three_classes_as_one_program_match_three_runs(tmp_path):
  train, test = _data()
  normals = (0, 1, 2)
  configs = [_config(k) for k in normals]
  splits = [protocols.one_class_split(train, test, (k,)) for k in normals]
  # A model axis of 2 over the 8 devices: 3 models pad to 4, 2 per group of 4 devices.
  mesh = sharding.make_model_mesh(2)
  stacked_dirs = [str(tmp_path / f"stacked_{k}") for k in normals]
  stacked = stage1.train_members(configs, splits, stacked_dirs, mesh)
  alone_mesh = sharding.make_mesh()
  for k, c, split, s_res in zip(normals, configs, splits, stacked, strict=True):
    alone_dir = str(tmp_path / f"alone_{k}")
    alone = stage1.train(c, split, alone_dir, alone_mesh)
    assert s_res.steps == alone.steps == 4
    # The same files as a run of its own: checkpoints, FINISHED.json, metrics per step.
    assert checkpoints.finished_info(os.path.join(stacked_dirs[k], "stage1"))["step"] == 4
    a, b = _losses(stacked_dirs[k]), _losses(alone_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # Tolerance: the vmapped program reduces in another order than the single one (4
    # devices per model here, 8 alone), and Adam's first steps amplify the last bits of
    # small gradients: measured 4e-7 relative on the first loss, 7e-5 on the parameters
    # after one step; stated 1e-4 (losses) and 2e-3 (parameters) after four.
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)],
                               rtol=1e-4, err_msg=f"class {k}")
    pa, pb = jax.device_get((s_res.state.params, alone.state.params))
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(pa),
                                                              jax.tree.leaves(pb)))
    assert worst < 2e-3, (k, worst)
    assert s_res.probe_auroc == pytest.approx(alone.probe_auroc, abs=2 / 64)
  # The classes really trained apart: their parameters differ from each other.
  p0, p1 = jax.device_get((stacked[0].state.params, stacked[1].state.params))
  assert max(float(np.max(np.abs(x - y)))
             for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(p1))) > 1e-2


@pytest.mark.cpu_devices
def test_stacked_resume_equals_uninterrupted(tmp_path):
  train, test = _data()
  configs = [_config(k) for k in (0, 3)]
  splits = [protocols.one_class_split(train, test, (k,)) for k in (0, 3)]
  mesh = sharding.make_model_mesh(2)
  full = [str(tmp_path / f"full_{k}") for k in range(2)]
  cut = [str(tmp_path / f"cut_{k}") for k in range(2)]
  ref = stage1.train_members(configs, splits, full, mesh, probe=False)
  configs = [_config(k, **{"train.checkpoint_every_steps": 1}) for k in (0, 3)]
  stage1.train_members(configs, splits, cut, mesh, stop_after=2, probe=False)
  # As if killed between the two members' saves of step 2: member 1 stopped at step 1,
  # so both resume from step 1, the newest they share.
  checkpoints.drop_after(os.path.join(cut[1], "stage1"), 1)
  resumed = stage1.train_members(configs, splits, cut, mesh, probe=False)
  assert [s.resumed_from for s in resumed] == [1, 1]
  for r, s in zip(ref, resumed, strict=True):
    pa, pb = jax.device_get((r.state.params, s.state.params))
    assert max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))) < 1e-5
  for f, c in zip(full, cut, strict=True):
    np.testing.assert_allclose(list(_losses(f).values()), list(_losses(c).values()),
                               rtol=1e-5)


@pytest.mark.cpu_devices
def test_a_member_trained_ahead_alone_is_not_rolled_back(tmp_path):
  train, test = _data()
  configs = [_config(k, **{"train.checkpoint_every_steps": 1}) for k in (0, 3)]
  splits = [protocols.one_class_split(train, test, (k,)) for k in (0, 3)]
  dirs = [str(tmp_path / f"m{k}") for k in range(2)]
  stage1.train(configs[0], splits[0], dirs[0], sharding.make_mesh(), stop_after=3,
               probe=False)
  with pytest.raises(errors.CheckpointError, match="stands at step 3, another member at 0"):
    stage1.train_members(configs, splits, dirs, sharding.make_model_mesh(2), probe=False)
  assert "3" in os.listdir(os.path.join(dirs[0], "stage1"))  # its checkpoint is still there


@pytest.mark.cpu_devices
def test_stacked_refuses_what_cannot_share_a_program(tmp_path):
  train, test = _data()
  mesh = sharding.make_model_mesh(2)
  splits = [protocols.one_class_split(train, test, (k,)) for k in (0, 1)]
  with pytest.raises(errors.UserError, match="differ only in seed"):
    stage1.train_members([_config(0), _config(1, **{"loss.temperature": 0.3})], splits,
                         [str(tmp_path / "a"), str(tmp_path / "b")], mesh)
  small = protocols.one_class_split(
      sources.from_arrays(train.images[:40], train.labels[:40], CLASSES), test, (2,))
  with pytest.raises(errors.ConfigError, match="one size"):
    stage1.train_members([_config(0), _config(2)], [splits[0], small],
                         [str(tmp_path / "c"), str(tmp_path / "d")], mesh)
  with pytest.raises(errors.ConfigError, match="does not divide"):
    sharding.make_model_mesh(3)


def test_run_classes_writes_workdirs_that_separate_runs_accept(tmp_path):
  from conftest import smoke_config, write_folder_tree  # pylint: disable=g-import-not-at-top
  from mscm_jax import pipeline  # pylint: disable=g-import-not-at-top

  write_folder_tree(tmp_path / "tree", {"train": {"a": 16, "b": 16},
                                        "test": {"a": 8, "b": 8}})
  config = smoke_config(tmp_path / "tree", **{"stack.classes": "all", "train.epochs": 2,
                                              "stage2.epochs": 2})
  root = tmp_path / "all"
  results = pipeline.run_classes(config, str(root))
  assert sorted(results) == ["a", "b"]
  for name, res in results.items():
    assert res["normal_classes"] == [name] and set(res["test_scores"]) >= {"mscm", "knn"}
    assert (root / name / "results.json").exists() and (root / name / "report").is_dir()
  # Run alone, class b gives the same results (tolerance as above, on 8 x 8 test pairs).
  alone = pipeline.run(pipeline.class_config(config, "b"), str(tmp_path / "b_alone"))
  for score, m in alone["test_scores"].items():
    assert abs(results["b"]["test_scores"][score]["auroc"] - m["auroc"]) <= 2 / 64, score
  # The class's workdir is an ordinary run's: rerun alone, it returns its results at once.
  again = pipeline.run(pipeline.class_config(config, "b"), str(root / "b"))
  assert again["identity"] == results["b"]["identity"]
  assert again["seconds"] == results["b"]["seconds"]  # read back, nothing retrained
  with pytest.raises(errors.ConfigError, match="stack.classes='dog' is neither"):
    pipeline.run_classes(smoke_config(tmp_path / "tree", **{"stack.classes": "dog"}),
                         str(tmp_path / "dog"))


def _untrained_stage1s(configs, splits, mesh) -> list[stage1.Stage1Result]:
  """Each member's stage 1 at its initialisation: stage 2's tests need no trained one."""
  return [untrained_stage1(c, split, mesh, c.seed)
          for c, split in zip(configs, splits, strict=True)]


def _stage_losses(workdir, stage: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)
            if r.get("stage") == stage and "loss" in r}


def _worst(a, b) -> float:
  a, b = jax.device_get((a, b))
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _assert_norms_close(a, b, rel: float) -> None:
  """Stage 2's {score: {detector: [mean, std]}} spreads."""
  assert a.keys() == b.keys()
  for score in a:
    assert a[score].keys() == b[score].keys()
    for name in a[score]:
      np.testing.assert_allclose(a[score][name], b[score][name], rtol=rel,
                                 err_msg=f"{score} {name}")


@pytest.mark.cpu_devices
def test_stage2_and_evaluation_as_one_program_match_separate_ones(tmp_path):
  from mscm_jax import evaluate, scoring, stage2  # pylint: disable=g-import-not-at-top

  train, test = _data()
  normals = (0, 1, 2)
  # With rotations, the path that has the most: rotated anomalies double the fit set (16
  # detector steps per member) and the evaluation adds `knn_rot` and `rotation` (the plain
  # stacked stage 2 is also test_stage2_members_resume_and_load's). The frozen stage 1 is
  # each class's initial network (what is compared is stage 2's program, not what stage 1
  # learned). Stage 1's test runs the default (a group's members vmapped); this one runs
  # them one after another (`stack.within_group`), which must give the same numbers.
  shift = {"shift.rotations": 4, "loss.rotation_weight": 1.0, "stage2.rotated_anomalies": True}
  configs = [_config(k, **{"stage2.epochs": 4, "stage2.batch_size": 8,
                           "stage2.log_every_steps": 1, "seed": k,
                           "stack.within_group": "sequential", **shift}) for k in normals]
  steps = 16
  splits = [protocols.one_class_split(train, test, (k,)) for k in normals]
  mesh = sharding.make_model_mesh(2)  # 3 members pad to 4: 2 per group of 4 devices
  alone_mesh = sharding.make_mesh()
  s1s = _untrained_stage1s(configs, splits, mesh)
  dirs = [str(tmp_path / f"stacked_{k}") for k in normals]
  stacked = stage2.train_members(configs, splits, dirs, mesh, s1s)
  scorers = [scoring.Scorer(c, s1, s2) for c, s1, s2 in zip(configs, s1s, stacked,
                                                           strict=True)]
  together = evaluate.compute_scores(configs, splits, scoring.MemberScorers(scorers, mesh))
  for k, c, split, s1, s2, out in zip(normals, configs, splits, s1s, stacked, together,
                                      strict=True):
    alone_dir = str(tmp_path / f"alone_{k}")
    s1_alone = stage1.Stage1Result(jax.device_put(s1.state, sharding.replicated(alone_mesh)),
                                   s1.model, 0, None, None, 0.0)
    alone = stage2.train(c, split, alone_dir, alone_mesh, s1_alone)
    assert s2.steps == alone.steps == steps  # 15 fit rows + 15 turned / 8 x 4 epochs
    info = checkpoints.finished_info(os.path.join(dirs[k], "stage2"))
    info_alone = checkpoints.finished_info(os.path.join(alone_dir, "stage2"))
    assert (info["step"], info["n_fit"]) == (info_alone["step"], info_alone["n_fit"])
    a, b = _stage_losses(dirs[k], "stage2"), _stage_losses(alone_dir, "stage2")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    # Tolerance as stage 1's (reduction order over 4 vs 8 devices, amplified by Adam):
    # measured 4e-6 relative on the losses, 2e-7 on the parameters and 2e-6 on the
    # centres after eight steps; stated 1e-4, 2e-3 and 1e-5.
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)],
                               rtol=1e-4, err_msg=f"class {k}")
    assert _worst(s2.state.centers, alone.state.centers) < 1e-5
    assert _worst(s2.state.params, alone.state.params) < 2e-3
    _assert_norms_close(s2.norm, alone.norm, 1e-2)
    # Evaluation: every test score of the member equals its own Scorer's.
    ref, = evaluate.compute_scores([c], [split], scoring.MemberScorers(
        [scoring.Scorer(c, s1_alone, alone)], sharding.member_mesh(alone_mesh)))
    assert sorted(out["scores"]) == sorted(ref["scores"])
    assert {"knn_rot", "rotation"} <= set(ref["scores"])
    # `mscm` puts its terms in units of spreads that, on these few images, are rounding:
    # the initial network's k-NN distances are at float32 resolution, the 2-row holdout's
    # detector distances nearly equal. Its parts are compared, and it against its formula.
    for name, v in ref["scores"].items():
      if name != "mscm":
        np.testing.assert_allclose(out["scores"][name], v, rtol=1e-3, atol=1e-4,
                                   err_msg=f"class {k}, {name}")
    (d_mean, d_std), scorer = s2.detector_spread, scorers[k]
    (k_mean, k_std), term = scorer.knn_spread, out["scores"]["knn_rot"]
    np.testing.assert_allclose(out["scores"]["mscm"], (out["scores"]["detector"] - d_mean) / d_std
                               + c.evaluate.knn_weight * (term - k_mean) / k_std, rtol=1e-6)
    for scale, m in ref["maps"].items():
      np.testing.assert_allclose(out["maps"][scale], m, atol=1e-5)
  # The members really differ (their own classes, seeds and fit sets).
  assert _worst(stacked[0].state.params, stacked[1].state.params) > 1e-2


@pytest.mark.cpu_devices
def test_stage2_members_resume_and_load(tmp_path):
  from mscm_jax import stage2  # pylint: disable=g-import-not-at-top

  train, test = _data()
  configs = [_config(k, **{"stage2.epochs": 4, "stage2.batch_size": 8,
                           "stage2.checkpoint_every_steps": 1}) for k in (0, 3)]
  splits = [protocols.one_class_split(train, test, (k,)) for k in (0, 3)]
  mesh = sharding.make_model_mesh(2)
  s1s = _untrained_stage1s(configs, splits, mesh)
  full = [str(tmp_path / f"full_{k}") for k in range(2)]
  cut = [str(tmp_path / f"cut_{k}") for k in range(2)]
  ref = stage2.train_members(configs, splits, full, mesh, s1s)
  part = stage2.train_members(configs, splits, cut, mesh, s1s, stop_after=2)
  assert [p.steps for p in part] == [2, 2] and [r.steps for r in ref] == [8, 8]
  assert checkpoints.finished_info(os.path.join(cut[0], "stage2")) is None
  resumed = stage2.train_members(configs, splits, cut, mesh, s1s)
  assert [s.resumed_from for s in resumed] == [2, 2]
  for r, s in zip(ref, resumed, strict=True):
    assert s.steps == 8 and _worst(r.state.params, s.state.params) < 1e-5
    _assert_norms_close(s.norm, r.norm, 1e-6)
  # Finished members are loaded, not trained again: nothing new in their metrics.
  before = [_stage_losses(d, "stage2") for d in cut]
  loaded = stage2.train_members(configs, splits, cut, mesh, s1s)
  assert [_stage_losses(d, "stage2") for d in cut] == before
  assert [s.resumed_from for s in loaded] == [8, 8]
  for r, s in zip(ref, loaded, strict=True):
    assert _worst(r.state.params, s.state.params) < 1e-5
    _assert_norms_close(s.norm, r.norm, 1e-6)
