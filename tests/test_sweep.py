"""mscm_jax.sweep: the grid, atomic claims, resumable workers, the aggregated table."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import write_folder_tree

from mscm_jax import sweep
from mscm_jax.names import PROBE_KEYS
from mscm_jax.runtime.workdir import saved_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def test_settings_parse_and_name_cells():
  assert sweep.Setting.parse("oneclass").tag == "oneclass"
  s = sweep.Setting.parse("unbalanced:0.05:cat+dog")
  assert (s.ratio, s.anomaly_classes, s.tag) == (0.05, ("cat", "dog"), "unb0.05-from-cat+dog")
  assert s.overrides() == ["setting=unbalanced", "anomaly_ratio=0.05",
                           "anomaly_classes=('cat', 'dog')"]
  for bad in ("unbalanced", "unbalanced:2", "unbalanced:x", "twoclass"):
    with pytest.raises(sweep.SweepError):
      sweep.Setting.parse(bad)
  for text in ("oneclass", "unbalanced:0.05:cat+dog", "unbalanced:0.1", "unbalanced:1e-05"):
    setting = sweep.Setting.parse(text)
    assert sweep.Setting.from_tag(setting.tag) == setting  # done.json's tag reads back
  assert sweep.Setting.from_tag("unbx") is None and sweep.Setting.from_tag("other") is None


def test_grid_validates_every_cell_before_running(folder_tree, tmp_path):
  common = [f"dataset.data_dir={folder_tree}", "dataset.image_size=16"]
  cells, names = sweep.build_grid("configs/folder_oneclass.py:smoke", ["apple", "1"],
                                  [sweep.Setting.parse("oneclass"),
                                   sweep.Setting.parse("unbalanced:0.2:cherry")],
                                  [0, 3], {"b4": ["stage2.batch_size=4"]}, common)
  assert names == ("apple", "berry", "cherry")
  assert len(cells) == 8 and len({c.name for c in cells}) == 8
  assert "berry.unb0.2-from-cherry.s3.b4" in {c.name for c in cells}
  with pytest.raises(sweep.SweepError, match="no class 'durian'"):
    sweep.build_grid("configs/folder_oneclass.py:smoke", ["durian"],
                     [sweep.Setting.parse("oneclass")], [0], {}, common)
  with pytest.raises(sweep.SweepError, match="no_such_field"):
    sweep.build_grid("configs/folder_oneclass.py:smoke", ["apple"],
                     [sweep.Setting.parse("oneclass")], [0], {}, [*common, "no_such_field=1"])
  # A field a cell's setting ignores is named on that cell, to be said once at the start.
  cells, _ = sweep.build_grid("configs/folder_oneclass.py:smoke", ["apple"],
                              [sweep.Setting.parse("oneclass"),
                               sweep.Setting.parse("unbalanced:0.2:cherry")],
                              [0], {}, [*common, "stage2.eta=2.0"])
  assert [len(c.ignored) for c in cells] == [1, 0]
  assert cells[0].ignored[0].startswith("stage2.eta=2.0 has no effect here")
  # The unbalanced protocol's own check runs at grid time: too few labelled anomalies.
  with pytest.raises(sweep.SweepError):
    sweep.build_grid("configs/folder_oneclass.py:smoke", ["apple"],
                     [sweep.Setting.parse("unbalanced:0.2:apple")], [0], {}, common)


def test_numeric_class_folders_are_named_not_indexed(tmp_path):
  write_folder_tree(tmp_path, {"train": {"1": 4, "10": 4, "2": 4},
                               "test": {"1": 2, "10": 2, "2": 2}})
  common = [f"dataset.data_dir={tmp_path}", "dataset.image_size=16"]
  cells, names = sweep.build_grid("configs/folder_oneclass.py:smoke", ["1", "10", "#1", "0"],
                                  [sweep.Setting.parse("oneclass")], [0], {}, common)
  assert names == ("1", "10", "2")
  assert [c.cls for c in cells] == ["1", "10", "10", "1"]  # names first; `#1`, `0`: indices
  with pytest.raises(sweep.SweepError, match="no class '3'"):
    sweep.build_grid("configs/folder_oneclass.py:smoke", ["3"],
                     [sweep.Setting.parse("oneclass")], [0], {}, common)


def test_stacked_groups_are_the_cells_that_differ_only_in_their_class(folder_tree):
  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  common = [f"dataset.data_dir={folder_tree}", "dataset.image_size=16"]
  cells, _ = sweep.build_grid("configs/folder_oneclass.py:smoke", ["apple", "berry"],
                              [sweep.Setting.parse("oneclass"),
                               sweep.Setting.parse("unbalanced:0.2:cherry")],
                              [0, 3], {}, common)
  groups = sweep.stack_groups(cells)
  assert [[c.name for c in g] for g in groups] == [
      [f"{k}.{tag}.s{seed}" for k in ("apple", "berry")]
      for tag in ("oneclass", "unb0.2-from-cherry") for seed in (0, 3)]
  sweep.check_stacked(cells)
  argv = sweep.stacked_argv(groups[3])
  assert not any("normal_class" in a for a in argv)
  config = sweep.parse_config(argv[0][len("--config="):],
                              [a[len("--config."):] for a in argv[1:]])
  assert tuple(config.stack.classes) == ("apple", "berry") and config.seed == 3
  # Each class's workdir under ROOT is its cell's, so plain and stacked runs share them.
  assert [config_lib.stack_workdir(config, c.cls) for c in groups[3]] == [
      c.name for c in groups[3]]


def test_claimed_cells_share_a_program_only_where_they_stand_together(tmp_path):
  cells = [sweep.Cell(k, sweep.Setting("oneclass"), 0, "", (), ("a", "b", "c", "d"))
           for k in "abcd"]
  (tmp_path / "a.oneclass.s0" / "stage1" / "300").mkdir(parents=True)  # a plain run, cut
  for k in "cd":  # a stacked pair with stage 1 done and stage 2 cut at step 20
    for d in ("stage2/20", "stage1/600"):
      (tmp_path / f"{k}.oneclass.s0" / d).mkdir(parents=True)
    (tmp_path / f"{k}.oneclass.s0" / "stage1" / "FINISHED.json").write_text("{}")
  assert sweep.progress(str(tmp_path), "a.oneclass.s0") == ("300", "0")
  assert sweep.progress(str(tmp_path), "c.oneclass.s0") == ("finished", "20")
  parts = sweep.standing_together(str(tmp_path), [(c, 1) for c in cells])
  assert [[c.cls for c, _ in p] for p in parts] == [["a"], ["b"], ["c", "d"]]


def _race(root: str, cell: str, workers: int) -> list[tuple[int, int]]:
  won = []
  start = threading.Barrier(workers)

  def grab(i):
    start.wait()
    n = sweep.claim(root, cell, f"w{i}", stale_after=60)
    if n is not None:
      won.append((i, n))

  threads = [threading.Thread(target=grab, args=(i,)) for i in range(workers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return won


def test_one_claim_wins_a_race(tmp_path):
  root = str(tmp_path)
  # Many fresh cells: a loser that went on to claim the next attempt number shows up in some.
  for k in range(40):
    won = _race(root, f"cell{k}", 16)
    assert len(won) == 1 and won[0][1] == 1, (k, won)
  won = _race(root, "cell", 16)
  assert len(won) == 1 and won[0][1] == 1
  assert sweep.holder(root, "cell", 60)["worker"] == f"w{won[0][0]}"
  # Released (whatever the outcome): the next claim is attempt 2.
  sweep.release(root, "cell", 1, {"ran": True, "rc": 1})
  assert sweep.holder(root, "cell", 60) is None
  assert sweep.claim(root, "cell", "w", 60) == 2


def test_dead_workers_claims_lapse(tmp_path):
  root = str(tmp_path)
  meta = tmp_path / ".sweep" / "cell"
  meta.mkdir(parents=True)
  # Same host, a pid that has exited: free at once.
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True)
  (meta / "claim.1").write_text(json.dumps({"worker": "gone", "host": sweep.socket.gethostname(),
                                            "pid": int(proc.stdout)}))
  assert sweep.holder(root, "cell", 600) is None
  assert sweep.claim(root, "cell", "w", 600) == 2
  # Another host: held while its heartbeat (the file's mtime) is fresh, then lapses.
  (meta / "claim.2.end").write_text("{}")
  (meta / "claim.3").write_text(json.dumps({"worker": "far", "host": "elsewhere", "pid": 1}))
  assert sweep.holder(root, "cell", 600)["worker"] == "far"
  assert sweep.claim(root, "cell", "w", 600) is None
  old = time.time() - 601
  os.utime(meta / "claim.3", (old, old))
  assert sweep.claim(root, "cell", "w", 600) == 4


def _fake_cell(root, cls, seed, setting="oneclass", aurocs=None, classes=("a", "b"),
               val=None):
  """A finished cell whose validation AUROCs are `val` (default: the test's minus 0.1)."""
  name = f"{cls}.{setting}.s{seed}"
  meta = root / ".sweep" / name
  meta.mkdir(parents=True)
  (meta / "done.json").write_text(json.dumps(
      {"cell": name, "class": cls, "setting": setting, "seed": seed, "variant": "",
       "argv": [], "dataset_classes": list(classes)}))
  (root / name).mkdir()
  aurocs = aurocs or {}
  if "mscm" in aurocs:  # today's results: `detector` beside `mscm`
    aurocs = {"detector": aurocs["mscm"] - 0.05, **aurocs}
  val = {k: v - 0.1 for k, v in aurocs.items()} if val is None else val
  (root / name / "results.json").write_text(json.dumps(
      {"dataset": "cifar10", "test_scores": {k: {"auroc": v} for k, v in aurocs.items()},
       "validation_scores": {k: {"auroc": v} for k, v in val.items()},
       "stage1": dict(zip(PROBE_KEYS, (0.7, 0.6)))}))


def test_table_means_spreads_and_class_set_mean_only_when_complete(tmp_path):
  _fake_cell(tmp_path, "a", 0, aurocs={"mscm": 0.6, "knn": 0.8})
  _fake_cell(tmp_path, "a", 1, aurocs={"mscm": 0.8, "knn": 0.8})
  md, table_csv = sweep.tables(str(tmp_path))
  val_part, test_part = md.split("### cifar10, oneclass: test split")
  assert "### cifar10, oneclass: validation split" in val_part
  # validation first, with the stage-1 probe's gain; the test split without it
  assert ("| a | 0,1 | 0.600 ± 0.141 | 0.550 ± 0.141 | 0.700 ± 0.000 | 0.100 ± 0.000 |"
          in val_part)
  assert "| a | 0,1 | 0.700 ± 0.141 | 0.650 ± 0.141 | 0.800 ± 0.000 |\n" in test_part
  assert "No class-set mean" in md and "(b)" in md
  assert "CSI 0.943" in test_part and "CSI" not in val_part  # references: test split only
  assert "cifar10,oneclass,,test,a,mscm,2,0.7," in table_csv
  assert "cifar10,oneclass,,validation,a,mscm,2,0.6," in table_csv
  assert "cifar10,oneclass,,validation,a,probe_gain,2,0.1," in table_csv
  assert "mean of the" not in md  # one class: no mean row
  _fake_cell(tmp_path, "b", 0, aurocs={"mscm": 0.5, "knn": 0.6})
  md, _ = sweep.tables(str(tmp_path))
  assert "| **mean of all 2 classes** | | 0.600 | 0.550 | 0.700 |\n" in md
  assert "| **mean of all 2 classes** | | 0.500 | 0.450 | 0.600 | 0.100 |" in md
  # a partial grid: the mean of the classes run, named so, only for scores each class has
  partial = tmp_path / "partial"
  for c, aurocs in (("a", {"mscm": 0.6, "knn": 0.8}), ("b", {"knn": 0.6}), ("c", {"knn": 0.7})):
    _fake_cell(partial, c, 0, aurocs=aurocs, classes=("a", "b", "c", "d"))
  part_md, _ = sweep.tables(str(partial))
  assert "| **mean of the 3 classes run** | | - | - | 0.700 |\n" in part_md
  assert "No class-set mean: 1 of the dataset's classes have no finished cell (d)." in part_md
  _fake_cell(tmp_path, "a", 0, setting="unb0.05", aurocs={"mscm": 0.9})
  md, _ = sweep.tables(str(tmp_path))
  assert "### cifar10, unb0.05" in md and md.count("CSI") == 1  # references: one-class only


def test_a_cell_scored_before_detector_existed_gives_detector_not_mscm(tmp_path):
  """Its `mscm` was the detectors' sum (today's `detector`): a class whose seeds were
  scored under both names averages `detector` over both, `mscm` over the new one only."""
  _fake_cell(tmp_path, "a", 0, aurocs={"knn": 0.8})
  results = tmp_path / "a.oneclass.s0" / "results.json"
  old = json.loads(results.read_text())
  for part in ("test_scores", "validation_scores"):
    old[part]["mscm"] = {"auroc": 0.7}  # no `detector` beside it
  results.write_text(json.dumps(old))
  _fake_cell(tmp_path, "a", 1, aurocs={"mscm": 0.9, "knn": 0.8})  # detector 0.85
  test_part = sweep.tables(str(tmp_path))[0].split("test split")[1]
  assert "| a | 0,1 | 0.900 (seed 1) | 0.775 ± 0.106 | 0.800 ± 0.000 |" in test_part
  assert sweep._headline(str(tmp_path), "a.oneclass.s0") == ": test detector 0.700, knn 0.800"


def test_side_by_side_sets_each_setting_beside_one_class(tmp_path):
  names = ("b", "a")  # the dataset's class order, which the rows follow
  _fake_cell(tmp_path, "a", 0, aurocs={"mscm": 0.6, "knn": 0.8}, classes=names)
  assert "side by side" not in sweep.tables(str(tmp_path))[0]  # one setting: nothing to set
  _fake_cell(tmp_path, "a", 1, aurocs={"mscm": 0.8, "knn": 0.8}, classes=names)
  _fake_cell(tmp_path, "a", 0, setting="unb0.05-from-b", aurocs={"mscm": 0.95}, classes=names)
  _fake_cell(tmp_path, "a", 0, setting="unb0.1", aurocs={"mscm": 0.93}, classes=names)
  _fake_cell(tmp_path, "b", 0, setting="unb0.05", aurocs={"mscm": 0.9, "knn": 0.7}, classes=names)
  _fake_cell(tmp_path, "a", 0, setting="unb0.05", aurocs={"mscm": 0.91}, classes=names)
  md = sweep.tables(str(tmp_path))[0]
  side = md[md.index("### cifar10: the settings side by side"):]
  header = "| class | oneclass | unb0.05 | unb0.05-from-b | unb0.1 |"
  # one table per headline score that a cell has: none of dashes for the others
  assert side.count(header) == 3 and "`deviation`" not in side
  mscm = side[side.index("`mscm`"):side.index("`detector`")]
  assert "| a | 0.700 ± 0.141 | 0.910 | 0.950 | 0.930 |" in mscm
  assert "| b | — | 0.900 | — | — |" in mscm and mscm.index("| b |") < mscm.index("| a |")
  knn = side[side.index("`knn`"):]
  assert "| a | 0.800 ± 0.000 | — | — | — |" in knn and "| b | — | 0.700 | — | — |" in knn
  assert "Seeds differ between settings (a: oneclass 0,1; unb0.05 0; unb0.05-from-b 0; " \
      "unb0.1 0)." in side


def test_export_keeps_what_rebuilds_the_table_and_adds_to_it(tmp_path):
  root, dest = tmp_path / "runs", tmp_path / "kept"
  _fake_cell(root, "a", 0, aurocs={"mscm": 0.6})
  (root / "a.oneclass.s0" / "checkpoints").mkdir()  # a run's bulk stays behind
  (root / ".sweep" / "a.oneclass.s0" / "attempt1.log").write_text("...")
  assert sweep.export(str(root), str(dest)) == ["a.oneclass.s0"]
  assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
      ".sweep/a.oneclass.s0/done.json", "a.oneclass.s0/results.json"]
  assert sweep.tables(str(dest)) == sweep.tables(str(root))
  later = tmp_path / "later"  # a later session's grid adds its cells to the kept ones
  _fake_cell(later, "b", 0, aurocs={"mscm": 0.8})
  sweep.export(str(later), str(dest))
  assert "| **mean of all 2 classes** | | 0.700 |" in sweep.tables(str(dest))[0]
  r = subprocess.run([sys.executable, "-m", "mscm_jax.sweep",
                      f"--root={root}", "--table", f"--export={root}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stderr.strip() == (
      "error: --export: give a folder other than --root")


def test_stage1_only_cells_table_their_probe_and_export(tmp_path):
  """A `stop_after=stage1` screen: its run_summary.json's probe is the cell's reading."""
  root, dest = tmp_path / "runs", tmp_path / "kept"
  for seed, probe in ((0, 0.8), (1, 0.9)):
    _fake_cell(root, "a", seed)
    cell = root / f"a.oneclass.s{seed}"
    (cell / "results.json").unlink()
    (cell / "run_summary.json").write_text(json.dumps(
        {"dataset": "cifar10", "stages_run": ["data", "stage1"],
         "stage1": dict(zip(PROBE_KEYS, (probe, 0.6)))}))
  _fake_cell(root, "b", 0)  # stopped before its probe: nothing to show
  (root / "b.oneclass.s0" / "results.json").unlink()
  (root / "b.oneclass.s0" / "run_summary.json").write_text(json.dumps(
      {"dataset": "cifar10", "stages_run": ["data"]}))
  md, table_csv = sweep.tables(str(root))
  assert "stage 1 only" in md and "test split" not in md
  assert "| a | 0,1 | 0.250 ± 0.071 |" in md and "| b |" not in md
  assert "cifar10,oneclass,,validation,a,probe_gain,2,0.25," in table_csv
  assert sweep.export(str(root), str(dest)) == ["a.oneclass.s0", "a.oneclass.s1"]
  assert (dest / "a.oneclass.s1" / "run_summary.json").exists()
  assert sweep.tables(str(dest)) == (md, table_csv)


def _sweep_cmd(tmp_path, worker: str, classes: str = "c0,c1", epochs: int = 1) -> list[str]:
  """A smoke sweep (seed 0) into tmp_path/sweep over classes of the two-class tree it
  writes under tmp_path/tree the first time."""
  tree = tmp_path / "tree"
  if not tree.exists():
    write_folder_tree(tree, {"train": {"c0": 12, "c1": 12}, "test": {"c0": 6, "c1": 6}})
  return [sys.executable, "-m", "mscm_jax.sweep", f"--root={tmp_path / 'sweep'}",
          "--config=configs/folder_oneclass.py:smoke", f"--classes={classes}", "--seeds=0",
          f"--worker={worker}", "--set", f"dataset.data_dir={tree}", "dataset.image_size=16",
          "memory.scales=('res3','pooled')", f"train.epochs={epochs}", "stage2.epochs=1",
          "evaluate.report=False"]


def test_two_workers_split_a_grid_and_a_rerun_skips_it(tmp_path):
  """The whole grid from nothing by two workers started together, then once more."""
  root = tmp_path / "sweep"
  procs = [subprocess.Popen(_sweep_cmd(tmp_path, f"w{i}"), cwd=ROOT,  # a cell each
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  cells = sorted(os.listdir(root / ".sweep"))
  assert cells == ["c0.oneclass.s0", "c1.oneclass.s0"]
  ran_by = {}
  for cell in cells:
    ends = [json.loads((root / ".sweep" / cell / f).read_text())
            for f in os.listdir(root / ".sweep" / cell) if f.endswith(".end")]
    runs = [e for e in ends if e["ran"]]
    assert len(runs) == 1 and runs[0]["rc"] == 0, (cell, ends)  # never run twice
    ran_by[cell] = runs[0]["worker"]
    assert json.loads((root / cell / "results.json").read_text())["seed"] == int(cell[-1])
  assert set(ran_by.values()) == {"w0", "w1"}, ran_by  # the workers shared the grid
  md = (root / "results.md").read_text()  # the last worker to write saw every cell done
  assert "| c0 | 0 |" in md and "| c1 | 0 |" in md
  assert "**mean of all 2 classes**" in md
  again = subprocess.run(_sweep_cmd(tmp_path, "w2"), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr
  assert "ran 0, skipped 2, held 0, failed 0" in again.stdout
  assert sum(len(sweep.attempts(str(root), c)) for c in cells) == 2  # nothing claimed anew


def test_stacked_sweep_runs_a_group_as_one_program_in_the_cells_workdirs(tmp_path):
  """--stack: both classes in one main command; the cells read as separate runs' cells."""
  root = tmp_path / "sweep"
  cmd = _sweep_cmd(tmp_path, "w0")
  r = subprocess.run([*cmd, "--stack"], cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "one program with 1 more" in r.stdout and "ran 2, skipped 0" in r.stdout
  cells = ["c0.oneclass.s0", "c1.oneclass.s0"]
  assert sorted(os.listdir(root)) == [".sweep", *cells, "results.csv", "results.md"]
  log0 = (root / ".sweep" / cells[0] / "attempt1.log").read_text()
  log1 = (root / ".sweep" / cells[1] / "attempt1.log").read_text()
  assert "[stage1]" in log0 and log1.startswith("run as one program (c0.oneclass.s0 + c1.")
  for cell in cells:
    done = json.loads((root / ".sweep" / cell / "done.json").read_text())
    assert done["program"] == cells and done["attempt"] == 1
    results = json.loads((root / cell / "results.json").read_text())
    assert results["normal_classes"] == [cell[:2]] and results["seed"] == 0
  # A plain sweep skips both; the cell's own main command finds its run finished.
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert "ran 0, skipped 2, held 0, failed 0" in again.stdout, again.stdout + again.stderr
  [cell], _ = sweep.build_grid("configs/folder_oneclass.py:smoke", ["c1"],
                               [sweep.Setting.parse("oneclass")], [0], {},
                               cmd[cmd.index("--set") + 1:])
  before = json.loads((root / cells[1] / "results.json").read_text())
  alone = subprocess.run([sys.executable, "-m", "mscm_jax.main", *cell.argv,
                          f"--workdir={root / cells[1]}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
  assert alone.returncode == 0, alone.stderr[-2000:]
  after = json.loads((root / cells[1] / "results.json").read_text())
  assert after["identity"] == before["identity"] and after["seconds"] == before["seconds"]


def test_bad_grid_is_one_line(tmp_path, folder_tree):
  r = subprocess.run([sys.executable, "-m", "mscm_jax.sweep",
                      f"--root={tmp_path}", "--config=configs/folder_oneclass.py:smoke",
                      "--classes=durian", "--set", f"dataset.data_dir={folder_tree}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --classes: no class 'durian'")


def test_a_stopped_or_killed_workers_run_stops_and_the_cell_is_recorded_once(tmp_path):
  """SIGTERM to a worker: its run saves and exits 75, and so does the worker. SIGKILL to
  the next: its run gets SIGTERM all the same (the parent-death signal). A third worker
  waits for whatever still holds the workdir, then resumes the cell and records it once."""
  from mscm_jax.runtime.workdir import LOCK_FILE, lock_holder  # pylint: disable=g-import-not-at-top

  root = tmp_path / "sweep"
  cell = root / "c0.oneclass.s0"

  def cmd(worker):  # one cell of 40 steps, stopped after a few
    return _sweep_cmd(tmp_path, worker, classes="c0", epochs=40)

  def start_then_wait_for_a_checkpoint(worker, after):
    proc = subprocess.Popen(cmd(worker), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while max(saved_steps(str(cell / "stage1")), default=0) <= after:  # a new checkpoint
      assert time.time() < deadline and proc.poll() is None, "the run never got going"
      time.sleep(0.5)
    return proc

  first = start_then_wait_for_a_checkpoint("w0", 0)
  first.send_signal(signal.SIGTERM)
  out = first.communicate(timeout=120)[0]
  assert first.returncode == 75 and "failed 0, interrupted 1" in out, out
  assert "exit status 75" in out and "run the same command to resume" in out, out
  saved = max(saved_steps(str(cell / "stage1")))
  second = start_then_wait_for_a_checkpoint("w1", saved)
  second.kill()
  second.wait()
  deadline = time.time() + 120
  while lock_holder(str(cell)) is not None:  # the orphan got SIGTERM from its parent's death
    assert time.time() < deadline, "the killed worker's run went on unsupervised"
    time.sleep(0.5)
  assert not (cell / "stage1" / "FINISHED.json").exists()  # stopped, not run to its end
  # Something holding the workdir when the next worker comes (an orphan where no parent-
  # death signal exists): it waits instead of failing on the lock.
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, os, sys; "
       f"fd = os.open({str(cell / LOCK_FILE)!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
       "print('held', flush=True); sys.stdin.readline()"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  third = subprocess.Popen(cmd("w2"), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in third.stdout:  # the worker waits for the holder instead of failing on it
    seen.append(line)
    if "waiting for the run of a dead worker" in line:
      break
  holder.communicate("\n", timeout=60)  # the holder lets go
  out = "".join(seen) + third.communicate(timeout=600)[0]
  assert third.returncode == 0 and "waiting for the run of a dead worker" in out, out
  meta = root / ".sweep" / "c0.oneclass.s0"
  ends = [json.loads(p.read_text()) for p in sorted(meta.glob("claim.*.end"))]
  assert [(e["worker"], e["rc"]) for e in ends] == [("w0", 75), ("w2", 0)], ends
  assert json.loads((meta / "done.json").read_text())["worker"] == "w2"  # recorded once
  results = json.loads((cell / "results.json").read_text())
  assert results["resumed_from"]["stage1"] > 0  # the killed worker's steps were kept
