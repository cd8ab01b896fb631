"""Count observation models p(x | z): Poisson, negative binomial, zero-inflated and multinomial laws over a row of counts.

Every law is one of Pyro's distributions; nothing here writes a density.  A
count likelihood reads two things besides the decoder's output: the row it
scores (a multinomial's number of trials is each row's total, as a topic
model reads a document's length) and, where asked, the row's library size
(scVI's size factor: the decoder gives proportions over the features and the
library scales them to counts).  ``law(out, x, data)`` is where both come in.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist

from ..data.checks import MAX_ROW_TOTAL
from ..errors import PyroVAEError
from .graph.spec import LIBRARY
from .likelihoods import LIKELIHOODS, Likelihood

__all__ = ["LIKELIHOODS", "LIBRARY", "LIBRARY_NAME", "CountLikelihood", "RowMultinomial", "check_counts",
           "count_options", "given_library", "given_total"]



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
    # a float32 sum of integers is exact while it stays below 2**24 and at least 2**24 once the true sum is:
    # the test is exact, without a float64 copy of the block
    totals = x.sum(-1)
    over = totals >= MAX_ROW_TOTAL
    if bool(over.any()):
        r = int(over.nonzero()[0])
        c = int((x[r].double().cumsum(0) >= MAX_ROW_TOTAL).nonzero()[0])
        raise PyroVAEError(f"likelihood {name!r}: row {r} of {what} totals {float(x[r].double().sum()):.0f} counts, "
                           f"not below the {MAX_ROW_TOTAL:.0f} where float32 stops holding every integer (reached at "
                           f"column {c}): downsample that row's counts")
    if nonzero_rows:
        zero = totals == 0
        if bool(zero.any()):
            r, n = int(zero.nonzero()[0]), int(zero.sum())
            raise PyroVAEError(f"likelihood {name!r} reads each row's number of trials from its total, but row {r} "
                               f"of {what} is all zeros ({n} such row{'s' if n > 1 else ''}): drop rows with no "
                               "counts")


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


#: log means and log dispersions are clamped here before exp: a wild decoder output is a huge, finite number
MAX_LOG = 20.0
#: the largest log inverse dispersion: past it the NB's float32 density (a difference of lgammas of theta-sized
#: numbers) errs by more than about 1e-3 nats a count, and by hundreds of nats a row at theta = e^20, in either
#: direction, so an optimizer could climb the error; at theta = e^7 (about 1,100) an NB of mean mu has the
#: Poisson's variance times 1 + mu / 1100, the Poisson it nests for every count up to the hundreds
MAX_LOG_THETA = 7.0


def one_hot_rows(labels: torch.Tensor, classes: int, dtype) -> torch.Tensor:
    """(rows, classes): integer labels one-hot (by comparison, which a step capture records), or rows that are."""
    if labels.is_floating_point() and labels.dim() >= 2 and labels.shape[-1] == classes:
        return labels.to(dtype)
    return (labels.long().reshape(-1, 1) == torch.arange(classes, device=labels.device)).to(dtype)


class CountLikelihood(Likelihood):
    """Shared by the count laws: the encoder sees log(1 + x), the data must be non-negative integer counts, and
    the decoder's output becomes a log mean per count, scaled by a library size where asked (scVI's).

    ``library``: "none", "observed" (the row's own total) or "latent" (a log-library given to :meth:`law` as
    ``log_library``, drawn by the graph from the empirical prior :meth:`fit_data` sets)."""

    #: the law reads each row it scores (its total), so ``law`` needs x
    reads_rows = False
    #: how many blocks of data_dim numbers the decoder gives beyond the log means (a gate, a dispersion)
    extra_blocks = 0

    def __init__(self, data_dim, scale="learned", levels=None, *, library: str = "none"):
        super().__init__(data_dim)
        self.library = library
        # the empirical prior of the log library (scVI's): the mean and standard deviation of the training rows'
        # log totals, set by fit_data before the first step and saved with the parameters; a scale of 0 until then
        # (not NaN: an unset buffer must equal itself, as "nothing changed" is checked)
        self.register_buffer("library_loc", torch.tensor(0.0))
        self.register_buffer("library_scale", torch.tensor(0.0))
        #: ``sample --given library=N``: every row's total count while set (:func:`given_total`)
        self.given_total: Optional[float] = None

    @property
    def out_features(self) -> int:
        return self.data_dim * (1 + self.extra_blocks)

    @property
    def needs_rows(self) -> bool:
        """Whether drawing from this law needs rows of data (their totals): a prior draw alone cannot decode."""
        return self.reads_rows or self.library == "observed"

    def encoder_input(self, x):
        # counts span orders of magnitude: the encoder reads them on a log scale, as scVI's does
        return torch.log1p(x)

    def check_support(self, x, what="data"):
        check_counts(x, self.name, what)

    # -- the library size ----------------------------------------------------
    @torch.no_grad()
    def fit_data(self, blocks) -> None:
        """The log-library prior from the training data, given as row blocks (it never holds them all at once);
        kept if set already (a resumed run's comes from its checkpoint)."""
        if self.library == "none" or self._prior_known():
            return
        n, s1, s2 = 0, 0.0, 0.0
        for block in blocks:
            logs = torch.log(block.sum(-1).double().clamp(min=1.0))
            n, s1, s2 = n + logs.numel(), s1 + float(logs.sum()), s2 + float((logs ** 2).sum())
        mean = s1 / max(n, 1)
        var = max(s2 / max(n, 1) - mean ** 2, 0.0)
        self.library_loc.fill_(mean)
        # a floor: equal totals on every row would make the prior a point, and its log density infinite
        self.library_scale.fill_(max(var ** 0.5, 1e-2))
        self._known = True

    def _prior_known(self) -> bool:
        # read off the buffer once (a checkpoint's load sets it) and then remembered: a recorded step
        # (training/capture.py) cannot read a tensor's value into Python
        if not getattr(self, "_known", False):
            self._known = bool(self.library_scale > 0)
        return self._known

    def _check_prior(self) -> None:
        if not self._prior_known():
            raise PyroVAEError(f"likelihood {self.name!r} with library = {self.library!r} has no library prior yet: "
                               "it is set from the training data when the model is first trained")

    def library_prior(self, rows: int) -> dist.Distribution:
        """p(log library) per row, one value each (event shape (1,)): the empirical prior."""
        self._check_prior()
        return dist.Normal(self.library_loc.expand(rows, 1), self.library_scale.expand(rows, 1)).to_event(1)

    def log_mean(self, out: torch.Tensor, x: Optional[torch.Tensor], log_library: Optional[torch.Tensor]):
        """log E[x | ...] per count: the decoder's output, or its proportions scaled by the library size."""
        if self.library == "none":
            return out.clamp(max=MAX_LOG)
        if self.given_total is not None:
            log_library = torch.full(out.shape[:-1] + (1,), math.log(self.given_total), dtype=out.dtype,
                                     device=out.device)
        elif self.library == "observed" and x is not None:
            # a row of zeros has library 1, not 0: log 0 would make every mean 0 and its gradients NaN
            log_library = torch.log(x.sum(-1, keepdim=True).clamp(min=1.0))
        elif log_library is None:
            # no row to read a total from (a decoder's mean of a prior draw): the training rows' typical library
            self._check_prior()
            log_library = self.library_loc.expand(out.shape[:-1] + (1,))
        return F.log_softmax(out, dim=-1) + log_library

    def law(self, out, x=None, data=None, log_library=None):
        mu_out, *extra = out.split(self.data_dim, dim=-1)
        return self.count_law(self.log_mean(mu_out, x, log_library), extra, data).to_event(1)

    def count_law(self, log_mu: torch.Tensor, extra, data) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, out):
        return self.law(out)

    def mean(self, out):
        return self.law(out).mean


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(CountLikelihood):
    """x ~ Poisson(mu), mu = exp(decoder output), or its softmax times the library size."""

    name = "poisson"

    def count_law(self, log_mu, extra, data):
        return dist.Poisson(log_mu.exp())


