"""Ctrl-C noted as a flag (``ccsearch.interrupts.CtrlC``), with real SIGINTs to this process."""

import os
import signal
import threading

import pytest

from ccsearch.interrupts import CtrlC


def _press_ctrl_c() -> None:
    """SIGINT to this process; Python runs the handler between bytecodes, in this thread."""
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10**6):
        pass


def test_ctrl_c_that_library_code_swallows_is_still_noted_and_the_handler_restored():
    previous = signal.getsignal(signal.SIGINT)
    with CtrlC(raise_at_once=True) as ctrl_c:
        assert not ctrl_c.pressed
        try:  # what Tune's loop did with the KeyboardInterrupt: caught and went on
            _press_ctrl_c()
            raise AssertionError("Ctrl-C did not raise")
        except KeyboardInterrupt:
            pass
        assert ctrl_c.pressed
    assert signal.getsignal(signal.SIGINT) is previous
    with pytest.raises(KeyboardInterrupt):  # Python's own handler is back
        _press_ctrl_c()


def test_the_first_ctrl_c_only_sets_the_flag_and_the_second_raises():
    with CtrlC(raise_at_once=False) as ctrl_c:
        _press_ctrl_c()
        assert ctrl_c.pressed
        with pytest.raises(KeyboardInterrupt):
            _press_ctrl_c()


def test_outside_the_main_thread_it_installs_nothing():
    previous = signal.getsignal(signal.SIGINT)
    seen = []

    def worker() -> None:
        with CtrlC(raise_at_once=False) as ctrl_c:  # signal.signal would raise ValueError
            seen.append((ctrl_c.pressed, signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [(False, previous)]
