"""Data sources: tfds (mocked), class folders (generated) and arrays."""

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import smoke_config, write_folder_tree

from mscm_jax.data import sources
from mscm_jax.errors import DatasetNotFoundError, UserError


def test_tfds_source_reads_images_labels_and_names():
  # mock_data replaces download_and_prepare and as_dataset: nothing touches the network.
  with tfds.testing.mock_data(num_examples=40):
    data = sources.load_tfds("cifar10", "train", data_dir="/nonexistent-mock", download=True)
  assert data.images.shape == (40, 32, 32, 3) and data.images.dtype == np.uint8
  assert data.labels.shape == (40,) and data.labels.dtype == np.int64
  assert len(data.class_names) == 10
  assert data.labels.min() >= 0 and data.labels.max() < 10


def test_tfds_source_coarse_labels():
  with tfds.testing.mock_data(num_examples=30):
    data = sources.load_tfds("cifar100", "test", data_dir="/nonexistent-mock", download=True,
                             label_key="coarse_label")
  assert len(data.class_names) == 20 and data.labels.max() < 20


def test_tfds_unknown_label_key_is_a_clear_error():
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(UserError, match="no feature 'fine'"):
      sources.load_tfds("cifar10", "train", data_dir="/nonexistent-mock", download=True,
                        label_key="fine")


def test_missing_tfds_dataset_fails_fast_with_fix(tmp_path):
  start = time.time()
  with pytest.raises(DatasetNotFoundError) as err:
    sources.load_tfds("cifar10", "train", data_dir=str(tmp_path), download=False)
  assert time.time() - start < 5
  msg = str(err.value)
  assert "\n" not in msg and str(tmp_path) in msg and "download=True" in msg


