"""Faults a long run meets: a SIGKILL at any moment, and reruns that must not change a bit.

A run killed anywhere (during start-up, a training step, a checkpoint write, the probe,
stage 2, the evaluation) and resumed with the same command must end exactly where an
uninterrupted run ends: same parameters, same scores, same results less timing. SIGTERM
(status 75) is tested in test_main.py.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
from conftest import write_folder_tree

from mscm_jax import pipeline
from mscm_jax.names import PROBE_KEYS
from mscm_jax.runtime.workdir import saved_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGES = ("stage1", "stage2")
N_KILLS = 6  # planned; the test needs at least 5 to land
EPOCHS = 6  # 32 normal images / batch 16 = 12 stage-1 steps, each one checkpointed


def _comparable(results: dict[str, Any], workdir: pathlib.Path) -> Any:
  """results.json less what may differ between equal runs: timings, where the last process
  took the stages up, the workdir's path."""
  def walk(x: Any) -> Any:
    if isinstance(x, dict):
      return {k: walk(v) for k, v in x.items()
              if k not in ("seconds", "resumed_from") and "per_second" not in k}
    if isinstance(x, (list, tuple)):
      return [walk(v) for v in x]
    if isinstance(x, str):
      return x.replace(str(workdir), "<workdir>")
    return x
  return walk(json.loads(json.dumps(results)))


def _assert_same_scores(a: pathlib.Path, b: pathlib.Path) -> None:
  with np.load(a / "scores.npz") as sa, np.load(b / "scores.npz") as sb:
    assert sorted(sa.files) == sorted(sb.files)
    for name in sa.files:
      assert np.array_equal(sa[name], sb[name]), name


def _final_checksums(workdir: pathlib.Path) -> dict[str, str]:
  """{stage: checksum of the state saved at the stage's final step}."""
  out = {}
  for stage in STAGES:
    step = json.loads((workdir / stage / "FINISHED.json").read_text())["step"]
    out[stage] = json.loads((workdir / stage / "checksums.json").read_text())[str(step)]
  return out


# ------------------------------------------------------------------------------ SIGKILL


def _command(tree: pathlib.Path, workdir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "mscm_jax.main", "--config=configs/folder_oneclass.py:smoke",
          f"--config.dataset.data_dir={tree}", "--config.dataset.image_size=16",
          "--config.dataset.normal_class=apple", "--config.memory.scales=('res3','pooled')",
          f"--config.train.epochs={EPOCHS}", "--config.train.checkpoint_every_steps=1",
          "--config.stage2.checkpoint_every_steps=1", "--config.evaluate.report=False",
          f"--workdir={workdir}"]


