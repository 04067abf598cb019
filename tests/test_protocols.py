"""One-class and unbalanced protocols: counts, label semantics, seeding."""

import numpy as np
import pytest

from mscm_jax import config as config_lib
from mscm_jax.data import protocols, sources
from mscm_jax.errors import ConfigError

NAMES = tuple(f"c{i}" for i in range(5))


def _source(per_class: int, seed: int) -> sources.LabelledImages:
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(5), per_class)
  rng.shuffle(labels)
  images = np.zeros((len(labels), 4, 4, 3), np.uint8)
  images[..., 0] = labels[:, None, None]  # the class is readable from the pixels
  images[..., 1] = np.arange(len(labels))[:, None, None] % 256
  return sources.LabelledImages(images, labels.astype(np.int64), NAMES)


TRAIN, TEST = _source(40, 0), _source(10, 1)


def test_one_class_split_counts_and_labels():
  split = protocols.one_class_split(TRAIN, TEST, (2,))
  assert split.n_train == 40 and (split.train_classes == 2).all()
  assert (split.train_images[..., 0] == 2).all()
  assert not split.train_is_anomaly.any()
  assert split.n_test == 50 and split.n_test_anomalous == 40
  # label 1 = anomaly: exactly the test images of the other classes
  np.testing.assert_array_equal(split.test_is_anomaly, TEST.labels != 2)
  assert split.summary()["normal_classes"] == ["c2"]
  assert split.labelled_anomaly_classes == ()


def test_several_normal_classes():
  split = protocols.one_class_split(TRAIN, TEST, (0, 3))
  assert split.n_train == 80 and split.n_test_anomalous == 30


def test_unbalanced_ratio_and_anomaly_origin():
  split = protocols.unbalanced_split(TRAIN, TEST, (1,), anomaly_ratio=0.25, seed=0)
  assert split.n_train == 40 + 10 and split.n_train_anomalies == 10
  anomalies = split.train_is_anomaly
  assert (split.train_classes[anomalies] != 1).all()
  assert (split.train_classes[~anomalies] == 1).all()
  assert set(split.labelled_anomaly_classes) <= {"c0", "c2", "c3", "c4"}
  # images travel with their flags and classes
  np.testing.assert_array_equal(split.train_images[..., 0, 0, 0], split.train_classes)
  assert split.n_test == 50  # the test split is untouched


def test_unbalanced_is_seeded():
  a = protocols.unbalanced_split(TRAIN, TEST, (1,), 0.25, seed=0)
  b = protocols.unbalanced_split(TRAIN, TEST, (1,), 0.25, seed=0)
  c = protocols.unbalanced_split(TRAIN, TEST, (1,), 0.25, seed=1)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  assert not np.array_equal(a.train_images, c.train_images)


def test_unbalanced_anomaly_classes_restrict_the_pool():
  split = protocols.unbalanced_split(TRAIN, TEST, (1,), 0.5, seed=0, anomaly_classes=(3,))
  assert set(split.train_classes[split.train_is_anomaly]) == {3}
  assert split.labelled_anomaly_classes == ("c3",)
  assert split.n_test_anomalous == 40  # unseen anomaly types still tested
  with pytest.raises(ConfigError, match="pool holds 40"):
    protocols.unbalanced_split(TRAIN, TEST, (1,), 1.5, seed=0, anomaly_classes=(3,))
  with pytest.raises(ConfigError, match="must not include a normal class"):
    protocols.unbalanced_split(TRAIN, TEST, (1,), 0.1, seed=0, anomaly_classes=(1,))
  with pytest.raises(ConfigError, match="rounds to"):
    protocols.unbalanced_split(TRAIN, TEST, (1,), 0.001, seed=0)


@pytest.mark.parametrize("spec,expected", [
    (3, (3,)), ("3", (3,)), ("c3", (3,)), (("c1", 4), (1, 4)), ("c4, c0", (0, 4)), ((2, 2), (2,)),
])
def test_resolve_classes(spec, expected):
  assert protocols.resolve_classes(spec, NAMES, "f") == expected


@pytest.mark.parametrize("spec", [7, -1, "dog", True])
def test_resolve_classes_errors(spec):
  with pytest.raises(ConfigError, match="f="):
    protocols.resolve_classes(spec, NAMES, "f")


def test_class_names_come_before_indices():
  numeric = ("1", "10", "2")  # folders named by numbers, listed in name order
  assert protocols.resolve_classes("1", numeric, "f") == (0,)  # the folder `1`
  assert protocols.resolve_classes("10", numeric, "f") == (1,)  # not out of range
  assert protocols.resolve_classes(1, numeric, "f") == (0,)  # an int is a name too
  assert protocols.resolve_classes("0", numeric, "f") == (0,)  # no folder `0`: index 0
  assert protocols.resolve_classes("#1", numeric, "f") == (1,)  # forced index
  assert protocols.resolve_classes("#1,2", numeric, "f") == (1, 2)
  with pytest.raises(ConfigError, match="no class is named '5'"):
    protocols.resolve_classes("5", numeric, "f")
  with pytest.raises(ConfigError, match="out of range"):
    protocols.resolve_classes("#3", numeric, "f")