def test_tfds_dir_resolution_order(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert sources.resolve_tfds_dir("/from/config")[0] == "/from/config"
  assert sources.resolve_tfds_dir("")[0] == str(tmp_path / "env")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert sources.resolve_tfds_dir("")[0] == os.path.expanduser("~/tensorflow_datasets")


def test_find_prepared(tmp_path):
  (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
  assert sources.find_prepared("cifar10", str(tmp_path)) is None
  (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
  assert sources.find_prepared("cifar10", str(tmp_path)).endswith("3.0.2")
  assert sources.find_prepared("cifar10:3.0.2", str(tmp_path)).endswith("3.0.2")
  assert sources.find_prepared("cifar10:9.9.9", str(tmp_path)) is None


def test_folder_source(folder_tree):
  names = sources.folder_class_names(str(folder_tree))
  assert names == ("apple", "berry", "cherry")
  train = sources.load_folder(str(folder_tree), "train", image_size=16, class_names=names)
  assert train.images.shape == (15, 16, 16, 3) and train.images.dtype == np.uint8
  assert np.bincount(train.labels).tolist() == [6, 5, 4]
  # Class k was painted into channel k % 3: labels really follow the folders.
  for k in range(3):
    assert train.images[train.labels == k].mean(axis=(0, 1, 2)).argmax() == k


def test_folder_source_resizes_and_ignores_non_images(folder_tree):
  (folder_tree / "train" / "apple" / "notes.txt").write_text("not an image")
  data = sources.load_folder(str(folder_tree), "train", image_size=8)
  assert data.images.shape == (15, 8, 8, 3)


def test_folder_source_test_only_class_gets_its_own_index(folder_tree):
  write_folder_tree(folder_tree, {"test": {"zzz_odd": 2}})
  names = sources.folder_class_names(str(folder_tree))
  assert names == ("apple", "berry", "cherry", "zzz_odd")
  test = sources.load_folder(str(folder_tree), "test", image_size=16, class_names=names)
  assert np.bincount(test.labels).tolist() == [3, 3, 2, 2]


def test_load_splits_of_a_config_section_and_the_test_split_alone(folder_tree):
  write_folder_tree(folder_tree, {"train": {"aaa_train_only": 2}})
  dataset = smoke_config(folder_tree).dataset
  train, test = sources.load_splits(dataset)
  (alone,) = sources.load_splits(dataset, [dataset.test_split])
  # Decoding the test split alone gives the same images and the class indices of both
  # splits' listing (the train-only class still shifts every other class's index).
  assert len(train.labels) == 17 and alone.class_names == test.class_names == train.class_names
  assert alone.class_names[0] == "aaa_train_only"
  np.testing.assert_array_equal(alone.labels, test.labels)
  np.testing.assert_array_equal(alone.images, test.images)
  assert np.bincount(alone.labels, minlength=4).tolist() == [0, 3, 3, 2]


def test_folder_source_errors(folder_tree, tmp_path):
  with pytest.raises(DatasetNotFoundError, match="no image folder tree"):
    sources.folder_class_names(str(tmp_path / "missing"))
  with pytest.raises(DatasetNotFoundError, match="missing split folder"):
    sources.folder_class_names(str(folder_tree), ("train", "val"))
  (folder_tree / "train" / "apple" / "broken.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(UserError, match="broken.jpg"):
    sources.load_folder(str(folder_tree), "train")


def test_from_arrays_converts_float_and_gray():
  rng = np.random.default_rng(0)
  gray = rng.random((5, 8, 8)).astype(np.float32)
  data = sources.from_arrays(gray, [0, 1, 0, 1, 1], ("a", "b"))
  assert data.images.shape == (5, 8, 8, 3) and data.images.dtype == np.uint8
  np.testing.assert_array_equal(data.images[..., 0], np.round(gray * 255))
  with pytest.raises(UserError, match=r"\[0, 1\]"):
    sources.from_arrays(gray * 3, np.zeros(5))
  with pytest.raises(UserError, match="NaN"):
    sources.from_arrays(np.full((2, 4, 4, 3), np.nan), np.zeros(2))
  with pytest.raises(UserError, match="labels must lie"):
    sources.from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 5], ("a", "b"))


class _FakeTensorFlow:
  """tf.config's device calls, on a host with `devices` ({kind: [names]})."""

  def __init__(self, devices, frozen=False):
    self.devices, self.frozen, self.hidden = devices, frozen, []
    self.config = self

  def list_physical_devices(self, kind):
    return self.devices.get(kind, [])

  def set_visible_devices(self, visible, kind):
    if self.frozen:
      raise RuntimeError("Visible devices cannot be modified after being initialized")
    assert visible == []
    self.hidden.append(kind)


def test_tensorflow_never_sees_an_accelerator(caplog):
  gpu_host = _FakeTensorFlow({"GPU": ["/physical_device:GPU:0", "/physical_device:GPU:1"],
                              "CPU": ["/physical_device:CPU:0"]})
  assert sources.hide_accelerators(gpu_host) == ["GPU"] and gpu_host.hidden == ["GPU"]
  tpu_host = _FakeTensorFlow({"TPU": ["/physical_device:TPU:0"]})
  assert sources.hide_accelerators(tpu_host) == ["TPU"]
  cpu_host = _FakeTensorFlow({"CPU": ["/physical_device:CPU:0"]})
  assert sources.hide_accelerators(cpu_host) == [] and cpu_host.hidden == []
  late = _FakeTensorFlow({"GPU": ["/physical_device:GPU:0"]}, frozen=True)
  assert sources.hide_accelerators(late) == []  # warned, not raised: the data still loads
  assert "could not hide GPU" in caplog.text


def test_reading_tfds_hides_accelerators_first(monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(sources, "hide_accelerators", lambda module: calls.append(module))
  with tfds.testing.mock_data(num_examples=4):
    sources.load_tfds("cifar10", "train", data_dir="/nonexistent-mock", download=True)
  assert calls == [tf]


def _mode_images() -> dict[str, tuple[str, Any, int]]:
  """{mode: (file format that keeps it, image, the 8-bit grey it shows)}: every mode an
  image file can open in, each a uniform grey (white for 1-bit)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  grey = Image.new("RGB", (8, 8), (128, 128, 128))
  wide = np.full((8, 8), 128 * 257, np.uint16)  # 16-bit grey of the same brightness
  return {
      "1": ("png", Image.new("1", (8, 8), 1), 255),
      "L": ("png", grey.convert("L"), 128),
      "P": ("png", grey.convert("P", palette=Image.Palette.ADAPTIVE), 128),
      "RGB": ("png", grey, 128),
      "RGBA": ("png", grey.convert("RGBA"), 128),
      "LA": ("png", grey.convert("LA"), 128),
      "PA": ("tiff", grey.convert("P", palette=Image.Palette.ADAPTIVE).convert("PA"), 128),
      "CMYK": ("tiff", grey.convert("CMYK"), 128),
      "YCbCr": ("tiff", grey.convert("YCbCr"), 128),
      "LAB": ("tiff", grey.convert("LAB"), 128),
      "I;16": ("png", Image.fromarray(wide), 128),
      "I;16B": ("tiff", Image.frombytes("I;16B", (8, 8), wide.astype(">u2").tobytes()), 128),
      "I": ("tiff", Image.fromarray(wide.astype(np.int32)), 128),
  }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_every_image_mode_decodes_to_its_brightness(tmp_path, mode):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  fmt, im, grey = _mode_images()[mode]
  path = str(tmp_path / f"image.{fmt}")
  im.save(path)
  with Image.open(path) as opened:
    assert opened.mode == mode  # the file really holds this mode
  out = sources._decode(path, 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  np.testing.assert_allclose(out, grey, atol=1)


def test_sixteen_bits_keep_their_contrast(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
  Image.fromarray(ramp).save(tmp_path / "ramp.png")
  out = sources._decode(str(tmp_path / "ramp.png"), 8)[..., 0]
  assert out.min() == 0 and out.max() == 255
  np.testing.assert_allclose(out, ramp / 257, atol=0.5)


def test_pixels_without_a_fixed_range_are_refused(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tiff")
  Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "int.tiff")
  for name, match in (("float.tiff", "float pixels"), ("int.tiff", "outside 16 bits")):
    with pytest.raises(UserError, match=match) as err:
      sources._decode(str(tmp_path / name), 8)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_oversized_images_are_refused_in_one_line(tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  Image.new("RGB", (12, 12)).save(tmp_path / "warned.png")  # 144 px: Pillow only warns
  Image.new("RGB", (16, 16)).save(tmp_path / "bomb.png")  # 256 px: Pillow refuses to open
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  for name, size in (("warned.png", "12x12"), ("bomb.png", "256")):
    with pytest.raises(UserError, match="decompression-bomb limit of 100 pixels") as err:
      sources._decode(str(tmp_path / name), 8)
    assert "\n" not in str(err.value) and name in str(err.value) and size in str(err.value)


def test_hidden_files_are_skipped_like_hidden_folders(tmp_path):
  write_folder_tree(tmp_path, {"train": {"a": 3, "b": 2}, "test": {"a": 2, "b": 2}})
  fork = tmp_path / "train" / "a" / "._0.png"  # a macOS resource fork: not an image
  fork.write_bytes(b"\x00\x05\x16\x07" + bytes(60))
  (tmp_path / "train" / "a" / ".thumb.png").write_bytes(b"junk")
  data = sources.load_folder(str(tmp_path), "train", image_size=16)
  assert len(data.images) == 5
  config = smoke_config(tmp_path)
  train, test = sources.split_counts(config.dataset, data.class_names)
  np.testing.assert_array_equal(train, [3, 2])
  np.testing.assert_array_equal(test, [2, 2])


def test_tensorflow_loads_without_its_start_up_notes_on_the_console():
  """TensorFlow writes its oneDNN and CPU-build notes to fd 2 while it loads; a run's console
  keeps to its own lines, and stderr still works afterwards."""
  code = ("import sys\nfrom mscm_jax.data import sources\ntf = sources._import_tensorflow()\n"
          "assert sources._import_tensorflow() is tf\nprint('after', file=sys.stderr)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stderr == "after\n", r.stderr
