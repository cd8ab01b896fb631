"""Ctrl-C and ``kill`` during a fit: the first SIGINT/SIGTERM stops the trainer after its current step, a second at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

#: the signals a fit stops for, saving first (exit status 128 + the signal's number)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The stop a signal (or :meth:`request`) asked for: ``signum``, None until one arrives."""

    def __init__(self):
        self.signum: Optional[int] = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stop after the current step, as SIGINT/SIGTERM do."""
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handlers for :data:`STOP_SIGNALS` while the fit runs (the main thread only: Python allows no other),
        the previous ones restored after it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.signum = None

        def handler(signum, frame):
            if self.signum is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.signum = signum

        old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
