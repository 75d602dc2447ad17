"""The capacity planner: topologies, and a compile of the digits step on 8 simulated devices."""

import dataclasses
import os

import jax
import pytest

from configs import digits
from rar_jax.infra import chips
from rar_jax.tools import plan, tpu_compiler


def plan_digits(overrides: dict | None = None, **options):
  """The planner on configs/digits.py with config overrides (flattened keys) and options."""
  config = digits.get_config()
  config.update_from_flattened_dict(overrides or {})
  return plan.run(config, "configs/digits.py", plan.Options(**options))


# The XLA:CPU stand-in (tests/tools/test_tpu_compile.py plans with libtpu); unrolled, so the one
# compile also gives XLA's FLOP count (a scanned config needs two more).
OPTIONS = dict(devices=8, chip="v5e", hbm_gib=0.0001, compiler="cpu")
OVERRIDES = {"model.scan_layers": False}


@pytest.mark.parametrize(
  "topology, chip, count",
  [
    ("v5p-64", "v5p", 32),
    ("v5p-128", "v5p", 64),
    ("v4-8", "v4", 4),
    ("v6e-256", "v6e", 256),
    ("v6e-64", "v6e", 64),
    ("v5litepod-16", "v5e", 16),
    ("v5e-8", "v5e", 8),
    ("h100-8", "h100", 8),
    ("h200-8", "h200", 8),
  ],
)
def test_parse_topology(topology, chip, count):
  parsed_chip, parsed_count = chips.parse_topology(topology)
  assert (parsed_chip.name, parsed_count) == (chip, count)


@pytest.mark.parametrize("bad", ["v5p-3", "v4-0", "tpu-8", "v5p", "v6e-x"])
def test_parse_topology_rejects(bad):
  with pytest.raises(ValueError):
    chips.parse_topology(bad)


def test_requested_devices_from_argv():
  assert plan.requested_devices(["--config=x", "--topology=v5p-128"]) == 64
  assert plan.requested_devices(["--devices", "16"]) == 16
  assert plan.requested_devices(["--config=x"]) is None


@pytest.fixture(scope="module")
def planned():
  return plan_digits(OVERRIDES, **OPTIONS)


@pytest.mark.slow
def test_plan_memory_flops_and_verdicts(planned):
  analysis, est, text = planned
  # --hbm_gib=0.0001: does not fit.
  assert not est.fits and "DOES NOT FIT: needs 0.0" in text and "of 0.0001 GiB" in text
  for line in ("Memory per device", "arguments (params + optimizer state", "temporaries", "FLOPs"):
    assert line in text
  # The same compile on the chip's real 16 GiB fits.
  chip = chips.chip_by_name("v5e")
  fits = plan.estimate(analysis, chip, mfu=0.5)
  assert fits.fits and fits.verdict.startswith("FITS: needs 0.0")
  assert "FITS: needs" in plan.render(analysis, fits, chip)

  # Pure data parallel: every device holds params + Adam's two moments (3 x 4 bytes a param);
  # the compiled arguments are those plus the batch, step and rng.
  mem, ab = analysis.memory, analysis.analytic_bytes
  assert ab["optimizer"] == pytest.approx(2 * ab["params"], rel=1e-3)
  assert ab["params"] == pytest.approx(4 * analysis.num_params, rel=1e-6)
  assert mem["argument"] == pytest.approx(ab["params"] + ab["optimizer"] + ab["batch"], rel=0.01)
  assert mem["alias"] > 0.99 * mem["argument"]  # the state is donated
  assert mem["temp"] > 0 and analysis.peak_bytes > mem["argument"]

  # XLA's FLOPs (reported per device, x 8) vs the analytic model FLOPs. Measured: 1.133 on this
  # width-128 / 66-position model (element-wise ops, AdamW and the masked half of the attention
  # are ~12% here) and 1.024 for RAR-XL; the model-FLOP count must never exceed XLA's.
  ratio = analysis.xla_flops_per_device * 8 / analysis.analytic_flops
  assert 1.0 <= ratio <= 1.2, ratio

  # 50% MFU of v5e's 197 TFLOP/s.
  assert fits.step_s == pytest.approx(analysis.analytic_flops / (8 * 197e12 * 0.5))

  # A TPU compiler's time estimate: printed with the MFU it implies (analytic model FLOPs).
  tpu = dataclasses.replace(analysis, compiler="tpu", xla_seconds_estimate=fits.step_s * 2)
  est = plan.estimate(tpu, chip, mfu=0.5)
  assert est.compiler_step_s == fits.step_s * 2 and est.compiler_mfu == pytest.approx(0.25)
  text = plan.render(tpu, est, chip)
  assert "the TPU compiler's own estimate (cost_analysis optimal_seconds)" in text
  assert "= 25.0% MFU" in text
  kernels = dataclasses.replace(tpu, kernel_seconds=0.004)  # a step with Pallas kernels in it
  text = plan.render(kernels, plan.estimate(kernels, chip, mfu=0.5), chip)
  assert "optimal_seconds, plus the Pallas kernels' own roofline 4.00 ms): step" in text


def test_plan_rejects_bad_arguments():
  with pytest.raises(ValueError, match="contradicts"):
    plan_digits(topology="v5p-16", chip="v6e")
  with pytest.raises(ValueError, match="is 8 chips"):
    plan_digits(topology="v5p-16", devices=4)
  with pytest.raises(RuntimeError, match="devices requested"):
    plan_digits(devices=64, compiler="cpu")
  with pytest.raises(ValueError, match="chip 'h100' has no TPU compiler target"):
    plan_digits(topology="h100-8", compiler="tpu")
  with pytest.raises(ValueError, match="--num_slices=2 contradicts --config.mesh.dcn_data=4"):
    plan_digits({"mesh.dcn_data": 4}, topology="v5p-8", num_slices=2)


def test_simulated_device_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1 --xla_force_host_platform_device_count=8")
  plan.simulate_host_devices(64)
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=64"
  assert jax.config.jax_platforms == "cpu"  # the planner compiles on simulated CPU devices


@pytest.mark.parametrize(
  "bad, match",
  [
    ("v9:2x2", "unknown chip 'v9'"),
    ("h100:2x2", "no TPU compiler target"),
    ("v5p:2x2", "3 positive dims"),
    ("v5p-128x", "not of the form"),
  ],
)
def test_bad_topologies_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    if ":" in bad:
      tpu_compiler.parse_slice(bad)
    else:
      chips.parse_topology(bad)


@pytest.mark.parametrize(
  "chip, count, dims",
  [("v5p", 4, (2, 2, 1)), ("v5p", 16, (2, 2, 4)), ("v5p", 64, (4, 4, 4)), ("v6e", 64, (8, 8))],
)
def test_slice_shape(chip, count, dims):
  assert tpu_compiler.slice_shape(chips.chip_by_name(chip), count) == dims


def test_slice_shape_rejects_gpus_and_odd_counts():
  with pytest.raises(ValueError, match="'h100' has no TPU compiler target"):
    tpu_compiler.slice_shape(chips.chip_by_name("h100"), 8)
  with pytest.raises(ValueError, match="12 v5p chips is not a TPU slice"):
    tpu_compiler.slice_shape(chips.chip_by_name("v5p"), 12)
