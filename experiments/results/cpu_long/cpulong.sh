#!/bin/bash
# Issue 24 item 5: :cpu_long at b6f74f6 on airplane, automobile, cat, ship (seed 0 first).
cd /work/runs/repo5
export TFDS_DATA_DIR=/work/shared/tfds PYTHONPATH=/work/runs/repo5
/work/main/.venv/bin/python -m mscm_jax.sweep --root=/work/runs/cpulong \
  --config=configs/cifar10_oneclass.py:cpu_long --classes=automobile,cat,airplane,ship --seeds=0
/work/main/.venv/bin/python -m mscm_jax.sweep --root=/work/runs/cpulong \
  --config=configs/cifar10_oneclass.py:cpu_long --classes=automobile,cat,airplane,ship --seeds=1
