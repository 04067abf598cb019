"""A PyOD-style Python API: fit on arrays (or load a finished workdir), then score images.

    det = AnoMemDetector.load("workdirs/cifar10_cat")          # after `python -m mscm_jax.main`
    det = AnoMemDetector(get_config("cpu")).fit(normal_images)  # or straight from arrays
    scores = det.score(images)            # [N], higher = more anomalous (the `mscm` score)
    maps = det.deviation_maps(images)     # {scale: [N, h, w]} 1 - cos(f, r)

Images are uint8 [N, H, W, 3] (or float in [0, 1], or grey); anything else is a
`InputError` that says what to change. `fit` runs `pipeline.run`, the command line's
own path, in a workdir: it is resumable, the result loads back, and a workdir whose
stages another config or other images made is refused (StaleStageError) unless
`discard_stale=True`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ml_collections
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import pipeline, stage1, stage2
from mscm_jax.runtime import identity, sharding
from mscm_jax.runtime import workdir as workdir_lib
from mscm_jax.data import protocols, sources
from mscm_jax.errors import UserError
from mscm_jax.scoring import Scorer


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
    self._scorer: Scorer | None = None

  # --------------------------------------------------------------------- construction

  @classmethod
  def load(cls, workdir: str) -> AnoMemDetector:
    """The detector a finished run (`python -m mscm_jax.main`) left in `workdir`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
      raise UserError(f"{workdir} has no config.json: not a workdir of mscm_jax.main")
    det = cls(config_lib.load_json(path), workdir)
    det._load()
    return det

  def _load(self) -> None:
    workdir_lib.check_loadable(self.workdir, identity.plan(self.config))
    mesh = sharding.make_mesh(self.config.train.num_devices)
    # read-only: damage is reported, and repaired only by the training command
    s1, self.image_shape = stage1.load_finished(self.config, self.workdir, mesh, repair=False)
    s2 = stage2.load_finished(self.config, self.workdir, self.image_shape, mesh,
                              repair=False)
    if s2.bank is None:
      raise UserError(f"{self.workdir}/{stage2.STAGE} has no k-NN bank (its stage 2 finished "
                      "before mscm_jax kept one): run the training on this workdir once more "
                      "(python -m mscm_jax.main, or fit) to add it")
    self._scorer = Scorer(self.config, s1, s2)

  def fit(self, images: Any, is_anomaly: Any = None, *,
          discard_stale: bool = False) -> AnoMemDetector:
    """Trains both stages on `images` (normal, plus labelled anomalies when unbalanced).

    Checkpoints go to `workdir` (a fresh temporary directory when none was given);
    fitting again with the same workdir and images resumes or reloads. A workdir
    trained with another config or other images raises StaleStageError, unless
    `discard_stale`, which retrains the stale stages.
    """
    x = _uint8_images(images)
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
    config = self.config.copy_and_resolve_references()
    config.stop_after = ""
    pipeline.run(config, self.workdir, split=split, discard_stale=discard_stale)
    self._load()
    return self

  # -------------------------------------------------------------------------- scoring

  def score(self, images: Any) -> np.ndarray:
    """The `mscm` anomaly score of every image, float64 [N]; higher = more anomalous."""
    return self.scores(images)["mscm"]

  def scores(self, images: Any) -> dict[str, np.ndarray]:
    """{'mscm', 'detector', 'mscm_<detector>', 'deviation', 'deviation_<scale>', 'knn',
    and with shift.rotations > 1 'knn_rot' (and 'rotation' with the rotation head): [N]}
    for every image (`scoring`'s docstring defines each; a detector is named by its scale,
    or scale_kind when stage2.inputs joins kinds)."""
    x = self._check(images)
    return self._scorer.scores(x)

  def deviation_maps(self, images: Any) -> dict[str, np.ndarray]:
    """{scale: [N, h, w]} deviation maps (1 - cos(f, r) unless stage2.inputs is
    'squared_distance') of every memory scale."""
    x = self._check(images)
    return self._scorer.deviation_maps(x)

  def _check(self, images: Any) -> np.ndarray:
    if self._scorer is None:
      raise NotFittedError("call fit(images) or AnoMemDetector.load(workdir) first")
    x = _uint8_images(images)
    if len(x) == 0:
      raise InputError("no images to score (empty array)")
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise InputError(f"images are {tuple(x.shape[1:])} but the model was trained on "
                       f"{tuple(self.image_shape)} images: resize them first")
    return x


def _uint8_images(images: Any) -> np.ndarray:
  """`sources.as_uint8_images`, its errors raised as the API's InputError."""
  try:
    return sources.as_uint8_images(images)
  except UserError as e:
    raise InputError(str(e)) from None
