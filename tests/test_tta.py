"""experiments/tta.py: the flip ensemble rescored on a finished run, plain = the run's own."""

import numpy as np
from conftest import load_experiment

tta = load_experiment("tta")


def test_rescoring_reads_both_ways_and_plain_is_the_runs_own(finished_copy, capsys):
  _, workdir, results = finished_copy
  out = str(workdir.parent / "tta.jsonl")
  record = tta.rescore(str(workdir), test=True)
  for part, saved in (("validation", results["validation_scores"]),
                      ("test", results["test_scores"])):
    plain, flip = record[f"{part}_plain"], record[f"{part}_flip"]
    assert set(plain) == set(flip) and {"mscm", "knn", "deviation"} <= set(plain)
    for name, auroc in plain.items():
      np.testing.assert_allclose(auroc, saved[name]["auroc"], atol=1e-6, err_msg=name)
    assert all(0.0 <= v <= 1.0 for v in flip.values())
  tta.rows.emit({**record, "validation_plain": {}}, out)  # superseded by the next
  tta.rows.emit(record, out)
  tta.rows.emit({**record, "run": "other", "seed": 1}, out)
  capsys.readouterr()
  text = tta.table(tta.rows.read(out))
  assert "| **mean of 2** |" in text and "flip higher on" in text
  assert f"{record['validation_plain']['mscm']:.3f} / " in text
