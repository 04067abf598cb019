r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=3 \
      --workdir=workdirs/c10_cat

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `cpu_long` = the same
model for about 75 minutes of stage 1, `smoke` = seconds.

Expected result, `:cpu` (2 CPU cores, CIFAR-10 JPEG copy; experiments/results/
learning_curve.md): the whole command takes about 10 minutes (616 s for cat: stage 1 548,
stage 2 36, evaluation 14) and prints, seed 0 (AUROC):
  cat (3):        mscm 0.549, deviation 0.596, knn 0.549, pixel_knn 0.520
  automobile (1): mscm 0.582, deviation 0.636, knn 0.650, pixel_knn 0.494
  airplane (0):   mscm 0.583, deviation 0.585, knn 0.657, pixel_knn 0.576
(`deviation` over the pooled scale, the default since the `:cpu_long` runs.)
Stage 1 (20 epochs) has only begun to learn: its k-NN probe is +0.012 (cat) and +0.056
(automobile) above the same network untrained, and 0.099 below it on airplane; at 40
epochs automobile's reaches 0.760.
Expected result, `:cpu_long` (150 epochs; stage 1 4375 s on automobile), seed 0:
  automobile (1): mscm 0.846, deviation 0.899, knn 0.904 (untrained 0.594), pixel_knn 0.494
  cat (3):        mscm 0.580, deviation 0.660, knn 0.671 (untrained 0.536), pixel_knn 0.520
  airplane (0):   mscm 0.589, deviation 0.647, knn 0.733 (untrained 0.756), pixel_knn 0.576
Full schedule: not run (ResNet-18 at batch 64 runs at 30 views/s on 2 CPU cores:
experiments/PERFORMANCE.md).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
