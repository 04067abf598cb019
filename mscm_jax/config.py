"""The one config schema every experiment family shares, its presets and its checks.

Config files in `configs/` call `base_config()`, set the few fields that define their
experiment family, and apply a preset chosen by the config-string argument
(`--config=configs/cifar10_oneclass.py:cpu`). Fields the paper leaves open are here
with the default our ablations chose (see SPEC.md and `experiments/results/`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mscm_jax.errors import ConfigError
from mscm_jax.models.anomem import MEMORY_MODES, MEMORY_TRAIN, SCALES

SETTINGS = ("oneclass", "unbalanced")
OPTIMIZERS = ("lars", "sgd", "adam")
DTYPES = ("float32", "bfloat16")
PRESETS = ("", "full", "cpu", "smoke")
STOP_AFTER = ("", "data", "stage1", "stage2")
DEVIATIONS = ("cosine", "similarity", "euclidean", "difference")


def _any(value: Any) -> ml_collections.FieldReference:
  # `object` fields take an index, a name or a tuple of either from the command line.
  return ml_collections.FieldReference(value, field_type=object)


def base_config() -> ml_collections.ConfigDict:
  """Paper-scale defaults (SPEC sections 2-4); presets shrink them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.setting = "oneclass"
  # Unbalanced setting: labelled anomalies = anomaly_ratio x the normal training count,
  # drawn from the training split of `anomaly_classes` (empty: every non-normal class).
  c.anomaly_ratio = 0.05
  c.anomaly_classes = _any(())

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "cifar10"  # a tfds name, or "folder" for a {train,test}/<class>/ tree
  c.dataset.data_dir = ""  # tfds data dir or folder root; "" = $TFDS_DATA_DIR, else tfds' default
  c.dataset.download = False  # let tfds download and prepare (needs network)
  c.dataset.normal_class = _any(0)  # index or name, or a tuple of them
  c.dataset.label_key = "label"  # "coarse_label" for the CIFAR-100 super-classes
  c.dataset.train_split = "train"
  c.dataset.test_split = "test"
  c.dataset.image_size = 32  # folder images are resized to this square size

  # SimCLR CIFAR augmentation set (SPEC section 2).
  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.augment.flip_prob = 0.5
  c.augment.brightness = 0.4
  c.augment.contrast = 0.4
  c.augment.saturation = 0.4
  c.augment.hue = 0.1
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2

  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (2, 2, 2, 2)  # ResNet-18
  c.model.widths = (64, 128, 256, 512)
  c.model.head_dims = (512, 128)
  c.model.dtype = "float32"  # compute dtype; parameters stay float32

  c.memory = ml_collections.ConfigDict()
  c.memory.scales = ("res2", "res3", "res4")
  c.memory.mode = "branch"  # full schedule: unmeasured; see the `cpu` preset for its ablation
  c.memory.train = "contrastive"
  c.memory.num_prototypes = 256
  c.memory.proto_dim = 128
  c.memory.beta = 0.0  # 0 = 1/sqrt(proto_dim)
  c.memory.learnable_beta = False
  c.memory.shrink_threshold = 0.0  # MemAE hard shrinkage; 0 disables
  c.memory.retrieval_steps = 1
  c.memory.top_k = 0  # > 0: each read attends to its k best prototypes only; 0 = all

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.5
  c.loss.scale_weight = 1.0  # lambda_s for per-scale NT-Xent (branch mode)
  c.loss.variance_weight = 1.0  # lambda_var for the prototype variance hinge
  c.loss.alignment_weight = 0.0  # ||stopgrad(f) - r||^2 in replace/residual/branch modes
  c.loss.codebook_weight = 1.0  # the only loss of a memory with memory.train='codebook'

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"
  c.optim.learning_rate = 0.3  # per 256 images; scaled linearly with the batch size
  c.optim.warmup_epochs = 10
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 512  # global batch, in images (two views each)
  c.train.epochs = 500  # epochs of the normal training set
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1000
  c.train.num_devices = 0  # 0 = every local device

  # Stage 2 (SPEC section 3): one bias-free distance detector per scale on deviation maps.
  c.stage2 = ml_collections.ConfigDict()
  c.stage2.scales = ()  # scales that feed the detector; () = every memory scale
  c.stage2.weights = ()  # w_s of the combined score, one per stage2 scale; () = all 1
  c.stage2.deviation_scales = ()  # scales summed in the training-free `deviation`; () = scales
  # Detector input: "cosine" 1 - cos(f, r) map | "similarity" cos(f, r) map | "euclidean"
  # ||f - r||^2 / C map | "difference" the tensor f - r; "+"-joined kinds (e.g.
  # "similarity+difference") give every scale one detector per kind, summed into `mscm`.
  c.stage2.deviation = "cosine"
  c.stage2.top_k = -1  # retrieval when reading the maps: -1 = as trained, 0 = soft over all
  c.stage2.widths = (16, 32)
  c.stage2.out_dim = 32
  c.stage2.classifier = False  # unbalanced: an extra BCE head on the detector features
  c.stage2.bce_weight = 1.0
  c.stage2.eta = 1.0  # Deep SAD weight of the labelled anomalies
  c.stage2.learning_rate = 1e-3  # AdamW, cosine decay
  c.stage2.weight_decay = 1e-5
  c.stage2.batch_size = 256
  c.stage2.epochs = 30
  c.stage2.holdout_fraction = 0.1  # normal training images kept out to set score spreads
  c.stage2.log_every_steps = 50
  c.stage2.checkpoint_every_steps = 500

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.knn_k = 5  # neighbours of the `knn` and `pixel_knn` scores
  c.evaluate.batch_size = 500  # images per forward pass of the frozen model
  c.evaluate.report = True  # PNGs in workdir/report/

  # "data": load, split and preview only; "stage1"/"stage2": stop after it; "": everything.
  c.stop_after = ""

  c.preview = ml_collections.ConfigDict()
  c.preview.num_images = 16  # augmented views written to workdir/preview/ by `main`
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """Shrinks the paper-scale schedule for a CPU (`cpu`) or for tests (`smoke`)."""
  preset = (preset or "").strip()
  if preset not in PRESETS:
    raise ConfigError(f"unknown preset {preset!r}; choose one of {PRESETS[1:]}")
  if preset == "cpu":
    # About 10 minutes for one CIFAR class on 2 CPU cores (SPEC section 7).
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.widths = (16, 32, 64, 128)
    c.model.head_dims = (128, 64)
    # res2 (16x16) is left out to fit 10 epochs in ~10 minutes: see
    # experiments/results/bench_stage1.jsonl (scales res2-4 vs res3, res4, pooled).
    c.memory.scales = ("res3", "res4", "pooled")
    # The issue-4 ablation (experiments/results/ablation.md): branch memories trained as a
    # codebook -- the only setting whose deviation score was above 0.5 in every run.
    # Replace mode scored a higher mscm (0.64 vs 0.58) but its deviation flipped sign.
    c.memory.mode = "branch"
    c.memory.train = "codebook"
    # The training-free score: pooled alone fell to 0.479 on ship; res3 + pooled is the
    # one scale set above 0.5 in all 11 runs (0.507-0.713; detector_sweep.md).
    c.stage2.deviation_scales = ("res3", "pooled")
    # The detector sweep (experiments/results/detector_sweep.md): a detector on the 1 - cos
    # maps alone ranked airplane backwards (0.48), one on f - r alone failed cat (0.52);
    # a cos-map detector plus an f - r detector per scale was above pixel_knn in all 8
    # runs (mean 0.62; 1 - cos + f - r: 0.61, with 0.004 to spare on bird).
    c.stage2.deviation = "similarity+difference"
    c.memory.num_prototypes = 64
    c.memory.proto_dim = 64
    c.loss.temperature = 0.2
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.warmup_epochs = 1
    c.optim.weight_decay = 5e-4
    c.train.batch_size = 256
    c.train.epochs = 10
    c.train.log_every_steps = 10
    c.train.checkpoint_every_steps = 50
  elif preset == "smoke":
    # Seconds, for tests and a first look at a new dataset.
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.widths = (8, 8, 16, 16)
    c.model.head_dims = (32, 16)
    c.memory.num_prototypes = 8
    c.memory.proto_dim = 16
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.05
    c.optim.warmup_epochs = 0
    c.train.batch_size = 16
    c.train.epochs = 1
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 2
    c.preview.num_images = 4
    c.stage2.widths = (8,)
    c.stage2.out_dim = 8
    c.stage2.batch_size = 16
    c.stage2.epochs = 2
    c.stage2.log_every_steps = 1
    c.evaluate.batch_size = 64
  return c


