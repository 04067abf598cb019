"""Tests for mscm_jax.models: shapes, Hopfield retrieval against NumPy, gradient rules.

Compilation dominates on a small CPU, so value tests build one jitted program per model
configuration (cached, compiled with cheap XLA options), fill parameters with NumPy
random values instead of compiling an initialiser per shape, and check shapes with
`jax.eval_shape` (no compilation at all).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscm_jax import losses
from mscm_jax.models import SCALES, AnoMem, HopfieldMemory, ProjectionHead, ResNet, cosine_deviation

SMALL = dict(stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128))
RESNET18 = dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512))
# Smallest model that still has every piece; used where values and gradients are computed.
TINY = dict(
  stage_sizes=(1, 1, 1, 1),
  widths=(8, 8, 8, 8),
  num_prototypes=8,
  proto_dim=8,
  head_dims=(16, 8),
  scale_head_dims=(16, 8),
)
TINY_SCALES = ("res2", "pooled")  # one spatial memory upstream of the pooled one
SPATIAL = {"res1": 32, "res2": 16, "res3": 8, "res4": 4}
MODES = [
  ("replace", "contrastive"),
  ("residual", "contrastive"),
  ("branch", "contrastive"),
  ("branch", "codebook"),
]
ENCODER = ("stem", "res1", "res2", "res3", "res4")
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _images(b: int, size: int = 32, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, size, size, 3)), jnp.float32)


def _compile(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
  """jit + compile for these argument shapes with cheap XLA options (tests only)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)


