"""experiments/class_runs.py: the detail tables of a sweep root's finished runs."""

import pytest

from conftest import load_experiment

class_runs = load_experiment("class_runs")
TABLE = 6e-4  # the tables print three decimals: half a unit, and float rounding of it


def _row(table: str, label: str) -> list[float]:
  line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
  return [float(v) for v in line.strip("|").split("|")[1:]]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_subsets_recombine_as_the_pipeline_does(finished_run, split):
  _, workdir, results = finished_run
  root = str(workdir.parent)  # the fixture's root: its one run, "w"
  scores = results[f"{split}_scores"]
  mscm = class_runs.subsets(root, "mscm", drop_one=True, split=split)
  detectors = sorted(results["stage2"]["norm"]["mscm"])
  # The whole set is the run's own `detector`; the row with one member dropped is there for
  # each.
  assert _row(mscm, "all")[0] == pytest.approx(scores["detector"]["auroc"], abs=TABLE)
  for d in detectors:
    assert 0.0 <= _row(mscm, f"all but {d}")[0] <= 1.0
  assert len(detectors) > 1 and len(mscm.splitlines()) == 2 + len(detectors) + 1
  deviation = class_runs.subsets(root, "deviation", split=split)
  scales = sorted(results["stage2"]["norm"]["deviation"])
  assert _row(deviation, "+".join(scales))[0] == pytest.approx(
      scores["deviation"]["auroc"], abs=TABLE)
  for s in scales:  # one scale alone is that scale's own score
    assert _row(deviation, s)[0] == pytest.approx(
        scores[f"deviation_{s}"]["auroc"], abs=TABLE)


def test_tables_read_the_split_asked_for(finished_run):
  _, workdir, results = finished_run
  root = str(workdir.parent)
  for split in ("validation", "test"):
    line = next(l for l in class_runs.table(root, split).splitlines() if l.startswith("| w |"))
    cells = [c.strip() for c in line.strip("|").split("|")]  # run, class, seed, 5 scores, ...
    assert float(cells[3]) == pytest.approx(results[f"{split}_scores"]["mscm"]["auroc"],
                                            abs=TABLE)
    assert float(cells[8]) == pytest.approx(results["stage1"]["validation_probe_knn_auroc"],
                                            abs=TABLE)
