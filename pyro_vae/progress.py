"""The one progress bar: tqdm on stderr, shown when asked to or, left to itself (None), on a terminal."""

from __future__ import annotations

import sys
from typing import Optional


def progress_bar(total: int, show: Optional[bool] = None, **tqdm_kwargs):
    """A tqdm bar over ``total`` units, or None when it is not to be shown (or there is nothing to show)."""
    if show is None:
        show = sys.stderr.isatty()
    if not show or total <= 0:
        return None
    from tqdm.auto import tqdm  # imported only when a bar is shown

    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, **tqdm_kwargs)
