r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=3 \
      --workdir=workdirs/c10_cat

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `smoke` = seconds.

Expected result: stage 2 and evaluation are not implemented yet; the run stops after
stage 1 with its k-NN health probe. Measured with `:cpu` (2 CPU cores, CIFAR-10 JPEG copy,
seed 0; experiments/results/stage1_cpu.md): the whole command takes 8 m 40 s (data 14 s,
stage 1 200 steps at about 220-230 views/s); probe AUROC 0.521 for class 1 (automobile) and
0.512 for class 3 (cat) -- at this budget no better than an untrained network (0.594 on
automobile). Split for class 3: 5,000 training images, 10,000 test images, 1,000 normal.
Full schedule: not run yet (ResNet-18 at batch 64 runs at 14.8 views/s on 2 CPU cores).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
