"""The two-stage hand-off: stage 1 -> checkpoint -> stage 2 -> evaluation -> results.json."""

import json
import os
import time

import jax
import numpy as np
import pytest
from conftest import smoke_config, write_folder_tree

from mscm_jax import evaluate, frozen, metrics, pipeline, stage1
from mscm_jax.runtime import checkpoints, sharding
from mscm_jax.data import protocols, sources


def test_results_json_has_every_field(finished_run):
  _, workdir, results = finished_run
  saved = json.loads((workdir / "results.json").read_text())
  assert saved == json.loads(json.dumps(results))
  for key in ("dataset", "setting", "normal_classes", "seed", "n_train", "n_train_anomalies",
              "n_test", "n_test_anomalous", "test_scores", "validation_scores", "seconds",
              "identity", "identities", "n_val", "n_val_anomalous"):
    assert key in saved, key
  assert saved["dataset"] == "folder" and saved["normal_classes"] == ["c0"]
  # 5 of the 53 normal training images validate, against the 16 images of the other class
  assert saved["n_train"] == 48 and saved["n_test"] == 32 and saved["n_test_anomalous"] == 16
  assert saved["n_val"] == 21 and saved["n_val_anomalous"] == 16
  for name in ("mscm", "deviation", "knn", "pixel_knn", "mscm_res3", "mscm_pooled",
               "deviation_res3", "deviation_pooled"):
    assert set(saved["test_scores"][name]) == {"auroc", "aupr_in", "aupr_out",
                                           "fpr95_anomalies_positive",
                                           "fpr95_normals_positive"}, name
  assert set(saved["seconds"]) == {"data", "stage1", "stage2", "evaluation"}
  assert saved["resumed_from"] == {"stage1": 0, "stage2": 0}  # both trained by this run
  assert checkpoints.finished_info(str(workdir / "stage1"))["step"] == 6  # 48/16 x 2 epochs
  assert checkpoints.finished_info(str(workdir / "stage2"))["n_holdout"] == 5


def test_saved_scores_reproduce_the_metrics(finished_run):
  _, workdir, results = finished_run
  saved = np.load(workdir / "scores.npz")
  labels = saved["is_anomaly"]
  assert labels.shape == (32,) and labels.sum() == 16
  for name, m in results["test_scores"].items():
    assert metrics.evaluate(saved[name], labels) == pytest.approx(m), name


def test_scores_separate_the_planted_class(finished_run):
  # Normal images have a bright red channel, anomalies a bright green one.
  _, _, results = finished_run
  assert results["test_scores"]["mscm"]["auroc"] > 0.8, results["test_scores"]
  assert results["test_scores"]["knn"]["auroc"] > 0.8, results["test_scores"]


def test_report_pictures_are_written(finished_run):
  _, workdir, results = finished_run
  report = workdir / "report"
  for name in ("roc_all.png", "roc_mscm.png", "hist_mscm.png", "hist_pixel_knn.png",
               "heatmaps_res3.png", "heatmaps_pooled.png", "learning_curve.png"):
    assert (report / name).stat().st_size > 1000, name
  assert all(os.path.exists(workdir / p) for p in results["report"])


def test_rerun_returns_at_once(finished_run):
  config, workdir, results = finished_run
  stamp = (workdir / "results.json").stat().st_mtime
  start = time.time()
  again = pipeline.run(config, str(workdir))
  assert time.time() - start < 5
  assert again == json.loads(json.dumps(results))
  assert (workdir / "results.json").stat().st_mtime == stamp


def test_summary_table_lists_headline_scores_first(finished_run):
  _, _, results = finished_run
  lines = evaluate.summary_table(results).splitlines()
  assert [l.split()[0] for l in lines[2:7]] == ["mscm", "detector", "deviation", "knn",
                                               "pixel_knn"]


