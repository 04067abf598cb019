"""The command line, run as a user runs it (a subprocess)."""

import json
import os
import pathlib
import subprocess
import sys
import time


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _main(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "mscm_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def test_overrides_reach_the_run(folder_tree, tmp_path):
  workdir = tmp_path / "w"
  r = _main("--config=configs/folder_oneclass.py:smoke",
            f"--config.dataset.data_dir={folder_tree}", "--config.dataset.normal_class=berry",
            "--config.stop_after=data",
            "--config.dataset.image_size=12", "--config.seed=7", "--config.stage2.eta=2.0",
            f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr
  assert "stage2.eta=2.0 has no effect here: it weighs labelled anomalies" in r.stderr
  summary = json.loads((workdir / "run_summary.json").read_text())
  assert summary["normal_classes"] == ["berry"] and summary["seed"] == 7
  assert summary["n_train"] == 5 and summary["n_test"] == 8 and summary["n_test_anomalous"] == 5
  assert summary["image_shape"] == [12, 12, 3]
  assert summary["not_run"] == ["stage1", "stage2", "evaluation"]  # no pretend results
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["dataset"]["normal_class"] == "berry" and saved["seed"] == 7
  assert (workdir / "preview" / "augmented_views.png").stat().st_size > 0


def test_unbalanced_override_through_the_cli(folder_tree, tmp_path):
  r = _main("--config=configs/folder_oneclass.py:smoke", "--config.setting=unbalanced",
            "--config.anomaly_ratio=0.5", "--config.anomaly_classes=('cherry',)",
            f"--config.dataset.data_dir={folder_tree}", "--config.dataset.normal_class=0",
            "--config.stop_after=data", f"--workdir={tmp_path / 'u'}")
  assert r.returncode == 0, r.stderr
  summary = json.loads((tmp_path / "u" / "run_summary.json").read_text())
  # one of the six normal images validates; the labelled count is read off all six
  assert summary["n_train_normal"] == 5 and summary["n_train_anomalies"] == 3


def test_missing_dataset_is_one_line_within_seconds(tmp_path):
  start = time.time()
  r = _main("--config=configs/cifar10_oneclass.py", "--config.dataset.data_dir=/nonexistent",
            f"--workdir={tmp_path / 'x'}")
  assert time.time() - start < 10
  assert r.returncode != 0
  assert "Traceback" not in r.stderr
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent" in lines[0]


def test_bad_class_name_is_one_line(folder_tree, tmp_path):
  r = _main("--config=configs/folder_oneclass.py:smoke",
            f"--config.dataset.data_dir={folder_tree}", "--config.dataset.normal_class=durian",
            f"--workdir={tmp_path / 'y'}")
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "durian" in r.stderr.strip().splitlines()[-1]


def test_a_signal_in_training_saves_and_the_same_command_resumes(folder_tree, tmp_path):
  """A pre-emption notice (SIGTERM; Ctrl-C takes the same handler in one process, and
  both are test_distributed's over two processes)."""
  import signal
  name = "SIGTERM"
  workdir = tmp_path / "k"
  args = ["--config=configs/folder_oneclass.py:smoke", f"--config.dataset.data_dir={folder_tree}",
          "--config.dataset.normal_class=apple", "--config.dataset.image_size=16",
          "--config.memory.scales=('res4',)", "--config.train.epochs=120",
          "--config.train.checkpoint_every_steps=1000", "--config.stop_after=stage1",
          f"--workdir={workdir}"]
  proc = subprocess.Popen([sys.executable, "-m", "mscm_jax.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  proc.send_signal(getattr(signal, name))  # a pre-emption, or Ctrl-C
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err  # pre-empted: its own status, not a config error
  assert f"{name} at step" in err and "Traceback" not in err
  saved = int(err.split(f"{name} at step ")[1].split(":")[0])
  assert 3 <= saved < 120 and (workdir / "stage1" / str(saved)).is_dir()

  r = _main(*args)
  assert r.returncode == 0, r.stderr
  assert f"resumes from step {saved}" in r.stderr
  steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()
           if "probe_knn_auroc" not in l]
  assert steps == list(range(1, 121))  # one uninterrupted-looking record
  assert json.loads((workdir / "stage1" / "FINISHED.json").read_text())["step"] == 120


def test_a_signal_outside_the_loops_is_one_line_and_keeps_the_stages(folder_tree, tmp_path):
  """Ctrl-C during the evaluation: one line, status 75, both trained stages kept."""
  import signal
  workdir = tmp_path / "e"
  args = ["--config=configs/folder_oneclass.py:smoke", f"--config.dataset.data_dir={folder_tree}",
          "--config.dataset.normal_class=apple", "--config.dataset.image_size=16",
          "--config.evaluate.report=False", f"--workdir={workdir}"]
  # Without the suite's compilation cache the evaluation compiles for seconds: the signal
  # lands inside it rather than after a cached, instant evaluation.
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
  proc = subprocess.Popen([sys.executable, "-m", "mscm_jax.main", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if "Evaluation:" in line:  # both stages finished; the scorers are compiling
      proc.send_signal(signal.SIGINT)
      break
  _, rest = proc.communicate(timeout=120)
  err = "".join(seen) + rest
  assert proc.returncode == 75, err
  assert err.strip().splitlines()[-1].startswith("error: SIGINT outside a training loop")
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert not (workdir / "results.json").exists()
  assert all((workdir / s / "FINISHED.json").exists() for s in ("stage1", "stage2"))
  # The rerun that trains nothing again: test_pipeline, for a signal in every phase.
