"""experiments/per_class_auroc.py: a finished run's AUROC against each anomaly class."""

import json
import shutil

from conftest import load_experiment

per_class_auroc = load_experiment("per_class_auroc")


def test_an_older_results_json_is_recomputed_to_the_runs_own_values(finished_run, tmp_path):
  """The run's own per-class AUROCs (test_pipeline checks them) are read from results.json;
  a results.json from before `per_anomaly_class` gives the same, recomputed."""
  _, workdir, results = finished_run
  read = per_class_auroc.per_class(str(workdir))
  assert read[0] == ["c1"] and read[2] == ()
  # A results.json from before `per_anomaly_class`: recomputed from the split, the same.
  old = tmp_path / "old"
  old.mkdir()
  for name in ("config.json", "scores.npz"):
    shutil.copy(workdir / name, old / name)
  (old / "results.json").write_text(json.dumps(
      {k: v for k, v in results.items() if k != "per_anomaly_class"}))
  assert per_class_auroc.per_class(str(old)) == read
  # ... also when the config names its normal class by index, as the README's run does.
  config = json.loads((old / "config.json").read_text())
  config["dataset"]["normal_class"] = 0  # c0
  (old / "config.json").write_text(json.dumps(config))
  assert per_class_auroc.per_class(str(old)) == read


def test_a_workdir_without_results_is_one_line(tmp_path, capsys):
  assert per_class_auroc.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert err == f"error: {tmp_path}: no results.json (not a finished run's workdir)"
