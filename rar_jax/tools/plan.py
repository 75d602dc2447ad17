"""Capacity planner: will this config fit, and how long will it train, before renting chips?

  rar-plan --config=configs/imagenet.py:XL --topology=v5p-128
  rar-plan --config=configs/imagenet.py:XXL --topology=v6e-64 \
      --config.model.remat_policy=full --config.mesh.shape='(-1,4,1)'
  rar-plan --config=configs/imagenet.py:B --devices=8 --chip=h100 --mfu=0.4

It compiles the real train step (train_step.jit_train_step, the same shardings as training) for
the target number of devices, simulated on the host CPU (XLA_FLAGS
--xla_force_host_platform_device_count, set from --devices/--topology before jax starts), on
abstract inputs only: no parameter is ever allocated. It prints the per-device memory of the
compiled step (XLA memory_analysis) next to the analytic parameter and optimizer bytes of the
shardings, the FLOPs of a step (XLA cost_analysis next to metrics.train_flops_per_sequence),
the step time and time to train at a stated MFU on the target chip, and FITS / DOES NOT FIT.

Topologies: v4-N and v5p-N count TensorCores (2 per chip: v5p-128 is 64 chips); v5e-N /
v5litepod-N and v6e-N count chips; a100-N, h100-N, h200-N count GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import runpy
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rar_jax import sharding
from rar_jax.infra import atomic_files, device_memory
from rar_jax.infra.chips import CHIPS, GIB, Chip, chip_by_name, parse_topology
from rar_jax.model.kernels import accounting
from rar_jax.model.presets import ModelConfig
from rar_jax.tools import compiled_costs, tpu_compiler
from rar_jax.training import metrics, optim, train, train_state, train_step


def parse_target(topology: str) -> tuple[Chip, int, tuple[int, ...] | None]:
  """(chip, chips, libtpu slice dims or None) of "v5p-128" (Cloud TPU names) or "v5p:4x4x4"."""
  if ":" in topology:
    chip, dims = tpu_compiler.parse_slice(topology)
    return chip, math.prod(dims), dims
  chip, count = parse_topology(topology)
  return chip, count, None


def flag_value(argv: list[str], name: str) -> str | None:
  """The last value of --name=V or --name V in argv (before absl parses anything)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def requested_devices(argv: list[str]) -> int | None:
  """The device count that --devices or --topology ask for, read before jax starts."""
  devices = flag_value(argv, "devices")
  if devices and devices.isdigit():
    return int(devices)
  topology = flag_value(argv, "topology")
  if topology:
    try:
      return parse_target(topology)[1]
    except ValueError:
      return None  # reported properly once the flags are parsed
  return None


