"""The one progress bar: tqdm on a terminal, a line now and then elsewhere (a pipe, a log file, CI), none when told.

Left to itself (``show=None``) progress is a tqdm bar on stderr when stderr is a
terminal, and otherwise :class:`ProgressLines`: a plain line on stderr at most
every :data:`LINE_SECONDS`, which a log keeps readable where a bar's carriage
returns would not.  ``show=True`` is always the bar, ``show=False`` nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

#: the shortest time between two progress lines written where there is no terminal
LINE_SECONDS = 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLines:
    """Progress as lines of text: what a tqdm bar shows, written at most every ``min_seconds``.

    It takes the calls a bar takes (``update``, ``set_postfix_str``, ``close``).  ``lines_at``: "update"
    writes a line at an update (a chunk of points evaluated), "refresh" only when the caller refreshes the
    summary (the trainer does at each epoch's end), so that a line comes per epoch or every ``min_seconds``,
    whichever is rarer.  ``leave``: a last line when it closes, as tqdm leaves its bar.
    """

    def __init__(self, total: int, *, desc: str = "", unit: str = "it", initial: int = 0, leave: bool = True,
                 lines_at: str = "update", min_seconds: float = LINE_SECONDS, file=None, clock=time.monotonic):
        self.total, self.n, self.start_n = total, initial, initial
        self.desc, self.unit, self.leave, self.lines_at, self.min_seconds = desc or "progress", unit, leave, lines_at, min_seconds
        self.file = file if file is not None else sys.stderr
        self.clock = clock
        self.started = self.last = clock()
        self.postfix = ""
        self.written = 0  # lines written so far
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.lines_at == "update":
            self._maybe_write()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text
        if refresh and self.lines_at == "refresh":
            self._maybe_write()

    def _maybe_write(self) -> None:
        if self.clock() - self.last >= self.min_seconds and self.n < self.total:
            self.write()

    def line(self) -> str:
        """What a line says: the count, the share done, the time taken and, until the end, the time left."""
        elapsed = self.clock() - self.started
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%)"
        done = self.n - self.start_n
        if self.n >= self.total:
            text += f" in {_duration(elapsed)}"
        elif done > 0:
            text += f", {_duration(elapsed)}, about {_duration(elapsed / done * (self.total - self.n))} left"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def write(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self.last = self.clock()
        self.written += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n > self.start_n:
            self.write()


def progress_bar(total: int, show: Optional[bool] = None, *, lines_at: str = "update", what: str = "",
                 **tqdm_kwargs):
    """A tqdm bar over ``total`` units on a terminal, :class:`ProgressLines` elsewhere when ``show`` is None, or
    None when it is not to be shown (or there is nothing to show).  ``lines_at``: see :class:`ProgressLines`;
    ``what`` begins each line where the bar has no ``desc``."""
    if (show is not None and not show) or total <= 0:
        return None
    if show is None and not sys.stderr.isatty():
        keep = {k: tqdm_kwargs[k] for k in ("unit", "initial", "leave") if k in tqdm_kwargs}
        return ProgressLines(total, desc=tqdm_kwargs.get("desc") or what, lines_at=lines_at, **keep)
    from tqdm.auto import tqdm  # imported only when a bar is shown

    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, **tqdm_kwargs)
