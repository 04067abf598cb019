r"""Each convolution of the `:cpu` model on XLA:CPU, in every formulation `models/conv.py` weighed.

  python experiments/bench_conv.py [--batch 512] [--out experiments/results/conv_layers.md]

Per layer (batch = 2 x 256 views): the forward pass and both gradients, milliseconds
(median of 7 after 2 warm-ups), with XLA:CPU's default options (YNNPACK on) and with
`conv.compiler_options()` (off); the input gradient by XLA and by `conv.input_grad`;
the filter gradient by XLA and by `conv.filter_grad` (tap products over batch chunks),
at several chunk sizes. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from mscm_jax.models import conv

# (input H, Cin, Cout, kernel, stride, padding): stem, res1, res2 (stride 2 + 1x1
# shortcut, then stride 1), res3, res4 of the `:cpu` model.
LAYERS = [(32, 3, 16, 3, 1, 1), (32, 16, 16, 3, 1, 1), (32, 16, 32, 3, 2, 1),
          (32, 16, 32, 1, 2, 0), (16, 32, 32, 3, 1, 1), (8, 64, 64, 3, 1, 1),
          (4, 128, 128, 3, 1, 1)]


def timed(fn, *args, options=None) -> float:
  """Milliseconds per call of jit(fn) (median of 7 after 2 warm-ups)."""
  f = jax.jit(fn, compiler_options=options)
  for _ in range(2):
    jax.block_until_ready(f(*args))
  times = []
  for _ in range(7):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return 1000 * statistics.median(times)


def layer_row(batch: int, h: int, cin: int, cout: int, k: int, stride: int,
              padding: int) -> str:
  rng = np.random.default_rng(0)
  x = np.asarray(rng.standard_normal((batch, h, h, cin)), np.float32)
  w = np.asarray(0.1 * rng.standard_normal((k, k, cin, cout)), np.float32)
  ho = (h + 2 * padding - k) // stride + 1
  dy = np.asarray(rng.standard_normal((batch, ho, ho, cout)), np.float32)

  def fwd(x_, w_):
    return conv.conv2d(x_, w_, stride, padding, cpu_grads=False)

  def xla_dx(x_, w_, d):
    return jax.vjp(lambda a: fwd(a, w_), x_)[1](d)[0]

  def xla_dw(x_, w_, d):
    return jax.vjp(lambda b: fwd(x_, b), w_)[1](d)[0]

  opts = conv.compiler_options()
  cells = []
  for options in (None, opts):
    cells += [timed(fwd, x, w, options=options), timed(xla_dx, x, w, dy, options=options),
              timed(xla_dw, x, w, dy, options=options)]
  cells.append(timed(lambda d, w_: conv.input_grad(d, w_, x.shape, stride, padding), dy, w,
                     options=opts))
  chunks = []
  for chunk in (batch, 32, 16, 8, conv.chunk_size(x.shape, 4, padding)):
    ms = timed(lambda x_, d: conv.filter_grad(x_, d, w.shape, stride, padding, chunk), x, dy,
               options=opts)
    chunks.append(f"{chunk}: {ms:.1f}")
  name = f"{h}x{h}x{cin} -> {cout}, {k}x{k} s{stride}"
  return f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " | " + "; ".join(chunks) + " |"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = [layer_row(args.batch, *layer) for layer in LAYERS]
  text = "\n".join([
      "# The `:cpu` model's convolutions on XLA:CPU", "",
      f"`python experiments/bench_conv.py --batch {args.batch}` on {platform.machine()}, "
      f"{len(jax.devices())} device, jax {jax.__version__}. Milliseconds per call (median of "
      "7); the last column: `filter_grad` at chunk sizes (images), the last one `chunk_size`'s "
      "choice.", "",
      "| layer | fwd (YNN) | dx XLA (YNN) | dw XLA (YNN) | fwd (no YNN) | dx XLA (no YNN) | "
      "dw XLA (no YNN) | dx `input_grad` (no YNN) | dw `filter_grad` (no YNN), by chunk |",
      "|" + "---|" * 9, *rows, ""])
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
