"""Ctrl-C as a flag as well as an exception.

A KeyboardInterrupt is raised wherever the main thread happens to be, and library code
(a redraw's plotly call, Tune's loop) can catch and swallow it: a dashboard server then
ran on after Ctrl-C, and a Ctrl-C'd Ray search once exited 0. A loop that also reads
``pressed`` stops all the same.
"""

from __future__ import annotations

import signal
import threading


class CtrlC:
    """While entered, Ctrl-C sets ``pressed``; it raises KeyboardInterrupt at once if
    ``raise_at_once``, else only from the second press on (should the loop hang).

    Outside the main thread, where Python cannot install a signal handler, it installs
    nothing and ``pressed`` stays False.
    """

    def __init__(self, raise_at_once: bool) -> None:
        self.raise_at_once = raise_at_once
        self.pressed = False
        self._previous = None
        self._installed = False

    def _on_sigint(self, signum, frame) -> None:
        again, self.pressed = self.pressed, True
        if again or self.raise_at_once:
            raise KeyboardInterrupt

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:  # ``_previous`` is None where C code had installed it
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            self._installed = False