def _fake_init(module: Any, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
  """Variables shaped as `module.init`'s, filled with NumPy random values."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path: Any, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    name = path[-1].key
    if name == "prototypes":
      value = rng.normal(0.0, 1.0, leaf.shape)
    elif name == "kernel":
      value = rng.normal(0.0, 1.0, leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = 1.0 + 0.1 * np.abs(rng.normal(size=leaf.shape))
    else:  # biases, running means, log_beta
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _init_and_apply_shapes(model: Any, x: jax.Array) -> tuple[Any, Any]:
  """(output shapes, variable shapes) of init + a train-mode apply, without computing."""

  def run(key: jax.Array) -> tuple[Any, Any]:
    variables = model.init(key, x, train=False)
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, variables

  return jax.eval_shape(run, jax.random.key(0))


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("preset", [SMALL, RESNET18], ids=["small", "resnet18"])
def test_resnet_shapes(preset: dict[str, Any]) -> None:
  out, variables = _init_and_apply_shapes(ResNet(**preset), _images(2))
  for i, name in enumerate(("res1", "res2", "res3", "res4")):
    chex.assert_shape(out[name], (2, SPATIAL[name], SPATIAL[name], preset["widths"][i]))
  chex.assert_shape(out["pooled"], (2, preset["widths"][-1]))
  assert set(variables) == {"params", "batch_stats"}
  # A projection shortcut exactly where the shape changes: first block of res2..res4.
  blocks = variables["params"]
  assert "proj_conv" not in blocks["res1"]["block0"]
  for name in ("res2", "res3", "res4"):
    assert "proj_conv" in blocks[name]["block0"]
  if preset["stage_sizes"][1] == 2:
    assert "proj_conv" not in blocks["res2"]["block1"]


def test_resnet_batchnorm_train_vs_eval() -> None:
  model = ResNet(stage_sizes=(1, 1, 1, 1), widths=(8, 8, 8, 8))
  x = _images(4, 8)
  variables = _fake_init(model, x, train=False)

  def run(v: Any, x: jax.Array) -> Any:
    out_train, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    return out_train, updates, model.apply(v, x, train=False)

  out_train, updates, out_eval = _compile(run, variables, x)(variables, x)
  # Train mode normalises with batch statistics and updates the running averages.
  assert not np.allclose(out_train["pooled"], out_eval["pooled"])
  old = variables["batch_stats"]["stem"]["bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["stem"]["bn"]["mean"], old)
  # Eval mode is per-example: a row does not depend on the rest of the batch.
  _, _, out_one = _compile(run, variables, x[:1])(variables, x[:1])
  np.testing.assert_allclose(out_one["pooled"], out_eval["pooled"][:1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- AnoMem shapes


@pytest.mark.parametrize("mode,train", MODES)
@pytest.mark.parametrize("preset", [SMALL, RESNET18], ids=["small", "resnet18"])
def test_anomem_output_shapes(preset: dict[str, Any], mode: str, train: str) -> None:
  n, b = 32, 2
  model = AnoMem(
    **preset,
    memory_scales=SCALES,
    memory_mode=mode,
    memory_train=train,
    num_prototypes=n,
    proto_dim=16,
    head_dims=(64, 24),
    scale_head_dims=(48, 12),
  )
  out, variables = _init_and_apply_shapes(model, _images(b))
  widths = dict(zip(("res1", "res2", "res3", "res4"), preset["widths"]))
  widths["pooled"] = preset["widths"][-1]
  for s in SCALES:
    shape = (b, SPATIAL[s], SPATIAL[s], widths[s]) if s != "pooled" else (b, widths[s])
    chex.assert_shape([out["features"][s], out["readout"][s]], shape)
    chex.assert_shape(out["attention"][s], shape[:-1] + (n,))
    assert out["attention"][s].dtype == jnp.float32
    chex.assert_shape(variables["params"][f"memory_{s}"]["prototypes"], (n, 16))
  chex.assert_shape(out["embedding"], (b, preset["widths"][-1]))
  chex.assert_shape(out["projection"], (b, 24))
  if mode == "branch" and train == "contrastive":
    assert set(out["scale_projection"]) == set(SCALES)
    for s in SCALES:
      chex.assert_shape(out["scale_projection"][s], (b, 12))
  else:
    assert "scale_projection" not in out


def test_anomem_default_scales_and_resnet18_param_count() -> None:
  out, variables = _init_and_apply_shapes(AnoMem(**RESNET18, memory_mode="branch"), _images(2))
  assert set(out["readout"]) == {"res2", "res3", "res4"}
  # The encoder part is exactly a CIFAR ResNet-18 (11.17M params without the fc layer).
  encoder = {k: variables["params"][k] for k in ENCODER}
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(encoder)) == 11_168_832


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(memory_mode="replace", memory_train="codebook"),
    dict(memory_mode="residual", memory_train="codebook"),
    dict(memory_mode="bogus"),
    dict(memory_mode="branch", memory_train="bogus"),
    dict(memory_scales=("res5",)),
    dict(memory_scales=("res2", "res2")),
  ],
)
def test_anomem_rejects_bad_config(kwargs: dict[str, Any]) -> None:
  with pytest.raises(ValueError):
    AnoMem(**kwargs)


# ---------------------------------------------------------------- AnoMem values and gradients


def _readout_loss(out: dict[str, Any]) -> jax.Array:
  """A loss touching every output that depends on a read-out."""
  terms = [jnp.sum(jnp.square(r.astype(jnp.float32))) for r in out["readout"].values()]
  terms.append(jnp.sum(jnp.square(out["projection"])))
  terms += [jnp.sum(jnp.square(p)) for p in out.get("scale_projection", {}).values()]
  return sum(terms)


def _alignment_loss(out: dict[str, Any]) -> jax.Array:
  return sum(
    losses.feature_alignment(out["features"][s], out["readout"][s]) for s in out["readout"]
  )


def _tiny(
  mode: str, train: str = "contrastive", dtype: Any = jnp.float32, grads: bool = True
) -> tuple[AnoMem, Any, Callable[..., Any]]:
  """(model, variables, step): step(params, x, mask) -> (outputs, grads of _readout_loss,
  grads of _alignment_loss (codebook only)), in train mode; forward only if not grads."""
  return _tiny_cached(mode, train, dtype, grads)  # one cache key however it is called


@functools.lru_cache(maxsize=None)
def _tiny_cached(
  mode: str, train: str, dtype: Any, grads: bool
) -> tuple[AnoMem, Any, Callable[..., Any]]:
  model = AnoMem(
    **TINY, memory_mode=mode, memory_train=train, memory_scales=TINY_SCALES, dtype=dtype
  )
  x = _images(2, 8)
  variables = _fake_init(model, x, train=False)

  def step(params: Any, x: jax.Array, mask: jax.Array) -> tuple[Any, Any, Any]:
    def forward(p: Any) -> Any:
      out, _ = model.apply(
        {**variables, "params": p}, x, train=True, anomaly_mask=mask, mutable=["batch_stats"]
      )
      return out

    def readout_loss(p: Any) -> tuple[jax.Array, Any]:
      out = forward(p)
      return _readout_loss(out), out

    if not grads:
      return forward(params), None, None
    g_read, out = jax.grad(readout_loss, has_aux=True)(params)
    g_align = None
    if train == "codebook":
      g_align = jax.grad(lambda p: _alignment_loss(forward(p)))(params)
    return out, g_read, g_align

  return model, variables, _compile(step, variables["params"], x, jnp.zeros((2,), bool))


def _tiny_run(
  mode: str,
  train: str = "contrastive",
  mask: tuple[bool, bool] = (False, False),
  dtype: Any = jnp.float32,
  grads: bool = True,
  params: Any = None,
) -> tuple[Any, Any, Any]:
  _, variables, step = _tiny(mode, train, dtype, grads)
  params = variables["params"] if params is None else params
  return step(params, _images(2, 8), jnp.asarray(mask))


def _is_zero(tree: Any) -> bool:
  return all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(tree))


@pytest.mark.parametrize("mode,train", MODES)
def test_anomaly_rows_do_not_train_the_memory(mode: str, train: str) -> None:
  """Labelled anomalies: same forward values, no gradient into any memory parameter."""
  plain, _, _ = _tiny_run(mode, train)
  for mask in ((True, True), (False, False), (True, False)):
    out, grads, _ = _tiny_run(mode, train, mask)
    chex.assert_trees_all_close(out, plain, rtol=1e-5, atol=1e-5)
    memories = {s: grads[f"memory_{s}"] for s in TINY_SCALES}
    if all(mask):
      assert _is_zero(memories), "labelled anomalies reached the memory"
    else:
      for s in TINY_SCALES:
        assert np.abs(memories[s]["prototypes"]).max() > 0, s
    # The encoder still learns from every row (codebook: see the next test).
    if train == "contrastive":
      assert np.abs(grads["stem"]["conv"]["kernel"]).max() > 0


def test_codebook_mode_costs_the_encoder_nothing() -> None:
  _, _, g_align = _tiny_run("branch", "codebook")
  assert _is_zero({k: g_align[k] for k in ENCODER + ("head",)})
  for s in TINY_SCALES:
    assert np.abs(g_align[f"memory_{s}"]["prototypes"]).max() > 0


def _perturb_memories(params: Any) -> Any:
  return {
    k: jax.tree.map(lambda p: np.asarray(p) * 1.5 + 0.3, v) if k.startswith("memory_") else v
    for k, v in params.items()
  }


@pytest.mark.parametrize("mode,train", MODES)
def test_which_modes_feed_the_memory_to_the_encoder(mode: str, train: str) -> None:
  """Branch: features and embedding do not depend on the memories; otherwise they do."""
  _, variables, _ = _tiny(mode, train)
  out, _, _ = _tiny_run(mode, train)
  moved, _, _ = _tiny_run(mode, train, params=_perturb_memories(variables["params"]))
  assert not np.allclose(out["readout"]["pooled"], moved["readout"]["pooled"])
  np.testing.assert_array_equal(out["features"]["res2"], moved["features"]["res2"])
  same = mode == "branch"
  assert np.array_equal(out["features"]["pooled"], moved["features"]["pooled"]) == same
  assert np.array_equal(out["embedding"], moved["embedding"]) == same
  assert np.array_equal(out["projection"], moved["projection"]) == same


def test_anomem_encoder_params_are_a_resnet() -> None:
  """The encoder sub-tree has ResNet's names, so a plain ResNet can load it."""
  x = _images(2)
  anomem = jax.eval_shape(lambda: AnoMem(**SMALL).init(jax.random.key(0), x, train=False))
  resnet = jax.eval_shape(lambda: ResNet(**SMALL).init(jax.random.key(0), x, train=False))
  for col in ("params", "batch_stats"):
    sub = {k: anomem[col][k] for k in ENCODER}
    chex.assert_trees_all_equal_shapes_and_dtypes(sub, resnet[col])


@pytest.mark.parametrize("mode", ["replace", "residual"])
def test_replace_and_residual_feed_the_next_stage(mode: str) -> None:
  out, _, _ = _tiny_run(mode)
  f, r = out["features"]["pooled"], out["readout"]["pooled"]
  np.testing.assert_allclose(
    out["embedding"], r if mode == "replace" else f + r, rtol=1e-6, atol=1e-6
  )
  assert not np.allclose(out["features"]["res2"], out["readout"]["res2"], atol=1e-3)


@pytest.mark.parametrize("mode", ["replace", "residual"])
def test_the_memory_gate_lets_the_memory_into_the_path(mode: str) -> None:
  """g = 0: the next stage gets f as if there were no memory; g = 1 is the ungated path."""
  model, variables, _ = _tiny(mode)
  x = _images(2, 8)

  def run(gate: float | None, params: Any = variables["params"]) -> dict[str, Any]:
    return model.apply({**variables, "params": params}, x, train=False, memory_gate=gate)

  chex.assert_trees_all_close(run(1.0), run(None), rtol=1e-6, atol=1e-6)
  closed = run(0.0)
  np.testing.assert_array_equal(closed["embedding"], closed["features"]["pooled"])
  moved = run(0.0, _perturb_memories(variables["params"]))
  np.testing.assert_array_equal(moved["embedding"], closed["embedding"])
  half = run(0.5)
  f, r = half["features"]["pooled"], half["readout"]["pooled"]
  np.testing.assert_allclose(half["embedding"], f + 0.5 * (r - f) if mode == "replace"
                             else f + 0.5 * r, rtol=1e-6, atol=1e-6)


def test_attention_is_a_distribution_and_deviation_in_range() -> None:
  out, _, _ = _tiny_run("replace")
  for s in TINY_SCALES:
    chex.assert_shape(
      out["attention"][s], out["features"][s].shape[:-1] + (TINY["num_prototypes"],)
    )
    np.testing.assert_allclose(out["attention"][s].sum(-1), 1.0, rtol=1e-5)
    d = np.asarray(cosine_deviation(out["features"][s], out["readout"][s]))
    chex.assert_shape(d, out["features"][s].shape[:-1])
    assert np.all((d >= -1e-6) & (d <= 2 + 1e-6))
  np.testing.assert_allclose(
    cosine_deviation(out["features"]["res2"], out["features"]["res2"]), 0.0, atol=1e-6
  )


def test_bfloat16_runs_with_float32_attention() -> None:
  _, variables, _ = _tiny("residual", dtype=jnp.bfloat16, grads=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  out, _, _ = _tiny_run("residual", dtype=jnp.bfloat16, grads=False)
  for s in TINY_SCALES:
    assert out["attention"][s].dtype == jnp.float32
    assert out["features"][s].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["attention"][s].sum(-1), 1.0, rtol=1e-5)
  assert out["projection"].dtype == jnp.float32
  assert np.all(np.isfinite(out["projection"]))


def test_projection_head_layers() -> None:
  head = ProjectionHead(dims=(16, 12, 4))
  shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.ones((3, 8)), train=False))
  assert sorted(shapes["params"]) == ["bn0", "bn1", "dense0", "dense1", "out"]
  assert sorted(shapes["batch_stats"]) == ["bn0", "bn1"]  # no BN on the output
  chex.assert_shape(shapes["params"]["out"]["kernel"], (12, 4))


