"""Speculative Jacobi decoding samples the exact sequence law: a goodness-of-fit test with the
power to catch a biased acceptance rule, and three planted bugs that it must catch.

The "model" is a table: the raw logits of step i are a fixed random vector for each class and
each whole prefix (tokens of steps < i), answered through the same cache protocol as
`rar.RAR` (`decoding.Feeder.run` writes the fed tokens at their positions, then answers each
fed position from the positions up to it; positions past it may hold stale drafts and are
never read). With L = 6 steps of a 2-code book the law of each class is 64 sequences whose
probabilities are enumerated exactly, with guidance, its schedule and the temperature applied
by `decoding.step_logits` as in the real sampler.

`speculative.decode` samples N independent batches of B = 8 rows in one jitted call (vmapped
over the batches' keys), window W = 4 < L: the window shifts, and the rows of a batch accept
different numbers of tokens (the pulled-back variant below changes the law only because rows
run ahead of the batch's slowest row). The rows of one batch share the window start, so they
are not independent of each other; the N samples of one row index are. Each row index gets its
own chi-square test against its class's exact law, Bonferroni-combined over the B rows.

Planted bugs, each of which must fail that test at every seed:
  a. the acceptance ignores q: u < p(y), as if every draft were a fresh one-hot;
  b. the rejected position is drawn from p instead of normalize(max(0, p - q));
  c. every row is pulled back to the batch's minimum committed count, so accepted tokens of the
     rows ahead are tested again.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rar_jax.sampling import decoding, speculative

V, L, W, B = 2, 6, 4, 8  # codes, steps, window, rows per batch
N = 8192  # batches per seed: N samples per row index
CLASSES = np.arange(B) % 2  # row b samples class b % 2; class 2 is the null class
SETTINGS = decoding.SamplingConfig(guidance_scale=2.0, guidance_power=1.0, temperature=1.3)
OFFSET = np.concatenate([[0], np.cumsum(V ** np.arange(L))])  # [L + 1]: prefixes before step i
SEQS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)  # [V^L, L]
SEQ_CODE = V ** np.arange(L - 1, -1, -1)  # [L]: a sequence's row in SEQS
SEEDS = (0, 1, 2)
MIN_EXPECTED = 5  # cells expected to hold fewer samples are pooled into one


def _table(seed: int) -> np.ndarray:
  """[3, prefixes, V] float32 raw logits for classes 0, 1 and the null class, N(0, 1.5^2)."""
  return np.random.default_rng(seed).normal(0, 1.5, (3, OFFSET[-1], V)).astype(np.float32)


def _prefix_index(tokens, step, xp=np):
  """[..., T] rows of the table answering steps [T]: OFFSET[step] + the base-V code of the
  tokens of steps < step, from tokens [..., L - 1] (steps 0 .. L - 2); xp: np or jnp."""
  power = step[:, None] - 1 - xp.arange(L - 1)  # [T, L - 1]: digit weights of the code
  weight = xp.where(power >= 0, V ** xp.maximum(power, 0), 0)
  return xp.asarray(OFFSET)[step] + (tokens[..., None, :] * weight).sum(-1)


def _feeder(table: np.ndarray) -> decoding.Feeder:
  """The table as a guided model of B (cond, null) row pairs; the cache holds the fed ids."""
  table = jnp.asarray(table)
  class_tok = jnp.asarray(np.stack([CLASSES, np.full(B, 2)], 1).reshape(-1), jnp.int32)

  def run(ids, start, cache):  # ids [2B, T] at positions [start, start + T); cache [2B, L + 1]
    cache = jax.lax.dynamic_update_slice(cache, ids.astype(jnp.int32), (0, start))
    # Position q answers step q - 1 from the class (position 1) and steps < q - 1 (2 .. q).
    step = jnp.clip(start + jnp.arange(ids.shape[1]) - 1, 0, L - 1)  # [T]
    rows = _prefix_index(cache[:, 2:], step, jnp)  # [2B, T]
    return table[cache[:, 1:2], rows], cache  # [2B, T, V]

  return decoding.Feeder(run, class_tok, 2, jnp.zeros((2 * B, L + 1), jnp.int32))


def _logits_of(raw: jax.Array, steps: jax.Array) -> jax.Array:
  return decoding.step_logits(SETTINGS, raw, steps, L)


def _exact(table: np.ndarray) -> np.ndarray:
  """[2, V^L] float64 probability of each sequence of SEQS per class, by enumeration."""
  probs = np.ones((2, len(SEQS)))
  for i in range(L):
    rows = _prefix_index(SEQS[:, : L - 1], np.array([i]))[:, 0]  # [V^L]
    for c in range(2):
      raw = np.stack([table[c, rows], table[2, rows]], 1).reshape(-1, 1, V)  # (cond, null)
      logits = np.asarray(_logits_of(jnp.asarray(raw), jnp.array([i])), np.float64)[:, 0]
      logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
      probs[c] *= np.exp(logp[np.arange(len(SEQS)), SEQS[:, i]])
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
  return probs


def _sample(table: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
  """Tokens [S, N, B, L] and model calls [S, N] of N batches per seed, in one jitted call.

  A fresh jit per call traces `speculative` anew, so a monkeypatched rule takes effect. The
  keys are "rbg" (XLA's bit generator): the same algorithm, a third less compile time than
  threefry on the CPU.
  """
  feed = _feeder(table)

  @jax.jit
  def run(keys):  # [S * N] keys
    return jax.vmap(lambda k: speculative.decode(feed, _logits_of, W, L, V, k))(keys)

  keys = jnp.concatenate([jax.random.split(jax.random.key(s, impl="rbg"), N) for s in seeds])
  tokens, calls = run(keys)
  return np.asarray(tokens).reshape(len(seeds), N, B, L), np.asarray(calls).reshape(len(seeds), N)


def _p_value(tokens: np.ndarray, exact: np.ndarray) -> float:
  """Chi-square goodness of fit of each row index's N samples [N, B, L] against its class's
  exact law, rare cells pooled, Bonferroni over the B row indices."""
  codes = tokens @ SEQ_CODE  # [N, B]
  p_values = []
  for b in range(B):
    counts = np.bincount(codes[:, b], minlength=len(SEQS))
    expected = exact[CLASSES[b]] * len(codes)
    big = expected >= MIN_EXPECTED
    observed = np.array([*counts[big], counts[~big].sum()])
    expected = np.array([*expected[big], expected[~big].sum()])
    p_values.append(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)
  return min(1.0, B * min(p_values))


@pytest.fixture(scope="module")
def table() -> np.ndarray:
  return _table(0)


@pytest.fixture(scope="module")
def exact(table) -> np.ndarray:
  return _exact(table)


def test_the_table_model_matches_its_enumeration(table, exact):
  """Teacher forcing every sequence through the feeder (one call over all L positions)
  reproduces the enumerated law: the cache protocol and the table agree."""
  feed = _feeder(table)
  seqs = SEQS[np.random.default_rng(0).choice(len(SEQS), B, replace=False)]  # [B, L]
  steps = jnp.asarray(seqs[:, : L - 1].repeat(2, 0))  # [2B, L - 1]: (cond, null) rows
  fed = jnp.concatenate([feed.class_tok[:, None], steps], 1)  # positions 1 .. L
  _, cache = feed.run(jnp.zeros((2 * B, 1), jnp.int32), 0, feed.cache)  # the cls position
  raw, _ = feed.run(fed, 1, cache)  # [2B, L, V]: step i's logits at position i + 1
  logp = jax.nn.log_softmax(_logits_of(raw, jnp.arange(L)), -1)  # [B, L, V]
  got = np.exp(np.take_along_axis(np.asarray(logp, np.float64), seqs[..., None], -1).sum((1, 2)))
  want = exact[CLASSES, seqs @ SEQ_CODE]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_speculative_samples_pass_at_every_seed(table, exact):
  tokens, calls = _sample(table, SEEDS)
  for seed, seed_tokens in zip(SEEDS, tokens, strict=True):
    assert _p_value(seed_tokens, exact) > 1e-3, seed
  # The window moves in wider steps than one token: fewer calls than the L + 1 of a W = 1 run.
  assert calls.max() <= L + 1 and calls.mean() < L
  assert np.ptp(calls) > 0  # batches accept differently


def _ignores_q(right, p, q, drafts, fixed, u):
  return right(p, jax.nn.one_hot(drafts, p.shape[-1], dtype=p.dtype), drafts, fixed, u)


def _from_p(right, p, q):
  del right, q
  return jnp.log(p)


def _pulled_back(right, n, s, j, window):
  return jnp.full_like(n, jnp.min(right(n, s, j, window)))


PLANTED = {
  "a_ignores_q": ("_accept", _ignores_q),
  "b_draws_from_p": ("_residual_logits", _from_p),
  "c_pulled_back_to_the_batch_minimum": ("_advance", _pulled_back),
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bugs_fail_at_every_seed(table, exact, bug, monkeypatch):
  name, wrong = PLANTED[bug]
  monkeypatch.setattr(speculative, name, functools.partial(wrong, getattr(speculative, name)))
  tokens, _ = _sample(table, SEEDS)
  p_values = [_p_value(seed_tokens, exact) for seed_tokens in tokens]
  assert max(p_values) < 1e-9, p_values
