r"""Why `mscm_jax.models.conv` exists: XLA:CPU's convolution gradients, timed.

  python experiments/bench_conv_grad.py

For the shapes of the CPU preset's first stage (batch 512 views, 32x32, 16 channels)
and its last stage (8x8, 64 channels): forward, input gradient, XLA's filter gradient
and the tap-wise filter gradient; then a small ResNet's forward+backward with each.
Prints a Markdown table and writes it to experiments/results/conv_grad.md.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp

from mscm_jax.models import ResNet, conv


def timeit(f, *args, n=3):
  jax.block_until_ready(f(*args))
  t = time.time()
  for _ in range(n):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.time() - t) / n


def main():
  rows = []
  for shape, w_shape in [((512, 32, 32, 16), (3, 3, 16, 16)), ((512, 8, 8, 64), (3, 3, 64, 64))]:
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    w = jax.random.normal(jax.random.PRNGKey(1), w_shape)
    dy = jax.random.normal(jax.random.PRNGKey(2), shape[:-1] + w_shape[-1:])
    xla = lambda x_, w_: conv.conv2d(x_, w_, 1, 1, tap_grad=False)  # noqa: E731
    # Every array is an argument: closed-over constants would be folded at compile time.
    fwd = timeit(jax.jit(xla), x, w)
    dx = timeit(jax.jit(jax.grad(lambda x_, w_, d: jnp.sum(xla(x_, w_) * d))), x, w, dy)
    dw = timeit(jax.jit(jax.grad(lambda w_, x_, d: jnp.sum(xla(x_, w_) * d))), w, x, dy)
    dw_tap = timeit(jax.jit(lambda x_, d: conv.filter_grad(x_, d, w_shape, 1, 1)), x, dy)
    rows.append(f"| conv {shape} x {w_shape} | {fwd:.3f} | {dx:.3f} | {dw:.3f} | {dw_tap:.3f} |")

  images = jax.random.uniform(jax.random.PRNGKey(3), (512, 32, 32, 3))
  net_rows = []
  for tap in (False, True):
    original = conv.conv2d
    conv.conv2d = lambda x, w, s=1, p=0, tap_grad=None, _t=tap: original(x, w, s, p, _t)
    try:
      model = ResNet(stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128))
      v = model.init(jax.random.PRNGKey(0), images[:2], train=False)

      def loss(p, stats, x, model=model):
        out, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(out["pooled"] ** 2)

      t = timeit(jax.jit(jax.grad(loss)), v["params"], v["batch_stats"], images)
    finally:
      conv.conv2d = original
    net_rows.append(f"| small ResNet fwd+bwd, 512 views, {'tap' if tap else 'XLA'} filter "
                    f"gradient | {t:.2f} |")

  host = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}"
  text = "\n".join([
      "# Convolution gradients on XLA:CPU", "",
      f"Measured by `python experiments/bench_conv_grad.py` on {host}. Seconds per call.", "",
      "| shapes | forward | input grad | filter grad (XLA) | filter grad (taps) |",
      "| --- | --- | --- | --- | --- |", *rows, "",
      "| network | seconds |", "| --- | --- |", *net_rows, ""])
  print(text)
  out = os.path.join(os.path.dirname(__file__), "results", "conv_grad.md")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
