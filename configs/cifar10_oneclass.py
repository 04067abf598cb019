r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=3 \
      --workdir=workdirs/c10_cat

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `smoke` = seconds.

Expected result: stages 1-2 are not implemented yet. Measured so far (2 CPU cores,
CIFAR-10 JPEG copy): the data stage loads and splits class 3 in about 12 s
(5,000 training images, 10,000 test images of which 1,000 normal).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
