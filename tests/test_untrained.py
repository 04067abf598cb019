"""experiments/untrained.py: the network stage 1 starts from, read as a trained one is."""

import json

import numpy as np
import pytest
from conftest import load_experiment

from mscm_jax import config as config_lib, pipeline

untrained = load_experiment("untrained")


def test_its_validation_knn_is_the_runs_untrained_probe(finished_run, tmp_path, capsys):
  config, workdir, results = finished_run
  split = pipeline.load_split(config)
  got = untrained.untrained_scores(config, split)
  assert set(got) == {"validation", "test"}
  np.testing.assert_allclose(got["validation"]["knn"],
                             results["stage1"]["validation_probe_untrained_knn_auroc"],
                             atol=1e-5)
  # a table beside the run's root: the run's own trained `knn` in its column
  out = str(tmp_path / "u.jsonl")
  untrained.rows.emit({"config": "c", "class": "c0", "seed": config.seed, **got}, out)
  capsys.readouterr()
  text = untrained.table(untrained.rows.read(out), str(workdir.parent), "test")
  trained_knn = json.load(open(workdir / "results.json"))["test_scores"]["knn"]["auroc"]
  assert f"| c0 | {config.seed} | {got['test']['knn']:.3f} | nan | {trained_knn:.3f} |" in text


def test_rotations_add_knn_rot_and_leave_the_plain_knn(finished_run):
  config, _, _ = finished_run
  split = pipeline.load_split(config)
  turned = config_lib.set_fields(config.copy_and_resolve_references(),
                                 {"shift.rotations": 4, "loss.rotation_weight": 1.0})
  plain, rot = (untrained.untrained_scores(c, split) for c in (config, turned))
  assert "knn_rot" not in plain["test"] and 0.0 <= rot["test"]["knn_rot"] <= 1.0
  assert rot["test"]["knn"] == pytest.approx(plain["test"]["knn"], abs=1e-6)
