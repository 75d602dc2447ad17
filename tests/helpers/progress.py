"""Running a subprocess that must not hang, on a machine of any speed: a job that stops using
CPU for a while has hung (a wait on a lock or a remote key), while a slow machine still gives it
CPU time, however loaded. Tests use this instead of a fixed wall-clock limit."""

import subprocess
import time

import psutil


class Hung(AssertionError):
  """The process tree used less than min_cpu_s of CPU over stall_s seconds."""


def _cpu_seconds(process: psutil.Process) -> float:
  """CPU seconds of process and its children (0 for any that ended meanwhile)."""
  total = 0.0
  for p in [process, *process.children(recursive=True)]:
    try:
      times = p.cpu_times()
    except psutil.Error:
      continue
    total += times.user + times.system
  return total


def run(
  args: list[str],
  *,
  stall_s: float = 90.0,
  min_cpu_s: float = 0.5,
  ceiling_s: float = 3600.0,
  **popen_kwargs,
) -> subprocess.CompletedProcess:
  """subprocess.run(args, capture_output=True, text=True) that fails with Hung once the process
  used less than min_cpu_s of CPU in the last stall_s seconds (it is then killed), and also past
  ceiling_s of wall time. Output is read by threads of communicate()."""
  proc = subprocess.Popen(
    args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs
  )
  watched = psutil.Process(proc.pid)
  start = time.monotonic()
  window = [(start, 0.0)]  # (time, CPU seconds) samples
  while True:
    try:
      out, err = proc.communicate(timeout=1.0)
      return subprocess.CompletedProcess(args, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
      pass
    now = time.monotonic()
    window.append((now, _cpu_seconds(watched)))
    while len(window) > 2 and now - window[1][0] >= stall_s:
      window.pop(0)  # keep one sample at least stall_s old
    (then, cpu_then), cpu_now = window[0], window[-1][1]
    stalled = now - then >= stall_s and cpu_now - cpu_then < min_cpu_s
    if stalled or now - start > ceiling_s:
      proc.kill()
      _, err = proc.communicate()
      why = f"used {cpu_now - cpu_then:.2f}s of CPU in {now - then:.0f}s" if stalled else "ran"
      raise Hung(f"{args[:3]} hung ({why}, {now - start:.0f}s in all): {err[-3000:]}")
