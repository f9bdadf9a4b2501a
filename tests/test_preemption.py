"""StopSignals: outside the steps a signal interrupts at once; inside, it asks the loop to stop."""

import os
import signal

import pytest

from jaxrec.train import preemption


def test_a_signal_outside_the_steps_interrupts_at_once():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.StopSignals() as stop:
    with pytest.raises(preemption.Interrupted, match="interrupted by SIGTERM") as e:
      os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.signum == signal.SIGTERM and stop.requested == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_a_signal_during_the_steps_is_a_request(capsys):
  with preemption.StopSignals() as stop:
    stop.deferring = True
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested == signal.SIGINT
  assert "SIGINT: stopping after the current step group" in capsys.readouterr().err
  assert preemption.exit_code(signal.SIGINT) == 130
  assert preemption.exit_code(signal.SIGTERM) == 143


def test_stopped_names_the_step_and_the_checkpoint():
  assert str(preemption.Stopped(signal.SIGTERM, 12, 12)) == (
      "stopped by SIGTERM after step 12; checkpoint at step 12")
  assert "no checkpoint (checkpointing is off)" in str(preemption.Stopped(signal.SIGINT, 3, None))
