"""The method's scores of any images from a finished stage 1 and stage 2.

One object, shared by the evaluation and the Python API, so that both compute `mscm`,
`deviation` and their parts by the same definition. Like big_vision's evaluators, the
evaluation is handed a `Scorer`; it never touches the trainers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from mscm_jax import frozen, stage1, stage2
from mscm_jax.runtime import sharding
from mscm_jax.models import AnoMem


@dataclasses.dataclass
class Scorer:
  """`scores(images)`: {'mscm', 'mscm_<detector>', 'deviation', 'deviation_<scale>': [N]}."""

  config: ml_collections.ConfigDict
  s1: stage1.Stage1Result
  s2: stage2.Stage2Result

  @property
  def model(self) -> AnoMem:
    return frozen.frozen_model(self.config)

  @property
  def batch_size(self) -> int:
    return self.config.evaluate.batch_size

  def read(self, images: np.ndarray) -> dict[str, Any]:
    """The frozen pass the scores come from: maps, detector inputs, embedding."""
    c = self.config
    return frozen.read(self.model, self.s1.state, images, tuple(c.memory.scales),
                       kind=c.stage2.inputs, inputs=stage2.detectors(c),
                       batch_size=self.batch_size)

  def scores_and_read(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    out = self.read(images)
    return self.combine(stage2.distances(self.s2.detector, self.s2.state, out["inputs"],
                                         self.batch_size), out), out

  def combine(self, per_detector: dict[str, np.ndarray], out: dict[str, Any]
              ) -> dict[str, np.ndarray]:
    """Every score from the detectors' distances and the frozen read's deviations."""
    c, s2 = self.config, self.s2
    scores = {
        "mscm": stage2.combine(per_detector, s2.norm["mscm"], stage2.detector_weights(c)),
        "deviation": stage2.combine(out["deviation"], s2.norm["deviation"],
                                    stage2.deviation_weights(c)),
    }
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
    # What the distances read (parameters, centres, input scales), not the optimiser.
    self._detectors = sharding.stack([s.s2.state.replace(opt_state=None) for s in scorers],
                                     mesh)

  def __len__(self) -> int:
    return len(self.scorers)

  def scores_and_read(self, images: np.ndarray | list[np.ndarray]
                      ) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Each member's `scores_and_read`, on its own images (a list) or all on the same."""
    first = self.scorers[0]
    c = first.config
    reads = frozen.read_members(first.model, self._variables, images, tuple(c.memory.scales),
                                self.mesh, len(self), kind=c.stage2.inputs,
                                inputs=stage2.detectors(c), batch_size=first.batch_size)
    per = stage2.distances_members(first.s2.detector, self._detectors,
                                   [r["inputs"] for r in reads], self.mesh, first.batch_size)
    return [(s.combine(p, r), r) for s, p, r in zip(self.scorers, per, reads, strict=True)]

  def embedding(self, images: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    first = self.scorers[0]
    return frozen.embed_members(first.model, self._variables, images, self.mesh, len(self),
                                first.batch_size)
