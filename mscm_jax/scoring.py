"""The method's scores of any images from a finished stage 1 and stage 2.

One object, shared by the evaluation and the Python API, so that both compute `mscm`,
`detector`, `deviation`, the k-NN scores and their parts by the same definition. Like
big_vision's evaluators, the evaluation is handed a `Scorer`; it never touches the trainers.

  mscm          `detector` + evaluate.knn_weight x the k-NN score (`knn_rot` when
                shift.rotations > 1, else `knn`) + evaluate.rotation_weight x `rotation`,
                each in units of its spread on normal training images: `detector`'s on
                stage 2's holdout, the k-NN score's over the bank, each image against the
                others, `rotation`'s over the bank (method.md section 3)
  detector      the stage-2 detectors, sum_d w_d (dist_d - mean_d) / std_d: the paper's score
  mscm_<d>      one detector's distance ||phi - c||^2 (d: its scale, or scale_kind)
  deviation     training-free: the mean deviation maps of stage2.deviation_scales, combined
                the same way (each scale's spread on held-out normal data, equal weights)
  deviation_<s> one scale's mean deviation (1 - cos(f, r) averaged over positions)
  knn           k-NN cosine distance of the final embedding to the normal training set
  knn_rot       with shift.rotations = R > 1: `knn` of each rotation of the image against
                the same rotation of the training set, averaged over the R rotations (CSI)
  rotation      with the rotation head: its negative log-likelihood of each rotation's
                true index, averaged over the R rotations (GEOM / CSI's shift score)
  classifier    with stage2.classifier (unbalanced setting): the detectors' classifier heads'
                anomaly logit (trained with BCE on the labelled anomalies), averaged
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from mscm_jax import frozen, knn, stage1, stage2
from mscm_jax.runtime import distributed, sharding
from mscm_jax.models import AnoMem


@dataclasses.dataclass
class Scorer:
  """`scores(images)`: {name: [N]} of every score in the module docstring."""

  config: ml_collections.ConfigDict
  s1: stage1.Stage1Result
  s2: stage2.Stage2Result

  def __post_init__(self):
    if self.s2.bank is None or self.s2.detector_spread is None:
      raise ValueError("a Scorer needs stage 2's `scoring_extras` (Stage2Result.bank and "
                       ".detector_spread)")

  @property
  def model(self) -> AnoMem:
    return frozen.frozen_model(self.config)

  @property
  def batch_size(self) -> int:
    return self.config.frozen.batch_size

  @property
  def rotations(self) -> int:
    return self.config.shift.rotations

  @property
  def knn_k(self) -> int:
    return min(self.config.evaluate.knn_k, self.s2.bank.shape[1] - 1)

  @functools.cached_property
  def knn_spread(self) -> tuple[float, float]:
    """(mean, std) of the k-NN term of `mscm` on the normal training images, each scored
    against the others (`knn.leave_one_out_scores`): a held-out image's spread, without
    holding any out of the bank."""
    term = np.mean([knn.leave_one_out_scores(b, self.knn_k) for b in self.s2.bank], axis=0)
    return tuple(stage2.spread({"k": term})["k"])

  @functools.cached_property
  def rotation_spread(self) -> tuple[float, float] | None:
    """(mean, std) of `rotation` on the normal training images (the bank's turns); None
    without a rotation head."""
    if self.rotation_head is None:
      return None
    term = np.mean([_rotation_nll(b, self.rotation_head, r) for r, b in enumerate(self.s2.bank)],
                   axis=0)
    return tuple(stage2.spread({"r": term})["r"])

  @functools.cached_property
  def rotation_head(self) -> dict[str, np.ndarray] | None:
    """The rotation head's kernel and bias on the host, float64; None without one."""
    head = self.s1.state.params.get("rotation_head")
    if head is None:
      return None
    return {k: distributed.to_host(v).astype(np.float64) for k, v in head.items()}

  @functools.cached_property
  def as_members(self) -> MemberScorers:
    """This scorer as the stacked scorers' K = 1 case (one code path), for
    `evaluate.compute_scores`."""
    return MemberScorers([self], sharding.one_member_mesh(self.s1.state))

  def scores_and_read(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """(every score, the frozen read they came from: maps, detector inputs, embedding)."""
    return self.as_members.scores_and_read(images)[0]

  def combine(self, per_detector: dict[str, np.ndarray], out: dict[str, Any],
              turned: list[np.ndarray], logits: dict[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
    """Every score from the detectors' distances, the frozen read's deviations, the
    embeddings of the images turned by 0, ..., R - 1 quarter-turns (`turned`) and the
    classifier heads' logits (when stage 2 has them)."""
    c, s2 = self.config, self.s2
    scores = {
        "detector": stage2.combine(per_detector, s2.norm["mscm"], stage2.detector_weights(c)),
        "deviation": stage2.combine(out["deviation"], s2.norm["deviation"],
                                    stage2.deviation_weights(c)),
    }
    per_turn = knn.turned_scores(s2.bank, turned, k=self.knn_k)
    term = scores["knn"] = per_turn[0]
    if self.rotations > 1:
      term = scores["knn_rot"] = per_turn.mean(axis=0)
      if self.rotation_head is not None:
        scores["rotation"] = np.mean(
            [_rotation_nll(q, self.rotation_head, r) for r, q in enumerate(turned)], axis=0)
    if logits:
      scores["classifier"] = np.mean(list(logits.values()), axis=0)
    (d_mean, d_std), (k_mean, k_std) = s2.detector_spread, self.knn_spread
    weight = c.evaluate.knn_weight
    scores["mscm"] = ((scores["detector"] - d_mean) / d_std
                      + (weight * (term - k_mean) / k_std if weight else 0.0))
    if c.evaluate.rotation_weight:
      r_mean, r_std = self.rotation_spread
      scores["mscm"] = scores["mscm"] + (c.evaluate.rotation_weight
                                         * (scores["rotation"] - r_mean) / r_std)
    scores.update({f"mscm_{name}": v for name, v in per_detector.items()})
    scores.update({f"deviation_{s}": v for s, v in out["deviation"].items()})
    return scores

  def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
    return self.scores_and_read(images)[0]

  def embedding(self, images: np.ndarray) -> np.ndarray:
    return frozen.embed(self.model, self.s1.state, images, self.batch_size)

  def deviation_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """{scale: [N, h, w]} of every memory scale (`frozen.map_kind` of stage2.inputs)."""
    c = self.config
    return frozen.deviation_maps(self.model, self.s1.state, images, tuple(c.memory.scales),
                                 c.stage2.inputs, self.batch_size)


class MemberScorers:
  """K `Scorer`s (configs differing in seed and classes only) whose models run as one
  program on a (model, data) mesh: stage-1 variables and detector states stacked over
  `model`. Each member's scores are its `Scorer`'s, within float rounding."""

  def __init__(self, scorers: list[Scorer], mesh: Mesh):
    self.scorers, self.mesh = scorers, mesh
    self._variables = frozen.stack_variables([s.s1.state for s in scorers], mesh)
    self._detectors = stage2.detector_states([s.s2 for s in scorers], mesh)

  def __len__(self) -> int:
    return len(self.scorers)

  def scores_and_read(self, images: np.ndarray | list[np.ndarray]
                      ) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Each member's `scores_and_read`, on its own images (a list) or all on the same;
    with evaluate.flip_tta every score averaged with the mirror images' (the read is the
    images' own)."""
    out = self._scores_and_read(images)
    if not self.scorers[0].config.evaluate.flip_tta:
      return out
    mirror = [x[:, :, ::-1] for x in images] if isinstance(images, list) else images[:, :, ::-1]
    return [({k: (v + m[k]) / 2 for k, v in scores.items()}, read)
            for (scores, read), (m, _) in zip(out, self._scores_and_read(mirror), strict=True)]

  def _scores_and_read(self, images: np.ndarray | list[np.ndarray]
                       ) -> list[tuple[dict[str, np.ndarray], dict]]:
    first = self.scorers[0]
    c = first.config
    reads = frozen.read_members(first.model, self._variables, images, tuple(c.memory.scales),
                                self.mesh, len(self), kind=c.stage2.inputs,
                                inputs=stage2.detectors(c), batch_size=first.batch_size)
    per = stage2.distances_members(first.s2.detector, self._detectors,
                                   [r["inputs"] for r in reads], self.mesh, first.batch_size)
    logits = [None] * len(self)
    if first.s2.detector.classifier:
      logits = stage2.logits_members(first.s2.detector, self._detectors,
                                     [r["inputs"] for r in reads], self.mesh, first.batch_size)
    turned = [[r["embedding"]] for r in reads]
    if first.rotations > 1:
      more = frozen.embed_turned(first.model, self._variables, images,
                                 range(1, first.rotations), self.mesh, len(self),
                                 first.batch_size)
      turned = [[t[0], *m] for t, m in zip(turned, more, strict=True)]
    return [(s.combine(p, r, t, g), r)
            for s, p, r, t, g in zip(self.scorers, per, reads, turned, logits, strict=True)]

  def embedding(self, images: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    first = self.scorers[0]
    return frozen.embed_members(first.model, self._variables, images, self.mesh, len(self),
                                first.batch_size)


def _rotation_nll(embedding: np.ndarray, head: dict[str, np.ndarray], turns: int
                  ) -> np.ndarray:
  """[N] the rotation head's negative log-likelihood that `embedding` is turned `turns`."""
  logits = embedding.astype(np.float64) @ head["kernel"] + head["bias"]
  logits -= logits.max(axis=1, keepdims=True)
  return np.log(np.exp(logits).sum(axis=1)) - logits[:, turns]
