"""Ctrl-C and ``kill`` during a fit: the first SIGINT/SIGTERM stops the trainer after its current step, a second at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Iterator, Optional

from ..errors import TrainingInterrupted

#: the signals a fit stops for, saving first (exit status 128 + the signal's number)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The stop a signal (or :meth:`request`) asked for: ``signum``, None until one arrives."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._writing = 0  # > 0 while a checkpoint is written: a second signal then waits for the write's end
        self._pending = False

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stop after the current step, as SIGINT/SIGTERM do."""
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handlers for :data:`STOP_SIGNALS` while the fit runs (the main thread only: Python allows no other),
        the previous ones restored after it."""
        if _on_main_thread():
            self.signum = None

        def handler(signum, frame):
            if self.signum is not None:  # a second signal: stop now, or once the checkpoint being written is whole
                if self._writing:
                    self._pending = True
                    return
                raise KeyboardInterrupt
            self.signum = signum

        with _handling(handler):
            yield

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A checkpoint being written: a second signal stops after it, not inside torch's writer (which would turn
        the interrupt into its own RuntimeError and leave the write half done)."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
        if not self._writing and self._pending:
            self._pending = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupting(checkpoint: Optional[Path] = None) -> Iterator[None]:
    """SIGINT/SIGTERM during work that saves nothing (a run's final evaluation, its plots): stop at once with
    :class:`TrainingInterrupted`, so the caller's ``with`` blocks (the run folder's lock) unwind; ``checkpoint``
    is where the trained state already is."""
    def handler(signum, frame):
        raise TrainingInterrupted(signum, checkpoint)

    with _handling(handler):
        yield


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """``handler`` for :data:`STOP_SIGNALS` while the block runs, the previous ones restored after it (on the main
    thread only: Python installs signal handlers nowhere else)."""
    if not _on_main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