@LIKELIHOODS.register("zip")
class ZeroInflatedPoissonLikelihood(CountLikelihood):
    """x ~ ZIP(mu, pi): a Poisson count, or a structural zero with probability pi = sigmoid(a decoder output)."""

    name = "zip"
    extra_blocks = 1

    def count_law(self, log_mu, extra, data):
        return dist.ZeroInflatedPoisson(log_mu.exp(), gate_logits=extra[0])


#: where a learned inverse dispersion starts.  theta is one free parameter per feature, which Adam moves by about
#: train.lr a step in log theta, so a short run leaves it near its start (README, "The negative binomial's
#: dispersion"): 10 is the middle of the range on a log scale between the strongly over-dispersed counts of
#: single cells (theta about 1) and counts close to Poisson (theta of 100 and more), which the NB nests as
#: theta -> infinity.  scVI starts at about 1, from where a 30-epoch run on the digits' levels stalls far below
#: the Poisson it nests.
INIT_THETA = 10.0


class _NegativeBinomialBase(CountLikelihood):
    """The negative binomial's mean mu and inverse dispersion theta (variance mu + mu^2 / theta), as scVI's."""

    gated = False

    def __init__(self, data_dim, scale="learned", levels=None, *, library="none", dispersion="feature",
                 label_node: Optional[str] = None, label_classes: Optional[int] = None):
        super().__init__(data_dim, library=library)
        self.dispersion = dispersion
        self.label_node = label_node
        if dispersion == "feature":
            self.log_theta = nn.Parameter(torch.full((data_dim,), math.log(INIT_THETA)))
        elif dispersion == "feature-label":
            self.label_classes = int(label_classes)
            self.log_theta = nn.Parameter(torch.full((self.label_classes, data_dim), math.log(INIT_THETA)))

    @property
    def extra_blocks(self) -> int:
        return int(self.gated) + int(self.dispersion == "amortized")

    def log_dispersion(self, extra, data, like: torch.Tensor) -> torch.Tensor:
        """log theta, broadcastable against the means ``like``."""
        if self.dispersion == "amortized":
            return extra[-1]
        if self.dispersion == "feature":
            return self.log_theta
        if data is None or self.label_node not in data:
            raise PyroVAEError(f"likelihood {self.name!r} with dispersion = 'feature-label' reads the input node "
                               f"{self.label_node!r}: give it with the rows (pyro-vae sample --given "
                               f"{self.label_node}=CLASS)")
        return one_hot_rows(data[self.label_node], self.label_classes, like.dtype) @ self.log_theta

    def theta_and_logits(self, log_mu, extra, data):
        log_theta = self.log_dispersion(extra, data, log_mu).clamp(-MAX_LOG, MAX_LOG_THETA)
        # NegativeBinomial(total_count=theta, logits=l) has mean theta * exp(l): l = log mu - log theta
        return log_theta.exp(), log_mu - log_theta

    def theta(self, out=None, data=None) -> torch.Tensor:
        """The inverse dispersion: per feature, (classes, features) per label, or per row from ``out``."""
        if self.dispersion == "amortized":
            return out.split(self.data_dim, dim=-1)[-1].clamp(-MAX_LOG, MAX_LOG_THETA).exp()
        return self.log_theta.clamp(-MAX_LOG, MAX_LOG_THETA).exp()


