"""Diagnosing subjects end to end: one small stage per result (draws, k-hat, local fit, reference, comparison, SBC, graph, summary, warnings)."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.layout import Layout, build_layout, masked_coordinates, masked_read
from ..infer.rng import isolated_rng
from ..infer.sites import FoldMasks, is_real, site_matrix
from ..models.params import model_params, scratch_params
from ..models.protocol import model_device
from .settings import DiagnoseSettings, ESS_MIN, RHAT_FAIL, RHAT_FRACTION, RHAT_MAX, Subject
from ..infer.psis import KHAT_BAD, KHAT_GOOD
from .results import (AmortizationGap, Comparison, Diagnosis, Generated, GridPosterior, KhatSummary, ModelStructure,
                      NutsCheck, QSummary, Reference, RunDiagnosis, RunSummary, SbcResult, SequenceFit,
                      WorstPoint)
from .structure import graph_data, model_structure
from ..serialize import to_plain
from .generated import generate
from .sequences import sequence_fit
from .draws import draw_prior, draw_q
from .local import LocalModel, fit_local
from .gaps import inference_gaps
from .reference import grid_reference, nuts_reference, unconstrained_loc_scale
from .sizing import few_threads
from .within_family import POORER, guide_outside_family
from ..data import batch
from ..data.arrays import Dataset
from ..data.names import words_of
from ..evaluation.steps import row_unit
from .. import arviz_compat
from ..infer.psis import pareto_khat
from .arviz_io import from_dict, stored_name
from .compare import compare, compare_kept, moments
from .kalman import LinearGaussian, kalman_smoother
from ..models.graph.sequence import step_site
from .calibration import check_simulable, sbc_ranks, sbc_uniformity
from .loo_check import loo_check
from .points import data_difference

# q is overconfident when its sd ratio to the reference is at most OVERCONFIDENT_SD, or below
# SD_RATIO_MIN by more than 2 of its standard errors (the best diagonal q of a posterior with
# correlation rho is sqrt(1 - rho^2) wide: 0.95 at rho = 0.3, 0.8 at rho = 0.6, not flagged)
OVERCONFIDENT_SD = 0.5
SD_RATIO_MIN = 0.8
# the gap is scored on this many times settings.draws fresh draws: forward passes only, cheap next
# to the fit, and the two ELBOs' draws vary far more than their (paired) difference
GAP_DRAWS = 4
# what a layout's errors call the points of a run ("Model fails on the diagnosed points ...")
DIAGNOSED = "the diagnosed points"


def diagnose_subject(subject: Subject, settings: DiagnoseSettings = DiagnoseSettings(), *, progress: Optional[bool] = None,
                     log: Optional[Callable[[str], None]] = None) -> RunDiagnosis:
    """All diagnostics of one model on its points; see the module docstring."""
    settings.check()
    log = log or (lambda msg: None)
    progress = sys.stderr.isatty() if progress is None else progress
    model, name = subject.model, subject.name
    device = model_device(model)
    x = _subject_data(subject, device)
    b = batch.num_rows(x)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        # the model's own parameters (runs with equal parameter names cannot see each other's values),
        # and a scratch layer so that the local guides' parameters never reach the model's scope
        # (a program's poutine.mask read as its sites' .mask(), by every density and by the per-point q's mirror)
        with model_params(model), scratch_params(), isolated_rng(settings.seed, device), FoldMasks():
            return _diagnose(subject, model, name, x, b, settings, progress, log)
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()


def _diagnose(subject, model, name, x, b, settings, progress, log) -> RunDiagnosis:
    layout = build_layout(model, x, DIAGNOSED, continuous=True)
    timings: Dict[str, float] = {}
    t_start = clock = time.perf_counter()

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    unit = row_unit(layout.sites)
    log(f"[{name}] {settings.draws} draws from q(z|x) for {b} {unit}s, PSIS k-hat per {unit}")
    qd = _draw_q(model, x, layout, subject.point_index, name, settings)
    khat = _khat(qd.log_w, layout.point_mass)
    loo = None if layout.point_mass else loo_check(qd.log_w, khat.values)
    zp = _prior_draws(model, x, layout, settings)
    prior_var = zp.var(0, ddof=1)
    lap("q_draws")

    log(f"[{name}] fitting q to each {unit} alone ({settings.local_steps} steps): amortization gap")
    local, precond = _local_fit(model, x, layout, qd, name, settings, progress)
    lap("local_fit")

    gaps = _gaps(model, x, subject.point_index, name, settings, progress, log)
    lap("gaps")

    ref = _reference(model, x, layout, subject.point_index, name, zp, precond, settings, progress, log)
    lap("reference")

    comparison = _comparison(model, x, layout, qd, ref)
    contraction = _contraction(ref, qd.summary, prior_var)

    sbc = _sbc(model, x, layout, name, settings, log)
    lap("sbc")
    generated = _generated(model, x, layout, qd.summary, np.sqrt(prior_var), contraction, name, settings, log,
                           _vocabulary(subject))
    fit = _sequence_fit(model, x, ref.result, name, settings, log)
    lap("generated")
    structure = _structure(subject, model, x, name, log)
    lap("structure")
    seconds = time.perf_counter() - t_start
    summary = _summary(subject.point_index, qd.summary, khat, local, comparison, sbc, contraction,
                       _log_sd_ratio_var(settings.draws, ref.result, layout.dim, b))
    run = subject.run
    data = subject.data
    shape = getattr(data, "image_shape", None) or getattr(run, "image_shape", None)
    r = RunDiagnosis(
        name=name, folder=_folder_name(name), info=dict(subject.info), points=[int(i) for i in subject.point_index],
        latent_labels=list(layout.labels), point_mass_guide=bool(layout.point_mass), q=qd.summary, khat=khat,
        prior_sd=np.sqrt(prior_var), local=local, reference=ref.result, comparison=comparison,
        contraction=contraction, sbc=sbc, summary=summary, warnings=[], timings=timings, seconds=seconds,
        history=to_plain(run.history) if run is not None and run.history else None,
        image_shape=[int(v) for v in shape] if shape else None,
        latent_sites=list(layout.sites), summed_sites=list(layout.summed),
        q_data=qd.data, reference_data=ref.data, nuts_data=ref.nuts_data, grid=ref.grid, generated=generated,
        structure=structure, loo_check=loo, gaps=gaps, sequences=fit,
        step_profile=_step_profile(run))
    r.warnings = _reference_warnings(name, r.reference, unit) + _warnings(r)
    return r


# -- the stages ---------------------------------------------------------------------


@dataclass
class _QDraws:
    z: np.ndarray  # (draws, points, latent)
    log_w: np.ndarray  # (draws, points)
    summary: QSummary
    data: object  # ArviZ


def _draw_q(model, x, layout: Layout, point_index, name, settings) -> _QDraws:
    """Draws from q(z|x), their importance log-weights, moments and ELBO per point."""
    with isolated_rng(settings.seed + 1, batch.reference(x).device):
        zq, log_p, log_q = draw_q(model, x, settings.draws, layout)
    zq_np = zq.cpu().numpy()
    log_w = (log_p - log_q).cpu().numpy()  # (draws, points)
    q_mean, q_cov = moments(zq_np)
    q_sd = np.sqrt(np.clip(np.diagonal(q_cov, axis1=1, axis2=2), 0, None))
    summary = QSummary(mean=q_mean, sd=q_sd, elbo=log_w.mean(0), elbo_se=log_w.std(0, ddof=1) / math.sqrt(settings.draws))
    data = _idata(layout, zq_np[None], point_index,
                  {"log_p": log_p.cpu().numpy()[None], "log_q": log_q.cpu().numpy()[None], "log_weight": log_w[None]},
                  {"source": "q(z|x)", "run": name})
    return _QDraws(zq_np, log_w, summary, data)


def _khat(log_w: np.ndarray, point_mass: bool) -> KhatSummary:
    """PSIS k-hat per point and its bands; nothing for a point mass (it has no density)."""
    if point_mass:
        return KhatSummary()
    k = pareto_khat(log_w.T)
    return KhatSummary(values=k, median=float(np.median(k)), max=float(k.max()), good=int((k <= KHAT_GOOD).sum()),
                       ok=int(((k > KHAT_GOOD) & (k <= KHAT_BAD)).sum()), bad=int((k > KHAT_BAD).sum()))


def _prior_draws(model, x, layout: Layout, settings) -> np.ndarray:
    """Draws z ~ p(z): the contraction of each latent dimension, the grid's extent."""
    return draw_prior(model, x, max(2000, settings.draws), layout)[:, 0].cpu().numpy().astype(np.float64)


