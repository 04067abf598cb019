"""experiments/per_class_auroc.py: a finished run's AUROC against each anomaly class."""

import pytest

from conftest import load_experiment

per_class_auroc = load_experiment("per_class_auroc")


def test_one_anomaly_class_gives_the_runs_own_auroc(finished_run):
  _, workdir, results = finished_run
  others, out, labelled = per_class_auroc.per_class(str(workdir))
  # One anomaly class: its AUROC is the run's own, and a one-class run labels none.
  assert others == ["c1"] and labelled == ()
  for s in ("mscm", "knn"):
    assert out[s]["c1"] == pytest.approx(results["scores"][s]["auroc"], abs=1e-12)
