#!/bin/bash
# issue 24: the :cpu preset at 54b5e28, seed 0 on 4 classes, to rescore with the rotation term
# (evaluate.rotation_weight) on the preset's own runs; two workers share cells.
cd /work/runs/repo2
export TFDS_DATA_DIR=/work/shared/tfds PYTHONPATH=$PWD
.venv/bin/python -m mscm_jax.sweep --root=/work/runs/cpurot --config=configs/cifar10_oneclass.py:cpu \
  --classes=airplane,automobile,cat,ship --seeds=0