def _local_fit(model, x, layout: Layout, qd: _QDraws, name, settings, progress):
    """q fitted to each point alone (decoder fixed) and the amortization gap; also the reference's preconditioner.

    The local q starts at the moments of q's draws, so those draws cannot
    score it (its ELBO on them is biased up, and the gap with it).  It is
    kept per point only where it beats q on independent check draws (see
    ``fit_local``); both are scored on fresh draws, with the same noise for
    both where the two guides draw alike (two reparameterized Gaussians),
    which makes the gap's standard error that of a paired difference.
    """
    q = qd.summary
    with torch.enable_grad(), few_threads(model, x, settings.local_particles):
        local_normal = fit_local(model, x, layout, q.mean, q.sd, settings, "normal", progress, f"{name}: local q")
        local_gap = local_normal
        if layout.point_mass:
            local_gap = fit_local(model, x, layout, q.mean, q.sd, settings, "delta", progress, f"{name}: local MAP")
    b = batch.num_rows(x)
    k_local = 1 if layout.point_mass else GAP_DRAWS * settings.draws
    fresh = settings.seed + 5  # neither q's draws (seed + 1) nor the local fit's check draws (seed + 3)
    with torch.no_grad(), isolated_rng(fresh, batch.reference(x).device):
        _, lp_l, lq_l = draw_q(LocalModel(model, local_gap.guide), x, k_local, layout, split="draws")
    lw_local = (lp_l - lq_l).cpu().numpy()
    if layout.point_mass:
        lw_q = qd.log_w[:1]  # a point mass draws nothing: its one "draw" is exact
    else:
        with torch.no_grad(), isolated_rng(fresh, batch.reference(x).device):
            _, lp_q, lq_q = draw_q(LocalModel(model, model.guide), x, k_local, layout, split="draws")
        lw_q = (lp_q - lq_q).cpu().numpy()
    if k_local > 1:
        # the s.e. of the fit's gain over q, kept where q wins: it is how well "no gap" is known
        gap_se = (lw_local - lw_q).std(0, ddof=1) / math.sqrt(k_local)  # paired draws (common random numbers)
    else:
        gap_se = q.elbo_se.copy()
    better = local_gap.better
    outside = guide_outside_family(model, x, layout)
    if outside is None:
        # where the fit does not beat q on independent draws, q (in the family) is the best per-point q found: no gap
        lw_local = np.where(better[None, :], lw_local, lw_q)
    elbo_local, elbo_q = lw_local.mean(0), lw_q.mean(0)
    elbo_local_se = lw_local.std(0, ddof=1) / math.sqrt(k_local) if k_local > 1 else np.zeros(b)
    diff = elbo_local - elbo_q
    if outside is not None:
        # a poorer family that does not beat q says nothing of what a per-point q as rich as q's would gain
        diff, gap_se = np.where(better, diff, np.nan), np.where(better, gap_se, np.nan)
    family = "AutoDelta (MAP)" if layout.point_mass else "AutoNormal (diagonal Gaussian)"
    gap = AmortizationGap(family=family, elbo=elbo_local, elbo_se=elbo_local_se, gap=diff, gap_se=gap_se,
                          elbo_q=elbo_q, steps=local_gap.steps, converged=local_gap.converged, local_better=better,
                          poorer_family=None if outside is None else f"{POORER} ({outside}; the per-point q is "
                          f"{family}): where it beats the guide the gap shown is a lower bound")
    return gap, unconstrained_loc_scale(local_normal.guide, layout, b)


