"""Kernel calls are recorded only inside collect(), and summed per name as rooflines."""

from rar_jax.model.kernels import accounting


def test_records_inside_collect_only():
  accounting.record("k", 1.0, 2.0)  # outside: dropped
  with accounting.collect() as calls:
    accounting.record("flash", 394e12, 0.0)
    accounting.record("flash", 0.0, 4.7e12)
    accounting.record("decode", 1.0, 1.0)
  assert [c.name for c in calls] == ["flash", "flash", "decode"]
  rows = accounting.summarize(calls)
  assert [r["name"] for r in rows] == ["decode", "flash"]
  flash = rows[1]
  assert flash["calls"] == 2 and flash["flops"] == 394e12 and flash["bytes"] == 4.7e12
  assert abs(flash["seconds"] - 3.0) < 1e-9  # 1 s of arithmetic + 2 s of HBM traffic
