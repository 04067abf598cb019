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
            "--config.dataset.image_size=12", "--config.seed=7", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr
  summary = json.loads((workdir / "data_summary.json").read_text())
  assert summary["normal_classes"] == ["berry"] and summary["seed"] == 7
  assert summary["n_train"] == 5 and summary["n_test"] == 8 and summary["n_test_anomalous"] == 5
  assert summary["image_shape"] == [12, 12, 3]
  assert summary["not_yet_implemented"]  # no pretend results
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["dataset"]["normal_class"] == "berry" and saved["seed"] == 7
  assert (workdir / "preview" / "augmented_views.png").stat().st_size > 0


def test_unbalanced_override_through_the_cli(folder_tree, tmp_path):
  r = _main("--config=configs/folder_oneclass.py:smoke", "--config.setting=unbalanced",
            "--config.anomaly_ratio=0.5", "--config.anomaly_classes=('cherry',)",
            f"--config.dataset.data_dir={folder_tree}", "--config.dataset.normal_class=0",
            f"--workdir={tmp_path / 'u'}")
  assert r.returncode == 0, r.stderr
  summary = json.loads((tmp_path / "u" / "data_summary.json").read_text())
  assert summary["n_train_normal"] == 6 and summary["n_train_anomalies"] == 3


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
