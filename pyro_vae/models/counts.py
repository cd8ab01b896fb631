"""Count observation models p(x | z): Poisson, negative binomial, zero-inflated and multinomial laws over one row of counts.

Every law is one of Pyro's distributions; nothing here writes a density.  A
count likelihood reads two things besides the decoder's output: the row it
scores (a multinomial's number of trials is each row's total, as a topic
model reads a document's length) and, where asked, the row's library size
(scVI's size factor: the decoder gives proportions over the features and the
library scales them to counts).  ``law(out, x, data)`` is where both come in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pyro.distributions as dist

from ..errors import PyroVAEError
from .likelihoods import LIKELIHOODS, Likelihood

__all__ = ["LIKELIHOODS", "CountLikelihood", "RowMultinomial", "check_counts"]

#: the largest row total a float32 row holds exactly (2**24): beyond it a sum of counts is rounded
MAX_ROW_TOTAL = float(1 << 24)


def first_bad(bad: torch.Tensor):
    """(row, column) of the first True of a (rows, columns) mask."""
    idx = bad.nonzero()[0].tolist()
    return idx[0], (idx[1] if len(idx) > 1 else 0)


def check_counts(x: torch.Tensor, name: str, what: str, *, nonzero_rows: bool = False) -> None:
    """One line naming the first offending row and column when ``x`` is not a matrix of non-negative integer
    counts whose row totals a float32 holds exactly (and, ``nonzero_rows``, with no row of zeros)."""
    bad = ~torch.isfinite(x) | (x < 0) | (x != torch.round(x))
    if bool(bad.any()):
        r, c = first_bad(bad)
        n = int(bad.sum())
        raise PyroVAEError(f"likelihood {name!r} needs counts (non-negative integers), but {what} has {n} of "
                           f"{bad.numel()} values that are not (first at row {r}, column {c}: {float(x[r, c]):g}): "
                           "round or fix the data, or use model.likelihood = 'normal'")
    totals = x.double().sum(-1)
    over = totals > MAX_ROW_TOTAL
    if bool(over.any()):
        r = int(over.nonzero()[0])
        c = int((x[r].double().cumsum(0) > MAX_ROW_TOTAL).nonzero()[0])
        raise PyroVAEError(f"likelihood {name!r}: row {r} of {what} totals {float(totals[r]):.0f} counts, beyond "
                           f"the {MAX_ROW_TOTAL:.0f} a float32 holds exactly (passed at column {c}): downsample "
                           "that row's counts")
    if nonzero_rows:
        zero = totals == 0
        if bool(zero.any()):
            r = int(zero.nonzero()[0])
            raise PyroVAEError(f"likelihood {name!r} reads each row's number of trials from its total, but row {r} "
                               f"of {what} is all zeros (column 0 onward: {int(zero.sum())} such rows): drop rows "
                               "with no counts")


class RowMultinomial(dist.Multinomial):
    """Pyro's multinomial whose number of trials is each row's own (``totals``, the rows' batch shape).

    torch's multinomial takes one integer ``total_count``; its ``log_prob`` reads the number of trials off the
    value it scores (lgamma(sum x + 1)), so any bound on the row totals serves for scoring every row, and only
    drawing and the mean need each row's own, which this class supplies.  The bound is the largest total the
    support check lets through, a constant: reading the batch's own maximum would be a data-dependent Python
    number, which a recorded training step (training/capture.py) cannot replay."""

    def __init__(self, totals: torch.Tensor, logits: torch.Tensor, validate_args=None):
        self.totals = totals
        super().__init__(total_count=int(MAX_ROW_TOTAL), logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return RowMultinomial(self.totals.expand(batch_shape), self.logits.expand(batch_shape + self.event_shape),
                              validate_args=False)

    @property
    def mean(self):
        return self.probs * self.totals.unsqueeze(-1).to(self.probs.dtype)

    @property
    def variance(self):
        return self.totals.unsqueeze(-1).to(self.probs.dtype) * self.probs * (1 - self.probs)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            totals = self.totals.expand(shape[:-1]).long()
            top = int(totals.max()) if totals.numel() else 0
            counts = torch.zeros(shape, dtype=self.probs.dtype, device=self.probs.device)
            if top == 0:
                return counts
            # each row's trials drawn one category at a time; trials past a row's own total are not counted
            draws = dist.Categorical(probs=self.probs.expand(shape)).sample((top,))  # (top, *rows)
            trial = torch.arange(top, device=totals.device).view((top,) + (1,) * totals.dim())
            kept = (trial < totals).to(counts.dtype)
            return counts.scatter_add_(-1, draws.movedim(0, -1), kept.movedim(0, -1))


class CountLikelihood(Likelihood):
    """Shared by the count laws: the encoder sees log(1 + x), and the data must be non-negative integer counts."""

    #: the law reads each row it scores (its total), so ``law`` needs x
    reads_rows = False

    def encoder_input(self, x):
        # counts span orders of magnitude: the encoder reads them on a log scale, as scVI's does
        return torch.log1p(x)

    def check_support(self, x, what="data"):
        check_counts(x, self.name, what)


@LIKELIHOODS.register("multinomial")
class MultinomialLikelihood(CountLikelihood):
    """The counts of a row split over its features: x ~ Multinomial(sum x, softmax(out)), the number of trials read
    from each row (a document's length)."""

    name = "multinomial"
    reads_rows = True

    def law(self, out, x=None, data=None):
        if x is None:
            raise PyroVAEError("likelihood 'multinomial' takes each row's number of trials from its total: "
                               "give rows of counts to draw with (pyro-vae sample uses the data's rows)")
        return RowMultinomial(x.sum(-1), logits=out)

    def forward(self, out):
        # without rows there is no number of trials: the proportions over the features, one trial each
        return dist.Multinomial(total_count=1, logits=out)

    def mean(self, out):
        return F.softmax(out, dim=-1)

    def check_support(self, x, what="data"):
        check_counts(x, self.name, what, nonzero_rows=True)
