"""FLOP accounting against XLA, the chip table, and the deferred metric writer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax.infra import chips
from rar_jax.model import presets, rar
from rar_jax.training import metrics


@pytest.mark.slow
def test_analytic_flops_match_xla_cost_analysis():
  # Unscanned: XLA's cost analysis counts a loop body once, so compare on the unrolled model.
  cfg = presets.resolve(
    dict(
      width=64,
      depth=2,
      heads=4,
      mlp_dim=160,
      seq_len=30,
      codebook_size=48,
      num_classes=5,
      scan_layers=False,
      dropout=0.0,
      attn_dropout=0.0,
    )
  )
  params = rar.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((4, 30), jnp.int32)
  labels = jnp.zeros((4,), jnp.int32)

  def loss(p):
    return rar.forward(cfg, p, tokens, labels).sum()

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  xla = compiled.cost_analysis()["flops"]
  analytic = 4 * metrics.train_flops_per_sequence(cfg)
  # XLA also counts the elementwise work (norms, softmax, GELU, AdaLN modulation, Adam-free):
  # the matmul + attention count must be most of it and never above it.
  assert 0.75 * xla < analytic <= 1.02 * xla, (analytic, xla)


def test_matmul_parameter_count_of_rar_b():
  cfg = presets.resolve({"variant": "B"})
  per_block = 10 * 768 * 768 + 2 * 768 * 3072
  assert metrics.matmul_params_per_token(cfg) == 24 * per_block + 2 * 768 * 768 + 768 * 1024


@pytest.mark.parametrize(
  "kind,peak",
  [
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H200", 989.0),
    ("cpu", None),
    ("TPU v7x", None),
  ],
)
def test_peak_table(kind, peak):
  assert chips.peak_tflops(kind) == peak


class _Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, scalars))


def test_metrics_are_written_a_step_late_and_nonfinite_stops():
  cfg = presets.resolve(dict(width=32, depth=1, heads=4, mlp_dim=64))
  writer = _Writer()
  logger = metrics.TrainMetrics(writer, cfg, global_batch=8, every=1)
  assert logger.push(1, {"loss": jnp.float32(2.0)}) is None
  assert logger.push(2, {"loss": jnp.float32(1.5)}) == {"loss": 2.0}
  assert [s for s, _ in writer.rows] == [1]
  assert {"images_per_s", "tokens_per_s", "model_tflops_per_device", "step_time_s"} <= set(
    writer.rows[0][1]
  )
  assert "mfu" not in writer.rows[0][1]  # unknown chip (CPU): no MFU
  assert logger.flush() == {"loss": 1.5}
  logger.push(3, {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0)})
  with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
    logger.flush()