@LIKELIHOODS.register("negative_binomial")
class NegativeBinomialLikelihood(_NegativeBinomialBase):
    """x ~ NB(mu, theta) (Pyro's NegativeBinomial with total_count theta): over-dispersed counts."""

    name = "negative_binomial"

    def count_law(self, log_mu, extra, data):
        theta, logits = self.theta_and_logits(log_mu, extra, data)
        return dist.NegativeBinomial(total_count=theta, logits=logits)


@LIKELIHOODS.register("zinb")
class ZeroInflatedNegativeBinomialLikelihood(_NegativeBinomialBase):
    """x ~ ZINB(mu, theta, pi): a negative binomial count, or a dropout zero with probability pi, its logit amortized
    (a third block of decoder outputs), as scVI's."""

    name = "zinb"
    gated = True

    def count_law(self, log_mu, extra, data):
        theta, logits = self.theta_and_logits(log_mu, extra, data)
        return dist.ZeroInflatedNegativeBinomial(total_count=theta, logits=logits, gate_logits=extra[0])

    def dropout(self, out) -> torch.Tensor:
        """pi, the dropout probability of each count, from the decoder's output."""
        return torch.sigmoid(out.split(self.data_dim, dim=-1)[1])


@LIKELIHOODS.register("multinomial")
class MultinomialLikelihood(CountLikelihood):
    """The counts of a row split over its features: x ~ Multinomial(sum x, softmax(out)), the number of trials read
    from each row (a document's length)."""

    name = "multinomial"
    reads_rows = True

    def __init__(self, data_dim, scale="learned", levels=None, *, library="none"):
        super().__init__(data_dim, library="none")

    def law(self, out, x=None, data=None, log_library=None):
        if x is None:
            raise PyroVAEError("likelihood 'multinomial' takes each row's number of trials from its total: "
                               "give rows of counts to draw with (pyro-vae sample uses the data's rows)")
        totals = x.sum(-1) if self.given_total is None else torch.full(x.shape[:-1], self.given_total, dtype=x.dtype,
                                                                          device=x.device)
        return RowMultinomial(totals, logits=out)

    def forward(self, out):
        # without rows there is no number of trials: the proportions over the features, one trial each
        return dist.Multinomial(total_count=1, logits=out)

    def mean(self, out):
        return F.softmax(out, dim=-1)

    def check_support(self, x, what="data"):
        check_counts(x, self.name, what, nonzero_rows=True)


