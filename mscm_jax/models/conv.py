"""2-D convolution whose gradients are fast on XLA's CPU backend.

XLA:CPU runs the forward convolution and the stride-1 input gradient well (YNNPACK),
but not the two others a ResNet's backward pass needs (experiments/PERFORMANCE.md):
- the filter gradient, a convolution over the batch, runs 3-4x slower than the forward
  pass. Here it is one [Cin, M] x [M, Cout] product per kernel tap, summed in a scan
  over chunks of the batch, so that each tap's input slice stays in cache;
- the input gradient of a stride-2 convolution (an lhs-dilated convolution) runs a
  generic loop. Here it is a stride-1 convolution in the space-to-depth domain (3x3
  kernels) or a matrix product scattered on the stride grid (1x1 kernels).
The forward pass stays XLA's own. Other backends (GPU, TPU) use plain
`lax.conv_general_dilated` throughout.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
_DIMS = ("NHWC", "HWIO", "NHWC")
# Bytes of (padded) input per chunk of the filter gradient: about a core's L2 cache. On
# the `:cpu` model's 32x32x16 layer, 16 images per chunk (1.2 MB) ran 3.8x faster than
# the whole batch at once and 64 chunks were no better than 32 (PERFORMANCE.md).
CHUNK_BYTES = 1 << 20


def compiler_options() -> dict[str, str] | None:
  """XLA options for jitted functions that run these convolutions: on CPU, no YNNPACK.

  XLA:CPU hands convolutions and matrix products to YNNPACK by default. On the `:cpu`
  model its convolutions ran 1.6-3.5x slower than XLA's Eigen ones (stride 2: 46 ms vs
  13 ms on 512 x 32x32x16 -> 32), and the stage-1 step went from 1196 to 945 ms without
  it (PERFORMANCE.md). A per-jit option, so a user's other XLA flags stay as they are.
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": ""}


def _conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=_DIMS)


def _tap_products(x: jax.Array, dy: jax.Array, k: int, stride: int,
                  padding: int) -> jax.Array:
  """Sum over batch and positions of patch x dy, one matrix product per tap: [k*k, Cin, Cout]."""
  cin, cout = x.shape[-1], dy.shape[-1]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  ho, wo = dy.shape[1:3]
  d2 = dy.reshape(-1, cout)
  taps = []
  for i in range(k):
    for j in range(k):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      taps.append(jax.lax.dot_general(patch.reshape(-1, cin), d2, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32))
  return jnp.stack(taps)


def chunk_size(x_shape: tuple[int, ...], itemsize: int, padding: int,
               chunk_bytes: int = CHUNK_BYTES) -> int:
  """Images per chunk of the filter gradient: at most `chunk_bytes` of padded input.

  A divisor of the batch when one is at least half that size (no padding copy), else
  the largest that fits.
  """
  b, h, w, c = x_shape
  per_image = (h + 2 * padding) * (w + 2 * padding) * c * itemsize
  most = int(max(1, min(b, chunk_bytes // per_image)))
  divisor = max(d for d in range(1, most + 1) if b % d == 0)
  return divisor if 2 * divisor >= most else most


def filter_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                padding: int, chunk: int | None = None) -> jax.Array:
  """d(loss)/d(kernel), float32: per-tap matrix products accumulated over batch chunks.

  `chunk`: images per chunk (None: `chunk_size`). A batch that the chunk does not
  divide is padded with zero images, which add nothing to the sum.
  """
  kh, kw, cin, cout = kernel_shape
  assert kh == kw, kernel_shape
  b = x.shape[0]
  chunk = chunk or chunk_size(x.shape, x.dtype.itemsize, padding)
  n = -(-b // chunk)
  if n == 1:
    return _tap_products(x, dy, kh, stride, padding).reshape(kernel_shape)
  if n * chunk != b:
    extra = ((0, n * chunk - b),) + ((0, 0),) * 3
    x, dy = jnp.pad(x, extra), jnp.pad(dy, extra)
  xs = x.reshape((n, chunk) + x.shape[1:])
  dys = dy.reshape((n, chunk) + dy.shape[1:])

  def body(acc, chunk_xy):
    return acc + _tap_products(*chunk_xy, kh, stride, padding), None

  init = jnp.zeros((kh * kw, cin, cout), jnp.float32)
  return jax.lax.scan(body, init, (xs, dys))[0].reshape(kernel_shape)


def _space_to_depth_kernel(w: jax.Array) -> jax.Array:
  """A 3x3 stride-2 kernel as the 2x2 stride-1 kernel over 2x2 pixel blocks: [2, 2, 4Cin, Cout].

  Block channel order (di, dj, c): tap (i, j) of the 3x3 kernel lands at block offset
  (i // 2, j // 2) and in-block position (i % 2, j % 2); the unused positions are zero.
  """
  cin, cout = w.shape[2:]
  w4 = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))  # 4x4 taps, the last row/column zero
  w4 = w4.reshape(2, 2, 2, 2, cin, cout)  # (a, di, b, dj, c, o)
  return w4.transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)


