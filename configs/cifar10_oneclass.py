r"""One-class CIFAR-10: train on one class, test on all 10,000 test images.

Run (CPU preset, one class, 2 cores):
  TFDS_DATA_DIR=../shared/tfds python -m mscm_jax.main \
      --config=configs/cifar10_oneclass.py:cpu --config.dataset.normal_class=1 \
      --workdir=workdirs/c10_automobile

Presets: (none) = paper-scale schedule (ResNet-18, batch 512, 500 epochs; needs an
accelerator), `cpu` = about 10 minutes per class on 2 CPU cores, `cpu_long` = the same
design for 7.5x the steps, `smoke` = seconds.

Expected result, `:cpu` (2 CPU cores, CIFAR-10 JPEG copy; test split, with the stage-1
probe on the validation split; experiments/results/levers.md), seeds 0 / 1:
  automobile (1): mscm 0.732 / 0.740, knn 0.869 / 0.849, rotation 0.840 / 0.842,
                  pixel_knn 0.494 / 0.492; probe 0.866 / 0.844 (untrained 0.583 / 0.561)
  cat (3):        mscm 0.588 / 0.592, knn 0.603 / 0.543, rotation 0.669 / 0.670,
                  pixel_knn 0.520 / 0.518; probe 0.614 / 0.541 (untrained 0.572 / 0.594)
Without the rotations (--config.shift.rotations=1 --config.loss.rotation_weight=0
--config.train.batch_size=256 --config.train.epochs=20) stage 1 does not learn: probe
0.567 / 0.578 on automobile, 0.567 / 0.508 on cat.
Expected result, `:cpu_long`: not yet measured with rotations. Without them (150 epochs),
measured before the validation split (stage 1
on all 5,000 normal images; test split, probe included; learning_curve.md), seed 0:
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