def count_options(spec, name: str, node, key_path) -> dict:
    """The keyword arguments a count node's likelihood is built with, its count keys checked against its law
    and the graph (``key_path(node, field)``: the key as the user wrote it)."""
    cls = LIKELIHOODS[node.likelihood]
    negbin = issubclass(cls, _NegativeBinomialBase)
    if not issubclass(cls, CountLikelihood):
        for key, default in (("library", "none"), ("dispersion", "feature"), ("dispersion_by", None)):
            if getattr(node, key) != default:
                raise PyroVAEError(f"{key_path(name, key)} is for a count likelihood (poisson, negative_binomial, "
                                   f"zinb, zip), but {key_path(name, 'likelihood')} = {node.likelihood!r}: remove it")
        return {}
    if cls is MultinomialLikelihood and node.library != "none":
        raise PyroVAEError(f"{key_path(name, 'library')} = {node.library!r}: the multinomial reads each row's total "
                           "as its number of trials already: remove it")
    if not negbin and (node.dispersion != "feature" or node.dispersion_by is not None):
        key = "dispersion" if node.dispersion != "feature" else "dispersion_by"
        raise PyroVAEError(f"{key_path(name, key)} is the negative binomial's (negative_binomial, zinb), but "
                           f"{key_path(name, 'likelihood')} = {node.likelihood!r} has no dispersion: remove it")
    options = {"library": node.library}
    if not negbin:
        return options
    options["dispersion"] = node.dispersion
    if node.dispersion != "feature-label":
        if node.dispersion_by is not None:
            raise PyroVAEError(f"{key_path(name, 'dispersion_by')} names the label of dispersion = "
                               f"'feature-label', but {key_path(name, 'dispersion')} = {node.dispersion!r}: remove it")
        return options
    labels = [n for n, v in spec.nodes.items() if v.role == "input" and v.family == "categorical"]
    by = node.dispersion_by
    if by is None:
        if len(labels) != 1:
            found = f"{len(labels)} ({', '.join(labels)})" if labels else "none"
            raise PyroVAEError(f"{key_path(name, 'dispersion')} = 'feature-label' needs one categorical input node "
                               f"(its category picks theta); the graph has {found}: set "
                               f"model.nodes.{name}.dispersion_by to one, or declare the input node")
        by = labels[0]
    elif by not in labels:
        raise PyroVAEError(f"{key_path(name, 'dispersion_by')} = {by!r} is not a categorical input node of the "
                           f"graph ({', '.join(labels) or 'it has none'}): name one, or declare it "
                           f"(role = \"input\", family = \"categorical\")")
    if spec.nodes[by].dim is None:
        raise PyroVAEError(f"model.nodes.{by}.dim: the input node's number of categories is needed by "
                           f"{key_path(name, 'dispersion')} = 'feature-label': set it")
    options.update(label_node=by, label_classes=int(spec.nodes[by].dim))
    return options


#: the name ``sample --given`` sets a count model's library size (each row's total count) under
LIBRARY_NAME = "library"


def _library_law(model) -> Optional[CountLikelihood]:
    lik = getattr(model, "likelihood", None)
    if isinstance(lik, CountLikelihood) and (lik.library != "none" or lik.reads_rows):
        return lik
    return None


def given_library(model, values: dict) -> dict:
    """``{"library": N}`` taken out of ``--given`` values when the model's count likelihood has a library size (or a
    multinomial's number of trials) to set, N checked; ``{}`` otherwise (the name is then checked as any other)."""
    if LIBRARY_NAME not in values or _library_law(model) is None:
        return {}
    value = values.pop(LIBRARY_NAME)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value < MAX_ROW_TOTAL \
            or value != int(value):
        raise PyroVAEError(f"--given {LIBRARY_NAME}={value!r}: a library size is a row's total count, a whole number "
                           f"in [1, {int(MAX_ROW_TOTAL) - 1}] (e.g. --given {LIBRARY_NAME}=1000)")
    return {LIBRARY_NAME: int(value)}


@contextlib.contextmanager
def given_total(model, total: Optional[int]):
    """While open, every row of ``model``'s count likelihood has ``total`` counts (None: its own, as trained)."""
    lik = _library_law(model)
    if total is None or lik is None:
        yield
        return
    lik.given_total = float(total)
    try:
        yield
    finally:
        lik.given_total = None
