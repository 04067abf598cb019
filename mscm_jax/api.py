"""A PyOD-style Python API: fit on arrays (or load a finished workdir), then score images.

    det = AnoMemDetector.load("workdirs/cifar10_cat")          # after `python -m mscm_jax.main`
    det = AnoMemDetector(get_config("cpu")).fit(normal_images)  # or straight from arrays
    scores = det.score(images)            # [N], higher = more anomalous (the `mscm` score)
    maps = det.deviation_maps(images)     # {scale: [N, h, w]} 1 - cos(f, r)

Images are uint8 [N, H, W, 3] (or float in [0, 1], or grey); anything else is a
`InputError` that says what to change. Training runs the same code as the command line
(stage 1, stage 2) in a workdir, so it is resumable and the result loads back.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ml_collections
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import sharding, stage1, stage2
from mscm_jax.data import protocols, sources
from mscm_jax.errors import UserError


class InputError(UserError, ValueError):
  """Images the fitted model cannot score (shape, dtype, range, NaN)."""


class NotFittedError(UserError, RuntimeError):
  """score/deviation_maps called before fit() or load()."""


class AnoMemDetector:
  """The two-stage AnoMem detector behind `fit` / `score` / `deviation_maps`."""

  def __init__(self, config: ml_collections.ConfigDict | None = None,
               workdir: str | None = None):
    self.config = config_lib.validate(config if config is not None else
                                      config_lib.apply_preset(config_lib.base_config(), "cpu"))
    self.workdir = workdir
    self.image_shape: tuple[int, ...] | None = None
    self._s1: stage1.Stage1Result | None = None
    self._s2: stage2.Stage2Result | None = None
    self._mesh = sharding.make_mesh(self.config.train.num_devices)

  # --------------------------------------------------------------------- construction

  @classmethod
  def load(cls, workdir: str) -> AnoMemDetector:
    """The detector a finished run (`python -m mscm_jax.main`) left in `workdir`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
      raise UserError(f"{workdir} has no config.json: not a workdir of mscm_jax.main")
    det = cls(config_lib.load_json(path), workdir)
    det._s1, det.image_shape = stage1.load_finished(det.config, workdir, det._mesh)
    det._s2 = stage2.load_finished(det.config, workdir, det.image_shape, det._mesh)
    return det

  def fit(self, images: Any, is_anomaly: Any = None) -> AnoMemDetector:
    """Trains both stages on `images` (normal, plus labelled anomalies when unbalanced).

    Checkpoints go to `workdir` (a fresh temporary directory when none was given);
    fitting again with the same workdir resumes or reloads.
    """
    x = sources.as_uint8_images(images)
    if len(x) < 2:
      raise InputError(f"fit needs at least 2 images, got {len(x)}")
    flags = np.zeros(len(x), bool) if is_anomaly is None else np.asarray(is_anomaly, bool)
    if flags.shape != (len(x),):
      raise InputError(f"is_anomaly must have shape ({len(x)},), got {flags.shape}")
    if flags.any() and self.config.setting != "unbalanced":
      raise InputError("labelled anomalies need config.setting='unbalanced'")
    if flags.all():
      raise InputError("fit needs normal images (is_anomaly is all True)")
    empty = np.zeros((0,) + x.shape[1:], np.uint8)
    split = protocols.ADSplit(
        train_images=x, train_is_anomaly=flags, train_classes=flags.astype(np.int64),
        test_images=empty, test_is_anomaly=np.zeros(0, bool),
        test_classes=np.zeros(0, np.int64), class_names=("normal", "anomaly"),
        normal_classes=(0,))
    self.workdir = self.workdir or tempfile.mkdtemp(prefix="mscm_jax_")
    os.makedirs(self.workdir, exist_ok=True)
    with open(os.path.join(self.workdir, "config.json"), "w") as f:
      f.write(self.config.to_json_best_effort(indent=2))
    self._s1 = stage1.train(self.config, split, self.workdir, self._mesh, probe=False)
    self._s2 = stage2.train(self.config, split, self.workdir, self._mesh, self._s1)
    self.image_shape = tuple(x.shape[1:])
    return self

  # -------------------------------------------------------------------------- scoring

  def score(self, images: Any) -> np.ndarray:
    """The `mscm` anomaly score of every image, float64 [N]; higher = more anomalous."""
    return self.scores(images)["mscm"]

  def scores(self, images: Any) -> dict[str, np.ndarray]:
    """{'mscm', 'mscm_<detector>', 'deviation', 'deviation_<scale>': [N]} for every image
    (a detector is named by its scale, or scale_kind when stage2.deviation joins kinds)."""
    return stage2.method_scores(self.config, self._s1, self._s2, self._check(images))[0]

  def deviation_maps(self, images: Any) -> dict[str, np.ndarray]:
    """{scale: [N, h, w]} deviation maps (1 - cos(f, r) unless stage2.deviation is
    'euclidean') of every memory scale."""
    x = self._check(images)
    c = self.config
    return stage2.deviation_maps(stage2.frozen_model(c), self._s1.state, x,
                                 tuple(c.memory.scales), c.stage2.deviation,
                                 c.evaluate.batch_size)

  def _check(self, images: Any) -> np.ndarray:
    if self._s1 is None or self._s2 is None:
      raise NotFittedError("call fit(images) or AnoMemDetector.load(workdir) first")
    if np.ndim(images) == 3 and tuple(np.shape(images)) == tuple(self.image_shape):
      raise InputError(f"got one image of shape {np.shape(images)}: pass images[None]")
    try:
      x = sources.as_uint8_images(images)
    except UserError as e:
      raise InputError(str(e)) from None
    if len(x) == 0:
      raise InputError("no images to score (empty array)")
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise InputError(f"images are {tuple(x.shape[1:])} but the model was trained on "
                       f"{tuple(self.image_shape)} images: resize them first")
    return x

