"""Stage 2 (in progress, issue 4): deviation maps from the frozen stage-1 model.

The stage-1 parameters are only read here. Per scale s, the detector input is the map
D_s(h, w) = 1 - cos(f_s(h, w), r_s(h, w)) between the feature and the prototype retrieved
for that location (or the difference f_s - r_s); its spatial mean is the training-free
`deviation` score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mscm_jax import stage1
from mscm_jax.models import AnoMem
from mscm_jax.models.detector import deviation_input


def deviation_maps(model: AnoMem, state, images: np.ndarray, scales: Sequence[str],
                   kind: str = "cosine", batch_size: int = 500) -> dict[str, np.ndarray]:
  """{scale: [N, h, w, 1 or C]} for every image (eval-mode model, padded batches)."""
  missing = [s for s in scales if s not in model.memory_scales]
  if missing:
    raise ValueError(f"scales {missing} have no memory (memory.scales="
                     f"{tuple(model.memory_scales)})")

  def select(out):
    return {s: deviation_input(out["features"][s], out["readout"][s], kind) for s in scales}

  return stage1.frozen_outputs(model, state, images, select, batch_size)


def mean_deviation(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The training-free score per scale: the mean of the map over positions (and channels)."""
  return {s: m.reshape(len(m), -1).mean(axis=1).astype(np.float64) for s, m in maps.items()}
