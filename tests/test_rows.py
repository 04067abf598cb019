"""experiments/rows.py: the experiment scripts' resumable JSON-lines files."""

import json
import os

import pytest
from conftest import load_experiment

rows = load_experiment("rows")


def test_rows_resume_where_an_interrupted_script_left_off(tmp_path, capsys):
  path = str(tmp_path / "out" / "rows.jsonl")
  assert rows.read(path) == []
  rows.emit({"run": "a", "auroc": 0.5}, path, "a: 0.500")
  rows.emit({"run": "b", "auroc": 0.75}, path)
  assert capsys.readouterr().out.splitlines() == ["a: 0.500", '{"run": "b", "auroc": 0.75}']
  assert [r["run"] for r in rows.read(path)] == ["a", "b"]
  with open(path, "a") as f:  # a kill in the middle of a row
    f.write('{"run": "c", "au')
  assert [r["run"] for r in rows.read(path)] == ["a", "b"]
  assert "dropping its unfinished last line" in capsys.readouterr().out
  rows.emit({"run": "c"}, path)
  with open(path) as f:
    assert [json.loads(line)["run"] for line in f] == ["a", "b", "c"]


def test_unknown_choices_are_one_line():
  assert rows.known(["x"], {"x": 1, "y": 2}) == ["x"]
  with pytest.raises(SystemExit, match=r"unknown variants \['z'\]; choose from \['x', 'y'\]"):
    rows.known(["x", "z"], {"x": 1, "y": 2})


def test_rescore_each_skips_the_done_runs_and_writes_each_row_at_once(tmp_path, capsys):
  out = str(tmp_path / "rows.jsonl")
  seen = []

  def rescore(path):
    seen.append(path)
    assert len(rows.read(out)) == len(seen) - 1  # the rows before are already written
    return {"run": path, "auroc": 0.5}

  done = {str(tmp_path / "a")}
  rows.rescore_each([str(tmp_path / "a"), str(tmp_path / "b"), "c"], out, done, rescore,
                    lambda w, r: f"{w}: {r['auroc']}")
  assert seen == [str(tmp_path / "b"), os.path.abspath("c")]
  assert [r["run"] for r in rows.read(out)] == seen
  assert capsys.readouterr().out.splitlines()[-1] == "c: 0.5"
  args = rows.rescoring_parser("Title line.\n\nmore").parse_args(["w", "--out=x.jsonl"])
  assert (args.workdirs, args.out, args.table) == (["w"], "x.jsonl", False)

