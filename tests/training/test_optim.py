"""The optimizer: the official learning-rate formula and weight-decay groups."""

import math

import jax
import numpy as np
import pytest

from rar_jax.model import convert, presets, rar
from rar_jax.training import optim


def _official_lr(step: int, base: float, warmup: int, total: int, end: float) -> float:
  """utils/lr_schedulers.py of the official code, cosine with linear warmup."""
  if step < warmup:
    return base * step / warmup
  progress = min((step - warmup) / (total - warmup), 1.0)
  return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup,total", [(62_500, 250_000), (3, 10), (100, 100_000)])
def test_schedule_is_the_official_formula(warmup, total):
  schedule = optim.learning_rate_schedule(4e-4, warmup, total, 1e-5)
  steps = sorted({0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total, total + 9})
  ours = np.array([float(schedule(s)) for s in steps])
  official = np.array([_official_lr(s, 4e-4, warmup, total, 1e-5) for s in steps])
  np.testing.assert_allclose(ours, official, rtol=1e-5, atol=1e-12)


def test_weight_decay_groups_are_the_official_ones():
  for scan in (True, False):
    cfg = presets.resolve(
      dict(width=32, depth=2, heads=4, mlp_dim=64, seq_len=16, codebook_size=32, scan_layers=scan)
    )
    mask = optim.weight_decay_mask(cfg)
    params = jax.eval_shape(lambda cfg=cfg: rar.init_params(cfg, jax.random.key(0)))
    assert jax.tree.structure(mask) == jax.tree.structure(params)
  leaves = jax.tree.leaves(convert.official_names(cfg)), jax.tree.leaves(mask)
  names = dict(zip(*leaves, strict=True))
  decayed = sorted(n for n, d in names.items() if d)
  assert decayed == sorted(
    [
      "cls_token",  # its name matches no exclusion
      "lm_head.weight",
      *(
        f"blocks.{i}.{k}.weight"
        for i in range(2)
        for k in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
      ),
    ]
  )
  assert not names["adaln_before_head.adaLN_modulation.1.weight"]  # "adaln" contains "ln"
