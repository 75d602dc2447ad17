"""compiled_costs.cycle_shares on a hand-made HLO entry computation."""

import pytest

from rar_jax.tools import compiled_costs

STEP = "jit(train_step)/jvp(RAR)/blocks"


def _line(name: str, opcode: str, op_name: str | None, cycles: int | None) -> str:
  meta = f', metadata={{op_name="{op_name}"}}' if op_name else ""
  cost = f', backend_config={{"window_config":{{"estimated_cycles":"{cycles}"}}}}'
  return f"  %{name} = bf16[8]{{0}} {opcode}(%a){meta}{cost if cycles else ''}"


HLO = "\n".join(
  [
    "HloModule jit_train_step",
    "%fused_computation.1 (p: bf16[8]) -> bf16[8] {",
    _line("inner", "negate", f"{STEP}/layers_0/mlp/fc1/dot_general", 999999),
    "}",
    "ENTRY %main (a: bf16[8]) -> bf16[8] {",
    "  %a = bf16[8]{0} parameter(0)",
    _line("f1", "fusion", f"{STEP}/layers_0/adaln/linear/dot_general", 300),
    _line("f2", "fusion", f"{STEP}/layers_0/add", 100),
    _line("c", "copy", "jit(train_step)/transpose(jvp(RAR))/blocks/layers_0/attn/add_any", 200),
    _line("t", "copy", None, 150),
    _line("m", "fusion", f"{STEP}/layers_1/mlp/fc1/dot_general", 250),
    "  ROOT" + _line("o", "add", "jit(train_step)/add", None)[1:],
    "}",
  ]
)


def test_cycle_shares_group_the_entry_instructions_by_op_name():
  shares = compiled_costs.cycle_shares(HLO)
  # A fused computation's own instructions are not counted (its fusion instruction carries
  # them), nor an instruction without an estimate; an unnamed copy is a layout copy.
  assert shares == pytest.approx(
    {"AdaLN modulation": 0.4, "qkv + projection": 0.2, "MLP matmuls": 0.25, "layout copies": 0.15}
  )
  assert list(shares)[0] == "AdaLN modulation"  # largest first
  assert compiled_costs.cycle_shares("HloModule empty\n") == {}
