"""Per-sample generation orders."""

import jax
import jax.numpy as jnp
import numpy as np

from rar_jax.model import token_orders


def test_orders_raster_at_zero_and_permutations_at_one():
  key = jax.random.key(0)
  raster = token_orders.sample_orders(key, 16, 32, 0.0)
  np.testing.assert_array_equal(raster, np.broadcast_to(np.arange(32), (16, 32)))
  perms = np.asarray(token_orders.sample_orders(key, 16, 32, 1.0))
  for row in perms:
    np.testing.assert_array_equal(np.sort(row), np.arange(32))
  assert not (perms == np.arange(32)).all(axis=1).any()
  assert len({tuple(r) for r in perms}) == 16


def test_orders_mix_with_probability_r_inside_jit():
  orders = jax.jit(token_orders.sample_orders, static_argnums=(1, 2))(
    jax.random.key(1), 4000, 8, jnp.float32(0.3)
  )
  is_raster = (np.asarray(orders) == np.arange(8)).all(axis=1)
  # A random permutation of 8 is the identity with probability 1/8!, negligible here.
  assert abs((~is_raster).mean() - 0.3) < 0.03


def test_permute_gathers_per_sample():
  x = jnp.arange(12).reshape(2, 6) * 10
  orders = jnp.array([[5, 4, 3, 2, 1, 0], [0, 2, 4, 1, 3, 5]])
  np.testing.assert_array_equal(
    token_orders.permute(x, orders), [[50, 40, 30, 20, 10, 0], [60, 80, 100, 70, 90, 110]]
  )
  emb = jnp.arange(24.0).reshape(2, 6, 2)
  np.testing.assert_array_equal(token_orders.permute(emb, orders)[1, 1], emb[1, 2])
