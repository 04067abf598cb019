"""experiments/scales.py: each scale's detector and deviation alone, from results.json."""

import json

import numpy as np
import pytest
from conftest import load_experiment

scales = load_experiment("scales")


def _cell(root, name, results):
  meta = root / ".sweep" / name
  meta.mkdir(parents=True)
  (meta / "done.json").write_text(json.dumps(
      {"cell": name, "class": name.split(".")[0], "setting": "oneclass", "seed": 0,
       "variant": "", "argv": [], "dataset_classes": []}))
  (root / name).mkdir()
  (root / name / "results.json").write_text(json.dumps(results))


def _shifted(results, by):
  """The run's results with every validation AUROC raised by `by`."""
  out = json.loads(json.dumps(results))
  for m in out["validation_scores"].values():
    m["auroc"] += by
  return out


def test_a_runs_rows_are_its_own_scores(finished_run):
  _, _, results = finished_run
  val = results["validation_scores"]
  got = scales.scale_aurocs(results)
  detectors = list(results["stage2"]["detectors"])
  together = "detectors: " + " + ".join(detectors)
  assert got[together] == (val["detector"]["auroc"], "")
  for d in detectors:
    assert got[f"detector: {d} alone"] == (val[f"mscm_{d}"]["auroc"], together)
  deviation = "deviation: " + " + ".join(results["stage2"]["deviation_scales"])
  assert got[deviation] == (val["deviation"]["auroc"], "")
  assert all(ref in ("", together, deviation) for _, ref in got.values())
  # a run from before `detector` existed: its `mscm` was the detectors' sum
  old = json.loads(json.dumps(results))
  old["validation_scores"]["mscm"] = old["validation_scores"].pop("detector")
  assert scales.scale_aurocs(old)[together][0] == val["detector"]["auroc"]


def test_table_means_runs_and_pairs_each_scale_with_the_scales_together(finished_run,
                                                                        tmp_path):
  _, _, results = finished_run
  _cell(tmp_path, "a.oneclass.s0", results)
  _cell(tmp_path, "a.oneclass.s1", _shifted(results, 0.1))
  text = scales.table([str(tmp_path)])
  val = results["validation_scores"]
  d = next(iter(results["stage2"]["detectors"]))
  together = " + ".join(results["stage2"]["detectors"])
  diff = val[f"mscm_{d}"]["auroc"] - val["detector"]["auroc"]
  lower = int(diff < 0) * 2
  mean = {k: np.mean([val[k]["auroc"], val[k]["auroc"] + 0.1]) for k in val}
  assert f"| detectors: {together} | {mean['detector']:.3f} |  |" in text
  assert (f"| detector: {d} alone | {mean[f'mscm_{d}']:.3f} | "
          f"{diff:+.3f} ({lower} of 2) |" in text)
  assert f"{tmp_path} (n = 2)" in text


def test_a_root_without_finished_cells_is_refused(tmp_path):
  with pytest.raises(SystemExit, match="no finished cell"):
    scales.table([str(tmp_path)])
