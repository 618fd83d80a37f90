"""The stop guard behind `berth demo`: every stop signal is obeyed, even when inherited as ignored, and a
request lost in a finaliser or a broad ``except`` is raised again at the next checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from berth.interrupts import Interrupted, StopGuard, checkpoint


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_raises_interrupted_even_when_the_parent_ignored_it(signum):
    script = textwrap.dedent(f"""
        import os, signal
        from berth.interrupts import Interrupted, StopGuard
        with StopGuard() as guard:
            try:
                os.kill(os.getpid(), {int(signum)})
                for _ in range(1000):
                    pass  # the handler runs between bytecodes
            except Interrupted as exc:
                print("interrupted", exc.signum, guard.exit_status)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in
                                              (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)])
    assert done.stdout.split() == ["interrupted", str(int(signum)), str(128 + int(signum))], done.stderr


def test_a_swallowed_request_is_raised_again_at_the_next_checkpoint():
    with StopGuard() as guard:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        except BaseException:  # noqa: BLE001 - what a careless library or a finaliser does
            pass
        with pytest.raises(Interrupted):
            checkpoint()
        assert guard.received == signal.SIGTERM


def test_a_shielded_guard_remembers_requests_without_raising():
    with StopGuard() as guard:
        guard.shield()
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        checkpoint()  # the clean-up goes on
        assert guard.exit_status == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) != guard._on_signal  # handlers restored on exit


def test_checkpoint_without_a_guard_does_nothing():
    checkpoint()
