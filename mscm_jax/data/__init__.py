"""Data: sources (tfds, folders, arrays), protocols (one-class, unbalanced), device placement
and JAX augmentations."""

from mscm_jax.data.augment import AugmentParams, augment_batch, two_views
from mscm_jax.data.device import DeviceDataset, put_stacked, sample_indices
from mscm_jax.data.protocols import (ADSplit, make_split, one_class_split, unbalanced_split,
                                     with_validation)
from mscm_jax.data.sources import (LabelledImages, from_arrays, load_folder, load_splits,
                                   load_tfds)

__all__ = [
    "ADSplit", "AugmentParams", "DeviceDataset", "LabelledImages", "augment_batch",
    "from_arrays", "load_folder", "load_splits", "load_tfds", "make_split",
    "one_class_split", "put_stacked", "sample_indices", "two_views", "unbalanced_split",
    "with_validation",
]
