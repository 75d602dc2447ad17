"""`rar-plan`: will this config fit, and how long will it train, before renting chips?
(`rar_jax.tools.plan`, whose docstring says what is compiled and how it is estimated)

  rar-plan --config=configs/imagenet.py:XL --topology=v5p-128
  rar-plan --config=configs/imagenet.py:XXL --topology=v6e-64 \
      --config.model.remat_policy=full --config.mesh.shape='(-1,4,1)'
  rar-plan --config=configs/imagenet.py:B --devices=8 --chip=h100 --mfu=0.4

Exit status 0 when it fits (or is tight), 1 when it does not, 2 for a bad flag or value.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from rar_jax.commands import startup
from rar_jax.infra.chips import CHIPS
from rar_jax.tools import plan

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file and argument, e.g. configs/imagenet.py:XL.", lock_config=True
)
_DEVICES = flags.DEFINE_integer("devices", None, "Chips (JAX devices) to plan for.")
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  None,
  "e.g. v5p-128 (64 chips), v6e-64, v5litepod-16, h100-8, or a libtpu slice v5p:4x4x4.",
)
_NUM_SLICES = flags.DEFINE_integer(
  "num_slices", 1, "TPU slices of --topology (multislice; sets mesh.dcn_data)."
)
_COMPILER = flags.DEFINE_enum(
  "compiler",
  "auto",
  ["auto", "tpu", "cpu"],
  "auto: the TPU compiler for TPU chips when libtpu is installed, else the XLA:CPU stand-in.",
)
_CHIP = flags.DEFINE_string(
  "chip", None, f"One of {sorted(CHIPS)}; default from --topology, else {plan.DEFAULT_CHIP}."
)
_MFU = flags.DEFINE_float("mfu", 0.5, "Model FLOPs utilisation assumed for the time.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "Override the chip's HBM (GiB).")
_XLA_FLOPS = flags.DEFINE_bool(
  "xla_flops",
  True,
  "Also count FLOPs with XLA (2 extra small compiles when scanned). The TPU compiler "
  "always runs them: they give its step-time estimate and MFU.",
)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the numbers as JSON here.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = plan.Options(
    topology=_TOPOLOGY.value,
    devices=_DEVICES.value,
    num_slices=_NUM_SLICES.value,
    compiler=_COMPILER.value,
    chip=_CHIP.value,
    mfu=_MFU.value,
    hbm_gib=_HBM_GIB.value,
    xla_flops=_XLA_FLOPS.value,
    json_out=_JSON_OUT.value,
  )
  config_name = plan.flag_value(sys.argv[1:], "config") or ""  # as given, with its argument
  try:
    _, _, text = plan.run(_CONFIG.value, config_name, options)
  except plan.DoesNotFit as e:
    print(e)
    return 1
  print(text)
  return 0


def cli() -> None:
  """Console-script entry point (`rar-plan`): simulates the requested devices, then runs."""
  count = plan.requested_devices(sys.argv[1:])
  if count:
    plan.simulate_host_devices(count)
  startup.run(lambda argv: sys.exit(main(argv)), __name__, multi_process=False)


if __name__ == "__main__":
  cli()
