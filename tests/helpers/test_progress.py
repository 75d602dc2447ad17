"""The hang detector of the subprocess tests (tests/helpers/progress.py): a process that uses no
CPU is a hang, one that is slow but busy is not, however long it runs."""

import sys

import pytest

from tests.helpers import progress


def test_an_idle_process_is_a_hang():
  with pytest.raises(progress.Hung, match=r"hung \(used 0\.\d\ds of CPU in [23]s"):
    progress.run([sys.executable, "-c", "import time; time.sleep(600)"], stall_s=2)


def test_a_busy_process_longer_than_the_window_is_not():
  busy = "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end: pass\nprint('ok')"
  result = progress.run([sys.executable, "-c", busy], stall_s=1.5, min_cpu_s=0.02)
  assert result.returncode == 0 and result.stdout == "ok\n"