def test_per_anomaly_class_aurocs_in_results_and_scores(finished_run):
  """One anomaly class: its AUROC is the run's; scores.npz keeps each image's class."""
  _, workdir, results = finished_run
  per = results["per_anomaly_class"]
  assert per["labelled"] == [] and list(per["auroc"]) == ["c1"]
  for name in ("mscm", "deviation", "knn", "pixel_knn"):
    assert per["auroc"]["c1"][name] == results["test_scores"][name]["auroc"], name
  with np.load(workdir / "scores.npz") as saved:
    np.testing.assert_array_equal(saved["class"] == 1, saved["is_anomaly"])
  assert "c1 " in evaluate.summary_table(results).splitlines()[-1]


def test_class_aurocs_split_by_class_and_mark_the_labelled():
  # normals (class 0) score 0..3; class 1 scores above every normal, class 2 below.
  classes = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  split = protocols.ADSplit(
      train_images=np.zeros((3, 4, 4, 3), np.uint8),
      train_is_anomaly=np.array([False, False, True]), train_classes=np.array([0, 0, 2]),
      test_images=np.zeros((8, 4, 4, 3), np.uint8), test_is_anomaly=classes != 0,
      test_classes=classes, class_names=("n", "up", "down"), normal_classes=(0,))
  scores = {"mscm": np.array([0.0, 1.0, 2.0, 3.0, 5.0, 6.0, -2.0, -1.0]),
            "knn": np.array([0.0, 1.0, 2.0, 3.0, -1.0, 9.0, 1.5, 1.5])}
  out = evaluate.class_aurocs(scores, classes, classes != 0, split.class_names)
  assert out == {"up": {"mscm": 1.0, "knn": 0.5}, "down": {"mscm": 0.0, "knn": 0.5}}
  assert split.labelled_anomaly_classes == ("down",)
  table = evaluate.summary_table({
      "dataset": "d", "setting": "unbalanced", "normal_classes": ["n"], "seed": 0,
      "n_test": 8, "n_test_anomalous": 4,
      "per_anomaly_class": {"labelled": ["down"], "auroc": out},
      "scores": {n: metrics.evaluate(v, classes != 0) for n, v in scores.items()}})
  rows = [l.split() for l in table.splitlines()[-2:]]
  assert rows == [["up", "1.0000", "0.5000"], ["down", "*", "0.0000", "0.5000"]]


def test_changed_stage2_config_reuses_stage1(finished_run, tmp_path):
  """--stage1_from: a new workdir takes the finished stage 1; stage 2 and evaluation run."""
  config, workdir, _ = finished_run
  c = config.copy_and_resolve_references()
  c.stage2.scales = ("pooled",)
  c.stage2.inputs = "squared_distance"
  c.stage2.deviation_scales = ("res3",)
  out = pipeline.run(c, str(tmp_path), stage1_from=str(workdir))
  assert out["stage1"]["steps"] == 6
  assert out["resumed_from"] == {"stage1": 6, "stage2": 0}  # stage 1 loaded, not trained
  assert out["stage2"]["detectors"] == {"pooled": ["pooled", "squared_distance"]}
  assert out["stage2"]["deviation_scales"] == ["res3"]
  assert "mscm_res3" not in out["test_scores"] and "deviation_res3" in out["test_scores"]
  # one scale: `deviation` is a monotone transform of that scale's score
  assert out["test_scores"]["deviation"] == out["test_scores"]["deviation_res3"]
  assert out["test_scores"]["detector"] == out["test_scores"]["mscm_pooled"]


def test_stop_after_stage2_leaves_no_results(tmp_path):
  write_folder_tree(tmp_path / "tree", {"train": {"a": 16, "b": 4}, "test": {"a": 4, "b": 4}})
  c = smoke_config(tmp_path / "tree", **{"stop_after": "stage2"})
  out = pipeline.run(c, str(tmp_path / "w"))
  assert out["not_run"] == ["evaluation"]
  assert not (tmp_path / "w" / "results.json").exists()
  assert checkpoints.finished_info(str(tmp_path / "w" / "stage2")) is not None


