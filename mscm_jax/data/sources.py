"""Image sources: a tfds dataset by name, a class-folder tree, or in-memory arrays.

Every source decodes once to a uint8 array [N, H, W, 3] plus integer class labels and
the class names; everything downstream (protocols, device placement, augmentation)
works on that one form.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import importlib.util
import logging
import os
import sys
import warnings
from typing import Any
from collections.abc import Sequence

import numpy as np

from mscm_jax.errors import DatasetNotFoundError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TFDS_DEFAULT_DIR = os.path.join("~", "tensorflow_datasets")


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  """Decoded images with their class labels: the common currency of every source."""

  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int64 [N], indices into class_names
  class_names: tuple[str, ...]

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
      raise UserError(
          f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
    if self.labels.shape != (len(self.images),):
      raise UserError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
    if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
      raise UserError(f"labels must lie in [0, {len(self.class_names)}) (one per class name)")

  def __len__(self) -> int:
    return len(self.images)


def as_uint8_images(images: Any, name: str = "images") -> np.ndarray:
  """Checks and converts images to uint8 [N, H, W, 3]: the one input check of the project.

  Takes uint8, or float in [0, 1]; [N, H, W] and [N, H, W, 1] grey images are repeated to
  RGB. Anything else (other dtypes, NaN, values out of range, wrong rank) is a UserError
  that says what to change.
  """
  try:
    images = np.asarray(images)
  except ValueError:
    raise UserError(f"{name} must be one array [N, H, W, 3]: got a ragged sequence (images "
                    "of different shapes); resize them to one size first") from None
  if images.ndim == 3 and images.shape[-1] in (3, 4):
    # [N, H, W] grey images 3 or 4 pixels wide are far less likely than one image
    raise UserError(f"{name} of shape {images.shape} read as one RGB(A) image: pass "
                    "images[None] (grey images 3 pixels wide: shape [N, H, W, 1])")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"{name} must be [N, H, W] or [N, H, W, 1|3], got shape {images.shape}"
                    " (one image: add a leading axis, images[None])")
  if images.dtype == object:
    raise UserError(f"{name} must be one array [N, H, W, 3] of numbers, got objects")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise UserError(f"{name} must be uint8 or float in [0, 1], got {images.dtype}")
    if not np.isfinite(images).all():
      raise UserError(f"{name} contain NaN or Inf")
    if images.min() < 0 or images.max() > 1:
      raise UserError(f"float {name} must lie in [0, 1], got [{images.min():.3g}, "
                      f"{images.max():.3g}] (uint8 data: pass it as uint8 or divide by 255)")
    images = np.round(images * 255).astype(np.uint8)
  return images


def from_arrays(images: np.ndarray, labels: np.ndarray,
                class_names: Sequence[str] | None = None) -> LabelledImages:
  """Wraps in-memory images (uint8, or float in [0, 1]; gray or RGB) as a source."""
  images = as_uint8_images(images)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if class_names is None:
    class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
  return LabelledImages(images, labels, tuple(class_names))


# ----------------------------------------------------------------------------- tfds


def resolve_tfds_dir(data_dir: str) -> tuple[str, str]:
  """The directory tfds will read, and where that choice came from (for error messages)."""
  if data_dir:
    return os.path.expanduser(data_dir), "config dataset.data_dir"
  if os.environ.get("TFDS_DATA_DIR"):
    return os.path.expanduser(os.environ["TFDS_DATA_DIR"]), "environment TFDS_DATA_DIR"
  return os.path.expanduser(TFDS_DEFAULT_DIR), "tfds' default"


def find_prepared(name: str, data_dir: str) -> str | None:
  """Path of a prepared tfds copy of `name` ('cifar10', 'cifar10:3.0.2', 'ds/config') or None.

  Checked on the file system before tfds is touched: with no prepared copy, tfds
  would otherwise spend minutes retrying the network for metadata.
  """
  base, _, version = name.partition(":")
  pattern = os.path.join(data_dir, base, version or "*", "dataset_info.json")
  hits = sorted(glob.glob(pattern))
  return os.path.dirname(hits[-1]) if hits else None


def hide_accelerators(tf: Any) -> list[str]:
  """Hides every GPU and TPU from TensorFlow (`tf`: the module), which only decodes data
  here: a GPU build of TensorFlow would reserve accelerator memory that JAX then lacks
  (flax examples/imagenet does the same before reading data). Returns the hidden kinds."""
  hidden = []
  for kind in ("GPU", "TPU"):
    try:
      if tf.config.list_physical_devices(kind):
        tf.config.set_visible_devices([], kind)
        hidden.append(kind)
    except RuntimeError as e:  # TensorFlow already initialised its devices
      logging.warning("could not hide %s devices from TensorFlow (%s): it may hold "
                      "accelerator memory that JAX needs", kind, e)
  return hidden


def _import_tensorflow() -> Any:
  """TensorFlow, imported with its C++ start-up notes (oneDNN, CPU build options) kept off
  the console: they are written to fd 2 while the library loads, before any logging
  setting applies. A failed import still raises."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    os.dup2(saved, 2)
    os.close(saved)
  return tf


