"""Stage identity: the fingerprint of everything that decides what a stage computes.

A workdir's stage is reused (loaded when finished, resumed when partial) only when the
identity recorded beside its checkpoints equals the one this run's config and data give;
`workdir.check` enforces it. An identity has three parts:
  config  the config fields the stage reads (flat dotted names), minus operational ones;
  data    what it was trained on: resolved class names, counts, a hash of the images;
  reads   the fingerprint of the stage it reads from (stage 2 reads stage 1, the
          evaluation reads stage 2), so a retrained stage 1 makes its stage 2 stale too.

Operational fields change how a run is carried out, not what it computes, and are left
out, so that a pre-empted job may resume on another machine or with another logging
cadence: logging and checkpoint intervals, the device count, the frozen model's batch size,
the data directory and download switch, previews, report pictures and `stop_after`. The
device count and the frozen model's batch size can change float rounding (the order of
reductions), not the method: runs with the same identity agree bitwise on the same
device count, and within float tolerance across device counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import ml_collections
import numpy as np

TRAINED = ("stage1", "stage2")  # the stages with checkpoints, in the order they run

# Config sections (or single fields) that each stage reads.
_READS = {
    "stage1": ("seed", "setting", "anomaly_ratio", "dataset", "validation", "augment",
               "shift", "model", "memory", "loss", "optim", "train"),
    "stage2": ("stage2",),
    "evaluation": ("evaluate",),
}
OPERATIONAL = frozenset({
    "dataset.data_dir", "dataset.download", "dataset.test_split",
    "dataset.normal_class",  # recorded resolved, as class names, in the data part
    "train.log_every_steps", "train.checkpoint_every_steps", "train.num_devices",
    "train.probe_every_steps",
    "stage2.log_every_steps", "stage2.checkpoint_every_steps",
    "frozen.batch_size", "evaluate.report",
})
# Fields added after workdirs existed, at the value that leaves the computation as it was:
# left out of the identity there, so that those workdirs stay valid.
NEUTRAL = {"memory.path_warmup_epochs": 0.0, "optim.clip_norm": 0.0,
           "evaluate.flip_tta": False}


@dataclasses.dataclass(frozen=True)
class Identity:
  """What one stage is made of; `fingerprint` hashes all of it."""

  stage: str
  config: dict[str, Any]
  data: dict[str, Any]
  reads: str | None  # the fingerprint of the stage read from

  @property
  def fingerprint(self) -> str:
    blob = json.dumps({"stage": self.stage, "config": self.config, "data": self.data,
                       "reads": self.reads}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  def to_json(self) -> dict[str, Any]:
    return {"stage": self.stage, "fingerprint": self.fingerprint, "config": self.config,
            "data": self.data, "reads": self.reads}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> Identity:
    return cls(record["stage"], dict(record["config"]), dict(record["data"]),
               record.get("reads"))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  value = list(tree) if isinstance(tree, tuple) else tree
  return {prefix[:-1]: value}


def config_fields(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """{dotted field: value} of the config fields `stage` reads, operational ones left out."""
  flat = _flat(json.loads(config.to_json_best_effort()))
  fields = {k: v for k, v in flat.items()
            if k.split(".")[0] in _READS[stage] and k not in OPERATIONAL
            and not (k in NEUTRAL and v == NEUTRAL[k])}
  if stage == "stage1" and config.setting != "unbalanced":
    fields.pop("anomaly_ratio", None)  # read only by the unbalanced protocol
  return dict(sorted(fields.items()))


def array_digest(*arrays: np.ndarray) -> str:
  """A hash of arrays' bytes, shapes and dtypes: a fraction of a second for CIFAR-10."""
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
  return h.hexdigest()


def train_data(split) -> dict[str, Any]:
  """The data part of stage 1: what the split trains on (classes resolved to names)."""
  anomaly_classes = sorted({split.class_names[int(c)] for c, a
                            in zip(split.train_classes, split.train_is_anomaly) if a})
  return {"normal_classes": [split.class_names[i] for i in split.normal_classes],
          "labelled_anomaly_classes": anomaly_classes,
          "n_train": split.n_train, "n_train_anomalies": split.n_train_anomalies,
          "image_shape": list(split.train_images.shape[1:]),
          "train_digest": array_digest(split.train_images, split.train_is_anomaly)}


def test_data(split) -> dict[str, Any]:
  """The data part of the evaluation: the test split and the validation split."""
  out = {"n_test": split.n_test, "n_test_anomalous": split.n_test_anomalous,
         "test_digest": array_digest(split.test_images, split.test_is_anomaly)}
  if split.val_images is not None:
    out.update({"n_val": len(split.val_images), "n_val_anomalous":
                int(split.val_is_anomaly.sum()),
                "val_digest": array_digest(split.val_images, split.val_is_anomaly)})
  return out


def plan(config: ml_collections.ConfigDict, split=None) -> dict[str, Identity]:
  """The identity of every stage for `config` on `split`; data parts empty without one
  (the cheap check before the data is decoded compares the config parts only)."""
  s1 = Identity("stage1", config_fields(config, "stage1"),
                train_data(split) if split is not None else {}, None)
  s2 = Identity("stage2", config_fields(config, "stage2"), {},
                s1.fingerprint if split is not None else None)
  ev = Identity("evaluation", config_fields(config, "evaluation"),
                test_data(split) if split is not None else {},
                s2.fingerprint if split is not None else None)
  return {"stage1": s1, "stage2": s2, "evaluation": ev}


def differences(recorded: Identity, expected: Identity,
                config_only: bool = False) -> list[str]:
  """'field: recorded -> expected' for every difference (config first, then data)."""
  out = []
  parts = (("config", ""),) if config_only else (("config", ""), ("data", "data."))
  for part, prefix in parts:
    old, new = getattr(recorded, part), getattr(expected, part)
    keys = [k for k in sorted(set(old) | set(new))
            if old.get(k, "<unset>") != new.get(k, "<unset>")]
    if len(keys) > 1:  # a digest says nothing more once a readable field differs
      keys = [k for k in keys if not k.endswith("_digest")]
    for k in keys:
      out.append(f"{prefix}{k}: {_short(old.get(k, '<unset>'))} -> "
                 f"{_short(new.get(k, '<unset>'))}")
  if not config_only and not out and recorded.reads != expected.reads:
    out.append("the stage it reads from was retrained")
  return out


def describe(diffs: list[str], most: int = 4) -> str:
  """The first `most` differences on one line, for an error message."""
  more = f" and {len(diffs) - most} more" if len(diffs) > most else ""
  return "; ".join(diffs[:most]) + more


def _short(value: Any) -> str:
  text = json.dumps(value) if not isinstance(value, str) else value
  return text if len(text) <= 40 else text[:37] + "..."
