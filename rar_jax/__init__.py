"""rar_jax: Randomized AutoRegressive visual generation in JAX/Flax."""

__version__ = "0.1.0"