def _records(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      pass  # a line being written
  return out


def _key(record: dict[str, Any]) -> tuple[int, int, int]:
  """A record's place in the run: (stage, step, 0 step / 1 probe)."""
  return (STAGES.index(record["stage"]), record["step"], int(PROBE_KEYS[0] in record))


def _events(workdir: pathlib.Path, since: float) -> list[tuple[float, tuple[int, int, int]]]:
  """(time, place) of each logged step and each FINISHED.json written at or after `since`.

  The places order the run's progress: a later place means the run got further.
  """
  out = [(r["time"], _key(r)) for r in _records(workdir) if r["time"] >= since]
  for i, stage in enumerate(STAGES):
    marker = workdir / stage / "FINISHED.json"
    try:
      mtime = marker.stat().st_mtime
      if mtime >= since:
        out.append((mtime, (i, json.loads(marker.read_text())["step"], 2)))
    except (OSError, ValueError):
      pass
  return sorted(out)


def _state(workdir: pathlib.Path) -> dict[str, Any]:
  """What a kill left behind: checkpoints, orbax temporary dirs, half-done saves."""
  out: dict[str, Any] = {}
  for stage in STAGES:
    d = workdir / stage
    names = sorted(os.listdir(d)) if d.is_dir() else []
    steps = saved_steps(str(d))
    try:
      sums = json.loads((d / "checksums.json").read_text())
    except (OSError, ValueError):
      sums = {}
    newest = max(steps, default=0)
    out[stage] = {"ckpts": steps, "tmp": [n for n in names if "tmp" in n],
                  "unfinalised": sorted(int(s) for s in sums if int(s) > newest),
                  "finished": "FINISHED.json" in names}
  out["results"] = (workdir / "results.json").exists()
  return out


def _writing(workdir: pathlib.Path) -> bool:
  """An orbax save in flight: a temporary checkpoint directory exists."""
  for stage in STAGES:
    d = workdir / stage
    if d.is_dir() and any("tmp" in n and (d / n).is_dir() for n in os.listdir(d)):
      return True
  return False


def _plan(events: list[tuple[float, tuple]], stage1_done: float, end: float,
          seed: int = 0) -> list[dict[str, Any]]:
  """N_KILLS moments of the uninterrupted run: one in the start-up (2-6 s, before the first
  logged step), N_KILLS - 2 drawn one per equal slice of (first logged step, stage 1
  finished), and one in (stage 1 finished, `end`), so that the last attempt killed has
  stage 1 behind it.

  Each moment is replayed in a rerun as "`delay` seconds after the rerun gets past the
  same place" (after the start, for the start-up one), since a rerun resumes from its last
  checkpoint and so reaches each place at its own time; and since the uninterrupted run
  may have compiled what the reruns find in the compilation cache, its start-up is no
  measure of theirs. One kill waits for the first checkpoint write after its place instead.
  """
  rng = np.random.default_rng(seed)
  first = events[0][0]
  plan = [{"tau": None, "place": None, "delay": rng.uniform(2.0, min(first, 6.0)),
           "mode": "time"}]
  width = (stage1_done - first) / (N_KILLS - 2)
  slices = [(first + width * i, first + width * (i + 1)) for i in range(N_KILLS - 2)]
  for lo, hi in [*slices, (stage1_done, end)]:
    tau = rng.uniform(lo, hi)
    t_at, place = [(t, k) for t, k in events if t <= tau][-1]
    plan.append({"tau": round(tau, 2), "place": place, "delay": tau - t_at, "mode": "time"})
  in_stage1 = [p for p in plan if p["place"] and p["place"][0] == 0 and p["place"][2] == 0]
  in_stage1[0]["mode"] = "write"
  return plan


def _attempt(cmd: list[str], workdir: pathlib.Path, kill: dict[str, Any] | None,
             log: pathlib.Path) -> dict[str, Any]:
  """Runs `cmd` once; SIGKILLs it at `kill`'s moment (None: lets it finish)."""
  with open(log, "w") as err:
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
      stage2_done = (workdir / "stage2" / "FINISHED.json").exists()
      fire_at = None
      if kill is not None and (kill["place"] is None or stage2_done):
        # Before the first logged step; or nothing is left to log but the evaluation.
        fire_at = start + kill["delay"] + (1.0 if stage2_done else 0.0)
      deadline = start + 300  # a hung run fails the test below, it does not stall it
      while proc.poll() is None and time.time() < deadline:
        now = time.time()
        if kill is not None and fire_at is None:
          past = [t for t, k in _events(workdir, start) if k >= kill["place"]]
          if past:
            fire_at = past[0] + (kill["delay"] if kill["mode"] == "time" else 0.0)
        if fire_at is not None and now >= fire_at and (
            kill["mode"] == "time" or _writing(workdir)):
          proc.kill()
          break
        time.sleep(0.005 if fire_at is not None and kill["mode"] == "write" else 0.02)
      rc = proc.wait(timeout=30)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return {"rc": rc, "elapsed": round(time.time() - start, 1), **_state(workdir),
          "stderr": log.read_text()}


def test_sigkill_at_any_moment_then_rerun_is_bitwise_equal(tmp_path):
  """Kills an ordinary run N_KILLS times, reruns the same command until it finishes, and
  compares with an uninterrupted run: every bit of the parameters and scores."""
  tree = tmp_path / "tree"
  write_folder_tree(tree, {"train": {"apple": 32, "berry": 8},
                           "test": {"apple": 8, "berry": 8}})
  a, b = tmp_path / "a", tmp_path / "b"
  t0 = time.time()
  r = subprocess.run(_command(tree, a), cwd=ROOT, capture_output=True, text=True, timeout=600)
  wall = time.time() - t0
  assert r.returncode == 0, r.stderr[-3000:]
  events = [(t - t0, k) for t, k in _events(a, t0)]
  s1_done, s2_done = ((a / s / "FINISHED.json").stat().st_mtime - t0 for s in STAGES)
  results_at = (a / "results.json").stat().st_mtime - t0
  plan = _plan(events, s1_done, end=s2_done + 0.5 * (results_at - s2_done))

  kills: list[dict[str, Any]] = []
  finished = False
  for i, kill in enumerate(plan):
    out = _attempt(_command(tree, b), b, kill, tmp_path / f"attempt{i}.err")
    kills.append({**kill, **out})
    if out["rc"] != -signal.SIGKILL:
      finished = True
      break
  if not finished:
    out = _attempt(_command(tree, b), b, None, tmp_path / "final.err")
    kills.append({"mode": "none", **out})

  print(f"\nuninterrupted run: {wall:.1f} s (results at {results_at:.1f} s)")
  for i, k in enumerate(kills):
    s1, s2 = k["stage1"], k["stage2"]
    print(f"attempt {i}: {k['mode']:5} tau={k.get('tau')} place={k.get('place')} "
          f"rc={k['rc']} after {k['elapsed']} s | stage1 ckpts {s1['ckpts']} tmp {s1['tmp']}"
          f" unfinalised {s1['unfinalised']} fin {s1['finished']} | stage2 ckpts "
          f"{s2['ckpts']} tmp {s2['tmp']} unfinalised {s2['unfinalised']} fin "
          f"{s2['finished']} | results {k['results']}")

  for i, k in enumerate(kills):  # finished, or killed by the test: never a crash
    assert k["rc"] in (0, -signal.SIGKILL), (i, k["rc"], k["stderr"][-3000:])
    assert "Traceback" not in k["stderr"], (i, k["stderr"][-3000:])
  killed = [k for k in kills if k["rc"] == -signal.SIGKILL]
  assert len(killed) >= 5, [k["rc"] for k in kills]
  assert kills[-1]["rc"] == 0
  assert any(k["stage1"]["ckpts"] for k in killed)  # some kill landed after training began

  assert _final_checksums(b) == _final_checksums(a)
  _assert_same_scores(a, b)

  def logged(workdir):
    return [{k: v for k, v in r.items() if k != "time" and "per_second" not in k}
            for r in _records(workdir)]
  places = collections.Counter(_key(r) for r in _records(b))
  assert max(places.values()) == 1, [p for p, n in places.items() if n > 1]  # no duplicates
  assert sorted(logged(b), key=_key) == sorted(logged(a), key=_key)  # same steps, same losses

  results_a = json.loads((a / "results.json").read_text())
  results_b = json.loads((b / "results.json").read_text())
  assert _comparable(results_b, b) == _comparable(results_a, a)


def test_kill_after_the_probe_is_logged_logs_it_once(finished_copy):
  """A kill between the stage-1 probe's metrics line and FINISHED.json: a window of
  milliseconds that random kills seldom hit, so its leftovers are made from a finished
  workdir (checkpoints, the probe's line, no FINISHED.json, nothing of stage 2)."""
  config, w, _ = finished_copy
  (w / "stage1" / "FINISHED.json").unlink()
  for d in ("stage2", "tensorboard/stage2", "report"):
    shutil.rmtree(w / d, ignore_errors=True)
  for name in ("results.json", "scores.npz"):
    (w / name).unlink()
  lines = (w / "metrics.jsonl").read_text().splitlines(keepends=True)
  (w / "metrics.jsonl").write_text("".join(l for l in lines if '"stage1"' in l))
  assert sum(PROBE_KEYS[0] in r for r in _records(w)) == 1
  c = config.copy_and_resolve_references()
  c.stop_after = "stage1"
  pipeline.run(c, str(w))
  assert (w / "stage1" / "FINISHED.json").exists()
  places = collections.Counter(_key(r) for r in _records(w))
  assert max(places.values()) == 1, [p for p, n in places.items() if n > 1]


# -------------------------------------------------------------------------- determinism


def test_same_seed_same_bits_other_seed_other_scores(finished_run, tmp_path):
  """Two runs of one config in fresh workdirs agree to the bit; seed=1 scores differently."""
  config, workdir, results = finished_run
  again = tmp_path / "again"
  assert _comparable(pipeline.run(config, str(again)), again) == _comparable(results, workdir)
  saved = json.loads((again / "results.json").read_text())
  assert _comparable(saved, again) == _comparable(
      json.loads((workdir / "results.json").read_text()), workdir)
  _assert_same_scores(workdir, again)
  assert _final_checksums(again) == _final_checksums(workdir)

  other = config.copy_and_resolve_references()
  other.seed = 1
  pipeline.run(other, str(tmp_path / "seed1"))
  with np.load(workdir / "scores.npz") as s0, np.load(tmp_path / "seed1" / "scores.npz") as s1:
    assert np.array_equal(s0["is_anomaly"], s1["is_anomaly"])  # the same test split
    assert not np.array_equal(s0["mscm"], s1["mscm"])
    assert not np.array_equal(s0["knn"], s1["knn"])
