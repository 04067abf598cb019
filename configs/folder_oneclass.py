r"""One-class detection on any class-folder tree: ROOT/{train,test}/<class>/<image>.

Images are decoded with Pillow (no TensorFlow) and resized to `dataset.image_size`.
`normal_class` takes a folder name, or its index in the sorted folder names when no folder
has that name (`#k` is always the k-th).

Run (CPU preset), e.g. on the CIFAR-10 JPEG tree extracted to /tmp/cifar10_jpeg:
  python -m mscm_jax.main --config=configs/folder_oneclass.py:cpu \
      --config.dataset.data_dir=/tmp/cifar10_jpeg --config.dataset.normal_class=cat \
      --workdir=workdirs/folder_cat

Expected result: on the CIFAR-10 JPEG tree the data stage decodes 60,000 images in about
20 s and gives the same split as the tfds copy (4,500 train, 500 + 2,000 validation,
10,000 test); expect the scores of cifar10_oneclass.py (image order differs, so runs are
not bit-identical).
"""

from mscm_jax import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.dataset.name = "folder"
  c.setting = "oneclass"
  return config_lib.apply_preset(c, preset)
