"""experiments/parts.py: the parts table reads each variant's own AUROC and means only
complete rows; the memory-mode table puts each training variant against the preset's."""

import json

import pytest
from conftest import load_experiment

parts = load_experiment("parts")


def _rec(run, train, cls, seed, variant, **auroc):
  return {"run": run, "train": train, "class": cls, "seed": seed, "variant": variant,
          "split": "validation", "probe": 0.5 + cls / 10, "auroc": auroc}


def test_tables_from_records(tmp_path):
  recs = [_rec("cat.oneclass.s0.rot4", "rot4", 3, 0, "rotated_difference", mscm=0.7, knn=0.6,
               **{"mscm[pooled]": 0.65}),
          _rec("cat.oneclass.s1.rot4", "rot4", 3, 1, "rotated_difference", mscm=0.8, knn=0.5,
               **{"mscm[pooled]": 0.75}),
          _rec("cat.oneclass.s0.rot4", "rot4", 3, 0, "rotated_feature", mscm=0.6),
          _rec("cat.oneclass.s0.rot4_x", "rot4_x", 3, 0, "rotated_difference", mscm=0.9),
          {**_rec("cat.oneclass.s0.rot4", "rot4", 3, 0, "default", mscm=0.1), "split": "test"}]
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  records = parts.load([str(path)])
  assert len(records) == 4  # the test-split record is never read
  table = parts.parts_table(records, "rot4")
  assert "| validation AUROC | cat s0 | cat s1 | mean |" in table
  assert "| `mscm`, the adopted detector (`rotated_difference`) | 0.700 | 0.800 | 0.750 |" in table
  assert "| adopted, scales pooled only | 0.650 | 0.750 | 0.700 |" in table
  # one run lacks the variant: no mean is given for an incomplete row
  assert "(f alone: `rotated_feature`) | 0.600 | - | - |" in table
  modes = parts.modes_table(records, "rot4").splitlines()
  assert modes[2] == "| `rot4` | 0.700 (0.800) | 0.800 (0.800) |"
  assert modes[3] == "| `rot4_x` | 0.900 (0.800) | - |"
  with pytest.raises(SystemExit, match="no 'rotated_difference' records"):
    parts.parts_table(records, "other")
