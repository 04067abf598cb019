r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=3 \
      --workdir=workdirs/c10_cat

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `smoke` = seconds.

Expected result, `:cpu` (2 CPU cores, CIFAR-10 JPEG copy; experiments/results/ablation.md):
the whole command takes about 7 minutes (stage 1 about 6, stage 2 and evaluation about 1)
and prints, for class 7 (horse), seed 0: mscm 0.597, deviation 0.633, knn 0.600,
pixel_knn 0.481 (AUROC). Automobile (class 1) and cat (class 3), seeds 0 and 1: mscm
0.559-0.617, deviation 0.610-0.674, knn 0.511-0.549, pixel_knn 0.494 / 0.520. Airplane
(class 0): mscm 0.480, below pixel_knn 0.576 (deviation 0.581, knn 0.638). At 10 epochs
stage 1 has barely learned (its k-NN probe is 0.51-0.55), so these are CPU-budget numbers,
far from the paper's. Full schedule: not run yet (ResNet-18 at batch 64 runs at 14.8
views/s on 2 CPU cores: an accelerator's job).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
