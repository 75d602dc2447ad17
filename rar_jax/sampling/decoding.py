"""Jitted class-conditional sampling: a [cls, class] prefill into a KV cache, then `lax.scan`s
over the L generation steps, one token per model call (in a few segments, each with a cache
as long as its last position; `segment_ends`). A speculative window (`speculative.py`)
samples the same distribution in fewer, wider calls.

Each step takes the logits of the last fed position and applies, in the official order,
classifier-free guidance with the power-cosine schedule, temperature, then the optional
top-k / top-p filters (off by default, as in the paper), and draws the token with
`jax.random.categorical(fold_in(key, step), ...)` on the global [B, V] logits, so the same key
gives the same tokens on every mesh (threefry is partitionable).

Guided batch layout: 2B model rows with sample b's conditional row at 2b and its null-class twin
at 2b + 1 (the official code concatenates [cond; null]). Interleaving keeps both rows of a pair
on the same device when the batch is sharded, so the guidance combination needs no
communication. Both rows are fed the same sampled token.

Public calls:
  SamplingConfig(guidance_scale, guidance_power, temperature, top_k, top_p, speculative_window),
  or SamplingConfig.from_group(config.sampling, **overrides)
  generate(cfg, params, class_ids, key, sampling, orders=None) -> tokens [B, L] (raster layout)
  generate_counted(...same...) -> (tokens, model calls of the batch)
  score(cfg, params, tokens, class_ids, sampling, orders=None) -> per-step logits [B, L, V]
  make_sampler(cfg, sampling) -> jitted fn(params, class_ids, key, orders=None) -> tokens
  sample_on_mesh(sampler, mesh, params, class_ids, key, orders=None) -> tokens
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.model import layers, rar, token_orders
from rar_jax.model.kernels import accounting
from rar_jax.model.kernels.flash_attention import target_platform
from rar_jax.model.presets import ModelConfig
from rar_jax.sampling import speculative

Array = jax.Array
Params = Any
Sampler = Callable[..., Array]

_local = threading.local()  # the decode loop's unroll (`unrolled_loops`), for cost analyses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How logits become tokens. Static under jit: a new config compiles a new sampler.

  Attributes:
    guidance_scale: g of classifier-free guidance. 0 disables guidance (the official rule: no
      null-class rows, plain conditional logits); any other value runs the doubled batch, so
      g = 1 gives the conditional logits at twice the cost.
    guidance_power: pow of the power-cosine schedule; 0 gives a constant g (0^0 = 1).
    temperature: divides the logits after guidance.
    top_k: keep the k largest logits; 0 is off.
    top_p: keep the smallest set of tokens with probability >= top_p; 1.0 is off.
    speculative_window: W > 0 samples with speculative Jacobi decoding over W drafted tokens
      per model call (`rar_jax.sampling.speculative`; the same distribution); 0 is the plain
      sampler, one token per call; "auto" picks W per backend and images per chip
      (`speculative.default_window`) when the sampler is called (`resolve_window`).
  """

  guidance_scale: float = 0.0
  guidance_power: float = 0.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  speculative_window: int | str = 0

  def __post_init__(self):
    window = self.speculative_window
    if isinstance(window, str) and window != speculative.AUTO:
      try:  # "4" from a command line or a config override
        window = int(window)
      except ValueError:
        raise ValueError(
          f"sampling.speculative_window must be an int >= 0 or 'auto', got {window!r}"
        ) from None
      object.__setattr__(self, "speculative_window", window)
    if not self.guidance_scale >= 0:  # also NaN
      raise ValueError(
        f"sampling.guidance_scale must be >= 0 (0 is off), got {self.guidance_scale!r}"
      )
    if not self.temperature > 0:
      raise ValueError(f"sampling.temperature must be > 0, got {self.temperature!r}")
    if not self.guidance_power >= 0:
      raise ValueError(f"sampling.guidance_power must be >= 0, got {self.guidance_power!r}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0 (0 is off), got {self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
    if self.speculative_window != speculative.AUTO and self.speculative_window < 0:
      raise ValueError(
        f"sampling.speculative_window must be >= 0 (0 is off), got {self.speculative_window!r}"
      )

  @classmethod
  def from_group(cls, group: Mapping[str, Any], **overrides: Any) -> SamplingConfig:
    """From a config's `sampling` group (or an export's sampling dict); overrides that are not
    None replace the group's values (e.g. command-line flags)."""
    values = {f.name: group[f.name] for f in dataclasses.fields(cls) if f.name in group}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)

  @property
  def guided(self) -> bool:
    return self.guidance_scale != 0.0

  def resolve_window(self, batch: int, seq_len: int) -> SamplingConfig:
    """This config with "auto" windows fixed for a global batch of `batch` images under the
    active mesh (images per chip: batch over its data-parallel devices; the platform: the mesh's
    devices', e.g. a TPU topology compiled for from a CPU host), at most seq_len; other configs
    unchanged."""
    if self.speculative_window != speculative.AUTO:
      return self
    mesh = jax.sharding.get_abstract_mesh()
    split = 1 if mesh.empty else math.prod(mesh.shape.get(a, 1) for a in sharding.BATCH_AXES)
    window = speculative.default_window(target_platform(), max(1, batch // split))
    return dataclasses.replace(self, speculative_window=min(window, seq_len))


def guidance_schedule(sampling: SamplingConfig, step: Array | int, num_steps: int) -> Array:
  """s_t = (g - 1) * (1 - cos(pi * (t / L)^pow)) / 2 + 1: 1 at t = 0 rising towards g."""
  ratio = (jnp.asarray(step, jnp.float32) / num_steps) ** sampling.guidance_power
  return (sampling.guidance_scale - 1.0) * (1.0 - jnp.cos(math.pi * ratio)) / 2.0 + 1.0


def guided_logits(cond: Array, uncond: Array, scale: Array | float) -> Array:
  """u + (c - u) * s, written c + (c - u) * (s - 1) so that s = 1 returns c exactly."""
  return cond + (cond - uncond) * (scale - 1.0)


def _top_k(logits: Array, k: int) -> Array:
  kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [B, 1]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def _top_p(logits: Array, p: float) -> Array:
  ranked = jax.lax.top_k(logits, logits.shape[-1])[0]  # [B, V] descending
  probs = jax.nn.softmax(ranked, axis=-1)
  mass_above = jnp.cumsum(probs, axis=-1) - probs  # the top token always has 0 < p
  cutoff = jnp.min(jnp.where(mass_above < p, ranked, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def step_logits(sampling: SamplingConfig, raw: Array, step: Array | int, num_steps: int) -> Array:
  """Model logits of one step (or of a window of W steps) -> the logits its tokens are drawn from.

  Args:
    sampling: the sampling config.
    raw: [R, V] (or [R, W, V]) float32 model logits; R = 2B interleaved (cond, null) rows when
      guided, else B.
    step: t in [0, L) (or [W] steps, one per window position).
    num_steps: L.

  Returns:
    [B, V] (or [B, W, V]) float32: guided, divided by the temperature, then top-k / top-p
    filtered (-inf).
  """
  logits = raw
  if sampling.guided:
    pairs = raw.reshape(-1, 2, *raw.shape[1:])  # [B, 2, (W,) V]
    scale = guidance_schedule(sampling, step, num_steps)
    scale = scale[..., None] if scale.ndim else scale  # [W, 1] against [B, W, V]
    logits = guided_logits(pairs[:, 0], pairs[:, 1], scale)
  logits = logits / sampling.temperature
  if sampling.top_k:
    logits = _top_k(logits, sampling.top_k)
  if sampling.top_p < 1.0:
    logits = _top_p(logits, sampling.top_p)
  return logits


def _model_rows(
  cfg: ModelConfig, class_ids: Array, orders: Array | None, rows: int
) -> tuple[Array, Array]:
  """Class tokens [R] and orders [R, L] of the R = B * rows model rows ((cond, null) pairs)."""
  b = class_ids.shape[0]
  orders = rar.raster_orders(cfg, b) if orders is None else jnp.asarray(orders, jnp.int32)
  classes = class_ids.astype(jnp.int32)
  if rows == 2:
    classes = jnp.stack([classes, jnp.full_like(classes, cfg.null_class)], axis=1).reshape(-1)
  return rar.class_tokens(cfg, classes), jnp.repeat(orders, rows, axis=0)


@dataclasses.dataclass(frozen=True)
class Feeder:
  """The cached model calls of one sampled batch (traced inside a jitted sampler).

  Attributes:
    run: fn(ids [R, T], start, cache) -> (logits [R, T, V] float32, cache): positions
      [start, start + T) against the cache, written in place.
    class_tok: [R] class token ids of the model rows.
    rows: model rows per sample (2 with guidance: the (cond, null) pair, else 1).
    cache: the empty preallocated cache (L + 1 positions).
  """

  run: Callable[[Array, Array | int, rar.Cache], tuple[Array, rar.Cache]]
  class_tok: Array
  rows: int
  cache: rar.Cache


def feeder(
  cfg: ModelConfig,
  sampling: SamplingConfig,
  params: Params,
  class_ids: Array,
  orders: Array | None,
) -> Feeder:
  """Unrolls the layers and binds params, classes and orders for cached decoding."""
  b = class_ids.shape[0]
  rows = 2 if sampling.guided else 1
  class_tok, row_orders = _model_rows(cfg, class_ids, orders, rows)
  cfg, params = rar.unscan(cfg, params)  # one cache buffer per layer, updated in place
  apply = functools.partial(rar.RAR(cfg).apply, {"params": params})

  axes = layers.cache_axes(cfg)

  def run(ids: Array, start: Array | int, cache: rar.Cache) -> tuple[Array, rar.Cache]:
    cache = jax.tree.map(lambda a: nn.with_logical_constraint(a, axes), cache)
    return apply(ids, class_tok, row_orders, start, cache)

  return Feeder(run, class_tok, rows, rar.init_cache(cfg, b * rows))


def _decode(
  cfg: ModelConfig,
  sampling: SamplingConfig,
  params: Params,
  class_ids: Array,
  orders: Array | None,
  key: Array | None,
  forced: Array | None,
  unroll: int = 1,
) -> tuple[Array, Array | None]:
  """The cached generation loop; with `forced` [B, L] (step order) it feeds those tokens;
  `unroll` token steps per loop iteration (`unrolled_loops`).

  Returns:
    tokens [B, L] int32 in step order, and the [B, L, V] step logits when forced (else None).
  """
  seq_len = cfg.seq_len
  feed = feeder(cfg, sampling, params, class_ids, orders)
  rows, class_tok = feed.rows, feed.class_tok
  ends = decode_segments(cfg)
  flat = layers.flat_cache(cfg)  # the decode kernel reads only the filled part: one segment
  cache = feed.cache if flat else rar.init_cache(cfg, class_tok.shape[0], ends[0] + 2)
  prefix = jnp.stack([jnp.zeros_like(class_tok), class_tok], axis=1)  # [R, 2] = [cls, class]
  out, cache = feed.run(prefix, 0, cache)

  def choose(raw: Array, t: Array | int, forced_t: Array | None) -> tuple[Array, Array | None]:
    logits = step_logits(sampling, raw, t, seq_len)  # [B, V]
    if forced_t is not None:
      return forced_t, logits
    return jax.random.categorical(jax.random.fold_in(key, t), logits).astype(jnp.int32), None

  def body(carry, xs):
    raw, cache = carry
    t, forced_t = xs
    token, logits = choose(raw, t, forced_t)
    out, cache = feed.run(jnp.repeat(token, rows)[:, None], t + 2, cache)  # step t at q = t + 2
    return (out[:, 0], cache), (token, logits)

  forced_cols = None if forced is None else forced[:, :-1].T  # [L - 1, B]
  raw, tokens, logits, start = out[:, 1], [], [], 0
  for end in ends:  # steps [start, end) write positions up to end + 1: a cache of end + 2
    if not flat:
      grow = ((0, 0), (0, 0), (0, end + 2 - cache[0]["k"].shape[2]), (0, 0))
      cache = jax.tree.map(lambda a, grow=grow: jnp.pad(a, grow), cache)
    xs = (jnp.arange(start, end), None if forced is None else forced_cols[start:end])
    with accounting.reaches([t + 3 for t in range(start, end)]):  # step t sees positions <= t + 2
      (raw, cache), (seg_tokens, seg_logits) = jax.lax.scan(body, (raw, cache), xs, unroll=unroll)
    tokens.append(seg_tokens)
    logits.append(seg_logits)
    start = end
  last, last_logits = choose(raw, seq_len - 1, None if forced is None else forced[:, -1])
  tokens = jnp.concatenate([*tokens, last[None]]).T  # [B, L]
  if forced is None:
    return tokens, None
  return tokens, jnp.concatenate([*logits, last_logits[None]]).transpose(1, 0, 2)


def decode_segments(cfg: ModelConfig) -> list[int]:
  """Ends of the decode loop's segments for this model: one segment when the cache is the decode
  kernel's (it reads only the filled part), else four (`segment_ends`)."""
  return segment_ends(cfg.seq_len - 1, 1 if layers.flat_cache(cfg) else 4)


@contextlib.contextmanager
def unrolled_loops(unroll: int) -> Iterator[None]:
  """Samplers made inside the block (`make_sampler`) run `unroll` token steps per iteration of
  each segment's loop (`lax.scan(unroll=...)`). The same tokens; XLA's cost analysis counts a
  loop body once, so the difference of an unroll-2 and an unroll-1 program is what one more
  step costs (`rar_jax.tools.bench`)."""
  previous = getattr(_local, "unroll", 1)
  _local.unroll = unroll
  try:
    yield
  finally:
    _local.unroll = previous


def segment_ends(num_steps: int, segments: int = 4) -> list[int]:
  """Ends of the decode loop's segments: steps [0, e_0), [e_0, e_1), ... Each segment attends
  to a cache only as long as its last position, so early steps read less of it."""
  return sorted({round(num_steps * (i + 1) / segments) for i in range(segments)} - {0})


def check_class_ids(cfg: ModelConfig, class_ids: Any) -> None:
  """ValueError naming the first class id outside [0, num_classes) (the null class included).

  Traced ids (inside a caller's jit) and ids spread over other hosts cannot be read here and
  are not checked.
  """
  if isinstance(class_ids, jax.core.Tracer):
    return
  if isinstance(class_ids, jax.Array) and not class_ids.is_fully_addressable:
    return
  ids = np.asarray(class_ids)
  if ids.dtype.kind not in "iu":
    raise ValueError(f"class_ids must be integers, got dtype {ids.dtype}")
  bad = np.flatnonzero((ids < 0) | (ids >= cfg.num_classes))
  if bad.size:
    raise ValueError(
      f"class id {int(ids.flat[bad[0]])} (at index {int(bad[0])}) is outside [0, {cfg.num_classes})"
    )


def generate_counted(
  cfg: ModelConfig,
  params: Params,
  class_ids: Array,
  key: Array,
  sampling: SamplingConfig,
  orders: Array | None = None,
) -> tuple[Array, Array]:
  """`generate`, also returning the model calls it made for the batch (a scalar int32: L for
  the plain sampler, fewer with a speculative window)."""
  check_class_ids(cfg, class_ids)
  sampling = sampling.resolve_window(class_ids.shape[0], cfg.seq_len)
  return _generate_counted(cfg, params, class_ids, key, sampling, orders)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "unroll"))
def _generate_counted(
  cfg: ModelConfig,
  params: Params,
  class_ids: Array,
  key: Array,
  sampling: SamplingConfig,
  orders: Array | None = None,
  unroll: int = 1,
) -> tuple[Array, Array]:
  """The jitted `generate_counted` (class ids unchecked); `unroll` as `unrolled_loops`."""
  if sampling.speculative_window:
    feed = feeder(cfg, sampling, params, class_ids, orders)
    logits_of = functools.partial(step_logits, sampling, num_steps=cfg.seq_len)
    window, seq_len, codes = sampling.speculative_window, cfg.seq_len, cfg.codebook_size
    step_tokens, calls = speculative.decode(feed, logits_of, window, seq_len, codes, key)
  else:  # [cls, class], then L - 1 steps
    step_tokens, _ = _decode(cfg, sampling, params, class_ids, orders, key, None, unroll)
    calls = jnp.int32(cfg.seq_len)
  if orders is None:
    return step_tokens, calls
  return token_orders.permute(step_tokens, jnp.argsort(orders, axis=1)), calls  # a gather


def generate(
  cfg: ModelConfig,
  params: Params,
  class_ids: Array,
  key: Array,
  sampling: SamplingConfig,
  orders: Array | None = None,
) -> Array:
  """Samples one batch of token grids.

  Args:
    cfg: model config (static).
    params: model parameters (unboxed).
    class_ids: [B] int class indices in [0, num_classes).
    key: PRNG key; step t draws with fold_in(key, t) (speculative: call c with fold_in(key, c)).
    sampling: the sampling config (static); speculative_window > 0 samples the same
      distribution with `rar_jax.sampling.speculative`.
    orders: [B, L] int generation orders (orders[b, i] = raster position of step i), e.g. from
      token_orders.sample_orders; raster (the official and default) when None.

  Returns:
    [B, L] int32 tokens in raster layout: tokens[b, orders[b, i]] = the token of step i.

  Raises:
    ValueError: a class id outside [0, num_classes) (`check_class_ids`).
  """
  return generate_counted(cfg, params, class_ids, key, sampling, orders)[0]


def score(
  cfg: ModelConfig,
  params: Params,
  tokens: Array,
  class_ids: Array,
  sampling: SamplingConfig,
  orders: Array | None = None,
) -> Array:
  """Teacher-forces `tokens` through the sampler's own cached loop.

  Args:
    tokens: [B, L] int codes in raster layout; the others as `generate`.

  Returns:
    [B, L, V] float32: logits[:, i] is what `generate` would draw step i's token from (after
    guidance, temperature and filters) given the tokens of steps < i.

  Raises:
    ValueError: a class id outside [0, num_classes) (`check_class_ids`).
  """
  check_class_ids(cfg, class_ids)
  return _score(cfg, params, tokens, class_ids, sampling, orders)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"))
def _score(
  cfg: ModelConfig,
  params: Params,
  tokens: Array,
  class_ids: Array,
  sampling: SamplingConfig,
  orders: Array | None = None,
) -> Array:
  """The jitted `score` (class ids unchecked)."""
  b = tokens.shape[0]
  orders = rar.raster_orders(cfg, b) if orders is None else orders
  forced = jnp.take_along_axis(jnp.asarray(tokens, jnp.int32), orders, axis=1)  # step order
  return _decode(cfg, sampling, params, class_ids, orders, None, forced)[1]


def make_sampler(cfg: ModelConfig, sampling: SamplingConfig) -> Sampler:
  """A jitted fn(params, class_ids, key, orders=None) -> tokens [B, L] for fixed configs.

  It compiles once per input shape/sharding (and once more for orders=None vs given); new
  params, keys, classes or orders of the same shapes reuse that compile. Concrete class ids
  are checked first (`check_class_ids`); `.lower` and the rest are the jitted function's.
  """
  if sampling.speculative_window not in (0, speculative.AUTO):
    speculative.check_window(sampling.speculative_window, cfg.seq_len)
  unroll = getattr(_local, "unroll", 1)

  def sample(params: Params, class_ids: Array, key: Array, orders: Array | None = None) -> Array:
    settings = sampling.resolve_window(class_ids.shape[0], cfg.seq_len)  # shape and mesh known
    return _generate_counted(cfg, params, class_ids, key, settings, orders, unroll)[0]

  return _CheckedSampler(cfg, jax.jit(sample))


class _CheckedSampler:
  """A jitted sampler that checks concrete class ids first; every other attribute (`lower`,
  `_cache_size`, ...) is the jitted function's."""

  def __init__(self, cfg: ModelConfig, jitted: Sampler):
    self._cfg, self._jitted = cfg, jitted

  def __call__(
    self, params: Params, class_ids: Array, key: Array, orders: Array | None = None
  ) -> Array:
    check_class_ids(self._cfg, class_ids)
    return self._jitted(params, class_ids, key, orders)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._jitted, name)


def sample_on_mesh(
  sampler: Sampler,
  mesh: Mesh,
  params: Params,
  class_ids: Array,
  key: Array,
  orders: Array | None = None,
) -> Array:
  """Runs `sampler` with the batch sharded over the mesh's batch axes (data x fsdp).

  Parameters already spread over the mesh's devices keep their sharding; any other leaf is
  replicated. B must be divisible by `sharding.data_parallel_size(mesh)`.

  Returns:
    [B, L] int32 tokens, batch-sharded; equal to the single-device tokens for the same key.
  """
  devices = set(mesh.devices.flat)
  replicated = sharding.replicated(mesh)

  def place(x: Any) -> Any:
    on_mesh = isinstance(x, jax.Array) and x.sharding.device_set == devices
    return x if on_mesh else jax.device_put(x, replicated)

  params = jax.tree.map(place, params)
  batch = sharding.batch_sharding(mesh)
  class_ids = jax.device_put(class_ids, batch)
  orders = None if orders is None else jax.device_put(orders, batch)
  with sharding.activate(mesh):
    return sampler(params, class_ids, jax.device_put(key, replicated), orders)
