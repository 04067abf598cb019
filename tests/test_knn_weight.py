"""experiments/knn_weight.py: `mscm`'s terms reweighted on a finished run, no training."""

import shutil

import numpy as np
import pytest
from conftest import load_experiment, smoke_config, write_folder_tree

from mscm_jax import metrics, pipeline, scoring

knn_weight = load_experiment("knn_weight")


def test_its_default_weight_is_the_runs_own_mscm(finished_run, tmp_path):
  config, workdir, results = finished_run
  shutil.copytree(workdir, tmp_path / "w")  # loading may write the scoring extras
  record = knn_weight.rescore(str(tmp_path / "w"))
  val, test = results["validation_scores"], results["test_scores"]
  assert config.evaluate.knn_weight == 1.0
  assert record["validation"]["mscm@1"] == pytest.approx(val["mscm"]["auroc"], abs=1e-6)
  assert record["test"]["mscm@1"] == pytest.approx(test["mscm"]["auroc"], abs=1e-6)
  # w = 0: the detectors alone, in their units (a monotone transform: the same AUROC)
  assert record["validation"]["mscm@0"] == pytest.approx(val["detector"]["auroc"], abs=1e-6)
  assert record["saved_validation_mscm"] == val["detector"]["auroc"]
  assert record["rotation_spread"] is None and "mscm@1+rot@1" not in record["validation"]
  screen = knn_weight.rescore(str(tmp_path / "w"), validation_only=True)
  full = {k: v for k, v in record["validation"].items() if k != "pixel_knn"}
  assert "test" not in screen and screen["validation"] == full  # no pixel_knn: a screen
  text = knn_weight.table([record, {**screen, "seed": 9}])
  assert text.count("| c0 s9 |") == 1  # the screen has a validation row, no test row
  assert "Test split" not in knn_weight.table([screen])  # no empty test table


def test_the_rotation_terms_are_the_librarys_rotation_weight(tmp_path):
  write_folder_tree(tmp_path / "tree", {"train": {"c0": 40, "c1": 12},
                                        "test": {"c0": 8, "c1": 8}})
  c = smoke_config(tmp_path / "tree", **{
      "dataset.normal_class": "c0", "train.epochs": 1, "stage2.epochs": 1,
      "shift.rotations": 2, "loss.rotation_weight": 1.0, "evaluate.report": False})
  pipeline.run(c, str(tmp_path / "w"))
  record = knn_weight.rescore(str(tmp_path / "w"), validation_only=True)
  assert set(knn_weight.ROTATION_COLUMNS) <= set(record["validation"])
  _, split, scorer = knn_weight.rows.finished(str(tmp_path / "w"))
  for w, v in ((1.0, 0.5), (0.0, 1.0)):
    c.evaluate.knn_weight, c.evaluate.rotation_weight = w, v
    library = scoring.Scorer(c, scorer.s1, scorer.s2).scores(split.val_images)["mscm"]
    assert record["validation"][f"mscm@{w:g}+rot@{v:g}"] == pytest.approx(
        metrics.auroc(library, split.val_is_anomaly), abs=1e-6)
  assert np.isfinite(record["rotation_spread"]).all()
  assert "With the rotation head's score" in knn_weight.table([record])


def test_runs_of_one_class_and_seed_are_told_apart_by_their_variant():
  assert knn_weight._variant({"run": "/r/cat.oneclass.s0.hue0/eval/x", "class": "cat"}) == "hue0"
  assert knn_weight._variant({"run": "/r/cat.oneclass.s0", "class": "cat"}) == ""
  runs = [{"run": f"/r/cat.oneclass.s0.{v}", "class": "cat", "seed": 0,
           "validation": {"detector": 0.5}} for v in ("a", "b")]
  assert knn_weight._rows(runs, "validation", ["detector"])[:2] == [
      "| cat s0 (a) | 0.500 |", "| cat s0 (b) | 0.500 |"]
