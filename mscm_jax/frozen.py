"""The stage-1 model and its frozen read-out: features f, memory read-outs r, embedding.

Stage 2, the evaluation, the Python API and the experiments all read a trained stage 1
the same way: the eval-mode model over padded batches (every image once, nothing
updated). `build_model` is the one place a config becomes an `AnoMem`; `read` gives
the deviation maps, the training-free scores, the detector inputs and the embedding in
one pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mscm_jax.runtime import sharding
from mscm_jax.data import augment, device
from mscm_jax.models import AnoMem
from mscm_jax.models.detector import deviation_input


def build_model(config: ml_collections.ConfigDict, top_k: int | None = None) -> AnoMem:
  """The stage-1 model; `top_k` overrides memory.top_k (retrieval sharpness at evaluation)."""
  m, mem = config.model, config.memory
  return AnoMem(
      stage_sizes=tuple(m.stage_sizes), widths=tuple(m.widths),
      dtype=jnp.dtype(m.dtype), memory_scales=tuple(mem.scales), memory_mode=mem.mode,
      memory_train=mem.train, num_prototypes=mem.num_prototypes, proto_dim=mem.proto_dim,
      beta=mem.beta or None, learnable_beta=mem.learnable_beta,
      shrink_threshold=mem.shrink_threshold, retrieval_steps=mem.retrieval_steps,
      top_k=mem.top_k if top_k is None else top_k,
      head_dims=tuple(m.head_dims), scale_head_dims=tuple(m.head_dims),
      rotation_classes=config.shift.rotations if config.loss.rotation_weight > 0 else 0)


def frozen_model(config: ml_collections.ConfigDict) -> AnoMem:
  """The stage-1 model as stage 2 reads it (retrieval top-k possibly overridden)."""
  top_k = config.stage2.top_k
  return build_model(config, top_k=None if top_k < 0 else top_k)


def outputs(model: AnoMem, state: Any, images: np.ndarray,
            select: Callable[[dict[str, Any]], Any], batch_size: int = 500,
            memory_gate: float | None = None) -> Any:
  """`select(outputs)` of the eval-mode model for every image, in padded batches: the
  stacked read (`member_outputs`) of one member.

  `state` is anything with `params` and `batch_stats` (a stage-1 TrainState). When it
  is replicated over a mesh of several devices (a trained or restored state), each batch
  is split over those devices and the outputs gathered: every device, of every process,
  reads its share of the images once, and every process gets all of the outputs.
  `memory_gate` reads the network as a step of the memory's path warm-up trains it
  (`AnoMem`); None is the network every evaluation reads.
  """
  variables, mesh = sharding.as_one_member(
      {"params": state.params, "batch_stats": state.batch_stats})
  return member_outputs(model, variables, images, select, mesh, 1, batch_size,
                        memory_gate)[0]


def stack_variables(states: Sequence[Any], mesh: Mesh) -> dict[str, Any]:
  """What the frozen read needs of K stage-1 states (parameters and BatchNorm
  statistics, not the optimiser), stacked over `model`."""
  return sharding.stack([{"params": s.params, "batch_stats": s.batch_stats} for s in states],
                        mesh)


@functools.lru_cache(maxsize=64)
def _program(model: AnoMem, select: Callable[[dict[str, Any]], Any],
             memory_gate: float | None = None) -> Callable:
  """One function per (model, select, gate), so that jax.jit compiles the read once per
  batch shape, whichever states it reads (the variables are an argument)."""

  def apply(variables, batch):
    return select(model.apply(variables, augment.to_float(batch), train=False,
                              memory_gate=memory_gate))

  return apply


def member_outputs(model: AnoMem, states: Any, images: np.ndarray | list[np.ndarray],
                   select: Callable[[dict[str, Any]], Any], mesh: Mesh, k: int,
                   batch_size: int = 500, memory_gate: float | None = None) -> list[Any]:
  """`select(outputs)` of K stage-1 states stacked over `model` (`stack_variables`), as
  one program: each member on its own images (a list of K arrays) or all on the same ones
  (one array, e.g. the test split that every one-class protocol shares)."""
  n = len(images) if not isinstance(images, list) else max(len(x) for x in images)
  return device.map_members(_program(model, select, memory_gate), states, images,
                            min(batch_size, n), mesh, k)


def _embedding(out: dict[str, Any]) -> jax.Array:
  return out["embedding"].astype(jnp.float32)


def embed(model: AnoMem, state: Any, images: np.ndarray, batch_size: int = 500,
          memory_gate: float | None = None) -> np.ndarray:
  """The final embedding of every image, float32 (`outputs`' `memory_gate`)."""
  return outputs(model, state, images, _embedding, batch_size, memory_gate)


def embed_members(model: AnoMem, states: Any, images: np.ndarray | list[np.ndarray],
                  mesh: Mesh, k: int, batch_size: int = 500) -> list[np.ndarray]:
  """`embed` of K stacked states (`member_outputs`)."""
  return member_outputs(model, states, images, _embedding, mesh, k, batch_size)


def embed_turned(model: AnoMem, states: Any, images: np.ndarray | list[np.ndarray],
                 turns: Sequence[int], mesh: Mesh, k: int, batch_size: int = 500
                 ) -> list[np.ndarray]:
  """Per member [len(turns), N, D]: `embed_members` of the images turned by each
  quarter-turn count in `turns` (CSI's shifted copies, `shift.rotations`)."""

  def turned(r):
    if isinstance(images, list):
      return [np.rot90(x, r, axes=(1, 2)) for x in images]
    return np.rot90(images, r, axes=(1, 2))

  per_turn = [embed_members(model, states, turned(r), mesh, k, batch_size) for r in turns]
  return [np.stack([p[i] for p in per_turn]) for i in range(k)]


def map_kind(inputs: str) -> str:
  """The map behind the training-free score and the heat maps, higher = more deviant:
  'squared_distance' when the detector reads it (`stage2.inputs`), else 1 - cos (also for
  'cosine_similarity', its upside-down twin, and for f - r)."""
  return "squared_distance" if "squared_distance" in inputs.split("+") else "cosine_distance"


def _reader(model: AnoMem, scales: Sequence[str], kind: str,
            inputs: dict[str, tuple[str, str]] | None) -> Callable[[dict[str, Any]], Any]:
  """What `read` selects from the model's outputs: one function per distinct request, so
  that `_program` and jax.jit reuse its compiled read."""
  return _cached_reader(model, tuple(scales), kind, tuple(sorted((inputs or {}).items())))


@functools.lru_cache(maxsize=64)
def _cached_reader(model: AnoMem, scales: tuple[str, ...], kind: str,
                   inputs: tuple[tuple[str, tuple[str, str]], ...]
                   ) -> Callable[[dict[str, Any]], Any]:
  inputs = dict(inputs)
  wanted = set(scales) | {s for s, _ in inputs.values()}
  missing = [s for s in wanted if s not in model.memory_scales]
  if missing:
    raise ValueError(f"scales {sorted(missing)} have no memory (memory.scales="
                     f"{tuple(model.memory_scales)})")

  def select(out):
    f, r = out["features"], out["readout"]
    result = {"embedding": _embedding(out), "deviation": {}, "maps": {}}
    for s in scales:
      d = deviation_input(f[s], r[s], map_kind(kind))
      result["deviation"][s] = jnp.mean(d, axis=(1, 2, 3))
      result["maps"][s] = d[..., 0]
    result["inputs"] = {name: deviation_input(f[s], r[s], k)
                        for name, (s, k) in inputs.items()}
    return result

  return select


def _read_done(out: dict[str, Any]) -> dict[str, Any]:
  out["deviation"] = {s: v.astype(np.float64) for s, v in out["deviation"].items()}
  return out


def read(model: AnoMem, state: Any, images: np.ndarray, scales: Sequence[str], *,
         kind: str = "cosine_distance", inputs: dict[str, tuple[str, str]] | None = None,
         batch_size: int = 500) -> dict[str, Any]:
  """One eval-mode pass over `images` giving
  'deviation': {scale: [N]} the training-free score, the mean of the `map_kind(kind)` map;
  'maps': {scale: [N, h, w]} those maps;
  'inputs': {detector: [N, h, w, 1 or C]} the detector inputs named by `inputs`
    ({name: (scale, input kind)});
  'embedding': [N, C], the final embedding.
  """
  return _read_done(outputs(model, state, images, _reader(model, scales, kind, inputs),
                            batch_size))


def read_members(model: AnoMem, states: Any, images: np.ndarray | list[np.ndarray],
                 scales: Sequence[str], mesh: Mesh, k: int, *, kind: str = "cosine_distance",
                 inputs: dict[str, tuple[str, str]] | None = None,
                 batch_size: int = 500) -> list[dict[str, Any]]:
  """`read` of K stacked states as one program (`member_outputs`): one dict per member."""
  return [_read_done(o) for o in member_outputs(model, states, images,
                                                _reader(model, scales, kind, inputs),
                                                mesh, k, batch_size)]


def deviation_maps(model: AnoMem, state: Any, images: np.ndarray, scales: Sequence[str],
                   kind: str = "cosine_distance", batch_size: int = 500) -> dict[str, np.ndarray]:
  """{scale: [N, h, w]}: the deviation map (`map_kind(kind)`) of every image."""
  return read(model, state, images, scales, kind=kind, batch_size=batch_size)["maps"]
