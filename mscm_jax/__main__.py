"""`python -m mscm_jax` is `python -m mscm_jax.main`."""

from mscm_jax.main import entry_point

entry_point()
