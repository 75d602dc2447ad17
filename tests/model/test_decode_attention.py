"""The Pallas decode attention (Pallas interpret mode on the CPU) against the model's reference
attention on the same cache: values at several shapes and positions, that cache blocks past the
queries' reach are never read, sharding, and its cost records."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax import sharding
from rar_jax.model.kernels import accounting
from rar_jax.model.kernels import decode_attention as da


def _inputs(r, h, t, kd, s, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (r, t, h, kd), jnp.float32).astype(dtype)
  k, v = (jax.random.normal(key, (r, s, h * kd), jnp.float32).astype(dtype) for key in keys[1:])
  return q, k, v


_attend = jax.jit(da.decode_attention, static_argnums=(4,))


@pytest.mark.parametrize(
  "r, h, t, kd, start, dtype, tol",
  [
    (4, 16, 1, 80, 0, jnp.float32, 1e-5),  # the first step: one key block, one position
    (4, 16, 1, 80, 31, jnp.float32, 1e-5),  # the last position of block 0
    (4, 16, 1, 80, 32, jnp.float32, 1e-5),  # the first of block 1
    (6, 12, 2, 64, 70, jnp.float32, 1e-5),  # prefill-like pair, heads not a multiple of 8
    (2, 3, 16, 88, 40, jnp.float32, 1e-5),  # a speculative window across a block boundary
    (8, 16, 1, 80, 200, jnp.bfloat16, 2e-2),
  ],
)
def test_matches_the_reference_attention(r, h, t, kd, start, dtype, tol):
  """The same function as `reference` (the model's attention on the [R, H, S, K] view), every
  query seeing the positions up to its own."""
  q, k, v = _inputs(r, h, t, kd, 256, dtype)
  scale = kd**-0.5
  out = _attend(q, k, v, jnp.int32(start), scale)
  ref = da.reference(q, k, v, start, scale)
  assert out.shape == q.shape and out.dtype == k.dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol)


def test_blocks_past_the_reach_are_not_read():
  """NaN in every key block after the one holding the last query: the output is finite and
  equals the reference on a clean cache (the clamped block index fetches nothing new, and the
  skipped steps compute nothing). A planted kernel that reads the whole cache would be NaN."""
  q, k, v = _inputs(2, 4, 2, 16, 128, jnp.float32)
  start = 40  # queries at 40 and 41: blocks 0 and 1 of four
  clean = da.reference(q, k, v, start, 0.25)
  poison = lambda a: a.at[:, 64:].set(jnp.nan)  # noqa: E731
  out = _attend(q, poison(k), poison(v), jnp.int32(start), 0.25)
  np.testing.assert_allclose(out, clean, atol=1e-5)
  assert np.isnan(np.asarray(da.reference(q, poison(k), poison(v), start, 0.25))).all()


def test_sharded_rows_and_heads_match_one_device():
  """Under a (data, tensor) mesh of the 8 CPU devices the rows and heads are split by
  `jax.shard_map`, one kernel per shard, with the same result."""
  mesh = sharding.make_mesh((4, 1, 2), 1)
  q, k, v = _inputs(8, 4, 1, 16, 64, jnp.float32)
  want = da.reference(q, k, v, 9, 0.25)
  spec = jax.sharding.PartitionSpec("data", None, "tensor")
  q = jax.device_put(q, jax.sharding.NamedSharding(mesh, spec))
  cache = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None, "tensor"))
  k, v = jax.device_put(k, cache), jax.device_put(v, cache)
  with sharding.activate(mesh):
    out = jax.jit(lambda q, k, v, s: da.decode_attention(q, k, v, s, 0.25, ("data",), ("tensor",)))(
      q, k, v, jnp.int32(9)
    )
  np.testing.assert_allclose(out, want, atol=1e-5)
  assert out.sharding.spec[:3] == ("data", None, "tensor")


def test_cost_records_count_the_blocks_each_run_reads():
  """A concrete start counts its own blocks; a traced one inside `accounting.reaches` the mean
  over the declared runs (and stands for each of them); a traced one without a declaration the
  whole cache."""
  r, h, t, kd, s = 4, 4, 1, 16, 128
  q, k, v = _inputs(r, h, t, kd, s, jnp.bfloat16)
  block_bytes = r * da.KEY_BLOCK * h * kd * 2 * 2  # keys and values of one block, bf16
  io_bytes = r * 2 * t * h * kd * 2  # q read, out written
  with accounting.collect() as calls:
    da.decode_attention(q, k, v, 33, 0.25)  # reach 34: blocks 0 and 1
    with accounting.reaches([1, 33, 65, 97]):  # 1, 2, 3 and 4 blocks
      jax.jit(lambda st: da.decode_attention(q, k, v, st, 0.25))(jnp.int32(0))
    jax.jit(lambda st: da.decode_attention(q, k, v, st, 0.25))(jnp.int32(0))
  exact, declared, undeclared = calls
  assert exact.bytes == 2 * block_bytes + io_bytes and exact.runs == 1
  assert declared.bytes == 2.5 * block_bytes + io_bytes and declared.runs == 4
  assert undeclared.bytes == 4 * block_bytes + io_bytes
  rows = accounting.summarize([declared])
  assert rows[0]["calls"] == 4 and rows[0]["bytes"] == 4 * declared.bytes
  # Per row and block: two [C, D] x [D, 32] products, the 32 keys padded to the MXU's 128.
  assert exact.flops == 2 * 2 * r * 2 * 8 * h * kd * 128


def test_rejects_a_cache_that_is_not_whole_blocks():
  q, k, v = _inputs(2, 4, 1, 16, 40, jnp.float32)
  with pytest.raises(ValueError, match=r"caches \[R, S, H\*K\] with S % 32 == 0"):
    da.decode_attention(q, k, v, 3, 0.25)