def _gaps(model, x, point_index, name, settings, progress, log):
    """The inference gap split (``settings.gaps``), or None, said, for a model it does not apply to."""
    if not settings.gaps:
        return None
    log(f"[{name}] the inference gap split: log p(x) - ELBO(q) into approximation and amortization gaps")
    try:
        return inference_gaps(model, x, point_index, settings, progress=progress, name=name, log=log)
    except PyroVAEError as e:
        log(f"[{name}] note: no gap split: {e}")
        return None


@dataclass
class _Ref:
    result: Reference
    mean: Optional[np.ndarray] = None
    cov: Optional[np.ndarray] = None
    draws: Optional[np.ndarray] = None  # (draws, points, latent)
    data: object = None
    nuts_data: object = None
    grid: Optional[GridPosterior] = None


def _reference(model, x, layout: Layout, point_index, name, zp, precond, settings, progress, log) -> _Ref:
    """The reference posterior: the exact grid for one real 2-D latent, NUTS (checked against it when both)."""
    b, D = batch.num_rows(x), layout.dim
    two_d = D == 2 and len(layout.sites) == 1 and is_real(layout.supports[layout.sites[0]])
    if settings.reference == "grid" and not two_d:
        raise PyroVAEError(f"--reference grid needs one real 2-D latent, but {name} has {D} latent dimensions: "
                           "use --reference nuts")
    out = _Ref(Reference(method=settings.reference))
    params = LinearGaussian.from_model(model) if settings.reference == "nuts" else None
    if params is not None and layout.sites == [step_site(model.chain, t) for t in range(1, len(layout.sites) + 1)]:
        return _kalman(model, x, layout, point_index, name, params, settings, log)
    if settings.reference in ("nuts", "grid") and two_d:
        out = _grid(model, x, layout, point_index, name, zp, precond, settings, log)
    if settings.reference == "nuts":
        log(f"[{name}] NUTS reference: {settings.nuts_chains} chains x ({settings.nuts_warmup} warmup + "
            f"{settings.nuts_samples} draws), {b} points, decoder fixed")
        with torch.enable_grad(), few_threads(model, x, settings.nuts_chains):
            z_n, diverging, seconds, step_size = nuts_reference(model, x, layout, precond, settings, progress, log)
        z_n = z_n.cpu().numpy()
        data = _idata(layout, z_n, point_index, {"diverging": diverging}, {"source": "NUTS", "run": name})
        rhat, ess_bulk, ess_tail = _chain_stats(data, layout)
        check = NutsCheck(
            chains=settings.nuts_chains, draws=settings.nuts_samples, warmup=settings.nuts_warmup,
            iterations=settings.nuts_warmup + settings.nuts_samples, seconds=seconds, step_size=step_size,
            divergences=int(diverging[0].sum()), rhat=rhat, ess_bulk=ess_bulk, ess_tail=ess_tail,
            rhat_max=float(np.nanmax(rhat)), rhat_above=int((np.asarray(rhat) > RHAT_MAX).sum()),
            ess_bulk_min=float(np.nanmin(ess_bulk)), ess_tail_min=float(np.nanmin(ess_tail)))
        flat = z_n.reshape(-1, b, D)
        n_mean, n_cov = moments(flat)
        if out.draws is None:
            out = _Ref(Reference(method="nuts", draws=check.draws, chains=check.chains, seconds=seconds,
                                 mean=n_mean, sd=_sd(n_cov), nuts=check), n_mean, n_cov, flat, data)
        else:
            # NUTS checked against the exact grid: a test of the sampler on this model
            g_sd, n_sd = out.result.sd, _sd(n_cov)
            check.max_std_mean_error_vs_grid = float((np.abs(n_mean - out.mean) / g_sd).max())
            check.max_sd_ratio_error_vs_grid = float(np.abs(n_sd / g_sd - 1).max())
            out.result.nuts = check
            out.nuts_data = data
    return out


