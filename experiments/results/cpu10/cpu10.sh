#!/bin/bash
# Issue 24 item 5: the :cpu preset as shipped at 879b872 on all 10 CIFAR-10 classes, 2 seeds.
# Several workers may run this at once; cells are claimed. PYTHONPATH: the sweep process
# itself must import the worktree's mscm_jax, not the editable install's (/work/main).
cd /work/runs/repo3
export TFDS_DATA_DIR=/work/shared/tfds PYTHONPATH=/work/runs/repo3
for seed in 0 1; do
  /work/main/.venv/bin/python experiments/sweep.py --root=/work/runs/cpu10 \
    --config=configs/cifar10_oneclass.py:cpu \
    --classes=airplane,bird,deer,dog,frog,horse,ship,truck,automobile,cat --seeds=$seed
done
