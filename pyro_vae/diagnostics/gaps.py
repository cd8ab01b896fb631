"""The inference gap split: log p(x) - ELBO(q_encoder) into its approximation and amortization parts, with s.e.

Cremer, Li & Duvenaud (2018): for each point, q* is the member of a family
fitted to that point alone (diagnostics/local.py, ``family="law"``: the guide
law's per-point output ``out``, warm-started at the encoder's).  Then

- inference gap = log p(x) - ELBO(q_encoder),
- approximation gap = log p(x) - ELBO(q*): what the family cannot express,
- amortization gap = ELBO(q*) - ELBO(q_encoder): what the encoder misses,

for the guide's own family and for each richer family asked for (``richer``,
"fullrank" by default: "normal", "lowrank", "fullrank", each a Gaussian per
point warm-started at the encoder's q, or "iaf", the per-point flow of
local_flow.py, warm-started at the guide's own q*: K affine autoregressive
transforms after a Gaussian, fitted for the points).  Every ELBO and log p(x) is scored on fresh
draws: the encoder's q and each q* on the same noise (paired, so the
amortization gap's s.e. is that of a paired difference), log p(x) on draws of
its own from the best q* found, so that it and each ELBO err independently.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..data import batch
from ..errors import PyroVAEError, did_you_mean
from ..infer.data_name import named_data
from ..infer.layout import Layout, build_layout
from ..infer.psis import pareto_khat
from ..infer.rng import isolated_rng
from .draws import draw_q
from .local import LocalFit, LocalModel, check_law_fit, fit_local
from .local_flow import LOCAL_LAWS
from .results import GapSplit, InferenceGaps
from .settings import DiagnoseSettings
from .sizing import few_threads

#: the richer family every split also reports by default (cheap: a per-point Gaussian)
RICHER = ("fullrank",)
#: the families a split's q* can be taken from
RICHER_CHOICES = ("normal", "lowrank", "fullrank") + tuple(LOCAL_LAWS)


def check_richer(names: Sequence[str], flag: str = "--gap-richer") -> tuple:
    """``names`` as a tuple, or one line naming an unknown family (with "did you mean")."""
    for name in names:
        if name not in RICHER_CHOICES:
            raise PyroVAEError(f"{flag}: unknown family {name!r}; {did_you_mean(name, RICHER_CHOICES)}"
                               f"choose from {', '.join(RICHER_CHOICES)}")
    return tuple(dict.fromkeys(names))
# offsets from the settings' seed of the scoring draws (the local fit's check draws use seed + 3)
PAIRED_SEED, LOG_PX_SEED = 11, 13


def _law_name(model) -> str:
    names = sorted({model.graph.nodes[n].guide for n in model.latent_sites})
    return names[0] if len(names) == 1 else "+".join(names)


def _scored(model, guide, x, layout: Layout, draws: int, seed: int) -> np.ndarray:
    """(draws, points) log p(x, z) - log q(z | x), z ~ ``guide``, on the stream ``seed``."""
    with torch.no_grad(), isolated_rng(seed, batch.reference(x).device):
        _, lp, lq = draw_q(LocalModel(model, guide), x, draws, layout, split="draws")
    return (lp - lq).cpu().numpy().astype(np.float64)


def _mean_se(lw: np.ndarray):
    return lw.mean(0), lw.std(0, ddof=1) / math.sqrt(lw.shape[0])


def _total(values: np.ndarray, se: np.ndarray):
    """The mean over points and its s.e. (the points err independently)."""
    return float(np.mean(values)), float(np.sqrt(np.sum(np.square(se))) / len(values))


def log_px_estimate(lw: np.ndarray):
    """Importance-sampled log p(x) per point from (draws, points) log-weights: the estimate, its delta-method s.e.
    (sd of w / mean w over sqrt(draws)) and PSIS k-hat (how far that s.e. can be trusted)."""
    m = lw.max(0)
    a = np.exp(lw - m)
    abar = a.mean(0)
    return m + np.log(abar), (a / abar).std(0, ddof=1) / math.sqrt(lw.shape[0]), pareto_khat(lw.T)


def _split(family: str, fit: LocalFit, lw_fit, lw_q, log_px, log_px_se) -> GapSplit:
    lw_star = np.where(fit.better[None, :], lw_fit, lw_q)  # not beaten on independent draws: q* is q itself
    elbo, elbo_se = _mean_se(lw_star)
    approx, approx_se = log_px - elbo, np.sqrt(log_px_se ** 2 + elbo_se ** 2)
    amort, amort_se = _mean_se(lw_star - lw_q)
    ta, ta_se = _total(approx, approx_se)
    tm, tm_se = _total(amort, amort_se)
    return GapSplit(family=family, elbo=elbo, elbo_se=elbo_se, approximation=approx, approximation_se=approx_se,
                    amortization=amort, amortization_se=amort_se, total_approximation=ta, total_approximation_se=ta_se,
                    total_amortization=tm, total_amortization_se=tm_se, steps=fit.steps, converged=fit.converged,
                    local_better=np.asarray(fit.better))


def check_gaps_possible(model, x, data: str = "the points") -> Layout:
    """The layout the split reads, or one line saying why this model's gaps cannot be split."""
    layout = build_layout(model, named_data(model, x, data), data, continuous=True)
    if layout.point_mass:
        raise PyroVAEError("the guide is a point mass (delta): it has no density, so it has no ELBO of its own to "
                           "split; the gaps need a guide with a density (normal, lowrank, fullrank)")
    check_law_fit(model, layout)
    return layout