def _kalman(model, x, layout: Layout, point_index, name, params, settings, log) -> _Ref:
    """The exact posterior of a linear-Gaussian chain, the Kalman (RTS) smoother's: its per-step means and
    covariances, with draws from those marginals for the per-dimension W2.  The joint over steps is not kept, so
    the Gaussian KL is left out (NaN); a padded step is no part of any comparison (see _comparison)."""
    log(f"[{name}] exact reference: the Kalman smoother of the linear-Gaussian chain")
    t0 = time.perf_counter()
    obs = x[model.obs_site]
    lengths = x.get("lengths")
    ks = kalman_smoother(params, obs, lengths)
    b, steps, k = ks.means.shape
    mean = ks.means.reshape(b, steps * k).numpy()
    cov = np.zeros((b, steps * k, steps * k))
    for t in range(steps):
        cov[:, t * k:(t + 1) * k, t * k:(t + 1) * k] = ks.covariances[:, t].numpy()
    g = torch.Generator().manual_seed(settings.seed + 5)
    eps = torch.randn(settings.draws, b, steps, k, 1, generator=g, dtype=torch.float64)
    chol = torch.linalg.cholesky(ks.covariances + 1e-12 * torch.eye(k, dtype=torch.float64))
    draws = (ks.means.unsqueeze(0) + (chol.unsqueeze(0) @ eps).squeeze(-1)).reshape(settings.draws, b, steps * k)
    draws = draws.numpy()
    ref = Reference(method="kalman", draws=settings.draws, seconds=time.perf_counter() - t0, mean=mean, sd=_sd(cov))
    data = _idata(layout, draws[None], point_index, None, {"source": "Kalman smoother", "run": name})
    return _Ref(ref, mean, cov, draws, data)


def _comparison(model, x, layout: Layout, qd, ref: _Ref) -> Optional[Comparison]:
    """q against the reference; a point's coordinates the model masks out (padded steps) left out of it."""
    if ref.draws is None:
        return None
    masked = masked_coordinates(model, x, layout)
    if masked is None:
        comparison = compare(qd.z, ref.mean, ref.cov, ref.draws, list(zip(layout.sites, layout.sizes)))
    else:
        comparison = compare_kept(qd.z, ref.mean, ref.cov, ref.draws, ~masked)
    if ref.result.method == "kalman":
        comparison.kl_gauss = np.full_like(comparison.kl_gauss, np.nan)  # the joint over steps is not kept
        for node in comparison.nodes:
            node.kl_gauss = np.full_like(node.kl_gauss, np.nan)
    return comparison


