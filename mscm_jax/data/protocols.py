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
  # The validation split (`with_validation`): normal training images kept out of both
  # stages, against other classes' training images. Every choice is read on it, so that
  # the test split is read once, for the final table. None: no validation split.
  val_images: np.ndarray | None = None  # uint8 [V, H, W, 3]
  val_is_anomaly: np.ndarray | None = None  # bool [V]
  val_classes: np.ndarray | None = None  # int [V]

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

  @property
  def has_validation(self) -> bool:
    """Whether the validation split can give an AUROC (it holds both classes)."""
    return (self.val_is_anomaly is not None and bool(self.val_is_anomaly.any())
            and not bool(self.val_is_anomaly.all()))

  @property
  def labelled_anomaly_classes(self) -> tuple[str, ...]:
    """The classes stage 2 sees labelled anomalies of (none in one-class)."""
    return tuple(self.class_names[c]
                 for c in np.unique(self.train_classes[self.train_is_anomaly]))

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
        "n_val": 0 if self.val_images is None else len(self.val_images),
        "n_val_anomalous": 0 if self.val_is_anomaly is None else int(self.val_is_anomaly.sum()),
    }


def resolve_classes(spec: Any, class_names: Sequence[str], field: str) -> tuple[int, ...]:
  """Class indices from a name, an index, a comma list or a tuple of either. Names come
  first: a bare integer is an index only when no class has that name (folders named `1`,
  `10`, `2`), and `#k` is always index k."""
  if isinstance(spec, str):
    spec = [s.strip() for s in spec.split(",") if s.strip()]
  elif not isinstance(spec, (list, tuple)):
    spec = [spec]
  out = []
  for item in spec:
    if isinstance(item, bool):
      item = str(item)
    text = str(item) if isinstance(item, (int, np.integer)) else item
    if isinstance(text, str) and text in class_names:
      out.append(class_names.index(text))
      continue
    if isinstance(text, str) and text.startswith("#") and text[1:].lstrip("-").isdigit():
      text = text[1:]
    if isinstance(text, str) and text.lstrip("-").isdigit():
      index = int(text)
      if not 0 <= index < len(class_names):
        raise ConfigError(f"{field}={item!r} is out of range: {len(class_names)} classes "
                          f"(0..{len(class_names) - 1}), and no class is named {text!r}")
      out.append(index)
    else:
      raise ConfigError(f"{field}={item!r} is neither one of the class names "
                        f"{tuple(class_names)} nor a class index")
  return tuple(sorted(set(out)))


def one_class_split(train: LabelledImages, test: LabelledImages,
                    normal_classes: Sequence[int]) -> ADSplit:
  """Train on the normal class(es) only; test on everything, anomaly = any other class."""
  check_normal(train.class_names, normal_classes, _counts(train))
  normal = np.isin(train.labels, normal_classes)
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
  chosen = labelled_rows(train, normal_classes, anomaly_ratio, seed, anomaly_classes)
  return _with_labelled(base, train, chosen)


def _with_labelled(base: ADSplit, train: LabelledImages, chosen: np.ndarray) -> ADSplit:
  """`base` with the training images `chosen` (indices into `train`) as labelled anomalies."""
  return dataclasses.replace(
      base,
      train_images=np.concatenate([base.train_images, train.images[chosen]]),
      train_is_anomaly=np.concatenate([base.train_is_anomaly, np.ones(len(chosen), bool)]),
      train_classes=np.concatenate([base.train_classes, train.labels[chosen]]),
  )


def labelled_rows(train: LabelledImages, normal_classes: Sequence[int], anomaly_ratio: float,
                  seed: int, anomaly_classes: Sequence[int] = ()) -> np.ndarray:
  """Indices into `train` of the unbalanced setting's labelled anomalies, sorted."""
  n_anom = check_unbalanced(train.class_names, normal_classes, anomaly_classes,
                            anomaly_ratio, _counts(train))
  pool = np.flatnonzero(np.isin(train.labels, pool_classes(
      len(train.class_names), normal_classes, anomaly_classes)))
  return np.sort(np.random.default_rng(seed).choice(pool, n_anom, replace=False))


def with_validation(split: ADSplit, train: LabelledImages, fraction: float, anomalies: int,
                    seed: int, exclude: np.ndarray | None = None) -> ADSplit:
  """`split` with a validation split: a seeded `fraction` of its normal training images,
  removed from training, against up to `anomalies` training images of the other classes
  (never those in `exclude`: the labelled anomalies that train). In the one-class
  protocol those images are otherwise unused, so selection never needs the test split.

  The held-out normals keep at least one normal image in training; with no other class
  in the training split (a folder of normal images only) the split has normals only and
  gives no AUROC (`has_validation` is False).
  """
  if fraction <= 0:
    return split
  rng = np.random.default_rng([seed, 1])  # apart from the labelled draw's stream
  normal_rows = np.flatnonzero(~split.train_is_anomaly)
  n_hold = min(int(round(fraction * len(normal_rows))), len(normal_rows) - 1)
  hold = np.zeros(split.n_train, bool)
  hold[rng.choice(normal_rows, n_hold, replace=False)] = True
  pool = ~np.isin(train.labels, split.normal_classes)
  if exclude is not None:
    pool[exclude] = False
  pool_rows = np.flatnonzero(pool)
  proxies = np.sort(rng.choice(pool_rows, min(anomalies, len(pool_rows)), replace=False))
  return dataclasses.replace(
      split,
      train_images=split.train_images[~hold],
      train_is_anomaly=split.train_is_anomaly[~hold],
      train_classes=split.train_classes[~hold],
      val_images=np.concatenate([split.train_images[hold], train.images[proxies]]),
      val_is_anomaly=np.concatenate([np.zeros(n_hold, bool), np.ones(len(proxies), bool)]),
      val_classes=np.concatenate([split.train_classes[hold], train.labels[proxies]]),
  )


