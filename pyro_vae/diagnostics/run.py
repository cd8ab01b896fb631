"""Diagnosing subjects end to end: draws, local fits, references, comparisons, summary and warnings."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import pyro

from ..errors import PyroVAEError
from ..infer.rng import isolated_rng
from ..models.protocol import model_device
from .settings import (DiagnoseSettings, ESS_MIN, FORMAT, KHAT_BAD, KHAT_GOOD, RHAT_FAIL, RHAT_FRACTION, RHAT_MAX, Subject)
from .results import Diagnosis, RunDiagnosis
from ..serialize import to_plain
from .draws import _Layout, _few_threads, _is_real, _layout, _site_matrix, draw_prior, draw_q
from .local import _LocalModel, fit_local
from .reference import _unconstrained_loc_scale, grid_reference, nuts_reference
from .arviz_io import arviz, from_dict, pareto_khat
from .compare import compare, moments
from .calibration import sbc_ranks, sbc_uniformity

def diagnose_subject(subject: Subject, settings: DiagnoseSettings = DiagnoseSettings(), *, progress: Optional[bool] = None,
                     log: Optional[Callable[[str], None]] = None) -> RunDiagnosis:
    """All diagnostics of one model on its points; see the module docstring."""
    settings.check()
    log = log or (lambda msg: None)
    progress = sys.stderr.isatty() if progress is None else progress
    model, name = subject.model, subject.name
    device = model_device(model)
    x = torch.as_tensor(subject.x, dtype=torch.float32).to(device)
    b = x.shape[0]
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        # a private param store: the local guides' parameters never reach the caller's,
        # and runs with equal parameter names cannot see each other's values
        with pyro.get_param_store().scope(), isolated_rng(settings.seed, device):
            return _diagnose(subject, model, name, x, b, settings, progress, log)
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()


def _diagnose(subject, model, name, x, b, settings, progress, log) -> RunDiagnosis:
    layout = _layout(model, x)
    D = layout.dim
    warn: List[str] = []
    numbers = {
        "name": name,
        "folder": _folder_name(name),
        "info": dict(subject.info),
        "points": [int(i) for i in subject.point_index],
        "latent_labels": layout.labels,
        "point_mass_guide": layout.point_mass,
    }
    t_start = clock = time.perf_counter()
    timings = numbers["timings"] = {}

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    # 1. draws from q, importance weights and k-hat -------------------------------
    log(f"[{name}] {settings.draws} draws from q(z|x) for {b} points, PSIS k-hat per point")
    # the same seed before drawing from q and from the local q: for two reparameterized
    # Gaussians the draws share their noise, so the gap ELBO(local) - ELBO(q) is
    # estimated with common random numbers (a far smaller standard error)
    crn_seed = settings.seed + 1
    with isolated_rng(crn_seed, x.device):
        zq, log_p, log_q = draw_q(model, x, settings.draws, layout)
    zq_np = zq.cpu().numpy()
    log_w = (log_p - log_q).cpu().numpy()  # (draws, points)
    q_mean, q_cov = moments(zq_np)
    q_sd = np.sqrt(np.clip(np.diagonal(q_cov, axis1=1, axis2=2), 0, None))
    khat = None if layout.point_mass else pareto_khat(log_w.T)
    elbo_q = log_w.mean(0)
    elbo_q_se = log_w.std(0, ddof=1) / math.sqrt(settings.draws)
    numbers["q"] = {"mean": q_mean, "sd": q_sd, "elbo": elbo_q, "elbo_se": elbo_q_se}
    numbers["khat"] = khat
    q_data = _idata(layout, zq_np[None], subject.point_index,
                    {"log_p": log_p.cpu().numpy()[None], "log_q": log_q.cpu().numpy()[None], "log_weight": log_w[None]},
                    {"source": "q(z|x)", "run": name})

    # prior draws: the contraction of each latent dimension, the grid's extent
    zp = draw_prior(model, x, max(2000, settings.draws), layout)[:, 0].cpu().numpy().astype(np.float64)
    prior_var = zp.var(0, ddof=1)
    numbers["prior_sd"] = np.sqrt(prior_var)

    lap("q_draws")

    # 2. the per-point q and the amortization gap ---------------------------------
    log(f"[{name}] fitting q to each point alone ({settings.local_steps} steps): amortization gap")
    with torch.enable_grad(), _few_threads(model, x, settings.local_particles):
        local_normal = fit_local(model, x, layout, q_mean, q_sd, settings, "normal", progress, f"{name}: local q")
        local_gap = local_normal
        if layout.point_mass:
            local_gap = fit_local(model, x, layout, q_mean, q_sd, settings, "delta", progress, f"{name}: local MAP")
    shim = _LocalModel(model, local_gap)
    k_local = 1 if layout.point_mass else settings.draws
    with torch.no_grad(), isolated_rng(crn_seed, x.device):
        _, lp_l, lq_l = draw_q(shim, x, k_local, layout, split="draws")
    lw_local = (lp_l - lq_l).cpu().numpy()
    elbo_local = lw_local.mean(0)
    elbo_local_se = lw_local.std(0, ddof=1) / math.sqrt(k_local) if k_local > 1 else np.zeros(b)
    gap = elbo_local - elbo_q
    if k_local == settings.draws:
        d = lw_local - log_w  # paired draws (common random numbers)
        gap_se = d.std(0, ddof=1) / math.sqrt(k_local)
    else:
        gap_se = elbo_q_se.copy()
    numbers["local"] = {"family": "AutoDelta (MAP)" if layout.point_mass else "AutoNormal (diagonal Gaussian)",
                        "elbo": elbo_local, "elbo_se": elbo_local_se, "gap": gap, "gap_se": gap_se}
    precond = _unconstrained_loc_scale(local_normal, layout, b)

    lap("local_fit")

    # 3. the reference posterior ------------------------------------------------
    ref = {"method": settings.reference}
    ref_data = nuts_data = grid = None
    ref_mean = ref_cov = ref_draws = None
    two_d = D == 2 and len(layout.sites) == 1 and _is_real(layout.supports[layout.sites[0]])
    if settings.reference in ("nuts", "grid") and two_d:
        log(f"[{name}] exact grid posterior ({settings.grid_size}x{settings.grid_size} cells per point)")
        loc, scale = precond[layout.sites[0]]
        center = _site_matrix(loc.unsqueeze(0), layout.event_dims[layout.sites[0]], layout.nest, layout.data_dim, 1, b)[0]
        half = _site_matrix(scale.unsqueeze(0), layout.event_dims[layout.sites[0]], layout.nest, layout.data_dim, 1, b)[0]
        box = np.stack([np.quantile(zp, 0.0005, axis=0), np.quantile(zp, 0.9995, axis=0)])
        box = box + np.array([[-1.0], [1.0]]) * 0.1 * (box[1] - box[0])
        t0 = time.perf_counter()
        g_mean, g_cov, g_draws, grid, edge = grid_reference(model, x, layout, center.cpu().double().numpy(),
                                                            half.cpu().double().numpy(), box, settings)
        ref.update(method="grid", cells=settings.grid_size**2, edge_mass=edge, seconds=time.perf_counter() - t0,
                   draws=int(g_draws.shape[0]), chains=None)
        if edge > 1e-4:
            warn.append(f"{name}: the grid posterior has {edge:.2g} of its mass in the outermost cells; "
                        "its moments may be truncated")
        ref_mean, ref_cov, ref_draws = g_mean, g_cov, g_draws
        ref_data = _idata(layout, g_draws[None], subject.point_index, None, {"source": "exact grid posterior", "run": name})
    elif settings.reference == "grid":
        raise PyroVAEError(f"--reference grid needs one real 2-D latent, but {name} has {D} latent dimensions: "
                           "use --reference nuts")
    if settings.reference == "nuts":
        total = settings.nuts_warmup + settings.nuts_samples
        log(f"[{name}] NUTS reference: {settings.nuts_chains} chains x ({settings.nuts_warmup} warmup + "
            f"{settings.nuts_samples} draws), {b} points, decoder fixed")
        with torch.enable_grad(), _few_threads(model, x, settings.nuts_chains):
            z_n, diverging, seconds, step_size = nuts_reference(model, x, layout, precond, settings, progress, log)
        z_n = z_n.cpu().numpy()
        nuts_data = _idata(layout, z_n, subject.point_index, {"diverging": diverging},
                           {"source": "NUTS", "run": name})
        rhat, ess_bulk, ess_tail = _chain_stats(nuts_data, layout)
        nuts_info = {
            "chains": settings.nuts_chains, "draws": settings.nuts_samples, "warmup": settings.nuts_warmup,
            "iterations": total, "seconds": seconds, "step_size": step_size,
            "divergences": int(diverging[0].sum()),
            "rhat": rhat, "ess_bulk": ess_bulk, "ess_tail": ess_tail,
            "rhat_max": float(np.nanmax(rhat)), "rhat_above": int((np.asarray(rhat) > RHAT_MAX).sum()),
            "ess_bulk_min": float(np.nanmin(ess_bulk)),
            "ess_tail_min": float(np.nanmin(ess_tail)),
        }
        flat = z_n.reshape(-1, b, D)
        n_mean, n_cov = moments(flat)
        if ref_mean is None:
            ref.update(nuts_info, method="nuts")
            ref_mean, ref_cov, ref_draws = n_mean, n_cov, flat
            ref_data, nuts_data = nuts_data, None
        else:
            # NUTS checked against the exact grid: a test of the sampler on this model
            g_sd = np.sqrt(np.diagonal(ref_cov, axis1=1, axis2=2))
            n_sd = np.sqrt(np.diagonal(n_cov, axis1=1, axis2=2))
            ref["nuts"] = nuts_info | {
                "max_std_mean_error_vs_grid": float((np.abs(n_mean - ref_mean) / g_sd).max()),
                "max_sd_ratio_error_vs_grid": float(np.abs(n_sd / g_sd - 1).max()),
            }
        info = ref.get("nuts", ref) if ref["method"] == "grid" else ref
        # One R-hat per (point, latent dim): with hundreds of them, a few just above 1.01 are
        # expected from chance alone at a few hundred draws, so warn on a clear failure
        # (any above RHAT_FAIL) or on many above RHAT_MAX, not on the largest of them.
        n_hi, n_all = info["rhat_above"], int(np.size(info["rhat"]))
        if info["rhat_max"] > RHAT_FAIL or n_hi > RHAT_FRACTION * n_all:
            warn.append(f"{name}: the NUTS chains disagree: R-hat > {RHAT_MAX} for {n_hi} of {n_all} (point, latent "
                        f"dim) pairs, up to {info['rhat_max']:.3f}; raise --nuts-warmup/--nuts-samples before "
                        "trusting the comparisons")
        if info["ess_bulk_min"] < ESS_MIN:
            warn.append(f"{name}: the NUTS reference has a bulk ESS as low as {info['ess_bulk_min']:.0f} "
                        f"(< {ESS_MIN}): raise --nuts-samples")
        if info["divergences"]:
            warn.append(f"{name}: {info['divergences']} divergent NUTS transitions: the reference may miss "
                        "parts of the posterior")
    numbers["reference"] = ref

    lap("reference")

    # 4. comparisons with the reference --------------------------------------------
    if ref_mean is not None:
        cmp = compare(zq_np, ref_mean, ref_cov, ref_draws)
        numbers["comparison"] = cmp
        numbers["reference_moments"] = {"mean": ref_mean, "sd": np.sqrt(np.diagonal(ref_cov, axis1=1, axis2=2))}
        ref_var = np.diagonal(ref_cov, axis1=1, axis2=2)
        numbers["contraction"] = 1 - ref_var.mean(0) / prior_var  # 1: fully determined by x, 0: the prior
    else:
        numbers["comparison"] = None
        numbers["contraction"] = 1 - (q_sd**2).mean(0) / prior_var

    # 5. simulation-based calibration -----------------------------------------------
    numbers["sbc"] = None
    if settings.sbc_sims > 0:
        log(f"[{name}] simulation-based calibration: {settings.sbc_sims} simulations x {settings.sbc_draws} draws")
        try:
            ranks = sbc_ranks(model, x, layout, settings.sbc_sims, settings.sbc_draws)
        except PyroVAEError:
            raise
        except Exception as e:  # a model whose prior or likelihood cannot be sampled
            numbers["sbc"] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        else:
            pv = sbc_uniformity(ranks, settings.sbc_draws)
            alpha = 0.01 / len(pv)  # Bonferroni over latent dimensions
            numbers["sbc"] = {"sims": settings.sbc_sims, "draws": settings.sbc_draws, "ranks": ranks,
                              "pvalues": pv, "alpha": alpha, "flagged": [layout.labels[j] for j in np.nonzero(pv < alpha)[0]]}
    lap("sbc")
    numbers["seconds"] = time.perf_counter() - t_start
    numbers["summary"] = _summary(numbers)
    numbers["warnings"] = warn + _warnings(numbers)
    # plain JSON from here on, so a diagnosis in memory and one read back from disk look the same
    return RunDiagnosis(name, to_plain(numbers), q_data, ref_data, nuts_data, grid)


def _chain_stats(data, layout: _Layout):
    """R-hat, bulk and tail ESS per (point, latent), concatenated over sites (ArviZ)."""
    az = arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = az.rhat(data)
        eb = az.ess(data, method="bulk")
        et = az.ess(data, method="tail")
    cat = lambda ds: np.concatenate([np.asarray(ds[s].values).reshape(ds[s].shape[0], -1) for s in layout.sites], 1)
    return cat(r), cat(eb), cat(et)


def _idata(layout: _Layout, z: np.ndarray, points, stats: Optional[dict], attrs: dict):
    """(chain, draw, point, latent) -> ArviZ data with one variable per latent site."""
    post, dims, coords = {}, {}, {"point": np.asarray(points, dtype=np.int64)}
    for s, v in layout.split(z).items():
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


def _summary(n: dict) -> dict:
    """The scalars the report's tables show."""
    s = {"points": len(n["points"])}
    k = n["khat"]
    if k is not None:
        k = np.asarray(k)
        s.update(khat_median=float(np.median(k)), khat_max=float(k.max()),
                 khat_good=int((k <= KHAT_GOOD).sum()), khat_ok=int(((k > KHAT_GOOD) & (k <= KHAT_BAD)).sum()),
                 khat_bad=int((k > KHAT_BAD).sum()))
    else:
        s.update(khat_median=None, khat_max=None, khat_good=None, khat_ok=None, khat_bad=None)
    q, loc = n["q"], n["local"]
    b = len(n["points"])
    s.update(elbo_q=float(np.mean(q["elbo"])), elbo_local=float(np.mean(loc["elbo"])),
             gap=float(np.mean(loc["gap"])), gap_se=float(np.sqrt(np.sum(np.square(loc["gap_se"]))) / b))
    c = n["comparison"]
    if c is not None:
        kl = np.asarray(c["kl_gauss"])
        s.update(mean_abs_error=float(np.mean(c["mean_abs_error"])), std_mean_error=float(np.mean(c["std_mean_error"])),
                 sd_ratio=_geometric_mean(c["sd_ratio"]),
                 kl_gauss=float(np.mean(kl)) if np.all(np.isfinite(kl)) else None,
                 w2=float(np.mean(c["w2"])))
    sbc = n["sbc"]
    if sbc and "pvalues" in sbc:
        s.update(sbc_min_p=float(np.min(sbc["pvalues"])), sbc_flagged=len(sbc["flagged"]))
    s["active_dims"] = int((np.asarray(n["contraction"]) > 0.1).sum())
    order = np.argsort(-np.asarray(k)) if k is not None else np.argsort(-np.asarray(loc["gap"]))
    worst = []
    for j in order[: min(5, b)]:
        row = {"point": int(n["points"][j]), "khat": None if k is None else float(k[j]), "gap": float(loc["gap"][j])}
        row["std_mean_error"] = None if c is None else float(c["std_mean_error"][j])
        worst.append(row)
    s["worst"] = worst
    return s


