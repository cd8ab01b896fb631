"""Data checks: the one NaN/Inf describer, finiteness and support checks done in bounded blocks."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from ..errors import PyroVAEError

#: block size of a streamed pass over a memory-mapped file
CHUNK_BYTES = 32 << 20


def describe_nonfinite(x: torch.Tensor) -> str:
    """"N NaN/Inf values in R rows (first at row r, column c)" for a matrix that has some."""
    bad = ~torch.isfinite(x)
    r, c = (int(i) for i in bad.nonzero()[0])
    return f"{int(bad.sum())} NaN/Inf values in {int(bad.any(1).sum())} rows (first at row {r}, column {c})"


def _is_mapped(x) -> bool:
    # a MappedRows (data/mapped.py) streams its rows; checked by duck type so this module stays below it
    return not isinstance(x, torch.Tensor) and hasattr(x, "chunks")


#: block size of the up-front support check on in-memory data
SUPPORT_CHECK_BYTES = 2 << 20


def row_blocks(x, max_bytes: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(first_row, rows)`` blocks of a tensor (views) or of a memory map (copies)."""
    if _is_mapped(x):
        yield from x.chunks(max_bytes)
        return
    step = max(1, (max_bytes or CHUNK_BYTES) // max(1, x[:1].numel() * x.element_size()))
    for start in range(0, x.shape[0], step):
        yield start, x[start : start + step]


def check_support(likelihood, x, what: str) -> None:
    """``likelihood.check_support`` block by block: its masks stay small whatever the data size."""
    key = (type(likelihood).__name__, getattr(likelihood, "levels", None))
    if _is_mapped(x) and key in x.checked:
        return  # a file over the memory limit is read once for this, not again by the trainer
    # in-memory blocks are views, so only the checks' masks (about three bytes per
    # value) cost memory: small blocks keep them well under a training step's peak
    for start, block in row_blocks(x, None if _is_mapped(x) else SUPPORT_CHECK_BYTES):
        try:
            likelihood.check_support(block, what)
        except PyroVAEError as e:
            if start == 0:
                raise
            # the message counts rows within the block: say where the block starts
            raise PyroVAEError(f"{e} [row numbers count from row {start}]") from None
    if _is_mapped(x):
        x.checked.add(key)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in ``x``, in one reduction: min and max propagate NaN and are +-inf if any value is."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def in_unit_interval(x) -> bool:
    """Whether every value lies in [0, 1] (what binarization needs)."""
    blocks = (b for _, b in x.chunks()) if _is_mapped(x) else (x,)
    return all(not bool(((b < 0) | (b > 1)).any()) for b in blocks)

