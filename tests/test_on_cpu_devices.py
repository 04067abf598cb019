"""On a host whose default backend is not the eight emulated CPU devices (a GPU or TPU
host), the tests marked `cpu_devices` are skipped in their own modules and run here, in
one pytest process on the CPU platform; the rest of the suite runs on the accelerator."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import cpu_devices_env, on_eight_cpu_devices

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_cpu_device_tests_pass_on_the_cpu_platform():
  if on_eight_cpu_devices():
    pytest.skip("this process has the eight CPU devices: the marked tests ran in it")
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "-n", "2", "-m", "cpu_devices", "tests"], cwd=ROOT,
                     env={**os.environ, **cpu_devices_env(8)}, capture_output=True,
                     text=True, timeout=3000)
  assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
  assert " passed" in r.stdout.splitlines()[-1] and " skipped" not in r.stdout.splitlines()[-1]