def input_grad(dy: jax.Array, w: jax.Array, x_shape: tuple[int, ...], stride: int,
               padding: int) -> jax.Array:
  """d(loss)/d(input) without XLA:CPU's slow lhs-dilated convolution for stride 2.

  3x3 pad-1 stride-2: the forward pass is a 2x2 stride-1 convolution over the
  space-to-depth blocks of the padded input, so its input gradient is a stride-1
  convolution of dy with that kernel flipped, turned back from blocks to pixels.
  1x1 pad-0 stride-2: dy times the transposed kernel on the even pixels, zero between.
  Anything else: XLA's own gradient.
  """
  b, h, wd, cin = x_shape
  ho, wo = dy.shape[1:3]
  k = w.shape[0]
  if stride == 2 and k == 1 and padding == 0:
    d = jnp.einsum("bhwo,co->bhwc", dy, w[0, 0].astype(dy.dtype))
    zero = jnp.zeros((), d.dtype)
    return jax.lax.pad(d, zero, ((0, 0, 0), (0, h - (2 * ho - 1), 1),
                                 (0, wd - (2 * wo - 1), 1), (0, 0, 0)))
  if stride == 2 and k == 3 and padding == 1:
    ks = _space_to_depth_kernel(w.astype(dy.dtype))[::-1, ::-1].transpose(0, 1, 3, 2)
    blocks = jax.lax.conv_general_dilated(dy, ks, (1, 1), ((1, 1), (1, 1)),
                                          dimension_numbers=_DIMS)  # [b, ho+1, wo+1, 4cin]
    pixels = blocks.reshape(b, ho + 1, wo + 1, 2, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    pixels = pixels.reshape(b, 2 * ho + 2, 2 * wo + 2, cin)
    return pixels[:, padding:padding + h, padding:padding + wd]
  w_ = w.astype(dy.dtype)
  zeros = jnp.zeros(x_shape, dy.dtype)
  return jax.vjp(lambda x_: _conv(x_, w_, stride, padding), zeros)[1](dy)[0]


_CPU_GRADS: list[bool | None] = [None]  # the default of `conv2d(cpu_grads=None)`; see below


@contextlib.contextmanager
def cpu_grads(enabled: bool | None):
  """Within: `conv2d`'s default formulation (True: this module's gradients, False: XLA's
  own, None: by backend). Read at trace time, so it applies to functions traced inside,
  and JAX reuses an earlier trace of an equal function: `jax.clear_caches()` first when
  one may exist. Benchmarks use it to count FLOPs of the plain network and to time XLA's
  gradients."""
  _CPU_GRADS.append(enabled)
  try:
    yield
  finally:
    _CPU_GRADS.pop()


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu(x, w, stride, padding):
  return _conv(x, w, stride, padding)


def _fwd(x, w, stride, padding):
  return _conv(x, w, stride, padding), (x, w)


def _bwd(stride, padding, res, dy):
  x, w = res
  dx = input_grad(dy, w, x.shape, stride, padding).astype(x.dtype)
  dw = filter_grad(x, dy, w.shape, stride, padding).astype(w.dtype)
  return dx, dw


_conv_cpu.defvjp(_fwd, _bwd)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0,
           cpu_grads: bool | None = None) -> jax.Array:
  """NHWC x HWIO convolution; `cpu_grads` None = this module's gradients on CPU only."""
  if cpu_grads is None:
    cpu_grads = _CPU_GRADS[-1]
  if cpu_grads is None:
    cpu_grads = jax.default_backend() == "cpu"
  return (_conv_cpu if cpu_grads else _conv)(x, w, stride, padding)


class Conv(nn.Module):
  """Bias-free square convolution with `nn.Conv`'s parameter layout ('kernel', HWIO)."""

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)
