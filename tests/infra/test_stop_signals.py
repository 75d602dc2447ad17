"""The signal handlers of the long-running commands, in this process: at start-up a signal
raises Interrupted with the command's exit status; once the job saves first it only records
the request; the previous handlers come back afterwards. (Whole jobs, a stuck start-up and a
second signal: tests/training/test_stop_signals.py.)"""

import os
import signal
import time

import pytest

from rar_jax.infra import stop_signals


def _send(signum: int) -> None:
  os.kill(os.getpid(), signum)
  time.sleep(0.2)  # the handler runs at the next bytecode


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_start_up_signal_ends_the_job_with_its_status(signum, status):
  previous = signal.getsignal(signum)
  with pytest.raises(stop_signals.Interrupted) as caught:
    with stop_signals.StopSignals("the job") as signals:
      signals.describe_kept(lambda: "the checkpoint at step 6 is kept")
      _send(signum)
  name = stop_signals.NAMES[signum]
  assert str(caught.value) == (
    f"Stopped by {name} during start-up, before the job had anything to save; the checkpoint at "
    "step 6 is kept"
  )
  assert caught.value.status == status
  assert signal.getsignal(signum) is previous
  time.sleep(0.3)  # the watcher's deadline sees the job unwound: this process lives on


def test_once_saving_first_a_signal_only_asks_and_sigint_raises_after_the_save():
  with stop_signals.StopSignals("the job") as signals:
    signals.save_first()
    _send(signal.SIGINT)
    assert signals.requested == signal.SIGINT
    message = signals.stop_message(7, "checkpoint written")
    assert message == "Stopped at step 7 after SIGINT; checkpoint written"
    with pytest.raises(stop_signals.Interrupted) as caught:
      signals.raise_if_interrupt(message)
    assert caught.value.status == 130
  with stop_signals.StopSignals("the job") as signals:
    signals.save_first()
    _send(signal.SIGTERM)
    signals.raise_if_interrupt("returns")  # SIGTERM: the job ends normally
    assert signals.requested == signal.SIGTERM