def test_unbalanced_run_trains_deep_sad_with_the_classifier_head(tmp_path):
  write_folder_tree(tmp_path / "tree", {"train": {"a": 24, "b": 12}, "test": {"a": 6, "b": 6}})
  c = smoke_config(tmp_path / "tree", **{"setting": "unbalanced", "anomaly_ratio": 0.25,
                                         "stage2.classifier": True, "evaluate.report": False})
  out = pipeline.run(c, str(tmp_path / "w"))
  assert out["n_train_anomalies"] == 6
  assert set(out["test_scores"]) >= {"mscm", "pixel_knn", "classifier"}
  logged = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  stage2_keys = set().union(*(r for r in logged if r["stage"] == "stage2"))
  assert {"sad_res3", "sad_pooled", "bce_res3", "bce_pooled"} <= stage2_keys
  assert not (tmp_path / "w" / "report").exists()


def test_validation_is_scored_apart_from_the_test_split(finished_run):
  """The stage-1 probe is the embedding's k-NN AUROC on the validation split (the same
  number as the `knn` score there), never on the test split; both splits' scores are
  saved under their own names."""
  _, workdir, results = finished_run
  val, test = results["validation_scores"], results["test_scores"]
  assert set(val) == set(test)
  probe = results["stage1"]["validation_probe_knn_auroc"]
  assert probe == pytest.approx(val["knn"]["auroc"], abs=1e-9)
  assert results["stage1"]["validation_probe_untrained_knn_auroc"] is not None
  with np.load(workdir / "validation_scores.npz") as saved:
    labels = saved["is_anomaly"]
    assert labels.shape == (21,) and labels.sum() == 16
    assert set(saved["class"][labels]) == {1}  # other classes' training images
    for name, m in val.items():
      assert metrics.evaluate(saved[name], labels) == pytest.approx(m), name


@pytest.mark.cpu_devices
def test_rotation_scores_on_both_splits(tmp_path):
  """shift.rotations=4 with the rotation head: `knn_rot` and `rotation` are scored on
  the test and validation splits, and the head's score separates oriented normals
  (dark top, bright bottom) from orientation-free noise."""
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 200, 16)[None, :, None, None]

  def images(n, normal):
    base = ramp if normal else rng.uniform(0, 200, (n, 16, 16, 1))
    return np.clip(base + rng.normal(0, 20, (n, 16, 16, 3)), 0, 255).astype(np.uint8)

  train = sources.from_arrays(np.concatenate([images(72, True), images(24, False)]),
                              [0] * 72 + [1] * 24, ("up", "noise"))
  test = sources.from_arrays(np.concatenate([images(16, True), images(16, False)]),
                             [0] * 16 + [1] * 16, ("up", "noise"))
  c = smoke_config(tmp_path, **{"shift.rotations": 4, "loss.rotation_weight": 1.0,
                                "train.epochs": 5, "optim.learning_rate": 0.2,
                                "evaluate.report": False})
  split = protocols.make_split(c, train, test)
  assert split.n_train == 65 and split.val_is_anomaly.sum() == 24
  out = pipeline.run(c, str(tmp_path / "w"), split=split)
  for part in ("test_scores", "validation_scores"):
    assert {"knn_rot", "rotation", "knn", "mscm"} <= set(out[part]), part
  assert out["test_scores"]["rotation"]["auroc"] > 0.8, out["test_scores"]["rotation"]
  with np.load(tmp_path / "w" / "scores.npz") as saved:
    assert saved["rotation"].shape == (32,) and np.isfinite(saved["knn_rot"]).all()
    rotation = saved["rotation"]
  # The score is the model's own rotation head, read on each rotation of the images.
  s1, _ = stage1.load_finished(c, str(tmp_path / "w"), sharding.make_mesh(8))
  nll = 0.0
  for r in range(4):
    logits = frozen.outputs(s1.model, s1.state, np.rot90(split.test_images, r, axes=(1, 2)),
                            lambda out: out["rotation_logits"])
    nll = nll - jax.nn.log_softmax(logits.astype(np.float64))[:, r] / 4
  np.testing.assert_allclose(rotation, nll, rtol=1e-4, atol=1e-5)