def test_make_split_follows_the_config():
  c = config_lib.base_config()
  c.dataset.normal_class = "c4"
  assert protocols.make_split(c, TRAIN, TEST).normal_classes == (4,)
  c.setting = "unbalanced"
  c.anomaly_ratio = 0.1
  c.anomaly_classes = ("c0",)
  split = protocols.make_split(c, TRAIN, TEST)
  assert split.n_train_anomalies == 4
  assert set(split.train_classes[split.train_is_anomaly]) == {0}


def test_a_test_split_that_cannot_give_an_auroc_is_refused_before_training():
  c = config_lib.base_config()
  c.dataset.normal_class = "c1"
  keep = TEST.labels != 1
  no_normals = sources.LabelledImages(TEST.images[keep], TEST.labels[keep], NAMES)
  with pytest.raises(ConfigError, match=r"no image of the normal class\(es\) \['c1'\]"):
    protocols.make_split(c, TRAIN, no_normals)
  only = ~keep
  normals_only = sources.LabelledImages(TEST.images[only], TEST.labels[only], NAMES)
  with pytest.raises(ConfigError, match="only the normal class"):
    protocols.make_split(c, TRAIN, normals_only)
  c.dataset.normal_class = ("c1", "c2")  # two normal classes and no other: the same
  both = np.isin(TEST.labels, (1, 2))
  with pytest.raises(ConfigError, match="only the normal class"):
    protocols.make_split(c, TRAIN, sources.LabelledImages(TEST.images[both],
                                                          TEST.labels[both], NAMES))


def test_validation_holds_normals_out_of_training():
  base = protocols.one_class_split(TRAIN, TEST, (2,))
  split = protocols.with_validation(base, TRAIN, 0.25, 30, seed=0)
  assert split.n_train == 30 and split.n_test == base.n_test  # 10 of 40 normals held out
  assert split.val_is_anomaly.sum() == 30 and (~split.val_is_anomaly).sum() == 10
  # pixel channel 1 is each source image's index: no image both trains and validates
  train_ids = set(split.train_images[:, 0, 0, 1])
  held = split.val_images[~split.val_is_anomaly]
  assert not train_ids & set(held[:, 0, 0, 1]) and (held[..., 0] == 2).all()
  assert train_ids | set(held[:, 0, 0, 1]) == set(base.train_images[:, 0, 0, 1])
  # the proxy anomalies are training images of the other classes, never the test split's
  proxies = split.val_images[split.val_is_anomaly]
  assert (split.val_classes[split.val_is_anomaly] != 2).all()
  np.testing.assert_array_equal(proxies[..., 0, 0, 0], split.val_classes[split.val_is_anomaly])
  assert split.has_validation
  assert split.summary()["n_val"] == 40 and split.summary()["n_val_anomalous"] == 30


def test_validation_is_seeded_and_capped():
  base = protocols.one_class_split(TRAIN, TEST, (2,))
  a, b, c = (protocols.with_validation(base, TRAIN, 0.25, 500, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a.val_images, b.val_images)
  assert not np.array_equal(a.val_images, c.val_images)
  assert a.val_is_anomaly.sum() == 160  # every image of the four other classes
  assert protocols.with_validation(base, TRAIN, 0.0, 500, seed=0) is base


def test_validation_without_other_classes_gives_no_auroc():
  only = sources.LabelledImages(TRAIN.images[TRAIN.labels == 2],
                                TRAIN.labels[TRAIN.labels == 2], NAMES)
  split = protocols.with_validation(protocols.one_class_split(only, TEST, (2,)), only,
                                    0.1, 100, seed=0)
  assert split.n_train == 36 and len(split.val_images) == 4
  assert not split.has_validation
  tiny = sources.LabelledImages(only.images[:2], only.labels[:2], NAMES)
  kept = protocols.with_validation(protocols.one_class_split(tiny, TEST, (2,)), tiny, 0.5,
                                   0, seed=0)
  assert kept.n_train == 1  # one normal image always trains


def test_unbalanced_validation_keeps_the_labelled_draw_and_never_reuses_it():
  c = config_lib.base_config()
  c.dataset.normal_class = 1
  c.setting = "unbalanced"
  c.anomaly_ratio = 0.25
  c.validation.fraction = 0.25
  c.validation.anomalies = 1000  # every image of the pool that does not train
  split = protocols.make_split(c, TRAIN, TEST)
  plain = protocols.unbalanced_split(TRAIN, TEST, (1,), 0.25, seed=0)
  labelled = split.train_images[split.train_is_anomaly]
  np.testing.assert_array_equal(labelled, plain.train_images[plain.train_is_anomaly])
  ids = lambda x: set(x[:, 0, 0, 1].tolist())  # noqa: E731
  assert not ids(labelled) & ids(split.val_images[split.val_is_anomaly])
  assert split.val_is_anomaly.sum() == 160 - 10 and split.n_train == 30 + 10
