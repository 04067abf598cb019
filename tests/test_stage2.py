"""Stage 2: deviation maps from a frozen stage 1, the detectors' objectives and training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import untrained_stage1

from mscm_jax import evaluate, frozen as frozen_lib, knn, metrics, stage1, stage2
from mscm_jax.runtime import checkpoints, sharding
from mscm_jax.scoring import Scorer
from mscm_jax import config as config_lib
from mscm_jax.data import augment, device, protocols
from mscm_jax.models import cosine_deviation


def _config(**overrides):
  c = config_lib.apply_preset(config_lib.base_config(), "smoke")
  c.memory.scales = ("res3", "pooled")
  return config_lib.validate(config_lib.set_fields(c, overrides))


@pytest.fixture(scope="module")
def frozen():
  c = _config()
  parts = stage1.components(c, 8, (16, 16, 3), sharding.make_mesh(1))
  return parts.model, parts.init_fn(jax.random.PRNGKey(0))


def test_maps_and_training_free_scores(frozen):
  model, state = frozen
  images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
  out = frozen_lib.read(model, state, images, ("res3", "pooled"), batch_size=4,
                       inputs=stage2.detector_inputs(("res3", "pooled"), "cosine_distance"))
  maps = out["inputs"]
  # Equal up to float rounding: each read is its own jit, fused its own way.
  np.testing.assert_allclose(out["maps"]["res3"], maps["res3"][..., 0], rtol=1e-6)
  only = frozen_lib.read(model, state, images, ("res3", "pooled"),
                        inputs=stage2.detector_inputs(("pooled",), "cosine_distance"))
  assert set(only["inputs"]) == {"pooled"} and set(only["deviation"]) == {"res3", "pooled"}
  assert maps["res3"].shape == (7, 4, 4, 1) and maps["pooled"].shape == (7, 1, 1, 1)
  assert out["embedding"].shape == (7, 16)
  assert ((maps["res3"] >= 0) & (maps["res3"] <= 2)).all()
  ref = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                    augment.to_float(images[:2]), train=False)
  np.testing.assert_allclose(maps["res3"][:2, ..., 0],
                             cosine_deviation(ref["features"]["res3"], ref["readout"]["res3"]),
                             atol=1e-5)
  np.testing.assert_allclose(out["deviation"]["res3"], maps["res3"].mean(axis=(1, 2, 3)),
                             rtol=1e-5)
  diff = frozen_lib.read(model, state, images, ("res3",), kind="difference",
                        inputs=stage2.detector_inputs(("res3",), "difference"))
  assert diff["inputs"]["res3"].shape == (7, 4, 4, 16)
  np.testing.assert_allclose(diff["deviation"]["res3"], out["deviation"]["res3"], rtol=1e-5)
  both = frozen_lib.read(model, state, images, ("res3",), kind="cosine_distance+difference",
                        inputs=stage2.detector_inputs(("res3",), "cosine_distance+difference"))
  assert set(both["inputs"]) == {"res3_cosine_distance", "res3_difference"}
  np.testing.assert_allclose(both["inputs"]["res3_cosine_distance"], maps["res3"], rtol=1e-6)
  np.testing.assert_allclose(both["inputs"]["res3_difference"], diff["inputs"]["res3"],
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(both["maps"]["res3"], out["maps"]["res3"], rtol=1e-6)
  # higher = more deviant
  assert frozen_lib.map_kind("cosine_similarity+difference") == "cosine_distance"
  assert frozen_lib.map_kind("difference+squared_distance") == "squared_distance"
  euclid = frozen_lib.deviation_maps(model, state, images, ("res3",),
                                     kind="squared_distance")["res3"]
  f, r = ref["features"]["res3"], ref["readout"]["res3"]
  np.testing.assert_allclose(euclid[:2], np.mean(np.square(f - r), axis=-1), rtol=1e-4)


def test_unknown_scale_is_a_clear_error(frozen):
  model, state = frozen
  with pytest.raises(ValueError, match="res2"):
    frozen_lib.deviation_maps(model, state, np.zeros((2, 16, 16, 3), np.uint8), ("res2",))


def test_holdout_takes_normal_rows_only_and_is_seeded():
  flags = np.array([False] * 40 + [True] * 10)
  hold = stage2.holdout_rows(flags, 0.1, seed=3)
  assert hold.sum() == 4 and not (hold & flags).any()
  np.testing.assert_array_equal(hold, stage2.holdout_rows(flags, 0.1, seed=3))
  assert not stage2.holdout_rows(flags, 0.0, seed=3).any()


def test_combine_normalises_each_scale_by_its_spread():
  per_scale = {"a": np.array([1.0, 3.0]), "b": np.array([100.0, 300.0])}
  norm = {"a": [2.0, 1.0], "b": [200.0, 100.0]}
  np.testing.assert_allclose(stage2.combine(per_scale, norm, {"a": 1.0, "b": 1.0}), [-2, 2])
  np.testing.assert_allclose(stage2.combine(per_scale, norm, {"a": 0.5, "b": 0.0}),
                             [-0.5, 0.5])
  assert stage2.spread({"a": np.array([1.0, 3.0])}) == {"a": [2.0, 1.0]}


def test_subset_aurocs_score_every_combination():
  labels = np.array([0, 0, 1, 1])
  per = {"a": np.array([0.0, 1.0, 2.0, 3.0]), "b": np.array([3.0, 2.0, 1.0, 0.0])}
  norm = {"a": [0.0, 1.0], "b": [0.0, 1.0]}
  out = evaluate.subset_aurocs(per, norm, labels, ("a", "b"), (1, 2))
  assert out == {"a": 1.0, "b": 0.0, "a+b": 0.5}  # a + b is constant: every pair tied
  assert set(evaluate.subset_aurocs(per, norm, labels, ("a", "b"), (2,))) == {"a+b"}


# ------------------------------------------------------------- detectors on toy maps


def _toy_maps(n, rng, hot=False):
  """8x8 'deviation maps': smooth low noise; `hot` adds a bright 3x3 patch somewhere."""
  m = 0.2 + 0.05 * rng.standard_normal((n, 8, 8, 1)).astype(np.float32)
  if hot:
    for i in range(n):
      y, x = rng.integers(0, 6, 2)
      m[i, y:y + 3, x:x + 3] += 0.6
  return m


def _train_detector(c, maps, flags, mesh, steps):
  detector = stage2.build_detector(c)
  total, _ = stage2.num_steps(c, len(flags))
  tx, schedule = stage2.build_optimizer(c, total)
  mesh = sharding.member_mesh(mesh)  # one member: K = 1 of the stacked step
  state = stage2.init_members([c], detector, tx, [{"res3": maps[~flags]}], mesh)
  centers0 = jax.device_get(state.centers)
  step = stage2.make_train_step(c, detector, tx, schedule, len(flags), mesh)
  dev_maps = {"res3": device.stack_rows([maps], mesh)}
  dev_flags = device.stack_rows([flags], mesh)
  losses = []
  for _ in range(steps):
    state, logged = step(state, dev_maps, dev_flags)
    losses.append(float(logged["loss"][0]))
  state = sharding.unstack(state, mesh, 1)[0]
  return detector, state, jax.tree.map(lambda c: c[0], centers0), losses


def test_center_is_fixed_initial_mean_away_from_zero():
  c = _config(**{"stage2.epochs": 4})
  rng = np.random.default_rng(0)
  maps = _toy_maps(64, rng)
  mesh = sharding.make_mesh(1)
  detector, state, centers0, _ = _train_detector(c, maps, np.zeros(64, bool), mesh, 5)
  init = sharding.unstack(stage2.init_members([c], detector, stage2.build_optimizer(c, 5)[0],
                                              [{"res3": maps}], sharding.member_mesh(mesh)),
                          sharding.member_mesh(mesh), 1)[0]
  np.testing.assert_allclose(init.input_scale["res3"], maps.std(), rtol=1e-5)
  phi0 = detector.apply({"params": init.params["res3"]}, maps / maps.std())["phi"]
  expected = np.asarray(phi0).mean(axis=0)
  expected = np.where(np.abs(expected) < 0.1, np.where(expected < 0, -0.1, 0.1), expected)
  np.testing.assert_allclose(centers0["res3"], expected, rtol=1e-4, atol=1e-6)
  assert (np.abs(centers0["res3"]) >= 0.1 - 1e-7).all()
  np.testing.assert_array_equal(jax.device_get(state.centers)["res3"], centers0["res3"])


@pytest.mark.cpu_devices
def test_deep_svdd_separates_planted_patches():
  c = _config(**{"stage2.widths": (8, 16), "stage2.out_dim": 8, "stage2.batch_size": 32,
                 "stage2.learning_rate": 3e-3, "stage2.epochs": 40})
  rng = np.random.default_rng(1)
  train = _toy_maps(128, rng)
  mesh = sharding.make_mesh(8)
  detector, state, _, losses = _train_detector(c, train, np.zeros(128, bool), mesh, 120)
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:3]), losses[:3] + losses[-10:]
  test = np.concatenate([_toy_maps(40, rng), _toy_maps(40, rng, hot=True)])
  d = stage2.distances(detector, state, {"res3": test}, batch_size=32)["res3"]
  assert metrics.auroc(d, np.r_[np.zeros(40), np.ones(40)]) > 0.95


def _labelled_planted_maps():
  """(fit maps, their anomaly flags, test maps, test labels): 96 normal + 32 hot fit maps,
  40 + 40 test maps."""
  rng = np.random.default_rng(2)
  maps = np.concatenate([_toy_maps(96, rng), _toy_maps(32, rng, hot=True)])
  flags = np.r_[np.zeros(96, bool), np.ones(32, bool)]
  test = np.concatenate([_toy_maps(40, rng), _toy_maps(40, rng, hot=True)])
  return maps, flags, test, np.r_[np.zeros(40), np.ones(40)]


def test_deep_sad_pushes_labelled_anomalies_away():
  maps, flags, test, labels = _labelled_planted_maps()
  mesh = sharding.make_mesh(1)
  ratio = {}
  for setting in ("oneclass", "unbalanced"):
    c = _config(setting=setting, **{"stage2.batch_size": 32, "stage2.epochs": 20,
                                    "stage2.learning_rate": 3e-3, "stage2.classifier": True})
    fit_flags = flags if setting == "unbalanced" else np.zeros_like(flags)
    detector, state, _, losses = _train_detector(c, maps, fit_flags, mesh, 60)
    assert np.isfinite(losses).all()
    assert ("classifier" in state.params["res3"]) == (setting == "unbalanced")
    d = stage2.distances(detector, state, {"res3": test}, batch_size=40)["res3"]
    assert metrics.auroc(d, labels) > 0.95, setting
    ratio[setting] = np.median(d[labels == 1]) / np.median(d[labels == 0])
  # Measured: about 5 (one-class) and 180 (Deep SAD) with these seeds.
  assert ratio["unbalanced"] > 5 * ratio["oneclass"], ratio


def test_classifier_head_learns_the_labelled_anomalies():
  """The unbalanced setting's BCE head: its logit ranks planted anomalies first. (At
  init it ranks them last here: the hot maps' larger features meet a negative kernel;
  measured test AUROC 0.65-0.67 after 80-240 steps at 3e-3 to 1e-2, 0.994 at 3e-2.)"""
  maps, flags, test, labels = _labelled_planted_maps()
  c = _config(setting="unbalanced", **{"stage2.batch_size": 32, "stage2.epochs": 20,
                                       "stage2.learning_rate": 3e-2, "stage2.classifier": True})
  detector, state, _, _ = _train_detector(c, maps, flags, sharding.make_mesh(1), 80)
  states, one = sharding.as_one_member(state)
  logit, = stage2.logits_members(detector, states, [{"res3": test}], one, batch_size=40)
  assert metrics.auroc(logit["res3"], labels) > 0.95


@pytest.mark.cpu_devices
def test_sharded_step_equals_single_device():
  c = _config(**{"stage2.batch_size": 16})
  maps = _toy_maps(48, np.random.default_rng(3))
  flags = np.zeros(48, bool)
  states = []
  for n_dev in (1, 8):
    _, state, _, _ = _train_detector(c, maps, flags, sharding.make_mesh(n_dev), 2)
    states.append(jax.device_get(state.params))
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------- train() on a frozen state


def _one_class(normal: np.ndarray, test: np.ndarray) -> protocols.ADSplit:
  """Normal training images; a test split whose first half is normal."""
  n, half = len(normal), len(test) // 2
  return protocols.ADSplit(
      train_images=normal, train_is_anomaly=np.zeros(n, bool),
      train_classes=np.zeros(n, np.int64), test_images=test,
      test_is_anomaly=np.r_[np.zeros(half, bool), np.ones(half, bool)],
      test_classes=np.r_[np.zeros(half), np.ones(half)].astype(np.int64),
      class_names=("a", "b"), normal_classes=(0,))


def _split(n=48, size=16, seed=0):
  rng = np.random.default_rng(seed)
  normal = rng.integers(80, 140, (n, size, size, 3), dtype=np.uint8)
  return _one_class(normal, rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8))


@pytest.mark.cpu_devices
def test_train_resume_equals_uninterrupted_and_reloads(tmp_path):
  c = _config(**{"stage2.epochs": 2, "stage2.batch_size": 8, "stage2.checkpoint_every_steps": 3})
  split = _split()
  mesh = sharding.make_mesh(8)
  s1 = untrained_stage1(c, split, mesh)
  straight = stage2.train(c, split, str(tmp_path / "a"), mesh, s1)
  part = stage2.train(c, split, str(tmp_path / "b"), mesh, s1, stop_after=5)
  assert part.steps == 5
  assert checkpoints.finished_info(str(tmp_path / "b" / "stage2")) is None
  resumed = stage2.train(c, split, str(tmp_path / "b"), mesh, s1)
  # 48 images, 10% held out -> 43 fitted, 6 batches of 8 per epoch, 2 epochs
  assert straight.steps == resumed.steps == 12
  assert (straight.resumed_from, part.resumed_from, resumed.resumed_from) == (0, 0, 5)
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.state)),
                  jax.tree.leaves(jax.device_get(resumed.state)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert straight.norm == resumed.norm
  info = checkpoints.finished_info(str(tmp_path / "b" / "stage2"))
  assert info["n_fit"] == 43 and info["n_holdout"] == 5
  steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert steps == list(range(1, 13)), steps  # one record per step across the resume
  loaded = stage2.train(c, split, str(tmp_path / "b"), mesh, s1)  # finished: a load
  assert loaded.seconds == 0.0 and loaded.norm == straight.norm and loaded.resumed_from == 12
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                  jax.tree.leaves(jax.device_get(loaded.state.params)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_top_k_one_retrieves_the_nearest_prototype(frozen):
  model, state = frozen
  sharp = model.clone(top_k=1)
  images = np.random.default_rng(4).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  out = sharp.apply({"params": state.params, "batch_stats": state.batch_stats},
                    augment.to_float(images), train=False)
  a = out["attention"]["res3"]
  assert jnp.allclose(a.max(axis=-1), 1.0) and jnp.allclose(a.sum(axis=-1), 1.0)
  soft = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                     augment.to_float(images), train=False)["attention"]["res3"]
  np.testing.assert_array_equal(np.argmax(a, -1), np.argmax(soft, -1))


def _on_untrained_stage1(c, tmp_path):
  """(split, mesh, stage 1, stage 2): stage 2 trained on the initial stage-1 network."""
  split = _split()
  mesh = sharding.make_mesh(1)
  s1 = untrained_stage1(c, split, mesh)
  return split, mesh, s1, stage2.train(c, split, str(tmp_path), mesh, s1)


def test_joined_kinds_train_one_detector_per_scale_and_kind(tmp_path):
  c = _config(**{"stage2.epochs": 1, "stage2.batch_size": 8,
                 "stage2.inputs": "cosine_similarity+difference", "stage2.weights": (1.0, 3.0)})
  assert stage2.detectors(c) == {"res3_cosine_similarity": ("res3", "cosine_similarity"),
                                 "res3_difference": ("res3", "difference"),
                                 "pooled_cosine_similarity": ("pooled", "cosine_similarity"),
                                 "pooled_difference": ("pooled", "difference")}
  weights = stage2.detector_weights(c)  # each detector takes its scale's weight
  assert weights["res3_difference"] == 1.0 and weights["pooled_cosine_similarity"] == 3.0
  split, mesh, s1, s2 = _on_untrained_stage1(c, tmp_path)
  assert set(s2.norm["mscm"]) == set(stage2.detectors(c))
  assert set(s2.norm["deviation"]) == {"res3", "pooled"}
  scores, out = Scorer(c, s1, s2).scores_and_read(split.test_images)
  assert out["inputs"]["res3_difference"].shape[-1] > 1
  assert out["inputs"]["res3_cosine_similarity"].shape[-1] == 1
  per = {name: scores[f"mscm_{name}"] for name in stage2.detectors(c)}
  np.testing.assert_allclose(scores["detector"], stage2.combine(per, s2.norm["mscm"], weights))
  # the training-free score and the heat maps stay 1 - cos (higher = more deviant)
  np.testing.assert_allclose(out["maps"]["res3"],
                             1 - out["inputs"]["res3_cosine_similarity"][..., 0], atol=1e-6)
  loaded = stage2.load_finished(c, str(tmp_path), split.train_images.shape[1:], mesh)
  np.testing.assert_array_equal(loaded.bank, s2.bank)
  assert loaded.detector_spread == s2.detector_spread
  again = Scorer(c, s1, loaded).scores(split.test_images)
  np.testing.assert_array_equal(again["mscm"], scores["mscm"])


def test_mscm_adds_the_knn_score_to_the_detectors_each_in_units_of_its_spread(tmp_path):
  c = _config(**{"stage2.epochs": 1, "stage2.batch_size": 8, "shift.rotations": 2,
                 "evaluate.knn_weight": 0.5})
  split, _, s1, s2 = _on_untrained_stage1(c, tmp_path)
  normal = split.train_images[~split.train_is_anomaly]
  scorer = Scorer(c, s1, s2)
  # the bank: the frozen embedding of the normal training images, turned 0 and 1 times
  assert s2.bank.shape[:2] == (2, len(normal))
  np.testing.assert_allclose(s2.bank[1], scorer.embedding(np.rot90(normal, 1, axes=(1, 2))),
                             atol=1e-5)
  scores = scorer.scores(split.test_images)
  k = c.evaluate.knn_k
  turned = [scorer.embedding(np.rot90(split.test_images, r, axes=(1, 2))) for r in (0, 1)]
  np.testing.assert_allclose(scores["knn"], knn.knn_scores(s2.bank[0], turned[0], k=k),
                             atol=1e-6)
  knn_rot = np.mean([knn.knn_scores(b, q, k=k) for b, q in zip(s2.bank, turned)], axis=0)
  np.testing.assert_allclose(scores["knn_rot"], knn_rot, atol=1e-6)
  # the spread: each normal training image's knn_rot against the other training images
  loo = np.mean([[knn.knn_scores(np.delete(b, i, axis=0), b[i:i + 1], k=k)[0]
                  for i in range(len(b))] for b in s2.bank], axis=0)
  np.testing.assert_allclose(scorer.knn_spread, (loo.mean(), loo.std()), rtol=1e-5)
  # the detectors' spread: their combined score on stage 2's holdout images
  held = split.train_images[stage2.holdout_rows(split.train_is_anomaly,
                                                c.stage2.holdout_fraction, c.seed)]
  on_holdout = scorer.scores(held)["detector"]
  np.testing.assert_allclose(s2.detector_spread, (on_holdout.mean(), on_holdout.std()),
                             rtol=1e-4)
  (d_mean, d_std) = s2.detector_spread
  np.testing.assert_allclose(scores["mscm"], (scores["detector"] - d_mean) / d_std
                             + 0.5 * (knn_rot - loo.mean()) / loo.std(), rtol=1e-5, atol=1e-5)
  c.evaluate.knn_weight = 0.0  # the paper's score alone, in its units
  np.testing.assert_allclose(Scorer(c, s1, s2).scores(split.test_images)["mscm"],
                             (scores["detector"] - d_mean) / d_std, rtol=1e-6, atol=1e-9)


def test_mscm_adds_the_rotation_score_in_units_of_its_spread_on_the_normals(tmp_path):
  c = _config(**{"stage2.epochs": 1, "stage2.batch_size": 8, "shift.rotations": 2,
                 "loss.rotation_weight": 1.0, "evaluate.knn_weight": 0.0,
                 "evaluate.rotation_weight": 0.5})
  split, _, s1, s2 = _on_untrained_stage1(c, tmp_path)
  scorer = Scorer(c, s1, s2)
  # the spread: the `rotation` score of the normal training images themselves
  on_normals = scorer.scores(split.train_images[~split.train_is_anomaly])["rotation"]
  np.testing.assert_allclose(scorer.rotation_spread, (on_normals.mean(), on_normals.std()),
                             rtol=1e-5)
  scores = scorer.scores(split.test_images)
  (d_mean, d_std), (r_mean, r_std) = s2.detector_spread, scorer.rotation_spread
  np.testing.assert_allclose(scores["mscm"], (scores["detector"] - d_mean) / d_std
                             + 0.5 * (scores["rotation"] - r_mean) / r_std, rtol=1e-5,
                             atol=1e-5)
  c.evaluate.rotation_weight = 0.0
  np.testing.assert_allclose(Scorer(c, s1, s2).scores(split.test_images)["mscm"],
                             (scores["detector"] - d_mean) / d_std, rtol=1e-6, atol=1e-9)


# ------------------------------------------------- the shifted distribution as anomalies


def test_rotated_fit_images_are_the_fit_normals_turned_and_seeded():
  c = _config(**{"shift.rotations": 4, "stage2.rotated_anomalies": True,
                 "stage2.holdout_fraction": 0.25})
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
  flags = np.r_[np.zeros(8, bool), np.ones(4, bool)]
  hold, _, fit_normal = stage2._fit_rows(c, flags)
  rotated = stage2.rotated_fit_images(c, images, flags)
  assert rotated.shape == (fit_normal.sum(), 8, 8, 3) and rotated.dtype == np.uint8
  turns = []
  for row, out in zip(np.flatnonzero(fit_normal), rotated, strict=True):
    k = [k for k in range(4) if np.array_equal(np.rot90(images[row], k), out)]
    assert k and k[0] > 0, "every anomaly is its fit image turned by 90, 180 or 270"
    turns.append(k[0])
  assert len(set(turns)) > 1
  np.testing.assert_array_equal(stage2.rotated_fit_images(c, images, flags), rotated)
  inputs, fit_flags = stage2.with_anomalies({"a": images}, flags, {"a": rotated})
  assert fit_flags.sum() == 4 + len(rotated) and len(inputs["a"]) == 12 + len(rotated)
  # appending anomalies leaves the holdout, and so the spread's reference, unchanged
  np.testing.assert_array_equal(stage2._fit_rows(c, fit_flags)[0][:12], hold)


def _oriented_split(n=48, size=16, seed=0):
  """Normals are top-lit ramps: their rotations are clearly another distribution."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(40, 215, size)[:, None, None] * np.ones((size, size, 3))

  def draw(m):
    return np.clip(ramp + rng.normal(0, 12, (m, size, size, 3)), 0, 255).astype(np.uint8)

  normal, test = draw(n), draw(16)
  return _one_class(normal, np.concatenate([test[:8], np.rot90(test[8:], 1, axes=(1, 2))]))