def _tfds_builder(name: str, splits: Sequence[str], *, data_dir: str = "",
                  label_key: str = "label", download: bool = False):
  """A tfds builder whose data, label feature and splits are checked: no decoding yet."""
  resolved, origin = resolve_tfds_dir(data_dir)
  if not download and find_prepared(name, resolved) is None:
    raise DatasetNotFoundError(
        f"no prepared tfds dataset '{name}' in {resolved} (from {origin}); point "
        f"--config.dataset.data_dir or TFDS_DATA_DIR at a dir that holds one (made by "
        f"`tfds build {name.partition(':')[0]} --data_dir=DIR`), or set "
        f"--config.dataset.download=True on a machine with network")
  if importlib.util.find_spec("tensorflow") is None:
    raise UserError(
        f"reading the tfds dataset '{name}' needs TensorFlow: pip install -e '.[tf]' "
        f"(or use dataset.name='folder' for a class-folder tree, which does not)")
  tf = _import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  hide_accelerators(tf)
  builder = tfds.builder(name, data_dir=resolved)
  if download:
    builder.download_and_prepare()
  features = builder.info.features
  if label_key not in features:
    raise UserError(f"tfds dataset '{name}' has no feature '{label_key}' "
                    f"(features: {', '.join(features.keys())}); set dataset.label_key")
  known = builder.info.splits
  for split in splits:
    if known and split.split("[")[0] not in known and "+" not in split:
      raise UserError(f"tfds dataset '{name}' has no split '{split}' "
                      f"(splits: {', '.join(known.keys())}); set dataset.train_split / "
                      "dataset.test_split")
  return builder


def load_tfds(name: str, split: str, *, data_dir: str = "", label_key: str = "label",
              download: bool = False) -> LabelledImages:
  """Reads a whole tfds split into memory; fails fast when the data is not prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _tfds_builder(name, (split,), data_dir=data_dir, label_key=label_key,
                          download=download)
  logging.info("Reading tfds %s[%s] from %s", name, split, builder.data_dir)
  ds = builder.as_dataset(split=split, batch_size=4096, shuffle_files=False)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch[label_key])
  if not images:
    raise UserError(f"tfds split {name}[{split}] is empty")
  images = np.concatenate(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return LabelledImages(images.astype(np.uint8), np.concatenate(labels).astype(np.int64),
                        tuple(builder.info.features[label_key].names))


# --------------------------------------------------------------------------- folders


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def folder_class_names(root: str, splits: Sequence[str] = ("train", "test")) -> tuple[str, ...]:
  """Class names shared by every split: the first split's folders, then unseen test-only ones."""
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f"no image folder tree at {root!r}; expected {root}/{{train,test}}/<class>/<image>; "
        f"set --config.dataset.data_dir")
  names: list[str] = []
  for split in splits:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DatasetNotFoundError(f"missing split folder {split_dir}; expected "
                                 f"{root}/{split}/<class>/<image>")
    names += [n for n in _subdirs(split_dir) if n not in names]
  if not names:
    raise DatasetNotFoundError(f"no class folders under {root}/{splits[0]}")
  return tuple(names)