def _grid(model, x, layout: Layout, point_index, name, zp, precond, settings, log) -> _Ref:
    log(f"[{name}] exact grid posterior ({settings.grid_size}x{settings.grid_size} cells per point)")
    b, site = batch.num_rows(x), layout.sites[0]
    loc, scale = precond[site]
    center = site_matrix(loc.unsqueeze(0), layout.event_dims[site], layout.nest, layout.data_dim, 1, b)[0]
    half = site_matrix(scale.unsqueeze(0), layout.event_dims[site], layout.nest, layout.data_dim, 1, b)[0]
    box = np.stack([np.quantile(zp, 0.0005, axis=0), np.quantile(zp, 0.9995, axis=0)])
    box = box + np.array([[-1.0], [1.0]]) * 0.1 * (box[1] - box[0])
    t0 = time.perf_counter()
    g_mean, g_cov, g_draws, grid, edge = grid_reference(model, x, layout, center.cpu().double().numpy(),
                                                        half.cpu().double().numpy(), box, settings)
    ref = Reference(method="grid", cells=settings.grid_size**2, edge_mass=edge, seconds=time.perf_counter() - t0,
                    draws=int(g_draws.shape[0]), mean=g_mean, sd=_sd(g_cov))
    data = _idata(layout, g_draws[None], point_index, None, {"source": "exact grid posterior", "run": name})
    return _Ref(ref, g_mean, g_cov, g_draws, data, grid=GridPosterior(**grid))


def _contraction(ref: _Ref, q: QSummary, prior_var: np.ndarray) -> np.ndarray:
    """Per latent dim, 1 - posterior variance / prior variance: 1 fully determined by x, 0 the prior."""
    post_var = (q.sd**2).mean(0) if ref.cov is None else np.diagonal(ref.cov, axis1=1, axis2=2).mean(0)
    return 1 - post_var / prior_var


def _sd(cov: np.ndarray) -> np.ndarray:
    return np.sqrt(np.diagonal(cov, axis1=1, axis2=2))


