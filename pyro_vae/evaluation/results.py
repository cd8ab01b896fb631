"""Typed evaluation results: the per-point record of an evaluation, its summary, its nodes and its rows.

:class:`PointwiseEvaluation` keeps every number per data point (CPU float64
tensors), so blocks of points evaluated apart (by several processes, say)
join into one (:func:`concat_points`), and the summary, the nodes' table and
the per-point rows are read off it alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ..infer.psis import KHAT_BAD
from ..serialize import to_plain
from .nodes import NodeSummary, SiteTerm
from .quantities import Quantities
from .streaming import tail_size
from .steps import is_chain, khat_length_note, step_of, step_profile

ACTIVE_UNIT_THRESHOLD = 0.01
# below this importance ESS a point's estimate and s.e. rest on a handful of draws
IW_ESS_MIN = 5

__all__ = ["PointwiseEvaluation", "concat_points", "ACTIVE_UNIT_THRESHOLD", "IW_ESS_MIN"]


@dataclass
class PointwiseEvaluation:
    """Per-point results of :func:`evaluate_points`: CPU float64 tensors, one entry per data point.

    ``*_var`` entries are the Monte Carlo variance of that point's estimate
    (NaN where one draw cannot estimate it).  Optional entries are ``None``
    when not computed: importance sampling for a point-mass guide or with
    ``iw_samples=None``, the prior estimator with ``prior_samples=0``,
    per-dimension KL for a guide that does not factorize per dimension,
    reconstruction error when the likelihood has no mean.  ``site_terms``
    splits each point's ``elbo`` by sample site (:class:`SiteTerm`).
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_analytic: bool
    kl_mc: torch.Tensor
    kl_mc_var: torch.Tensor
    elbo_var: torch.Tensor
    elbo_samples: int
    log_likelihood: Optional[torch.Tensor]
    log_likelihood_var: Optional[torch.Tensor]
    iw_ess: Optional[torch.Tensor]
    iw_max_weight: Optional[torch.Tensor]
    iw_samples: int
    log_likelihood_prior: Optional[torch.Tensor]
    log_likelihood_prior_var: Optional[torch.Tensor]
    prior_ess: Optional[torch.Tensor]
    prior_samples: int
    latent_names: List[str]
    posterior_mean: torch.Tensor  # (n, latent dims): E_q[z | x]
    kl_per_dim: Optional[torch.Tensor]  # (n, latent dims)
    kl_per_dim_analytic: bool
    reconstruction_mse: Optional[torch.Tensor]
    point_mass: bool
    seconds: float
    log_weights: Optional[torch.Tensor] = None  # (n, K), only with keep_log_weights=True
    iw_khat: Optional[torch.Tensor] = None  # PSIS k-hat of each point's K importance weights
    # discrete latent sites summed out exactly (not among latent_names): log p(x) and its weights are of z alone
    summed_sites: List[str] = field(default_factory=list)
    # the ELBO node by node (evaluation/nodes.py): observed terms minus latent terms is ``elbo``, point by point
    site_terms: List[SiteTerm] = field(default_factory=list)
    # what the numbers are, in the model's names: log p(x|y) for a model conditioned on an input y, ...
    quantities: Optional[Quantities] = None

    @property
    def unit(self) -> str:
        """What one evaluated row is called in a sentence: "sequence" for a chain, else "point"."""
        return self.quantities.unit if self.quantities is not None else "point"

    @property
    def num_points(self) -> int:
        """How many points were evaluated."""
        return int(self.elbo.shape[0])

    def real_coordinates(self) -> Optional[torch.Tensor]:
        """(points, latent dims) bool: whether a sequence reaches the step of each latent coordinate, for a chain
        (sites named per step, ``z_1 .. z_T``); None for any other model, all of whose coordinates are real.

        A padded step is masked, so its site's ELBO term is exactly 0 for the sequences that end before it (as
        the per-step profile reads it, evaluation/steps.py); a real step's KL is never exactly 0."""
        steps = [t for t in self.site_terms if t.kind == "latent" and step_of(t.name) is not None]
        if not steps or not is_chain([t.name for t in steps]):
            return None
        column = {name: i for i, name in enumerate(self.latent_names)}
        real = torch.ones(self.posterior_mean.shape, dtype=torch.bool)
        for t in steps:
            real[:, [column[name] for name in t.latent_names]] = (t.term != 0).unsqueeze(1)
        return real

    def posterior_mean_variance(self) -> torch.Tensor:
        """Cov_x(E_q[z_j | x]) per latent dimension (sample variance over the points).

        For a chain, per (step, dim): the variance over the sequences that reach the step (a padded step's q is
        no posterior of any data), NaN where fewer than two do."""
        real = self.real_coordinates()
        if real is None:
            if self.num_points < 2:
                return torch.zeros(self.posterior_mean.shape[1], dtype=torch.float64)
            return self.posterior_mean.var(0, unbiased=True)
        m = torch.where(real, self.posterior_mean, torch.zeros((), dtype=self.posterior_mean.dtype))
        count = real.sum(0).double()
        mean = m.sum(0) / count.clamp(min=1)
        dev = torch.where(real, self.posterior_mean - mean, torch.zeros((), dtype=m.dtype))
        var = (dev ** 2).sum(0) / (count - 1).clamp(min=1)
        return torch.where(count >= 2, var, torch.full_like(var, float("nan")))

    def active_units(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> torch.Tensor:
        """Boolean mask of the latent dimensions with Cov_x(E_q[z_j]) > threshold (a chain's: of its steps' dims
        that two or more sequences reach, see :meth:`posterior_mean_variance`)."""
        return self.posterior_mean_variance() > threshold

    def active_units_definition(self) -> Dict[str, object]:
        """How many units active units are counted among, and the rule in words (summary fields)."""
        variance = self.posterior_mean_variance()
        if self.real_coordinates() is None:
            return {"active_units_of": int(variance.shape[0]), "active_units_rule": "Cov_x E_q[z_j]"}
        return {"active_units_of": int(torch.isfinite(variance).sum()),
                "active_units_rule": "per step and dim: Cov over the sequences reaching step t of E_q[z_t,j]"}

    def nodes(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> List[NodeSummary]:
        """Each node's term averaged over the points, with its s.e., and a continuous latent's active units."""
        n = self.num_points
        variance = self.posterior_mean_variance()
        out = []
        for t in self.site_terms:
            cols = [self.latent_names.index(name) for name in t.latent_names]
            active = pmv = kl_dims = None
            active_of = None
            if t.kind == "latent":
                active = int((variance[cols] > threshold).sum())
                active_of = int(torch.isfinite(variance[cols]).sum())
                pmv = [_finite(v) for v in variance[cols]]
                if self.kl_per_dim is not None:
                    kl_dims = [_finite(v) for v in self.kl_per_dim[:, cols].mean(0)]
            out.append(NodeSummary(
                name=t.name, kind=t.kind, method=t.method, term=_finite(t.term.mean()),
                # MC standard error of a mean over points of independent per-point estimates
                se=_finite(t.var.sum().sqrt() / n), dims=int(t.dims), active_units=active,
                posterior_mean_variance=pmv, kl_per_dim=kl_dims, latent_names=list(t.latent_names),
                summed_over=list(t.summed_over), active_of=active_of))
        return out

    def summary(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> Dict[str, object]:
        """The JSON-ready metrics (plain floats/ints/lists; non-finite values become None)."""
        n = self.num_points

        def mean(t):
            return None if t is None else _finite(t.mean())

        def se(var):
            # MC standard error of a mean over points of independent per-point estimates
            return None if var is None else _finite(var.sum().sqrt() / n)

        def lo(t):
            return None if t is None else _finite(t.min())

        def between(t):
            # how much the mean would move with other test points: sd over the points / sqrt(n) (not Monte Carlo)
            return None if t is None or n < 2 else _finite(t.std(unbiased=True) / math.sqrt(n))

        out = {
            "elbo": mean(self.elbo),
            "elbo_se": se(self.elbo_var),
            "elbo_between_point_se": between(self.elbo),
            "reconstruction": mean(self.reconstruction),
            "kl": mean(self.kl),
            "kl_analytic": bool(self.kl_analytic),
            # a point mass has no entropy term: its "KL" is -log p(z) at the code (MAP), say so
            "kl_method": "point_mass" if self.point_mass else ("analytic" if self.kl_analytic else "monte_carlo"),
            "kl_mc": mean(self.kl_mc),
            "kl_mc_se": se(self.kl_mc_var),
            "elbo_samples": int(self.elbo_samples),
            "log_likelihood": mean(self.log_likelihood),
            "log_likelihood_se": se(self.log_likelihood_var),
            "iw_samples": int(self.iw_samples),
            "iw_ess_mean": mean(self.iw_ess),
            "iw_ess_min": lo(self.iw_ess),
            "log_likelihood_between_point_se": between(self.log_likelihood),
            **self.khat_summary(),
            "log_likelihood_warning": self.log_likelihood_warning(),
            "log_likelihood_prior": mean(self.log_likelihood_prior),
            "log_likelihood_prior_se": se(self.log_likelihood_prior_var),
            "prior_samples": int(self.prior_samples),
            "prior_ess_mean": mean(self.prior_ess),
            "prior_ess_min": lo(self.prior_ess),
            "latent_dims": len(self.latent_names),
            "latent_names": list(self.latent_names),
            "summed_sites": list(self.summed_sites),
            "active_units": int(self.active_units(threshold).sum()),
            "active_units_threshold": float(threshold),
            **self.active_units_definition(),
            "posterior_mean_variance": [_finite(v) for v in self.posterior_mean_variance()],
            "kl_per_dim": None if self.kl_per_dim is None else [_finite(v) for v in self.kl_per_dim.mean(0)],
            "kl_per_dim_analytic": bool(self.kl_per_dim_analytic) if self.kl_per_dim is not None else None,
            "reconstruction_mse": mean(self.reconstruction_mse),
            "nodes": [to_plain(node) for node in self.nodes(threshold)],
            **self.steps_summary(),
            "num_points": int(n),
            "seconds_evaluate": float(self.seconds),
        }
        if self.quantities is not None:
            # {key: the quantity it estimates for this model}; the keys themselves keep their names
            out["quantities"] = self.quantities.to_json()
        return out

    def steps_summary(self) -> Dict[str, object]:
        """For sites named per time step: the per-step profile of the ELBO's terms and whether k-hat grows with T."""
        profile = step_profile(self.site_terms)
        if profile is None:
            return {}
        note = None
        if self.iw_khat is not None and self.khat_note() is None:
            note = khat_length_note(self.iw_khat, profile.lengths)
        return {"steps": profile.to_dict(), "iw_khat_length_note": note}

    def khat_note(self) -> Optional[str]:
        """Why the importance weights have no PSIS k-hat (too few draws a point to fit their tail); None when they do."""
        k, unit = self.iw_samples, self.unit
        if self.iw_khat is None or tail_size(k) > 5:
            return None
        if k == 1:
            return f"no PSIS k-hat at K = 1: one importance draw a {unit} has no tail to fit"
        return f"no PSIS k-hat at K = {k}: PSIS needs K >= 21 draws a {unit} to fit the weights' tail"

    def khat_summary(self) -> Dict[str, object]:
        """The k-hat fields of the summary: None, with ``iw_khat_note`` saying why, where no k-hat exists."""
        note = self.khat_note()
        if self.iw_khat is None or note is not None:
            return {"iw_khat_max": None, "iw_khat_median": None, "iw_khat_above_0_7": None, "iw_khat_note": note}
        return {"iw_khat_max": _finite(self.iw_khat.max()), "iw_khat_median": _finite(np.median(self.iw_khat.numpy())),
                "iw_khat_above_0_7": int((self.iw_khat > KHAT_BAD).sum()), "iw_khat_note": None}

    def log_likelihood_warning(self) -> Optional[str]:
        """Why the importance-sampled log p(x) and its s.e. cannot be trusted, and what to do; None when they can."""
        if self.iw_khat is None or self.iw_ess is None:
            return None
        n, k = self.num_points, self.iw_samples
        log_p = self.quantities.log_likelihood if self.quantities is not None else "log p(x)"
        if k == 1:  # log w at one draw: log p(x, z) - log q(z|x), the ELBO's own Monte Carlo estimate
            return (f"K = 1: the importance-sampled {log_p} is a one-draw estimate of the ELBO, no tighter bound "
                    f"on {log_p}, and has no Monte Carlo s.e.; raise iw_samples (K) to estimate {log_p}")
        bad = int((self.iw_khat > KHAT_BAD).sum())
        low = int((self.iw_ess < IW_ESS_MIN).sum())
        if not bad and not low:
            return None
        if tail_size(k) <= 5:  # PSIS fits no tail of 4 draws or fewer: k-hat is infinite
            return (f"K = {k} importance draws are too few to check the weights' tail (PSIS needs K >= 21): "
                    f"the {log_p} s.e. cannot be trusted; raise iw_samples")
        why = []
        if bad:
            why.append(f"PSIS k-hat > {KHAT_BAD} for {bad} of {n} {self.unit}s (max {float(self.iw_khat.max()):.2f})")
        if low:
            why.append(f"importance ESS below {IW_ESS_MIN} for {low} of {n} {self.unit}s")
        return (f"the {log_p} s.e. cannot be trusted: " + " and ".join(why) + ": the weights are heavy-tailed, so "
                "the estimate is biased low by more than its s.e. there; raise iw_samples (K) or use a guide "
                "closer to the posterior (wider, or a richer family)")

    def to_rows(self) -> List[dict]:
        """One dict per data point (for a CSV): the scalar per-point results."""
        cols = {
            "elbo": self.elbo, "reconstruction": self.reconstruction, "kl": self.kl, "kl_mc": self.kl_mc,
            "log_likelihood": self.log_likelihood,
            "log_likelihood_se": None if self.log_likelihood_var is None else self.log_likelihood_var.sqrt(),
            "iw_ess": self.iw_ess, "iw_max_weight": self.iw_max_weight, "iw_khat": self.iw_khat,
            "log_likelihood_prior": self.log_likelihood_prior,
            "log_likelihood_prior_se": None if self.log_likelihood_prior_var is None else self.log_likelihood_prior_var.sqrt(),
            "prior_ess": self.prior_ess, "reconstruction_mse": self.reconstruction_mse,
        }
        cols = {k: v.tolist() for k, v in cols.items() if v is not None}
        return [{k: v[i] for k, v in cols.items()} for i in range(self.num_points)]


def _finite(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


def concat_points(parts: List[PointwiseEvaluation]) -> PointwiseEvaluation:
    """Evaluations of consecutive blocks of points as one (per-point tensors joined; the wall time is the longest)."""
    first = parts[0]
    joined = {}
    for f in dataclasses.fields(first):
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], torch.Tensor):
            joined[f.name] = torch.cat(values, 0)
        elif f.name == "site_terms":  # one list of nodes per block, in the same order
            joined[f.name] = [dataclasses.replace(node, term=torch.cat([v.term for v in same], 0),
                                                  var=torch.cat([v.var for v in same], 0))
                              for node, same in zip(values[0], zip(*values))]
        elif f.name == "seconds":
            joined[f.name] = max(values)
        else:  # settings of the evaluation, the same for every block
            joined[f.name] = values[0]
    return PointwiseEvaluation(**joined)
