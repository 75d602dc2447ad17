"""LayerNorm over the last axis with a hand-written backward pass.

The forward is torch.nn.LayerNorm's (two-pass variance, statistics in fp32). The backward keeps
x and the per-row mean and reciprocal standard deviation, and forms the input gradient with the
closed form dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * gamma: two row
reductions, where autodiff through the two-pass variance makes several passes and stores the
centred input as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _stats(x: Array, eps: float) -> tuple[Array, Array]:
  """Row mean and 1 / sqrt(var + eps) (two-pass variance), fp32, [..., 1]."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return mean, jax.lax.rsqrt(var + eps)


def _apply(x: Array, mean: Array, rstd: Array, gamma: Array | None, beta: Array | None) -> Array:
  mul = rstd if gamma is None else rstd * gamma.astype(jnp.float32)
  y = (x.astype(jnp.float32) - mean) * mul
  return y if beta is None else y + beta.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, gamma: Array | None, beta: Array | None, eps: float) -> Array:
  """LayerNorm of x over its last axis with optional affine gamma/beta ([D]), in x's dtype."""
  return _layer_norm_fwd(x, gamma, beta, eps)[0]


def _layer_norm_fwd(x, gamma, beta, eps):
  mean, rstd = _stats(x, eps)
  return _apply(x, mean, rstd, gamma, beta).astype(x.dtype), (x, mean, rstd, gamma, beta)


def _layer_norm_bwd(eps, residuals, dy):
  del eps  # in rstd
  x, mean, rstd, gamma, beta = residuals
  dy = dy.astype(jnp.float32)
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  g = dy if gamma is None else dy * gamma.astype(jnp.float32)
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True))
  dx = dx - rstd * x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True)
  rows = tuple(range(x.ndim - 1))
  d_gamma = None if gamma is None else jnp.sum(dy * x_hat, axis=rows).astype(gamma.dtype)
  d_beta = None if beta is None else jnp.sum(dy, axis=rows).astype(beta.dtype)
  return dx.astype(x.dtype), d_gamma, d_beta


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