def load_json(path: str) -> ml_collections.ConfigDict:
  """The config a run saved as `workdir/config.json`, over today's defaults.

  Fields added since the run keep their defaults; a field the schema no longer has is
  an error, since the saved run cannot be reproduced faithfully.
  """
  import json  # pylint: disable=g-import-not-at-top

  with open(path) as f:
    raw = json.load(f)
  flat: dict[str, Any] = {}

  def walk(tree: dict[str, Any], prefix: str) -> None:
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        flat[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v

  walk(raw, "")
  c = base_config()
  try:
    c.update_from_flattened_dict(flat)
  except (KeyError, TypeError) as e:
    raise ConfigError(f"{path} does not fit today's config schema: {e}") from None
  return c


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
  if not lo <= value <= hi:
    raise ConfigError(f"{name}={value!r} must lie in [{lo}, {hi}]")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Rejects values that would fail later, deep inside a jitted step, with a one-line error."""
  _check_choice("setting", c.setting, SETTINGS)
  _check_choice("stop_after", c.stop_after, STOP_AFTER)
  if c.setting == "unbalanced":
    _check_range("anomaly_ratio", c.anomaly_ratio, 0.0, 10.0)
    if c.anomaly_ratio <= 0:
      raise ConfigError("anomaly_ratio must be > 0 in the unbalanced setting")
  _check_choice("memory.mode", c.memory.mode, MEMORY_MODES)
  _check_choice("memory.train", c.memory.train, MEMORY_TRAIN)
  if c.memory.train == "codebook" and c.memory.mode != "branch":
    raise ConfigError("memory.train='codebook' needs memory.mode='branch'")
  for s in c.memory.scales:
    _check_choice("memory.scales entry", s, SCALES)
  _check_choice("optim.name", c.optim.name, OPTIMIZERS)
  s2 = c.stage2
  for field in ("scales", "deviation_scales"):
    for s in s2[field]:
      if s not in c.memory.scales:
        raise ConfigError(f"stage2.{field} entry {s!r} has no memory (memory.scales="
                          f"{tuple(c.memory.scales)})")
  n_scales = len(s2.scales or c.memory.scales)
  if n_scales == 0:
    raise ConfigError("stage 2 needs at least one memory scale (memory.scales is empty)")
  if s2.weights and (len(s2.weights) != n_scales or min(s2.weights) < 0):
    raise ConfigError(f"stage2.weights={tuple(s2.weights)} needs {n_scales} non-negative "
                      "numbers, one per stage-2 scale")
  kinds = s2.deviation.split("+")
  for kind in kinds:
    _check_choice("stage2.deviation entry", kind, DEVIATIONS)
  if len(set(kinds)) != len(kinds):
    raise ConfigError(f"stage2.deviation={s2.deviation!r} names a kind twice")
  if s2.top_k < -1 or c.memory.top_k < 0:
    raise ConfigError("memory.top_k must be >= 0 and stage2.top_k >= -1")
  _check_range("stage2.holdout_fraction", s2.holdout_fraction, 0.0, 0.5)
  if s2.batch_size < 1 or s2.epochs <= 0:
    raise ConfigError("stage2.batch_size and stage2.epochs must be positive")
  _check_choice("model.dtype", c.model.dtype, DTYPES)
  if len(c.model.stage_sizes) != 4 or len(c.model.widths) != 4:
    raise ConfigError("model.stage_sizes and model.widths need 4 entries (res1..res4)")
  a = c.augment
  for name in ("crop_scale", "crop_ratio"):
    lo, hi = getattr(a, name)
    if not 0 < lo <= hi:
      raise ConfigError(f"augment.{name}={getattr(a, name)} needs 0 < low <= high")
  if a.crop_scale[1] > 1:
    raise ConfigError("augment.crop_scale cannot exceed 1 (the whole image)")
  for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
    _check_range(f"augment.{name}", getattr(a, name), 0.0, 1.0)
  for name in ("brightness", "contrast", "saturation"):
    _check_range(f"augment.{name}", getattr(a, name), 0.0, 1.0)
  _check_range("augment.hue", a.hue, 0.0, 0.5)
  if c.train.batch_size < 2:
    raise ConfigError("train.batch_size must be >= 2 (contrastive negatives)")
  if c.dataset.image_size < 8:
    raise ConfigError("dataset.image_size must be >= 8")
  return c
