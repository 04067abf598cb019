"""experiments/ablation.py: evaluation-time variants on a finished stage 1, read on the
validation split."""

import json
import shutil

import pytest

from conftest import load_experiment

ablation = load_experiment("ablation")


def test_a_variant_reruns_stage_two_and_records_the_validation_split(finished_run, tmp_path):
  _, workdir, results = finished_run
  run = tmp_path / "airplane.oneclass.s0.smoke"  # a sweep cell's name
  shutil.copytree(workdir, run)
  out = tmp_path / "ablation.jsonl"
  ablation.evaluate_run(str(run), ["default", "difference"], str(out), set())
  records = [json.loads(line) for line in open(out)]
  assert [r["variant"] for r in records] == ["default", "difference"]
  assert {r["split"] for r in records} == {"validation"}
  default = records[0]["auroc"]
  # `default` is the run itself again: the same stage 1, the same seeded stage 2
  for name, m in results["validation_scores"].items():
    assert default[name] == pytest.approx(m["auroc"], abs=1e-6), name
  assert "mscm[" in "".join(default)  # the scale subsets come along
  assert "validation split" in ablation.table(records)
  with pytest.raises(SystemExit, match="mixes splits"):
    ablation.table(records + [{**records[0], "split": "test"}])