def _eight_bit(im: Any, path: str) -> Any:
  """`im` as an 8-bit-per-channel PIL image, scaled faithfully from high bit depths
  (Pillow's own conversion clips 16-bit values, turning most of an image white)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if im.mode.startswith("I;16") or im.mode == "I":
    a = np.asarray(im)
    if a.size and (a.min() < 0 or a.max() > 65535):
      raise UserError(f"cannot decode image {path}: 32-bit integer values outside 16 bits "
                      f"({a.min()}..{a.max()}); save it with 8 or 16 bits per channel")
    # 0..65535 onto 0..255 (x / 257, rounded): a 16-bit image keeps its brightness
    return Image.fromarray(((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
  if im.mode == "F":
    raise UserError(f"cannot decode image {path}: 32-bit float pixels have no fixed range; "
                    "save it with 8 or 16 bits per channel")
  return im


def _too_large(path: str, size: str) -> UserError:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  return UserError(f"image {path} is {size}, over Pillow's decompression-bomb limit of "
                   f"{Image.MAX_IMAGE_PIXELS} pixels: downscale it first (or raise "
                   "PIL.Image.MAX_IMAGE_PIXELS for files you trust)")


def _decode(path: str, size: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as im:
      if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # Pillow only warns up to twice it
        raise _too_large(path, f"{im.width}x{im.height} pixels")
      im = _eight_bit(im, path).convert("RGB")
      if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
      return np.asarray(im, np.uint8)
  except Image.DecompressionBombError as e:  # raised by Image.open itself
    raise _too_large(path, str(e).partition(" exceeds")[0].lower()) from None
  except (OSError, ValueError) as e:
    raise UserError(f"cannot decode image {path}: {e}") from None


def _image_files(directory: str) -> list[str]:
  """The image files of a class folder, sorted; hidden files (macOS `._*` resource forks
  among them) are skipped like hidden folders."""
  return sorted(f for f in os.listdir(directory)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))


def load_folder(root: str, split: str, *, image_size: int = 32,
                class_names: Sequence[str] | None = None, workers: int = 8) -> LabelledImages:
  """Decodes `root/split/<class>/<image>` with Pillow (no TensorFlow), resized to a square."""
  root = os.path.expanduser(root)
  class_names = tuple(class_names or folder_class_names(root, (split,)))
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DatasetNotFoundError(f"missing split folder {split_dir}")
  paths, labels = [], []
  for name in _subdirs(split_dir):
    if name not in class_names:
      raise UserError(f"class folder {split_dir}/{name} is not among {class_names}")
    files = _image_files(os.path.join(split_dir, name))
    paths += [os.path.join(split_dir, name, f) for f in files]
    labels += [class_names.index(name)] * len(files)
  if not paths:
    raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
  logging.info("Decoding %d images from %s", len(paths), split_dir)
  from PIL import Image  # pylint: disable=g-import-not-at-top

  # `_decode` refuses such images in one line; Pillow's warning would only come first
  warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
  # Pillow releases the GIL while decoding, so threads give a real speed-up.
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    images = np.stack(list(pool.map(lambda p: _decode(p, image_size), paths, chunksize=256)))
  return LabelledImages(images, np.asarray(labels, np.int64), class_names)


# --------------------------------------------------------------------------- dispatch


def split_counts(dataset, names: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
  """(train, test) images per class from a folder tree's file listing, no decoding, so
  that a protocol that cannot work is refused before anything trains; (None, None) for
  tfds, whose metadata has no per-class counts (checked once decoded instead)."""
  if dataset.name != "folder":
    return None, None
  out = []
  for split in (dataset.train_split, dataset.test_split):
    split_dir = os.path.join(os.path.expanduser(dataset.data_dir), split)
    counts = np.zeros(len(names), np.int64)
    for i, name in enumerate(names):
      d = os.path.join(split_dir, name)
      if os.path.isdir(d):
        counts[i] = len(_image_files(d))
    out.append(counts)
  return out[0], out[1]


def _check_folder_root(dataset) -> None:
  if not dataset.data_dir:
    raise UserError("dataset.name='folder' needs --config.dataset.data_dir=ROOT "
                    "(a tree ROOT/{train,test}/<class>/<image>)")


def class_names(dataset) -> tuple[str, ...]:
  """The class names of a `config.dataset` section without decoding any image, so that
  the classes a config names are checked in seconds, not after the whole decode."""
  if dataset.name == "folder":
    _check_folder_root(dataset)
    return folder_class_names(dataset.data_dir, (dataset.train_split, dataset.test_split))
  builder = _tfds_builder(dataset.name, (dataset.train_split, dataset.test_split),
                          data_dir=dataset.data_dir, label_key=dataset.label_key,
                          download=dataset.download)
  return tuple(builder.info.features[dataset.label_key].names)


def load_splits(dataset, splits: Sequence[str] | None = None) -> tuple[LabelledImages, ...]:
  """(train, test) for a `config.dataset` section, from tfds or a folder tree; or the
  `splits` named (a finished run's scores need its test split only, not a train decode).
  A folder tree's class indices come from both splits' listings either way."""
  if splits is None:
    splits = (dataset.train_split, dataset.test_split)
  if dataset.name == "folder":
    _check_folder_root(dataset)
    names = folder_class_names(dataset.data_dir, (dataset.train_split, dataset.test_split))
    return tuple(load_folder(dataset.data_dir, s, image_size=dataset.image_size,
                             class_names=names)
                 for s in splits)
  return tuple(load_tfds(dataset.name, s, data_dir=dataset.data_dir,
                         label_key=dataset.label_key, download=dataset.download)
               for s in splits)
