"""Anomaly-detection protocols: which images train, which test, and what counts as anomalous.

One convention everywhere: `is_anomaly` is True for an anomaly (test label 1) and False
for a normal image (label 0). In training it marks the labelled anomalies of the
unbalanced setting; in the one-class setting it is all False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mscm_jax.data.sources import LabelledImages
from mscm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ADSplit:
  """Training and test sets of one anomaly-detection task."""

  train_images: np.ndarray  # uint8 [N, H, W, 3]: normal images, then labelled anomalies
  train_is_anomaly: np.ndarray  # bool [N]
  train_classes: np.ndarray  # int [N], original class of each image
  test_images: np.ndarray  # uint8 [M, H, W, 3]: the whole test split
  test_is_anomaly: np.ndarray  # bool [M]
  test_classes: np.ndarray  # int [M]
  class_names: tuple[str, ...]
  normal_classes: tuple[int, ...]

  @property
  def n_train(self) -> int:
    return len(self.train_images)

  @property
  def n_train_anomalies(self) -> int:
    return int(self.train_is_anomaly.sum())

  @property
  def n_test(self) -> int:
    return len(self.test_images)

  @property
  def n_test_anomalous(self) -> int:
    return int(self.test_is_anomaly.sum())

  def summary(self) -> dict[str, Any]:
    return {
        "normal_classes": [self.class_names[i] for i in self.normal_classes],
        "n_train": self.n_train,
        "n_train_normal": self.n_train - self.n_train_anomalies,
        "n_train_anomalies": self.n_train_anomalies,
        "n_test": self.n_test,
        "n_test_anomalous": self.n_test_anomalous,
        "n_test_normal": self.n_test - self.n_test_anomalous,
        "image_shape": list(self.train_images.shape[1:]),
    }


def resolve_classes(spec: Any, class_names: Sequence[str], field: str) -> tuple[int, ...]:
  """Class indices from an index, a name, a comma list or a tuple of either."""
  if isinstance(spec, str):
    spec = [s.strip() for s in spec.split(",") if s.strip()]
  elif not isinstance(spec, (list, tuple)):
    spec = [spec]
  out = []
  for item in spec:
    if isinstance(item, str) and item.lstrip("-").isdigit():
      item = int(item)
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
      if not 0 <= item < len(class_names):
        raise ConfigError(f"{field}={item} is out of range: {len(class_names)} classes "
                          f"(0..{len(class_names) - 1})")
      out.append(int(item))
    elif isinstance(item, str) and item in class_names:
      out.append(class_names.index(item))
    else:
      raise ConfigError(f"{field}={item!r} is neither a class index nor one of the class "
                        f"names {tuple(class_names)}")
  return tuple(sorted(set(out)))


def one_class_split(train: LabelledImages, test: LabelledImages,
                    normal_classes: Sequence[int]) -> ADSplit:
  """Train on the normal class(es) only; test on everything, anomaly = any other class."""
  normal = np.isin(train.labels, normal_classes)
  if not normal.any():
    raise ConfigError(f"no training image of the normal class(es) "
                      f"{[train.class_names[i] for i in normal_classes]}")
  test_anom = ~np.isin(test.labels, normal_classes)
  return ADSplit(
      train_images=train.images[normal],
      train_is_anomaly=np.zeros(int(normal.sum()), bool),
      train_classes=train.labels[normal],
      test_images=test.images,
      test_is_anomaly=test_anom,
      test_classes=test.labels,
      class_names=train.class_names,
      normal_classes=tuple(normal_classes),
  )


def unbalanced_split(train: LabelledImages, test: LabelledImages,
                     normal_classes: Sequence[int], anomaly_ratio: float, seed: int,
                     anomaly_classes: Sequence[int] = ()) -> ADSplit:
  """One-class split plus labelled anomalies: `anomaly_ratio` x the normal count, seeded.

  The anomalies come from the training split of the other classes (or of
  `anomaly_classes` only, to test on anomaly types never seen in training).
  """
  base = one_class_split(train, test, normal_classes)
  if set(anomaly_classes) & set(normal_classes):
    raise ConfigError("anomaly_classes must not include a normal class")
  pool_classes = [c for c in (anomaly_classes or range(len(train.class_names)))
                  if c not in normal_classes]
  pool = np.flatnonzero(np.isin(train.labels, pool_classes))
  n_normal = base.n_train
  n_anom = int(round(anomaly_ratio * n_normal))
  if n_anom < 1:
    raise ConfigError(f"anomaly_ratio={anomaly_ratio} x {n_normal} normal images rounds to "
                      f"no labelled anomaly")
  if n_anom > len(pool):
    raise ConfigError(f"asked for {n_anom} labelled anomalies but the pool holds {len(pool)}")
  chosen = np.sort(np.random.default_rng(seed).choice(pool, n_anom, replace=False))
  return dataclasses.replace(
      base,
      train_images=np.concatenate([base.train_images, train.images[chosen]]),
      train_is_anomaly=np.concatenate([base.train_is_anomaly, np.ones(n_anom, bool)]),
      train_classes=np.concatenate([base.train_classes, train.labels[chosen]]),
  )


def config_classes(config, class_names: Sequence[str],
                   train_counts: np.ndarray | None = None) -> tuple[tuple[int, ...],
                                                                    tuple[int, ...]]:
  """(normal, labelled-anomaly) class indices the config names, checked: a ConfigError for
  a name or index the dataset does not have, and, given the training images per class
  (a folder listing, before decoding; the labels, after), for a normal class without
  training images or a labelled-anomaly pool smaller than `anomaly_ratio` asks for."""
  normal = resolve_classes(config.dataset.normal_class, class_names, "dataset.normal_class")
  anomaly: tuple[int, ...] = ()
  if config.setting == "unbalanced":
    anomaly = resolve_classes(config.anomaly_classes, class_names, "anomaly_classes")
    if set(anomaly) & set(normal):
      raise ConfigError(f"anomaly_classes={tuple(class_names[i] for i in anomaly)} includes "
                        "a normal class: labelled anomalies must come from other classes")
  if train_counts is None:
    return normal, anomaly
  n_normal = int(sum(train_counts[i] for i in normal))
  if n_normal == 0:
    raise ConfigError(f"dataset.normal_class: no training image of the normal class(es) "
                      f"{[class_names[i] for i in normal]} (a class seen only in the test "
                      "split cannot be normal)")
  if config.setting == "unbalanced":
    pool_classes = [c for c in (anomaly or range(len(class_names))) if c not in normal]
    pool = int(sum(train_counts[c] for c in pool_classes))
    wanted = int(round(config.anomaly_ratio * n_normal))
    if wanted > pool:
      raise ConfigError(f"anomaly_ratio={config.anomaly_ratio} asks for {wanted} labelled "
                        f"anomalies but the pool holds {pool}: set anomaly_ratio <= "
                        f"{pool / n_normal:.3g} or widen anomaly_classes")
    if wanted < 1:
      raise ConfigError(f"anomaly_ratio={config.anomaly_ratio} x {n_normal} normal images "
                        "rounds to no labelled anomaly: raise anomaly_ratio")
  return normal, anomaly


def make_split(config, train: LabelledImages, test: LabelledImages) -> ADSplit:
  """The split that `config.setting` asks for."""
  if train.class_names != test.class_names:
    raise ConfigError("train and test splits disagree on the class names")
  counts = np.bincount(train.labels, minlength=len(train.class_names))
  normal, anomaly_classes = config_classes(config, train.class_names, counts)
  if config.setting == "oneclass":
    return one_class_split(train, test, normal)
  return unbalanced_split(train, test, normal, config.anomaly_ratio, config.seed,
                          anomaly_classes)