def simulate_host_devices(count: int) -> None:
  """Makes the CPU backend expose `count` devices; must run before jax's backend initialises
  (importing jax is fine: XLA reads its flags when the first backend is created)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = " ".join(
    [*flags.split(), f"--xla_force_host_platform_device_count={count}"]
  )
  jax.config.update("jax_platforms", "cpu")


DEFAULT_CHIP = "v5p"
TIGHT = 0.9  # above this share of HBM the verdict says "tight"


@dataclasses.dataclass
class Analysis:
  """What the compiles of one config on one mesh say (independent of the target chip)."""

  config_name: str
  model: ModelConfig
  num_params: int
  num_devices: int
  mesh_shape: dict[str, int]
  global_batch: int
  total_steps: int
  lower_s: float
  compile_s: float
  flops_compile_s: float
  memory: dict[str, int]  # XLA memory_analysis, bytes per device
  analytic_bytes: dict[str, int]  # params, optimizer, batch per device, from the shardings
  analytic_flops: float  # per step, global
  xla_flops_per_device: float | None
  xla_flops_method: str
  compiler: str = "cpu"  # "tpu": libtpu's compiler for the target; "cpu": the XLA:CPU stand-in
  # The TPU compiler's own step time estimate (cost_analysis "optimal_seconds") per device,
  # plus the Pallas kernels' own roofline seconds, which that analysis cannot see.
  xla_seconds_estimate: float | None = None
  kernel_seconds: float = 0.0  # the Pallas kernels' own roofline seconds per step

  @property
  def peak_bytes(self) -> int:
    """Live bytes per device: donated outputs reuse the argument buffers."""
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]


def _compile(config: Any, plan: train.Plan, cfg: ModelConfig) -> tuple[Any, Any, float, float]:
  """Lowers and compiles the train step of model `cfg` on abstract inputs.

  Returns (compiled, abstract_state, lower seconds, compile seconds).
  """
  tx, schedule = optim.make_optimizer(config.optim, cfg, plan.total_steps)
  abstract = train_state.abstract_state(cfg, tx, plan.mesh)
  sc = train_step.StepConfig(cfg, *plan.anneal, config.randomness.label_dropout)
  compiled, lower_s, compile_s = train_step.compile_train_step(
    sc, tx, schedule, plan.mesh, abstract, plan.global_batch
  )
  return compiled, abstract, lower_s, compile_s


def analyze(
  config: Any, devices: Sequence[Any], config_name: str = "", xla_flops: bool = True
) -> Analysis:
  """Compiles the train step of `config` on `devices` and measures it: simulated CPU devices
  (the XLA:CPU stand-in) or abstract TPU devices (`tpu_compiler.devices`: libtpu's compiler).

  With model.scan_layers, XLA's cost analysis counts the scanned layer once; the FLOPs then come
  from unrolled 1- and 2-layer compiles, F(depth) = F(1) + (depth - 1) * (F(2) - F(1)), which is
  exact for a stack of identical layers. For the TPU compiler those compiles always run (also
  without `xla_flops`): they give its step-time estimate ("optimal_seconds"), which a scanned
  program's analysis also counts once.
  """
  plan = train.resolve(config, devices)
  cfg = plan.model
  with accounting.collect() as whole_calls:  # the Pallas kernels the cost analysis cannot see
    compiled, abstract, lower_s, compile_s = _compile(config, plan, cfg)
  if compiled.memory_analysis() is None:
    raise RuntimeError("this XLA backend gives no memory_analysis")
  whole = compiled_costs.analysis(compiled)
  memory = {k: int(whole[k]) for k in compiled_costs.MEMORY_KEYS}
  dp = sharding.data_parallel_size(plan.mesh)
  batch_bytes = (plan.global_batch // dp) * (cfg.seq_len + 1) * 4
  analytic_bytes = {
    "params": device_memory.shard_bytes(abstract.params),
    "optimizer": device_memory.shard_bytes(abstract.opt_state),
    "batch": batch_bytes,
  }
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))

  tpu = devices[0].platform == "tpu"
  flops_s, costs, kernels = 0.0, None, []
  method = "not computed (--noxla_flops)"
  if not cfg.scan_layers and (xla_flops or tpu):
    costs, method = whole, "compiled step as configured (layers unrolled)"
    kernels = accounting.summarize(whole_calls)
  elif xla_flops or tpu:  # the TPU compiler's time estimate is always wanted
    small = compiled_costs.per_layer(lambda c: _compile(config, plan, c)[0], cfg)
    costs, flops_s, kernels = small["at_depth"], small["compile_s"], small["kernels_at_depth"]
    method = (
      "F(1) + (depth-1) x (F(2) - F(1)) from unrolled 1- and 2-layer compiles "
      "(cost_analysis counts a scanned layer once)"
    )
  if costs is not None and "flops" not in costs:
    raise RuntimeError("XLA cost_analysis reported no flops")
  xla = costs["flops"] if costs is not None else None
  seconds = costs.get("optimal_seconds") if costs is not None and tpu else None
  if seconds is not None and seconds <= 0:  # libtpu 0.0.42 gives negative ones for v6e
    seconds = None
  kernel_s = sum(row["seconds"] for row in kernels)
  if seconds is not None:  # the kernels' own roofline seconds, as `bench --compile_only` adds
    seconds += kernel_s
  return Analysis(
    config_name=config_name,
    model=cfg,
    num_params=num_params,
    num_devices=plan.mesh.size,
    mesh_shape=dict(plan.mesh.shape),
    global_batch=plan.global_batch,
    total_steps=plan.total_steps,
    lower_s=lower_s,
    compile_s=compile_s,
    flops_compile_s=flops_s,
    memory=memory,
    analytic_bytes=analytic_bytes,
    analytic_flops=metrics.train_flops_per_sequence(cfg) * plan.global_batch,
    xla_flops_per_device=xla,
    xla_flops_method=method,
    compiler="tpu" if tpu else "cpu",
    xla_seconds_estimate=seconds,
    kernel_seconds=kernel_s,
  )


@dataclasses.dataclass
class Estimate:
  """The verdict and timing of an Analysis on a chip."""

  chip: str
  hbm_gib: float
  peak_tflops: float
  mfu: float
  needs_gib: float
  fits: bool
  step_s: float
  step_s_xla: float | None  # the XLA-counted FLOPs (recompute included) at the same utilisation
  images_per_s: float
  train_hours: float
  chip_hours: float
  # The TPU compiler's own step time (cost_analysis optimal_seconds) and the MFU it implies
  # (analytic model FLOPs / (chips x peak x that time)); None without a usable estimate.
  compiler_step_s: float | None = None
  compiler_mfu: float | None = None

  @property
  def verdict(self) -> str:
    share = self.needs_gib / self.hbm_gib
    needs = f"needs {self.needs_gib:.3g} GiB of {self.hbm_gib:g} GiB"
    if not self.fits:
      return f"DOES NOT FIT: {needs} ({share:.0%})"
    tight = " - tight: the runtime reserves part of HBM" if share > TIGHT else ""
    return f"FITS: {needs} ({share:.0%}){tight}"


def estimate(a: Analysis, chip: Chip, mfu: float, hbm_gib: float | None = None) -> Estimate:
  """Fits-in-HBM and the time per step / to train.steps at `mfu` of the chip's bf16 peak."""
  hbm = chip.hbm_gib if hbm_gib is None else hbm_gib
  peak = chip.peak_tflops
  needs = a.peak_bytes / GIB
  step_s = a.analytic_flops / (a.num_devices * peak * 1e12 * mfu)
  hours = a.total_steps * step_s / 3600
  seconds = a.xla_seconds_estimate
  return Estimate(
    chip=chip.name,
    hbm_gib=hbm,
    peak_tflops=peak,
    mfu=mfu,
    needs_gib=needs,
    fits=needs <= hbm,
    step_s=step_s,
    step_s_xla=(
      None if a.xla_flops_per_device is None else a.xla_flops_per_device / (peak * 1e12 * mfu)
    ),
    images_per_s=a.global_batch / step_s,
    train_hours=hours,
    chip_hours=hours * a.num_devices,
    compiler_step_s=seconds,
    compiler_mfu=None
    if seconds is None
    else a.analytic_flops / (a.num_devices * peak * 1e12 * seconds),
  )


def _bytes(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.2f} MiB"


def _flop(n: float) -> str:
  for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
    if n >= scale:
      return f"{n / scale:.3f} {unit}"
  return f"{n / 1e6:.3f} MFLOP"


def _kernel_part(a: Analysis) -> str:
  """', plus the Pallas kernels' X ms' where the step has kernels the analysis cannot see."""
  if not a.kernel_seconds:
    return ""
  return f", plus the Pallas kernels' own roofline {_duration(a.kernel_seconds)}"


def _duration(seconds: float) -> str:
  if seconds < 1:
    return f"{seconds * 1e3:.2f} ms"
  if seconds < 3600:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
  hours = seconds / 3600
  return f"{hours:,.1f} h ({hours / 24:.2f} days)"


def render(a: Analysis, e: Estimate, chip: Chip, topology: str | None = None) -> str:
  """The human-readable report."""
  cfg, m, ab = a.model, a.memory, a.analytic_bytes
  n = a.num_devices
  where = topology or f"{n} x {chip.name}"
  mesh = " ".join(f"{k}={v}" for k, v in a.mesh_shape.items())
  dp = a.mesh_shape.get("data", 1) * a.mesh_shape.get("fsdp", 1)
  lines = [
    f"RAR plan: {a.config_name} on {where} ({n} x {chip.device_kind}, {e.hbm_gib:g} GiB HBM, "
    f"{e.peak_tflops:g} TFLOP/s bf16 peak per chip)",
    f"  model    width {cfg.width}, depth {cfg.depth}, heads {cfg.heads}, mlp {cfg.mlp_dim}, "
    f"{cfg.num_positions} positions; {a.num_params / 1e6:.2f}M params; {cfg.dtype} compute, "
    f"scan_layers={cfg.scan_layers}, remat={cfg.remat_policy}",
    f"  mesh     {mesh}; global batch {a.global_batch} = {a.global_batch // dp} per data shard; "
    f"{a.total_steps:,} steps",
    f"  compile  {a.compile_s:.1f} s (+ {a.lower_s:.1f} s lowering) by "
    + (
      f"the TPU compiler (libtpu) for {n} {chip.name} chips"
      if a.compiler == "tpu"
      else f"XLA:CPU on {n} simulated CPU devices (stand-in)"
    )
    + (
      f"; + {a.flops_compile_s:.1f} s of 1- and 2-layer compiles (FLOPs, time estimate)"
      if a.flops_compile_s
      else ""
    ),
    "",
    "Memory per device (XLA memory_analysis of the compiled step; the SPMD module is one "
    "device's program)",
    f"  arguments (params + optimizer state + batch)  {_bytes(m['argument']):>12}",
    f"    analytic from the shardings: params {_bytes(ab['params'])}, optimizer "
    f"{_bytes(ab['optimizer'])}, batch {_bytes(ab['batch'])}",
    f"  outputs (new state + metrics)                 {_bytes(m['output']):>12}",
    f"  alias (outputs reusing donated arguments)     {_bytes(m['alias']):>12}",
    f"  temporaries (activations, gradients, ...)     {_bytes(m['temp']):>12}",
    f"  generated code                                {_bytes(m['generated_code']):>12}",
    f"  peak = arguments + outputs - alias + temporaries + code = {_bytes(a.peak_bytes)}",
    e.verdict,
  ]
  if not e.fits:
    lines.append(
      "  to shrink it: --config.model.remat_policy=full (or dots), FSDP "
      "--config.mesh.shape='(-1,N,1)' (shards params and optimizer state N ways), or fewer "
      "sequences per device (train.global_batch, more chips)"
    )
  lines += [
    "",
    "FLOPs per step",
    f"  analytic (metrics.train_flops_per_sequence x {a.global_batch}): "
    f"{_flop(a.analytic_flops)} ({_flop(a.analytic_flops / n)} per device)",
  ]
  if a.xla_flops_per_device is not None:
    xla = a.xla_flops_per_device
    lines += [
      f"  XLA cost_analysis (reported per device) x {n}: {_flop(xla * n)} "
      f"({_flop(xla)} per device); XLA / analytic = {xla * n / a.analytic_flops:.3f}",
      f"    method: {a.xla_flops_method}.",
      "    XLA also counts element-wise ops, the optimizer update and the masked half of the",
      "    attention matrices, which the analytic (model FLOPs) count leaves out.",
    ]
  else:
    lines.append(f"  XLA cost_analysis: {a.xla_flops_method}")
  lines += [
    "",
    f"Time at {e.mfu:.0%} MFU of the bf16 peak (analytic model FLOPs) on {n} x {chip.name}",
    f"  step {_duration(e.step_s)}; {e.images_per_s:,.0f} images/s; {a.total_steps:,} steps "
    f"= {_duration(e.train_hours * 3600)} = {e.chip_hours:,.1f} chip-hours",
  ]
  if e.step_s_xla is not None:
    lines.append(
      f"  XLA's FLOP count (remat recompute included) at {e.mfu:.0%} of peak instead: step "
      f"{_duration(e.step_s_xla)}, {a.total_steps:,} steps = "
      f"{_duration(a.total_steps * e.step_s_xla)}"
    )
  if e.compiler_step_s is not None:
    lines.append(
      f"  the TPU compiler's own estimate (cost_analysis optimal_seconds"
      f"{_kernel_part(a)}): step {_duration(e.compiler_step_s)} = {e.compiler_mfu:.1%} MFU; "
      f"{a.total_steps:,} steps = {_duration(a.total_steps * e.compiler_step_s)}"
    )
  elif a.compiler == "tpu":
    lines.append(
      "  the TPU compiler gives no usable time estimate for this program (a negative "
      "optimal_seconds; libtpu 0.0.42 gives one for every v6e program)"
    )
  lines.append("")
  if a.compiler == "tpu":
    lines += [
      "Compiled by the TPU compiler (libtpu) for this topology: the memory is the TPU program's;",
      "the runtime reserves part of HBM. The time ignores input stalls beyond the MFU assumed.",
    ]
    return "\n".join(lines)
  lines += [
    "Caveats: compiled by XLA:CPU as a stand-in (install the [tpu] extra for the TPU compiler);",
    "TPU/GPU compilers fuse and lay out buffers differently, and the runtime reserves some HBM.",
    "The time ignores communication and input stalls beyond what the MFU assumes.",
  ]
  if cfg.dtype == "bfloat16":
    lines.append(
      "bf16: XLA:CPU computes bf16 matmuls in f32 (its compiled step has only f32 dots), so the "
      "temporaries are likely on the high side of what a TPU/GPU needs."
    )
  if chip.is_gpu:
    lines.append(
      "GPU: JAX preallocates 75% of GPU memory by default; set "
      "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 for a tight fit."
    )
  return "\n".join(lines)


def to_json(a: Analysis, e: Estimate, topology: str | None) -> dict[str, Any]:
  return {
    "config": a.config_name,
    "topology": topology,
    "compiler": a.compiler,
    "chip": e.chip,
    "num_devices": a.num_devices,
    "mesh": a.mesh_shape,
    "global_batch": a.global_batch,
    "total_steps": a.total_steps,
    "model": dataclasses.asdict(a.model),
    "num_params": a.num_params,
    "compile_s": a.compile_s,
    "memory_bytes": a.memory,
    "analytic_bytes": a.analytic_bytes,
    "peak_bytes": a.peak_bytes,
    "analytic_flops": a.analytic_flops,
    "xla_flops_per_device": a.xla_flops_per_device,
    "xla_flops_method": a.xla_flops_method,
    "xla_seconds_estimate": a.xla_seconds_estimate,
    "kernel_seconds": a.kernel_seconds,
    "estimate": dataclasses.asdict(e),
    "verdict": e.verdict,
  }


@dataclasses.dataclass(frozen=True)
class Options:
  """What to plan for (`rar-plan`'s flags): the target, the assumed MFU and the outputs."""

  topology: str | None = None  # e.g. v5p-128, v6e-64, h100-8, or a libtpu slice v5p:4x4x4
  devices: int | None = None  # chips (JAX devices); default from topology
  num_slices: int = 1  # TPU slices of topology (multislice; sets mesh.dcn_data)
  compiler: str = "auto"  # auto: the TPU compiler for TPU chips when libtpu is there; tpu; cpu
  chip: str | None = None  # default from topology, else DEFAULT_CHIP
  mfu: float = 0.5  # model FLOPs utilisation assumed for the time
  hbm_gib: float | None = None  # overrides the chip's HBM
  xla_flops: bool = True  # also count FLOPs with XLA (2 extra small compiles when scanned)
  json_out: str | None = None  # also write the numbers as JSON here


class DoesNotFit(Exception):
  """The TPU compiler refused the program: it needs more HBM than the chip has."""


def _set_slices(config: Any, num_slices: int) -> None:
  """--num_slices sets mesh.dcn_data (the data axis spans the slices)."""
  if num_slices < 1:
    raise ValueError(f"--num_slices must be >= 1, got {num_slices}")
  if num_slices > 1:
    if config.mesh.dcn_data not in (1, num_slices):
      raise ValueError(
        f"--num_slices={num_slices} contradicts --config.mesh.dcn_data={config.mesh.dcn_data}"
      )
    config.mesh.dcn_data = num_slices


def _target_devices(
  compiler: str, chip: Chip, count: int, dims: tuple[int, ...] | None, num_slices: int
) -> list[Any]:
  """Abstract TPU devices (the TPU compiler) or simulated CPU devices (the stand-in); `count`
  is chips per slice."""
  reason = tpu_compiler.unavailable_reason()
  if compiler == "tpu" and not tpu_compiler.is_tpu(chip):
    raise ValueError(
      f"--compiler=tpu: chip {chip.name!r} has no TPU compiler target; "
      f"use one of {sorted(tpu_compiler.TPU_CHIPS)}"
    )
  if compiler == "tpu" and reason:
    raise ValueError(f"--compiler=tpu: {reason}")
  if compiler == "tpu" or (compiler == "auto" and tpu_compiler.is_tpu(chip) and not reason):
    return tpu_compiler.devices(chip, dims or tpu_compiler.slice_shape(chip, count), num_slices)
  available = jax.devices()
  total = count * num_slices
  if len(available) < total or available[0].platform != "cpu":
    raise RuntimeError(
      f"{total} simulated CPU devices requested but jax has {len(available)} "
      f"{available[0].platform} devices: run as `python -m rar_jax.tools.plan` "
      "(it sets XLA_FLAGS=--xla_force_host_platform_device_count before jax starts)"
    )
  return available[:total]


def run(config: Any, config_name: str, values: Options) -> tuple[Analysis, Estimate, str]:
  """Compiles `config` (named `config_name` in the report) for the target of `values`; returns
  the analysis, the estimate and the printed report.

  Raises:
    ValueError: a bad or contradictory option, naming its flag.
    DoesNotFit: the TPU compiler refused the program (its message and the report's text).
  """
  topology = values.topology
  chip, count, dims = (None, None, None)
  if topology:
    chip, count, dims = parse_target(topology)
  if values.chip:
    named = chip_by_name(values.chip)
    if chip is not None and named.name != chip.name:
      raise ValueError(f"--chip={values.chip} contradicts --topology={topology}")
    chip = named
  chip = chip or CHIPS[DEFAULT_CHIP]
  if values.devices is not None:
    if count is not None and values.devices != count:
      raise ValueError(f"--devices={values.devices} but --topology={topology} is {count} chips")
    count = values.devices
  if not count or count <= 0:
    raise ValueError("give --devices=N or --topology=<chip>-<N>")
  if not 0 < values.mfu <= 1:
    raise ValueError(f"--mfu must be in (0, 1], got {values.mfu}")
  _set_slices(config, values.num_slices)
  devices = _target_devices(values.compiler, chip, count, dims, values.num_slices)
  try:
    analysis = analyze(config, devices, config_name, values.xla_flops)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler refuses a program that cannot fit the chip's HBM, naming what it needs.
    message = str(e).strip().splitlines()[0]
    text = f"RAR plan: {config_name} on {topology}\nDOES NOT FIT (the TPU compiler): {message}"
    if values.json_out:
      report = {"config": config_name, "topology": topology, "compiler": "tpu"}
      report.update(verdict="DOES NOT FIT", compiler_message=message)
      atomic_files.write_text(values.json_out, json.dumps(report, indent=2))
    raise DoesNotFit(text) from e
  est = estimate(analysis, chip, values.mfu, values.hbm_gib)
  text = render(analysis, est, chip, topology)
  if values.json_out:
    atomic_files.write_text(values.json_out, json.dumps(to_json(analysis, est, topology), indent=2))
  return analysis, est, text


# `python -m rar_jax.tools.plan` runs the command rar_jax.commands.plan.
if __name__ == "__main__":
  runpy.run_module("rar_jax.commands.plan", run_name="__main__", alter_sys=True)
