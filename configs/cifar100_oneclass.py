r"""One-class CIFAR-100 over the 20 super-classes (tfds `coarse_label`), 2,500 train images each.

Run (CPU preset; needs a prepared tfds `cifar100`):
  TFDS_DATA_DIR=/path/to/tfds python -m mscm_jax.main \
      --config=configs/cifar100_oneclass.py:cpu --config.dataset.normal_class=0 \
      --workdir=workdirs/c100_sc0

Expected result: not measured (this project's machines have no prepared CIFAR-100). The
code path is the CIFAR-10 one with `label_key='coarse_label'`; see cifar10_oneclass.py for
what the `:cpu` preset gives there.
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "cifar100"
  c.dataset.label_key = "coarse_label"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
