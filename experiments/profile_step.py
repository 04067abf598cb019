r"""Where the stage-1 step's time goes, by subtraction: forward, backward, optimiser, memories.

  python experiments/profile_step.py [--preset cpu] [--batch 0]

Times (median of 5, one process) the train-mode forward pass with the losses, forward +
backward, the whole update (`stage1.make_update`), the same three without memories,
and the augmentation; all jitted with the library's `conv.compiler_options()`. The
per-layer convolution costs are `bench_conv.py`'s. (XLA's profiler trace is no help
here: on CPU it shows the Eigen convolutions as dispatches of about 0.1 ms.)
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import stage1
from mscm_jax.runtime import sharding
from mscm_jax.data import augment
from mscm_jax.frozen import build_model
from mscm_jax.models import conv

from bench_conv import timed  # experiments/: on the path when run as a script


def parts(c) -> dict[str, float]:
  b = c.train.batch_size
  model = build_model(c)
  schedule = stage1.learning_rate_schedule(c, 1000, 10)
  tx = stage1.build_optimizer(c, schedule)
  state = stage1.make_init_fn(model, tx, (32, 32, 3), sharding.make_mesh(1))(
      jax.random.PRNGKey(0))
  x = jnp.asarray(np.random.default_rng(0).random((2 * b, 32, 32, 3), np.float32))
  flags = jnp.zeros((b,), bool)

  def loss(params, s, x_):
    out, _ = model.apply({"params": params, "batch_stats": s.batch_stats}, x_, train=True,
                         mutable=["batch_stats"])
    return stage1.total_loss(stage1.loss_terms(out, params, flags, c), c)

  update = stage1.make_update(c, model, tx, schedule)
  opts = conv.compiler_options()
  return {"forward + losses": timed(lambda s, x_: loss(s.params, s, x_), state, x,
                                     options=opts),
          "forward + backward": timed(lambda s, x_: jax.grad(loss)(s.params, s, x_), state,
                                       x, options=opts),
          "update (+ optimiser, metrics)": timed(lambda s, x_: update(s, x_, flags), state,
                                                  x, options=opts)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="cpu")
  p.add_argument("--batch", type=int, default=0)
  args = p.parse_args()
  c = config_lib.apply_preset(config_lib.base_config(), args.preset)
  c.train.batch_size = args.batch or c.train.batch_size
  with_memory = parts(c)
  c.memory.scales = ("pooled",)  # the cheapest memory: stage 2 needs one
  no_memory = parts(c)
  params = augment.AugmentParams.from_config(c.augment)
  images = jnp.asarray(np.random.default_rng(1).integers(
      0, 256, (c.train.batch_size, 32, 32, 3), np.uint8))
  aug = timed(lambda k, x: augment.two_views(k, x, params), jax.random.PRNGKey(0), images,
              options=conv.compiler_options())
  print(f"`python experiments/profile_step.py --preset {args.preset}`, batch "
        f"{c.train.batch_size} images ({2 * c.train.batch_size} views), ms per call\n")
  print("| part | with the preset's memories | pooled memory only |\n|---|---|---|")
  for k in with_memory:
    print(f"| {k} | {with_memory[k]:.0f} | {no_memory[k]:.0f} |")
  print(f"| augmentation (two views) | {aug:.0f} | |")


if __name__ == "__main__":
  main()
