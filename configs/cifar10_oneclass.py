r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=3 \
      --workdir=workdirs/c10_cat

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `smoke` = seconds.

Expected result, `:cpu` (2 CPU cores, CIFAR-10 JPEG copy; experiments/results/
detector_sweep.md): the whole command takes about 7 minutes (stage 1 about 6, stage 2
about 1, evaluation 15-25 s) and prints, for class 5 (dog), seed 0: mscm 0.643, knn 0.580,
pixel_knn 0.482 (AUROC). The mscm AUROC, seed 0, on all ten classes: airplane 0.621,
automobile 0.572, bird 0.604, cat 0.604, deer 0.653, dog 0.643, frog 0.734, horse 0.655,
ship 0.640, truck 0.677 (automobile and cat: the same preset's stage 2 on their ablation
checkpoints) -- above pixel_knn on every class (by 0.03 on bird to 0.31 on truck), below
knn on airplane, bird and deer. At 10 epochs stage 1 has barely learned (its k-NN probe
is 0.46-0.69), so these are CPU-budget numbers, far from the paper's. Full schedule: not
run yet (ResNet-18 at batch 64 runs at 14.8 views/s on 2 CPU cores: an accelerator's job).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