def inference_gaps(model, x, point_index: Sequence[int], settings: DiagnoseSettings = DiagnoseSettings(), *,
                   richer: Sequence[str] = RICHER, progress: bool = False, name: str = "run",
                   log: Optional[Callable[[str], None]] = None) -> InferenceGaps:
    """The split of ``model``'s inference gap on the rows of ``x`` (``point_index``: their row numbers).

    ``settings``: the local fits' steps, step size and particles, ``draws``
    (per point, for each ELBO and for log p(x)) and ``seed``.  The model's
    parameters are not changed; the caller holds its parameter scope.
    """
    settings.check()
    richer = check_richer(richer, "richer")
    log = log or (lambda msg: None)
    x = named_data(model, x)  # one array, from Python, is named as the model takes it
    layout = check_gaps_possible(model, x)
    own = _law_name(model)
    families = [own] + [f for f in richer if f != own]
    fits: List[LocalFit] = []
    for family in families:
        log(f"[{name}] fitting q of the {family} family to each of {batch.num_rows(x)} points alone "
            f"({settings.local_steps} steps)")
        with torch.enable_grad(), few_threads(model, x, settings.local_particles):
            # a per-point flow starts at the own family's q* (its transforms start as the identity)
            start = fits[0].guide if family in LOCAL_LAWS and fits else None
            fits.append(fit_local(model, x, layout, None, None, settings, "law", progress, f"{name}: local {family}",
                                  law=None if family == own else family, start=start))
    k = settings.draws
    lw_q = _scored(model, model.guide, x, layout, k, settings.seed + PAIRED_SEED)
    scored = [_scored(model, f.guide, x, layout, k, settings.seed + PAIRED_SEED) for f in fits]
    # log p(x) from the q* with the highest ELBO (the closest to the posterior found), on draws of its own
    best = int(np.argmax([np.where(f.better[None, :], s, lw_q).mean() for f, s in zip(fits, scored)]))
    proposal = fits[best].guide
    proposal.restart(~np.asarray(fits[best].better))  # a fit that lost to q on a point proposes from its start there
    log_px, log_px_se, khat = log_px_estimate(_scored(model, proposal, x, layout, k, settings.seed + LOG_PX_SEED))
    elbo_q, elbo_q_se = _mean_se(lw_q)
    inference, inference_se = log_px - elbo_q, np.sqrt(log_px_se ** 2 + elbo_q_se ** 2)
    splits = [_split(f_name, f, s, lw_q, log_px, log_px_se) for f_name, f, s in zip(families, fits, scored)]
    tl, tl_se = _total(log_px, log_px_se)
    te, te_se = _total(elbo_q, elbo_q_se)
    ti, ti_se = _total(inference, inference_se)
    return InferenceGaps(points=[int(i) for i in point_index], draws=k, log_px=log_px, log_px_se=log_px_se,
                         log_px_khat=khat, log_px_proposal=families[best], elbo_q=elbo_q, elbo_q_se=elbo_q_se,
                         inference=inference, inference_se=inference_se, total_log_px=tl, total_log_px_se=tl_se,
                         total_elbo_q=te, total_elbo_q_se=te_se, total_inference=ti, total_inference_se=ti_se,
                         own=splits[0], richer=splits[1:])

