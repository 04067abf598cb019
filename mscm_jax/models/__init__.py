"""Stage-1 models: CIFAR ResNet, Hopfield memory, projection heads, AnoMem."""

from mscm_jax.models.anomem import (
  MEMORY_MODES,
  MEMORY_TRAIN,
  SCALES,
  AnoMem,
  cosine_deviation,
  mask_anomaly_readout,
)
from mscm_jax.models.heads import ProjectionHead
from mscm_jax.models.memory import HopfieldMemory, hard_shrink
from mscm_jax.models.resnet import (
  CIFAR_MEAN,
  CIFAR_STD,
  STAGE_NAMES,
  BasicBlock,
  ResNet,
  ResNetStage,
  Stem,
  normalize_images,
)

__all__ = [
  "AnoMem",
  "BasicBlock",
  "CIFAR_MEAN",
  "CIFAR_STD",
  "HopfieldMemory",
  "MEMORY_MODES",
  "MEMORY_TRAIN",
  "ProjectionHead",
  "ResNet",
  "ResNetStage",
  "SCALES",
  "STAGE_NAMES",
  "Stem",
  "cosine_deviation",
  "hard_shrink",
  "mask_anomaly_readout",
  "normalize_images",
]
