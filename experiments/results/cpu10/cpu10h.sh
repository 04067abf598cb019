#!/bin/bash
# Issue 24 item 5: the :cpu preset at 7b0a9f6 (rotation stage 1, difference detector with
# turned anomalies) on the CIFAR-10 classes not yet run; automobile and cat come from
# /work/runs/levers (rot4 cells), airplane..dog seed 0 from /work/runs/cpu10 (stage 1 at
# 879b872, same stage 1; stage 2 rescored by experiments/ablation.py). Cells are claimed, so
# two workers may run this at once. PYTHONPATH: the sweep must import the worktree's package.
cd /work/runs/repo4
export TFDS_DATA_DIR=/work/shared/tfds PYTHONPATH=/work/runs/repo4
/work/main/.venv/bin/python experiments/sweep.py --root=/work/runs/cpu10h \
  --config=configs/cifar10_oneclass.py:cpu --classes=frog,horse,ship,truck --seeds=0
/work/main/.venv/bin/python experiments/sweep.py --root=/work/runs/cpu10h \
  --config=configs/cifar10_oneclass.py:cpu \
  --classes=airplane,bird,deer,dog,frog,horse,ship,truck --seeds=1