def _geometric_mean(v) -> float:
    v = np.asarray(v, dtype=float)
    if np.any(v <= 0):
        return 0.0
    return float(np.exp(np.mean(np.log(v))))


def _warnings(n: dict) -> List[str]:
    out, s, name = [], n["summary"], n["name"]
    b = s["points"]
    if n["point_mass_guide"]:
        out.append(f"{name}: the guide is a point mass (delta): it has no posterior spread, so k-hat and "
                   "importance-sampled log p(x) are undefined and its KL to the reference is infinite")
    if s.get("khat_bad"):
        worst = ", ".join(f"test[{w['point']}] (k-hat {w['khat']:.2f})" for w in s["worst"][:3])
        severity = "POOR POSTERIOR" if s["khat_bad"] > b / 2 else "some points poorly covered"
        out.append(f"{name}: {severity}: PSIS k-hat > {KHAT_BAD} for {s['khat_bad']} of {b} points (worst: {worst}): "
                   "q(z|x) misses posterior mass there (too narrow, or the wrong shape), so posterior summaries from q "
                   "and importance-sampled log p(x) are unreliable for these points")
    if s.get("sd_ratio") is not None and s["sd_ratio"] < 0.5 and not n["point_mass_guide"]:
        out.append(f"{name}: q's standard deviations are {s['sd_ratio']:.2f}x the reference's (geometric mean): "
                   "q is overconfident")
    sbc = n["sbc"]
    if sbc and sbc.get("flagged"):
        dims = ", ".join(sbc["flagged"][:6]) + (" ..." if len(sbc["flagged"]) > 6 else "")
        out.append(f"{name}: simulation-based calibration fails for {len(sbc['flagged'])} latent dimension(s) ({dims}): "
                   "ranks of the true z among draws from q are not uniform")
    return out