# ---------------------------------------------------------------- Hopfield memory


def _layer_norm(x: np.ndarray, p: dict[str, np.ndarray], eps: float = 1e-6) -> np.ndarray:
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
  return x @ p["kernel"] + p["bias"]


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _hopfield_reference(
  params: Any, f: np.ndarray, beta: float, threshold: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
  """float64 NumPy retrieval from the module's own params."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  protos = p["prototypes"]
  keys = _layer_norm(_dense(protos, p["key"]), p["key_norm"])
  q = _layer_norm(_dense(f.astype(np.float64), p["query"]), p["query_norm"])
  xi = None
  for step in range(steps):
    if step:
      q = _layer_norm(_dense(xi, p["key"]), p["key_norm"])
    a = _softmax(beta * q @ keys.T)
    if threshold > 0:
      a = np.where(a > threshold, a, 0.0)
      a = a / a.sum(-1, keepdims=True)
    xi = a @ protos
  return _dense(xi, p["out"]), a


@pytest.mark.parametrize(
  "beta,learnable,threshold,steps",
  [
    (None, False, 0.0, 1),
    (3.0, False, 0.0, 1),
    (None, True, 0.0, 1),
    (None, False, 0.0, 2),
    (2.0, False, 0.07, 1),
    (2.0, True, 0.07, 2),
  ],
)
def test_hopfield_matches_numpy(
  beta: float | None, learnable: bool, threshold: float, steps: int
) -> None:
  n, d, c = 12, 8, 6
  mem = HopfieldMemory(
    num_prototypes=n,
    proto_dim=d,
    beta=beta,
    learnable_beta=learnable,
    shrink_threshold=threshold,
    steps=steps,
  )
  f = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 3, c)), jnp.float32)
  variables = _fake_init(mem, f, seed=4)
  r, a = _compile(mem.apply, variables, f)(variables, f)
  chex.assert_shape(r, (2, 3, 3, c))
  chex.assert_shape(a, (2, 3, 3, n))
  beta_ref = beta if beta is not None else 1.0 / np.sqrt(d)
  if learnable:  # A random log-beta, so the test sees the param, not the default.
    beta_ref = float(np.exp(np.float64(variables["params"]["log_beta"])))
  r_ref, a_ref = _hopfield_reference(variables["params"], np.asarray(f), beta_ref, threshold, steps)
  if threshold > 0:  # The hard threshold must not sit on a rounding boundary.
    _, a_pre = _hopfield_reference(variables["params"], np.asarray(f), beta_ref, 0.0, 1)
    assert np.abs(a_pre - threshold).min() > 1e-4
    assert (a_ref == 0).any() and (a_ref > 0).sum(-1).min() >= 1
  np.testing.assert_allclose(a, a_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(r, r_ref, rtol=1e-5, atol=1e-5)


def test_hopfield_init_and_any_leading_shape() -> None:
  n, d = 64, 4
  mem = HopfieldMemory(num_prototypes=n, proto_dim=d, learnable_beta=True)
  x = jnp.ones((2, 7))
  variables = _compile(mem.init, jax.random.key(0), x)(jax.random.key(0), x)
  np.testing.assert_allclose(variables["params"]["log_beta"], np.log(1 / np.sqrt(d)), rtol=1e-6)
  # Prototypes start spread: per-dimension std near 1, the variance hinge's target.
  std = np.std(np.asarray(variables["params"]["prototypes"]), axis=0)
  assert np.all((std > 0.7) & (std < 1.3)), std
  for shape in [(7,), (2, 7), (2, 3, 4, 7)]:
    r, a = jax.eval_shape(mem.apply, variables, jnp.ones(shape))
    chex.assert_shape([r, a], [shape, shape[:-1] + (n,)])
  fixed = jax.eval_shape(lambda: HopfieldMemory(n, d).init(jax.random.key(0), x))
  assert "log_beta" not in fixed["params"]