def test_rotated_anomalies_train_deep_sad_in_the_oneclass_setting(tmp_path):
  split = _oriented_split()
  mesh = sharding.make_mesh(1)
  gap = {}
  for rotated in (False, True):
    c = _config(**{"shift.rotations": 4, "stage2.rotated_anomalies": rotated,
                   "stage2.epochs": 6, "stage2.batch_size": 16,
                   "stage2.learning_rate": 3e-3, "stage2.log_every_steps": 1})
    s1 = untrained_stage1(c, split, mesh)
    workdir = tmp_path / str(rotated)
    s2 = stage2.train(c, split, str(workdir), mesh, s1)
    info = checkpoints.finished_info(str(workdir / "stage2"))
    # 48 normals, 5 held out: 43 fitted, each also turned into one labelled anomaly
    assert (info["n_fit"], info["n_holdout"]) == ((86 if rotated else 43), 5)
    terms = {k for line in open(workdir / "metrics.jsonl") for k in json.loads(line)}
    assert any(t.startswith("sad_") for t in terms) == rotated
    assert any(t.startswith("svdd_") for t in terms) != rotated
    d = Scorer(c, s1, s2).scores(split.test_images)["mscm"]
    gap[rotated] = np.median(d[8:]) - np.median(d[:8])
    if rotated:
      assert metrics.auroc(d, split.test_is_anomaly) > 0.9
  # Measured: 85 (one-class) and 140 (rotated anomalies) holdout spreads apart.
  assert gap[True] > 1.3 * gap[False], gap