# ---------------------------------------------------------------------------
# entry points


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def subjects_from_runs(run_dirs: Sequence, points: int = DiagnoseSettings.points, device: str = "cpu") -> List[Subject]:
    """Load runs (``pyro-vae train`` output folders) and pick the first ``points`` test rows of each."""
    from ..rundir.run import load_run, load_run_data

    if not run_dirs:
        raise PyroVAEError("give at least one run directory")
    subjects, names, cache = [], set(), {}
    for d in run_dirs:
        run = load_run(d, device=device)
        key = json.dumps(run.config.data.__dict__ | {"lik": run.config.model.likelihood}, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = load_run_data(run)
        data = cache[key]
        name = Path(d).resolve().name or "run"
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        n = min(points, len(data.test))
        cfg = run.config
        m = run.metrics or {}
        info = run_fingerprint(d) | {
            "objective": cfg.train.elbo, "guide": cfg.model.guide, "prior": cfg.model.prior,
            "likelihood": cfg.model.likelihood, "latent_dim": cfg.model.latent_dim,
            "epochs": len(run.history or []), "data": data.name,
            "test_elbo": m.get("elbo"), "log_likelihood": m.get("log_likelihood"),
            "log_likelihood_se": m.get("log_likelihood_se"),
        }
        subjects.append(Subject(name, run.model, data.test[:n], list(range(n)), run=run, data=data, info=info))
    return subjects


def run_fingerprint(run_dir) -> dict:
    """What identifies a trained run: its folder and the hash of its checkpoint."""
    return {"run_dir": str(Path(run_dir).resolve()), "checkpoint_sha256": _sha256(Path(run_dir) / "checkpoint.pt")}


def matches(diagnosis_json: dict, run_dirs: Sequence, given: dict) -> bool:
    """Whether saved diagnostics are for exactly these runs (same checkpoints, same order) and these settings."""
    runs = diagnosis_json.get("runs") or []
    if diagnosis_json.get("format") != FORMAT or len(runs) != len(run_dirs):
        return False
    for r, d in zip(runs, run_dirs):
        fp = run_fingerprint(d)
        if any(r["info"].get(k) != v for k, v in fp.items()):
            return False
    stored = diagnosis_json.get("settings", {})
    return all(stored.get(k) == v for k, v in given.items())


def _sha256(path: Path) -> Optional[str]:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def diagnose(subjects: Sequence[Subject], settings: DiagnoseSettings = DiagnoseSettings(), *,
             progress: Optional[bool] = None, log: Optional[Callable[[str], None]] = None) -> Diagnosis:
    """Diagnose several models (runs) on their points; the result can be saved and reported."""
    settings.check()
    if not subjects:
        raise PyroVAEError("nothing to diagnose: give at least one run")
    check_reference_possible(subjects, settings)
    runs = [diagnose_subject(s, settings, progress=progress, log=log) for s in subjects]
    notes = [w for r in runs for w in r.numbers["warnings"]]
    xs = [s.x for s in subjects]
    if any(x.shape != xs[0].shape or not torch.equal(x.cpu(), xs[0].cpu()) for x in xs[1:]):
        notes.append("the runs were diagnosed on different data points: compare each run with its own reference only")
    return Diagnosis(settings, runs, notes, created=time.strftime("%Y-%m-%d %H:%M:%S"))


def check_reference_possible(subjects, settings) -> None:
    """Fail before any work: a grid reference needs a 2-D latent in every run."""
    if settings.reference != "grid":
        return
    for s in subjects:
        x = torch.as_tensor(s.x[:2], dtype=torch.float32).to(model_device(s.model))
        with isolated_rng(settings.seed, x.device):
            lay = _layout(s.model, x)
        if lay.dim != 2 or len(lay.sites) != 1:
            raise PyroVAEError(f"--reference grid needs one 2-D latent, but run {s.name!r} has {lay.dim} latent "
                               "dimensions: use --reference nuts (or none)")


