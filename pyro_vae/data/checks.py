"""Data checks: dtypes, the NaN/Inf and float32-overflow describers, finiteness and support checks in bounded blocks."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError

#: block size of a streamed pass over a memory-mapped file
CHUNK_BYTES = 32 << 20


def describe_nonfinite(x: torch.Tensor) -> str:
    """"N NaN/Inf values in R rows (first at row r, column c)" for a matrix that has some."""
    bad = ~torch.isfinite(x)
    r, c = (int(i) for i in bad.nonzero()[0])
    return f"{int(bad.sum())} NaN/Inf values in {int(bad.any(1).sum())} rows (first at row {r}, column {c})"


#: dtype kinds that are not numbers a model can take, and what to do about each
_NOT_NUMERIC = {
    "c": "complex numbers: a model takes real values; save the real and imaginary parts as separate columns",
    "M": "dates/times: convert them to numbers (e.g. seconds since a reference time) first",
    "m": "time spans: convert them to numbers (e.g. seconds) first",
    "O": "Python objects: save a plain numeric array",
    "U": "text: remove text columns or convert them to numbers",
    "S": "bytes/text: remove text columns or convert them to numbers",
    "V": "structured or raw records: save a plain numeric array (one column per field)",
}


def check_dtype(dtype, what: str) -> None:
    """Refuse, in one line naming the dtype, data that are not real numbers (complex, datetime, text, objects)."""
    dtype = np.dtype(dtype)
    if dtype.kind in _NOT_NUMERIC:
        raise PyroVAEError(f"{what} is not real numeric data (dtype {dtype}, {_NOT_NUMERIC[dtype.kind]})")


#: the largest finite float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_problems(arr: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(NaN/Inf mask, finite-but-beyond-float32 mask) of a numeric array; None where there are none.

    Values beyond float32's range would become Inf in the cast, so they are told
    apart from the NaN/Inf the data really hold.
    """
    if arr.dtype.kind in "biu":
        return None, None  # integers and booleans are finite, and even 2**64 fits float32's range
    finite = np.isfinite(arr)
    bad = None if finite.all() else ~finite
    over = None
    if arr.dtype.itemsize > 4 and arr.size:
        # two reductions over the finite values, no temporaries; the mask only when needed
        hi = float(np.max(arr, where=finite, initial=0))
        lo = float(np.min(arr, where=finite, initial=0))
        if max(hi, -lo) > FLOAT32_MAX:
            over = finite & (np.abs(arr) > FLOAT32_MAX)
    return bad, over


def describe_too_large(arr: np.ndarray, over: np.ndarray, what: str, row_offset: int = 0) -> str:
    """The one-line error for values that a float32 cannot hold."""
    r, c = np.argwhere(over)[0]
    top = float(np.abs(arr[over]).max())  # only the offending values: a small selection
    return (f"{what} has {int(over.sum())} values too large for float32 (max |x| = {top:.4g}; "
            f"first at row {int(r) + row_offset}, column {int(c)}): rescale the data, e.g. divide by a constant")


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



#: row totals of counts must stay below 2**24, where float32 stops holding every integer: a sum of counts is rounded
MAX_ROW_TOTAL = float(1 << 24)


def row_total_problem(totals, first_row: int, what: str, nonzero_rows: bool) -> str:
    """Why a block of rows' count totals (starting at file row ``first_row``) cannot be trained on ("" if they can):
    a total float32 does not hold exactly, or (``nonzero_rows``: a multinomial's number of trials) a row of zeros."""
    totals = np.asarray(totals, dtype=np.float64).reshape(-1)
    over = np.flatnonzero(totals >= MAX_ROW_TOTAL)
    if over.size:
        r = int(over[0])
        return (f"row {r + first_row} of {what} totals {totals[r]:.0f} counts, not below the {MAX_ROW_TOTAL:.0f} where "
                "float32 stops holding every integer: downsample that row's counts")
    zero = np.flatnonzero(totals == 0) if nonzero_rows else ()
    if len(zero):
        others = (f" (the first of {len(zero)} rows of zeros among rows {first_row}..{first_row + totals.size - 1})"
                  if len(zero) > 1 else "")
        return (f"row {int(zero[0]) + first_row} of {what} is all zeros{others}, but a multinomial reads each row's "
                "number of trials from its total: drop rows with no counts")
    return ""


def check_integer_rows(x, what: str, nonzero_rows: bool = False) -> None:
    """Integer data (counts, levels), block by block: the first value that is not a non-negative integer, and the
    first row whose total a count likelihood cannot take (row_total_problem), named by its row and column as the
    file numbers them (checked before the rows are split and shuffled)."""
    for start, block in row_blocks(x, None if _is_mapped(x) else SUPPORT_CHECK_BYTES):
        bad = (block < 0) | (block != torch.round(block))
        if bool(bad.any()):
            r, c = bad.nonzero()[0].tolist()
            raise PyroVAEError(f"{what} has values that are not non-negative integers (first at row {r + start}, "
                               f"column {c}: {float(block[r, c]):g}), which a count likelihood needs: "
                               "round or fix the data, or use model.likelihood = 'normal'")
        # float64 sums: exact for any total a float32 row could hold
        problem = row_total_problem(block.double().sum(-1).cpu().numpy(), start, what, nonzero_rows)
        if problem:
            raise PyroVAEError(problem)