# Where a signal lands outside the training loops: the function patched to receive it, and
# what the workdir must keep (the loops save first: test_main).
_PHASES = {
    "data": (sources, "load_splits", ("stage1", "stage2")),
    "stage2_read": (frozen, "read_members", ("stage1",)),
    "evaluation": (evaluate, "score_metrics", ("stage1", "stage2")),
    "report": ("report", "write_report", ("stage1", "stage2")),
}


@pytest.mark.parametrize("phase", list(_PHASES))
def test_a_signal_in_any_phase_reaches_main_and_the_rerun_keeps_what_finished(
    finished_copy, monkeypatch, phase):
  """SIGTERM while data are read, stage 2 reads its features, the evaluation scores or the
  report draws: nothing on the way swallows main's handler (`_Signalled`), no results are
  written, the finished stages are kept, and a rerun trains only the stage that had begun."""
  import shutil  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  from mscm_jax import main, report  # pylint: disable=g-import-not-at-top

  config, workdir, _ = finished_copy
  module, name, kept = _PHASES[phase]
  module = report if module == "report" else module
  for stage in ("stage1", "stage2"):
    if stage not in kept:
      shutil.rmtree(workdir / stage)
  os.remove(workdir / "results.json")
  real = getattr(module, name)

  def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

  monkeypatch.setattr(module, name, signalled)
  previous = signal.signal(signal.SIGTERM, main._interrupted)
  try:
    with pytest.raises(main._Signalled, match="SIGTERM"):
      pipeline.run(config, str(workdir))
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not (workdir / "results.json").exists()
  assert all((workdir / s / "FINISHED.json").exists() for s in kept)
  if phase == "stage2_read":  # a stage that had begun: the rerun trains it, and only it
    monkeypatch.setattr(module, name, real)
    results = pipeline.run(config, str(workdir))
    assert results["resumed_from"] == {"stage1": results["stage1"]["steps"], "stage2": 0}


@pytest.mark.cpu_devices
def test_bfloat16_run_is_finite_and_follows_float32(finished_run, tmp_path):
  """The accelerators' dtype through both stages (CPU here), against the float32 run of the
  same config: every logged loss finite; stage 1's losses each within 3 % of float32's and
  stage 2's mean within 10 % (six steps are too few for either to fall reliably, in any
  dtype); each headline AUROC within 0.05, the per-image `knn` ranks correlated above 0.9."""
  config, done, f32 = finished_run
  c = config.copy_and_resolve_references()
  c.model.dtype = "bfloat16"
  c.evaluate.report = False
  bf16 = pipeline.run(c, str(tmp_path / "w"))

  def losses(workdir):
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {s: np.array([r["loss"] for r in records if r["stage"] == s and "loss" in r])
            for s in ("stage1", "stage2")}

  got, want = losses(tmp_path / "w"), losses(done)
  assert all(np.isfinite(v).all() and len(v) > 2 for v in got.values())
  np.testing.assert_allclose(got["stage1"], want["stage1"], rtol=0.03)
  assert got["stage2"].mean() == pytest.approx(want["stage2"].mean(), rel=0.1)
  for name in ("mscm", "knn"):
    assert abs(bf16["test_scores"][name]["auroc"] - f32["test_scores"][name]["auroc"]) < 0.05
  a, b = (np.load(w / "scores.npz")["knn"] for w in (done, tmp_path / "w"))
  ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
  assert np.corrcoef(*ranks)[0, 1] > 0.9
