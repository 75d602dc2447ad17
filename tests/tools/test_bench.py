"""The benchmark CLI: one JSON line per run with the documented fields, and an optional trace."""

import json
import os
import subprocess
import sys

import pytest

SIZES = ["--width=32", "--depth=1", "--heads=2", "--mlp_dim=64", "--seq_len=16", "--batch=2"]
FIELDS = {
  "backend",
  "device_kind",
  "device_count",
  "width",
  "depth",
  "heads",
  "mlp_dim",
  "batch",
  "dtype",
  "scan",
  "attention_blocks",
  "compile_s",
  "step_s",
  "images_per_s",
  "tokens_per_s",
  "model_tflops_per_device",
  "peak_tflops_per_device",
  "fraction_of_peak",
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "sample"])
def test_bench_prints_one_json_line(mode, tmp_path):
  trace = tmp_path / "trace"
  args = [sys.executable, "-m", "rar_jax.tools.bench", mode, *SIZES, "--steps=2", "--warmup=1"]
  args += ["--noscan", "--attention_blocks=2"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run(
    [*args, f"--profile_dir={trace}"], capture_output=True, text=True, check=True, env=env
  )
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  assert len(lines) == 1, out.stdout
  result = json.loads(lines[0])
  assert FIELDS <= result.keys()
  assert result["mode"] == mode and result["backend"] == "cpu" and result["width"] == 32
  assert result["scan"] is False and result["attention_blocks"] == 2
  assert result["step_s"] > 0 and 0 < result["fraction_of_peak"] < 1.5
  assert result["images_per_s"] == pytest.approx(2 / result["step_s"], rel=1e-2)
  assert list(trace.rglob("*.xplane.pb")), "no profiler trace written"