def _counts(images: LabelledImages) -> np.ndarray:
  return np.bincount(images.labels, minlength=len(images.class_names))


def pool_classes(n_classes: int, normal: Sequence[int],
                 anomaly_classes: Sequence[int]) -> list[int]:
  """Where labelled anomalies come from: `anomaly_classes`, or every non-normal class."""
  return [c for c in (anomaly_classes or range(n_classes)) if c not in normal]


def check_normal(class_names: Sequence[str], normal: Sequence[int],
                 train_counts: np.ndarray) -> None:
  if not sum(int(train_counts[i]) for i in normal):
    raise ConfigError(f"dataset.normal_class: no training image of the normal class(es) "
                      f"{[class_names[i] for i in normal]} (a class seen only in the test "
                      "split cannot be normal)")


def check_test(class_names: Sequence[str], normal: Sequence[int],
               test_counts: np.ndarray) -> None:
  """The test split must hold normals and anomalies: AUROC needs both, and finding out
  after both stages have trained would throw the run away."""
  names = [class_names[i] for i in normal]
  n_normal = sum(int(test_counts[i]) for i in normal)
  if not n_normal:
    raise ConfigError(f"the test split holds no image of the normal class(es) {names}, so "
                      "no AUROC can be computed: add test images of it, or choose another "
                      "dataset.normal_class")
  if n_normal == int(np.sum(test_counts)):
    raise ConfigError(f"the test split holds only the normal class(es) {names}, so no "
                      "AUROC can be computed: add test images of other classes")


def check_unbalanced(class_names: Sequence[str], normal: Sequence[int],
                     anomaly_classes: Sequence[int], anomaly_ratio: float,
                     train_counts: np.ndarray | None) -> int | None:
  """The number of labelled anomalies `anomaly_ratio` asks for (None without counts);
  a ConfigError when the classes overlap or the pool cannot supply them."""
  if set(anomaly_classes) & set(normal):
    raise ConfigError(f"anomaly_classes={tuple(class_names[i] for i in anomaly_classes)} "
                      "must not include a normal class: labelled anomalies come from the "
                      "other classes")
  if train_counts is None:
    return None
  n_normal = sum(int(train_counts[i]) for i in normal)
  pool = sum(int(train_counts[c]) for c in pool_classes(len(class_names), normal,
                                                        anomaly_classes))
  wanted = int(round(anomaly_ratio * n_normal))
  if wanted < 1:
    raise ConfigError(f"anomaly_ratio={anomaly_ratio} x {n_normal} normal images rounds to "
                      "no labelled anomaly: raise anomaly_ratio")
  if wanted > pool:
    raise ConfigError(f"anomaly_ratio={anomaly_ratio} asks for {wanted} labelled anomalies "
                      f"but the pool holds {pool}: set anomaly_ratio <= "
                      f"{pool / n_normal:.3g} or widen anomaly_classes")
  return wanted


def config_classes(config, class_names: Sequence[str],
                   train_counts: np.ndarray | None = None,
                   test_counts: np.ndarray | None = None) -> tuple[tuple[int, ...],
                                                                   tuple[int, ...]]:
  """(normal, labelled-anomaly) class indices the config names, checked: a ConfigError for
  a name or index the dataset does not have, and, given the images per class of each split
  (a folder listing, before decoding; `make_split` passes the decoded counts), for a
  normal class without training images, a test split without normals or without
  anomalies, or a labelled-anomaly pool smaller than `anomaly_ratio` asks for."""
  normal = resolve_classes(config.dataset.normal_class, class_names, "dataset.normal_class")
  anomaly: tuple[int, ...] = ()
  if train_counts is not None:
    check_normal(class_names, normal, train_counts)
  if test_counts is not None:
    check_test(class_names, normal, test_counts)
  if config.setting == "unbalanced":
    anomaly = resolve_classes(config.anomaly_classes, class_names, "anomaly_classes")
    check_unbalanced(class_names, normal, anomaly, config.anomaly_ratio, train_counts)
  return normal, anomaly


def make_split(config, train: LabelledImages, test: LabelledImages) -> ADSplit:
  """The split that `config.setting` asks for, with its validation split."""
  if train.class_names != test.class_names:
    raise ConfigError("train and test splits disagree on the class names")
  normal, anomaly_classes = config_classes(config, train.class_names, _counts(train),
                                           _counts(test))
  v = config.validation
  if config.setting == "oneclass":
    return with_validation(one_class_split(train, test, normal), train, v.fraction,
                           v.anomalies, config.seed)
  base = one_class_split(train, test, normal)
  chosen = labelled_rows(train, normal, config.anomaly_ratio, config.seed, anomaly_classes)
  return with_validation(_with_labelled(base, train, chosen), train, v.fraction,
                         v.anomalies, config.seed, exclude=chosen)