def _sbc(model, x, layout: Layout, name, settings, log) -> Optional[SbcResult]:
    """Simulation-based calibration; skipped (with the reason) for a model that cannot be simulated."""
    if settings.sbc_sims <= 0:
        return None
    log(f"[{name}] simulation-based calibration: {settings.sbc_sims} simulations x {settings.sbc_draws} draws")
    try:
        ranks = sbc_ranks(model, x, layout, settings.sbc_sims, settings.sbc_draws)
    except PyroVAEError:
        raise
    except Exception as e:  # a model whose prior or likelihood cannot be sampled
        return SbcResult(skipped=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    pv = sbc_uniformity(ranks, settings.sbc_draws)
    tested = int(np.isfinite(pv).sum())
    alpha = 0.01 / max(1, tested)  # Bonferroni over the latent dimensions tested
    left = int((ranks < 0).sum())
    if left:
        log(f"[{name}] SBC: {left} ranks of coordinates the model masks out (padded steps) left out; "
            f"{tested} of {len(pv)} latent dimensions tested")
    return SbcResult(sims=settings.sbc_sims, draws=settings.sbc_draws, ranks=ranks, pvalues=pv, alpha=alpha,
                     flagged=[layout.labels[j] for j in np.nonzero(np.nan_to_num(pv, nan=1.0) < alpha)[0]],
                     tested=tested)


def _vocabulary(subject):
    """The subject's columns' names where they are words (a topic model's vocabulary), else None."""
    names = getattr(subject.data, "feature_names", None)
    config = getattr(subject.run, "config", None)
    return words_of(names, subject.info.get("likelihood"), getattr(config, "data", None))


def _generated(model, x, layout: Layout, q: QSummary, prior_sd, contraction, name, settings, log,
               words=None) -> Optional[Generated]:
    """Decoded figures for the report (with ``words``, each sample's words too); None for a model whose likelihood
    has no mean."""
    try:
        return generate(model, x, layout, q.mean, prior_sd, contraction, settings.seed, words)
    except PyroVAEError:
        raise
    except Exception as e:
        log(f"[{name}] no 'generated' figures: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None


def _sequence_fit(model, x, reference: Reference, name, settings, log) -> Optional[SequenceFit]:
    """A chain's sequences for the report's figures; None (and a note) when they cannot be drawn."""
    try:
        return sequence_fit(model, x, reference, settings.seed)
    except PyroVAEError:
        raise
    except Exception as e:
        log(f"[{name}] no sequence figures: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None


def _step_profile(run) -> Optional[dict]:
    """The per-step profile of the ELBO's terms that evaluate saved in the run's metrics.json (None without)."""
    metrics = getattr(run, "metrics", None) if run is not None else None
    profile = metrics.get("steps") if isinstance(metrics, dict) else None
    return profile if isinstance(profile, dict) and profile.get("terms") else None


def _structure(subject: Subject, model, x, name, log) -> Optional[ModelStructure]:
    """The model's graph for the report, traced on a run's training arrays when named (unlabelled rows show
    what is partly observed), else on the diagnosed points; None (and a note) for a program it cannot trace
    on those rows: a drawing never stops a diagnosis."""
    log(f"[{name}] the model's graph")
    try:
        return model_structure(model, graph_data(subject.data) if isinstance(subject.data, Dataset) else x)
    except PyroVAEError as e:
        log(f"[{name}] note: no graph drawn: {e}")
        return None


def _chain_stats(data, layout: Layout):
    """R-hat, bulk and tail ESS per (point, latent), concatenated over sites (ArviZ)."""
    r = arviz_compat.rhat(data)
    eb = arviz_compat.ess(data, method="bulk")
    et = arviz_compat.ess(data, method="tail")
    names = [stored_name(s) for s in layout.sites]
    cat = lambda ds: np.concatenate([np.asarray(ds[s].values).reshape(ds[s].shape[0], -1) for s in names], 1)
    return cat(r), cat(eb), cat(et)


def _idata(layout: Layout, z: np.ndarray, points, stats: Optional[dict], attrs: dict):
    """(chain, draw, point, latent) -> ArviZ data with one variable per latent site."""
    post, dims, coords = {}, {}, {"point": np.asarray(points, dtype=np.int64)}
    for site, v in layout.split(z).items():
        s = stored_name(site)  # a "/" in a site's name is a path to ArviZ 1.x and netCDF
        dname = f"{s}_dim"
        post[s] = np.asarray(v, dtype=np.float64)
        dims[s] = ["point", dname]
        coords[dname] = np.arange(v.shape[-1])
    ss = None
    if stats:
        ss = {}
        for k, v in stats.items():
            ss[k] = np.asarray(v)
            if ss[k].ndim == 3:
                dims[k] = ["point"]
    return from_dict(post, ss, coords=coords, dims=dims, attrs=attrs)


def _log_sd_ratio_var(draws: int, ref: Reference, dims: int, b: int) -> np.ndarray:
    """Sampling variance of log(sd_q / sd_ref) per (point, latent dim).

    log of a sample sd from n effective draws has variance about 1 / (2 n):
    q's draws are independent; NUTS's count their bulk ESS; the grid's sd is
    exact.
    """
    v = np.full((b, dims), 1.0 / (2 * max(draws - 1, 1)))
    if ref.method == "nuts" and ref.nuts is not None:
        v = v + 1.0 / (2 * np.maximum(np.asarray(ref.nuts.ess_bulk, dtype=float), 1.0))
    return v


def _overconfident(ratio, log_var_sum, count) -> np.ndarray:
    """Whether a geometric-mean sd ratio (of ``count`` log ratios) is at most OVERCONFIDENT_SD, or clearly below SD_RATIO_MIN."""
    ratio = np.asarray(ratio, dtype=float)
    se = ratio * np.sqrt(log_var_sum) / count
    return (ratio <= OVERCONFIDENT_SD) | (ratio + 2 * se < SD_RATIO_MIN)


def _summary(points, q: QSummary, khat: KhatSummary, local: AmortizationGap, c: Optional[Comparison], sbc: Optional[SbcResult],
             contraction: np.ndarray, log_ratio_var: Optional[np.ndarray] = None) -> RunSummary:
    """The scalars the report's tables show, and the worst points."""
    b = len(points)
    s = RunSummary(points=b, elbo_q=float(np.mean(q.elbo)), elbo_local=float(np.mean(local.elbo)),
                   gap=float(np.mean(local.gap)), gap_se=float(np.sqrt(np.sum(np.square(local.gap_se))) / b),
                   active_dims=int((np.asarray(contraction) > 0.1).sum()), worst=[])
    if local.poorer_family is not None and not np.all(np.isfinite(local.gap)):
        s.gap_note = local.poorer_family  # its mean is NaN: not measured at some point, never a clipped 0
    if c is not None:
        kl = np.asarray(c.kl_gauss)
        s.mean_abs_error = float(np.mean(c.mean_abs_error))
        s.std_mean_error = float(np.mean(c.std_mean_error))
        s.sd_ratio = _geometric_mean(c.sd_ratio)
        if log_ratio_var is not None:
            n_all = log_ratio_var.size
            s.sd_ratio_se = float(s.sd_ratio * np.sqrt(log_ratio_var.sum()) / n_all)
            dims = log_ratio_var.shape[1]
            s.overconfident = bool(_overconfident(s.sd_ratio, log_ratio_var.sum(), n_all))
            flagged = _overconfident(c.sd_ratio, log_ratio_var.sum(1), dims)
            s.overconfident_points = [int(points[j]) for j in np.nonzero(flagged)[0]]
        s.kl_gauss = float(np.mean(kl)) if np.all(np.isfinite(kl)) else None
        s.w2 = float(np.mean(c.w2))
    if sbc is not None and sbc.pvalues is not None:
        s.sbc_min_p, s.sbc_flagged = float(np.nanmin(sbc.pvalues)), len(sbc.flagged)
    k = khat.values
    order = np.argsort(-np.asarray(k)) if k is not None else np.argsort(-np.asarray(local.gap))
    s.worst = [WorstPoint(point=int(points[j]), khat=None if k is None else float(k[j]), gap=float(local.gap[j]),
                          std_mean_error=None if c is None else float(c.std_mean_error[j])) for j in order[: min(5, b)]]
    return s


def _geometric_mean(v) -> float:
    v = np.asarray(v, dtype=float)
    if np.any(v <= 0):
        return 0.0
    return float(np.exp(np.mean(np.log(v))))


def _reference_warnings(name: str, ref: Reference, unit: str = "point") -> List[str]:
    """A truncated grid, NUTS chains that disagree, too few effective draws, divergences."""
    out = []
    if ref.edge_mass is not None and ref.edge_mass > 1e-4:
        out.append(f"{name}: the grid posterior has {ref.edge_mass:.2g} of its mass in the outermost cells; "
                   "its moments may be truncated")
    n = ref.nuts
    if n is None:
        return out
    # One R-hat per (point, latent dim): with hundreds of them, a few just above 1.01 are
    # expected from chance alone at a few hundred draws, so warn on a clear failure
    # (any above RHAT_FAIL) or on many above RHAT_MAX, not on the largest of them.
    n_all = int(np.isfinite(np.asarray(n.rhat, dtype=float)).sum())  # a held padded coordinate has none (NaN)
    if n.rhat_max > RHAT_FAIL or n.rhat_above > RHAT_FRACTION * n_all:
        out.append(f"{name}: the NUTS chains disagree: R-hat > {RHAT_MAX} for {n.rhat_above} of {n_all} "
                   f"({unit}, latent dim) pairs, up to {n.rhat_max:.3f}; raise --nuts-warmup/--nuts-samples before "
                   "trusting the comparisons")
    if n.ess_bulk_min < ESS_MIN:
        out.append(f"{name}: the NUTS reference has a bulk ESS as low as {n.ess_bulk_min:.0f} "
                   f"(< {ESS_MIN}): raise --nuts-samples")
    if n.divergences:
        out.append(f"{name}: {n.divergences} divergent NUTS transitions: the reference may miss "
                   "parts of the posterior")
    return out


def _warnings(r: RunDiagnosis) -> List[str]:
    """What a reader must not miss: a point-mass guide, poor k-hat, an overconfident q, failed calibration."""
    out, s, name, b = [], r.summary, r.name, r.summary.points
    unit = row_unit(r.latent_labels)
    if r.point_mass_guide:
        out.append(f"{name}: the guide is a point mass (delta): it has no posterior spread, so k-hat and "
                   "importance-sampled log p(x) are undefined and its KL to the reference is infinite")
    bad = r.khat.bad
    if bad:
        # only points above the threshold: the warning must not name a point it is not about
        named = [w for w in s.worst if w.khat is not None and w.khat > KHAT_BAD][:3]
        worst = ", ".join(f"test[{w.point}] (k-hat {w.khat:.2f})" for w in named)
        severity = "POOR POSTERIOR" if bad > b / 2 else f"some {unit}s poorly covered"
        out.append(f"{name}: {severity}: PSIS k-hat > {KHAT_BAD} for {bad} of {b} {unit}s (worst: {worst}): "
                   "q(z|x) misses posterior mass there (too narrow, or the wrong shape), so posterior summaries from q "
                   f"and importance-sampled log p(x) are unreliable for these {unit}s")
    if s.sd_ratio is not None and not r.point_mass_guide and (s.overconfident or s.overconfident_points):
        pts = s.overconfident_points or []
        where = ", ".join(f"test[{p}]" for p in pts[:5]) + (" ..." if len(pts) > 5 else "")
        se = "" if s.sd_ratio_se is None else f", s.e. {s.sd_ratio_se:.2g}"
        out.append(f"{name}: q is overconfident: its standard deviations are {s.sd_ratio:.2f}x the reference's "
                   f"(geometric mean{se}; 1 is right), below {SD_RATIO_MIN} beyond 2 s.e. for {len(pts)} of {b} {unit}s"
                   + (f" ({where})" if pts else "") + ": posterior intervals from q are too short there")
    if r.loo_check is not None and not r.loo_check.agree:
        c = r.loo_check
        z = "" if c.log_px_max_z is None else f", max |log p(x) difference| {c.log_px_max_z:.2g} s.e."
        out.append(f"{name}: k-hat or importance-sampled log p(x) disagree with ArviZ {c.arviz}'s "
                   f"loo_approximate_posterior on the same draws (max |k-hat difference| {c.khat_max_abs_diff:.2g}{z}): "
                   "one of the two computations is wrong")
    if r.sbc is not None and r.sbc.flagged:
        f = r.sbc.flagged
        dims = ", ".join(f[:6]) + (" ..." if len(f) > 6 else "")
        out.append(f"{name}: simulation-based calibration fails for {len(f)} latent dimension(s) ({dims}): "
                   "ranks of the true z among draws from q are not uniform")
    if s.gap_note:
        out.append(f"{name}: amortization gap: {s.gap_note}")
    return out


# ---------------------------------------------------------------------------
# entry points


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def diagnose(subjects: Sequence[Subject], settings: DiagnoseSettings = DiagnoseSettings(), *,
             progress: Optional[bool] = None, log: Optional[Callable[[str], None]] = None) -> Diagnosis:
    """Diagnose several models (runs) on their points; the result can be saved and reported."""
    settings.check()
    if not subjects:
        raise PyroVAEError("nothing to diagnose: give at least one run")
    check_reference_possible(subjects, settings)
    runs = [diagnose_subject(s, settings, progress=progress, log=log) for s in subjects]
    notes = [w for r in runs for w in r.warnings]
    differs = data_difference(subjects)
    if differs is not None:
        notes.append(f"the runs were diagnosed on different data points ({differs}): compare each run with its own "
                     "reference only")
    return Diagnosis(settings, runs, notes, created=time.strftime("%Y-%m-%d %H:%M:%S"), arviz=arviz_compat.version())


def _subject_data(subject, device):
    """The subject's points as named arrays (one tensor named as its model takes it), checked, on the model's
    device, floats as float32."""
    what = f"the points of run {subject.name!r}"
    return batch.prepare(named_data(subject.model, subject.x, what), what, device, torch.float32)


def check_reference_possible(subjects, settings) -> None:
    """Fail before any work: a grid reference needs a 2-D latent in every run; NUTS holds the coordinates a model
    masks out (padded steps of shorter sequences) fixed, which is exact only when no density reads them; SBC
    needs data the model can simulate."""
    nuts = settings.reference == "nuts"  # unless a chain's Kalman smoother
    if settings.reference != "grid" and not nuts and settings.sbc_sims <= 0:
        return
    for s in subjects:
        x = _subject_data(s, model_device(s.model))
        with model_params(s.model), isolated_rng(settings.seed, batch.reference(x).device):
            # first: a program that cannot run on the points is its one line, before any check reads its trace;
            # on all the points, as diagnose traces it (a program may read its rows by index)
            lay = build_layout(s.model, x, DIAGNOSED, continuous=True)
            if settings.sbc_sims > 0:
                check_simulable(s.model, x, s.name)
            if settings.reference != "grid" and not nuts:
                continue
            read = nuts and LinearGaussian.from_model(s.model) is None and masked_read(s.model, x, lay)
        if settings.reference == "grid" and (lay.dim != 2 or len(lay.sites) != 1):
            raise PyroVAEError(f"--reference grid needs one 2-D latent, but run {s.name!r} has {lay.dim} latent "
                               "dimensions: use --reference nuts (or none)")
        if read:
            raise PyroVAEError(f"run {s.name!r}: the model masks out latent coordinates that a density still reads "
                               "(a masked step's value feeds an unmasked site), so NUTS can neither sample them "
                               "from a density nor hold them fixed: mask the sites that read them too, or pass "
                               "--reference none")