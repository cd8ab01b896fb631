"""Posterior diagnostics: how good a posterior is q(z|x), and which run's is best?

For a few data points (by default the first 16 test rows) and each run, with
the run's decoder held fixed:

- **q draws**: z ~ q(z|x), kept as ArviZ data (dims ``chain, draw, point,
  <site>_dim``) with log p(x, z), log q(z|x) and the importance log-weights
  log p(x, z) - log q(z|x) in ``sample_stats``;
- **PSIS k-hat per point** of those log-weights (ArviZ ``psislw`` over each
  point's own draws).  Pyro's ``psis_diagnostic`` pools a whole batch into one
  number, which for an amortized guide hides exactly the points where it fails;
- **amortization gap**: a q fitted to each point alone (Pyro ``AutoNormal``,
  the same family as the built-in normal encoder; ``AutoDelta`` for a
  point-mass guide), started at the amortized q, so ELBO(local) - ELBO(amortized)
  measures what amortization costs;
- **reference posterior**: NUTS (``pyro.infer.MCMC``, >= 2 chains, R-hat and
  ESS from ArviZ) and, for a 2-D latent, an exact grid posterior;
- **comparisons** with the reference, per point: error of posterior means and
  standard deviations, KL(q || reference) between Gaussian fits, Wasserstein-2
  per latent dimension (from quantiles, no Gaussian assumption);
- **simulation-based calibration** of q: z* ~ p(z), x ~ p(x | z*), the rank of
  z* among draws from q(z|x) is uniform when q is calibrated.

Every density comes from the model's and the guide's Pyro sample sites through
traces, so a hand-written model that follows the protocol (``model(x)``,
``guide(x)``, ``latent_sites``, ``obs_site``, a ``pyro.plate("data")``) is
diagnosed exactly like the built-in VAE.  Everything runs in a private RNG
stream and a private Pyro param store: the runs and the caller's state are
left as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import AffineTransform, ComposeTransform

from .errors import PyroVAEError
from .evaluate import PARTICLE_PLATE, is_density_site, isolated_rng, model_device, plate_dims

FORMAT = "pyro_vae.diagnostics/1"
REFERENCES = ("nuts", "grid", "none")
# elements of the largest per-chunk tensor (draws x points x decoder width)
BUDGET = 2**23

# Thresholds people read the numbers against (Vehtari et al. 2024, "Pareto
# smoothed importance sampling"; Vehtari et al. 2021, "Rank-normalization ...").
KHAT_GOOD = 0.5
KHAT_BAD = 0.7
RHAT_MAX = 1.01
RHAT_FAIL = 1.05  # any R-hat above this: the chains clearly disagree
RHAT_FRACTION = 0.1  # or more than this share of (point, dim) pairs above RHAT_MAX
ESS_MIN = 100


@dataclass(frozen=True)
class DiagnoseSettings:
    """What :func:`diagnose` computes, and how hard it tries."""

    points: int = 16  # the first N test rows
    reference: str = "nuts"  # nuts (+ grid for a 2-D latent) | grid | none
    draws: int = 1000  # draws from q per point (k-hat, moments, ELBO)
    nuts_warmup: int = 200
    nuts_samples: int = 300  # per chain
    nuts_chains: int = 4  # vectorized: 4 chains cost little more than 2, and R-hat is steadier
    max_tree_depth: int = 8
    grid_size: int = 160  # fine grid cells per axis (2-D latents)
    local_steps: int = 300  # Adam steps of the per-point q
    local_lr: float = 0.05
    local_particles: int = 16
    sbc_sims: int = 200  # 0 skips simulation-based calibration
    sbc_draws: int = 99
    seed: int = 0

    def check(self) -> "DiagnoseSettings":
        if self.reference not in REFERENCES:
            raise PyroVAEError(f"reference {self.reference!r} is not valid: use one of {', '.join(REFERENCES)}")
        for name, low in (("points", 1), ("draws", 20), ("nuts_samples", 10), ("nuts_chains", 2),
                          ("max_tree_depth", 1), ("grid_size", 16), ("local_steps", 0), ("local_particles", 1),
                          ("sbc_sims", 0), ("sbc_draws", 9), ("nuts_warmup", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                flag = "--" + name.replace("_", "-")
                raise PyroVAEError(f"{flag} must be an integer >= {low} (got {v!r})")
        if not self.local_lr > 0:
            raise PyroVAEError(f"local_lr must be > 0 (got {self.local_lr!r})")
        return self


@dataclass
class Subject:
    """One thing to diagnose: a model following the protocol and the points to look at."""

    name: str
    model: object
    x: torch.Tensor  # (points, data dim)
    point_index: List[int]  # row numbers of x in the test data
    run: Optional[object] = None  # a pyro_vae.run.Run, when the subject came from a run directory
    data: Optional[object] = None  # its Dataset
    info: dict = field(default_factory=dict)


@dataclass
class RunDiagnosis:
    """The diagnostics of one run (numbers in :attr:`numbers`, draws as ArviZ data)."""

    name: str
    numbers: dict  # JSON-ready: info, per-point arrays, summary, warnings
    q: object = None  # ArviZ data: draws from q(z|x)
    reference: object = None  # ArviZ data: the reference posterior's draws
    nuts: object = None  # ArviZ data: NUTS draws when the reference is the grid
    grid: Optional[dict] = None  # exact 2-D grid posterior: log-probabilities and boxes


@dataclass
class Diagnosis:
    settings: DiagnoseSettings
    runs: List[RunDiagnosis]
    warnings: List[str]
    created: str = ""

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "created": self.created,
            "settings": dataclasses.asdict(self.settings),
            "runs": [r.numbers for r in self.runs],
            "warnings": list(self.warnings),
        }

    def save(self, out_dir) -> Path:
        """Write ``diagnostics.json`` and, per run, ``<name>/q.nc``, ``reference.nc`` (netCDF) and ``grid.npz``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r in self.runs:
            folder = out / r.numbers["folder"]
            folder.mkdir(parents=True, exist_ok=True)
            for label, data in (("q", r.q), ("reference", r.reference), ("nuts", r.nuts)):
                path = folder / f"{label}.nc"
                if data is not None:
                    _to_netcdf(data, path)
                elif path.exists():
                    path.unlink()  # stale file from an earlier diagnosis in this folder
            if r.grid is not None:
                np.savez_compressed(folder / "grid.npz", **r.grid)
            elif (folder / "grid.npz").exists():
                (folder / "grid.npz").unlink()
        from .train import write_text_atomic

        path = out / "diagnostics.json"
        write_text_atomic(path, json.dumps(_jsonable(self.to_json()), indent=1) + "\n")
        return path


# ---------------------------------------------------------------------------
# ArviZ, across its 0.x and 1.x APIs


def arviz():
    """Import ArviZ without its import-time FutureWarning about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def from_dict(posterior: dict, sample_stats: Optional[dict] = None, coords=None, dims=None, attrs=None):
    """``az.from_dict`` on ArviZ 0.x (keyword groups) and 1.x (one dict of groups)."""
    az = arviz()
    if "posterior" in inspect.signature(az.from_dict).parameters:  # ArviZ 0.x
        return az.from_dict(posterior=posterior, sample_stats=sample_stats, coords=coords, dims=dims, attrs=attrs)
    groups = {"posterior": posterior}
    if sample_stats:
        groups["sample_stats"] = sample_stats
    return az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)  # pragma: no cover - ArviZ 1.x


def group(data, name: str):
    """A group (xarray Dataset-like) of InferenceData (0.x) or DataTree (1.x); None if absent."""
    try:
        return data[name]
    except (KeyError, AttributeError):
        return getattr(data, name, None)


def _to_netcdf(data, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    data.to_netcdf(str(tmp))
    tmp.replace(path)


def load_netcdf(path):
    return arviz().from_netcdf(str(path))


def pareto_khat(log_w: np.ndarray) -> np.ndarray:
    """PSIS Pareto k-hat of each row of ``log_w`` (points x draws): one number per point."""
    az = arviz()
    log_w = np.asarray(log_w, dtype=np.float64)
    if hasattr(az, "psislw"):
        with warnings.catch_warnings():
            # psislw warns when k-hat > 0.7; that is a result here, reported per point
            warnings.simplefilter("ignore")
            _, k = az.psislw(log_w)
        return np.atleast_1d(np.asarray(k, dtype=np.float64))
    return np.array([_khat_pyro(row) for row in log_w])  # pragma: no cover - ArviZ without psislw


def _khat_pyro(log_w: np.ndarray) -> float:  # pragma: no cover - fallback for ArviZ 1.x
    """The same tail fit as PSIS (M = min(S/5, 3 sqrt(S)) largest weights), with Pyro's GPD fit."""
    from pyro.ops.stats import fit_generalized_pareto

    s = len(log_w)
    m = int(min(0.2 * s, 3 * math.sqrt(s)))
    w = np.sort(np.exp(log_w - log_w.max()))
    tail = torch.as_tensor(w[-m:] - w[-m - 1], dtype=torch.float64)
    k, _ = fit_generalized_pareto(tail)
    return float(k)


# ---------------------------------------------------------------------------
# traces -> per-point matrices


def _site_matrix(value: torch.Tensor, event_dim: int, nest: int, data_dim: int, k: int, b: int,
                 leading_draw: bool = False) -> torch.Tensor:
    """A site's values (or log-densities, ``event_dim=0``) -> (k, b, flattened latent dims).

    Batch dims are right-aligned to the plates (the draw plate at -(nest+1)),
    so missing leading dims are broadcast dims of size 1; with
    ``leading_draw=True`` dim 0 is a draw dim stacked in front of a site's
    value (MCMC samples) and missing plate dims go after it.  The data plate
    sits at ``data_dim``; every other plate and event dim is flattened into
    the latent vector.
    """
    v = torch.as_tensor(value)
    while v.dim() - event_dim < nest + 1:
        v = v.unsqueeze(1 if leading_draw else 0)
    bd = v.dim() - event_dim  # batch dims, the draw dim included
    if bd > nest + 1:
        raise PyroVAEError(
            f"a sample site has {bd - 1} batch dims but the model declares only {nest} plates: "
            "declare every batch dim with pyro.plate or move it into the event with .to_event()"
        )
    v = v.movedim(bd + data_dim, 1)
    v = v.expand(k, b, *v.shape[2:])
    return v.reshape(k, b, -1)


def _per_point(lp, nest: int, data_dim: int, k: int, b: int) -> torch.Tensor:
    """Sum a site's log-density over every dim but draws and data points -> (k, b)."""
    return _site_matrix(lp, 0, nest, data_dim, k, b).sum(-1)


def _plate_layout(model, x) -> tuple:
    """(max plate nesting, dim of the "data" plate) from one trace of the model and the guide."""
    with torch.no_grad():
        gtr = poutine.trace(model.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    nest, data_dim = plate_dims(model, (gtr, mtr))
    return nest, data_dim, gtr, mtr


def _is_real(support) -> bool:
    """Real-valued support (independent() wrappers removed): unconstrained = constrained."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _event_dim(fn) -> int:
    return len(getattr(fn, "event_shape", ()))


def _chunk_size(model, x: torch.Tensor, k: int, budget: int = BUDGET) -> int:
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), x.shape[-1], 64)
    return max(1, budget // (width * max(k, 1)))


def _traced(model, x, k: int, nest: int, guide=None):
    """Guide and replayed-model traces with ``k`` draws vectorized in an outer plate."""
    guide = guide or model.guide
    with pyro.plate(PARTICLE_PLATE, k, dim=-(nest + 1)):
        gtr = poutine.trace(guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    return gtr, mtr


def _is_density(site) -> bool:
    """A sample site with a density; ``pyro.factor`` penalties (regularizers) are not densities of x or z."""
    return is_density_site(site) and not isinstance(site["fn"], dist.Unit)


def _log_terms(gtr, mtr, nest, data_dim, k, b):
    """Per point: log p(x, z) (every model site) and log q(z|x) (every guide site), each (k, b)."""
    log_p = log_q = torch.zeros(k, b, dtype=torch.float64)
    for tr, sign in ((mtr, "p"), (gtr, "q")):
        for site in tr.nodes.values():
            if not _is_density(site):
                continue
            lp = _per_point(site["fn"].log_prob(site["value"]), nest, data_dim, k, b).double()
            if sign == "p":
                log_p = log_p + lp
            else:
                log_q = log_q + lp
    return log_p, log_q


def _latents(tr, sites, nest, data_dim, k, b, draw_dim: bool = True) -> Dict[str, torch.Tensor]:
    """Latent values of a trace as (k, b, d) per site; ``draw_dim=False`` for a trace without the draw plate."""
    out = {}
    for s in sites:
        node = tr.nodes.get(s)
        if node is None:
            raise PyroVAEError(f"latent site {s!r} is not in the trace: check the model's latent_sites")
        v = node["value"] if draw_dim else node["value"].unsqueeze(0)
        out[s] = _site_matrix(v, _event_dim(node["fn"]), nest, data_dim, k, b).double()
    return out


def _is_point_mass(gtr) -> bool:
    """True when every density site of the guide is a Delta: q has no density to importance-sample with."""
    found = False
    for site in gtr.nodes.values():
        if not _is_density(site):
            continue
        fn = site["fn"]
        while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
            fn = fn.base_dist
        if not isinstance(fn, dist.Delta):
            return False
        found = True
    return found


@dataclass
class _Layout:
    nest: int
    data_dim: int
    sites: List[str]
    sizes: List[int]
    labels: List[str]
    shapes: Dict[str, tuple]  # site value shape for the diagnosed points (no draw dim)
    supports: Dict[str, object]
    event_dims: Dict[str, int]
    point_mass: bool

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def split(self, m: np.ndarray) -> Dict[str, np.ndarray]:
        out, i = {}, 0
        for s, d in zip(self.sites, self.sizes):
            out[s] = m[..., i : i + d]
            i += d
        return out


def _layout(model, x) -> _Layout:
    """Plates, latent sites and their sizes, supports and shapes, from one trace on ``x``."""
    try:
        nest, data_dim, gtr, mtr = _plate_layout(model, x)
    except PyroVAEError:
        raise
    except (ValueError, RuntimeError, TypeError, NotImplementedError, IndexError) as e:
        msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip()) or type(e).__name__
        raise PyroVAEError(f"{type(model).__name__} fails on the diagnosed points ({msg[:300]}): check that the "
                           "data have the columns and support the model was built for") from None
    if model.obs_site not in mtr.nodes:
        raise PyroVAEError(f"{type(model).__name__}.obs_site is {model.obs_site!r} but the model has no such "
                           "sample site: set obs_site to the name of the observed pyro.sample")
    b = x.shape[0]
    sites = list(model.latent_sites)
    sizes, labels, shapes, supports, event_dims = [], [], {}, {}, {}
    for s in sites:
        if s not in mtr.nodes:
            raise PyroVAEError(f"latent site {s!r} is not a sample site of the model: check latent_sites")
        node = mtr.nodes[s]
        m = _site_matrix(node["value"].unsqueeze(0), _event_dim(node["fn"]), nest, data_dim, 1, b)
        d = m.shape[-1]
        sizes.append(d)
        labels += [f"{s}[{j}]" for j in range(d)]
        shapes[s] = tuple(node["value"].shape)
        supports[s] = node["fn"].support
        event_dims[s] = _event_dim(node["fn"])
    return _Layout(nest, data_dim, sites, sizes, labels, shapes, supports, event_dims, _is_point_mass(gtr))


# ---------------------------------------------------------------------------
# the pieces


@torch.no_grad()
def draw_q(model, x: torch.Tensor, num_draws: int, layout: _Layout, split: str = "points"):
    """z ~ q(z|x): (draws, points, latent) values and (draws, points) log p(x, z), log q(z|x).

    Work is chunked over points (``split="points"``) or, for guides whose
    parameters are per point and so need every point at once, over draws.
    """
    b = x.shape[0]
    zs, lps, lqs = [], [], []
    step = _chunk_size(model, x, num_draws)
    if split == "points":
        chunks = [(x[i : i + step], num_draws) for i in range(0, b, step)]
        axis = 1
    else:
        per = max(1, step * num_draws // max(b, 1))
        chunks = [(x, min(per, num_draws - i)) for i in range(0, num_draws, per)]
        axis = 0
    for xb, k in chunks:
        bb = xb.shape[0]
        gtr, mtr = _traced(model, xb, k, layout.nest)
        lat = _latents(gtr, layout.sites, layout.nest, layout.data_dim, k, bb)
        zs.append(torch.cat([lat[s] for s in layout.sites], -1))
        lp, lq = _log_terms(gtr, mtr, layout.nest, layout.data_dim, k, bb)
        lps.append(lp)
        lqs.append(lq)
    return torch.cat(zs, axis), torch.cat(lps, axis), torch.cat(lqs, axis)


@torch.no_grad()
def draw_prior(model, x: torch.Tensor, num_draws: int, layout: _Layout) -> torch.Tensor:
    """z ~ p(z) as the model samples it (no guide): (draws, points, latent)."""
    xb = x[:1]
    with pyro.plate(PARTICLE_PLATE, num_draws, dim=-(layout.nest + 1)):
        tr = poutine.trace(poutine.block(model.model, hide_types=["param"])).get_trace(xb)
    lat = _latents(tr, layout.sites, layout.nest, layout.data_dim, num_draws, 1)
    return torch.cat([lat[s] for s in layout.sites], -1)


def _site_tensors(layout: _Layout, m: np.ndarray) -> Optional[Dict[str, torch.Tensor]]:
    """(points, latent) -> per-site tensors of the site's own shape, when that shape is (points, d)."""
    out = {}
    for s, v in layout.split(np.asarray(m)).items():
        if layout.shapes[s] != tuple(v.shape):
            return None  # nested plates or odd shapes: fall back to Pyro's own initialisation
        out[s] = torch.as_tensor(v, dtype=torch.float32)
    return out


class _LocalModel:
    """The run's model with another guide (the per-point q), for the trace helpers."""

    def __init__(self, model, guide):
        self.model = model.model
        self.guide = guide
        self.latent_sites = model.latent_sites
        self.obs_site = model.obs_site


def fit_local(model, x, layout: _Layout, q_mean: np.ndarray, q_sd: np.ndarray, settings: DiagnoseSettings,
              family: str = "normal", progress: bool = False, desc: str = ""):
    """Fit q to each point alone, with the decoder fixed, starting from the amortized q.

    ``family="normal"``: AutoNormal (diagonal Gaussian, the normal encoder's
    family); ``"delta"``: AutoDelta (MAP).  The model's parameters are not
    touched: gradients are taken with respect to the local guide's only.
    """
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoDelta, AutoNormal
    from pyro.infer.autoguide.initialization import init_to_median, init_to_value
    from pyro.nn.module import PyroParam
    from pyro.infer.autoguide.utils import deep_setattr

    init_vals = _site_tensors(layout, q_mean)
    init = init_to_value(values=init_vals) if init_vals else init_to_median
    if family == "delta":
        guide = AutoDelta(model.model, init_loc_fn=init)
    else:
        guide = AutoNormal(model.model, init_loc_fn=init, init_scale=0.1)
    guide(x)  # builds the prototype and the parameters
    device = model_device(model)
    guide.to(device)
    if family == "normal" and not layout.point_mass:
        scales = _site_tensors(layout, np.maximum(q_sd, 1e-3))
        for s in layout.sites:
            # start at the amortized q's scale (real-valued sites: unconstrained = constrained)
            if scales and _is_real(layout.supports[s]):
                deep_setattr(guide.scales, s, PyroParam(scales[s].to(device), guide.scale_constraint, guide._event_dims[s]))
    params = [p for p in guide.parameters() if p.requires_grad]
    n_part = 1 if family == "delta" else settings.local_particles
    elbo = Trace_ELBO(num_particles=n_part, vectorize_particles=n_part > 1, max_plate_nesting=layout.nest)
    opt = torch.optim.Adam(params, lr=settings.local_lr)
    bar = _bar(settings.local_steps, progress, desc)
    for t in range(settings.local_steps):
        # the step size decays 10x over the run, so the last steps settle instead of jittering
        for g in opt.param_groups:
            g["lr"] = settings.local_lr * 0.1 ** (t / max(1, settings.local_steps))
        loss = elbo.differentiable_loss(model.model, guide, x)
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return guide


@contextmanager
def _few_threads(model, x: torch.Tensor, copies: int = 1):
    """One intra-op thread while NUTS or Adam runs many tiny sequential steps on the CPU.

    Each step is a handful of small matrix products (points x widest layer);
    splitting those across threads only adds hand-offs, and on a machine whose
    cores are shared the hand-offs dominate (measured: 7x slower gradients with
    2 threads than with 1 on a busy 2-core box).  Large problems keep every
    thread; the caller's setting is restored either way.
    """
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), x.shape[-1])
    for m in (model.modules() if isinstance(model, torch.nn.Module) else []):
        if isinstance(m, torch.nn.Linear):
            width = max(width, m.in_features, m.out_features)
    small = x.device.type == "cpu" and x.shape[0] * copies * width <= 2**17
    old = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)


def _bar(total: int, progress: bool, desc: str):
    if not progress or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def _unconstrained_loc_scale(guide, layout: _Layout, b: int):
    """AutoNormal's per-site (loc, scale) in unconstrained space, shaped like the site."""
    out = {}
    for s in layout.sites:
        loc, scale = guide._get_loc_and_scale(s)
        out[s] = (loc.detach(), scale.detach())
    return out


def nuts_reference(model, x, layout: _Layout, precond: Dict[str, tuple], settings: DiagnoseSettings,
                   progress: bool = False, log=None):
    """Posterior draws for every point with NUTS, the decoder fixed.

    Chains run vectorized: the points are repeated ``nuts_chains`` times in one
    NUTS run over the joint (independent) posterior, each copy starting from
    its own place, so on 2 cores C chains cost little more than one.  Each copy
    is a chain in the ArviZ sense (R-hat compares them); the copies share the
    step size and mass matrix adaptation.  The sampler works in coordinates
    whitened by the per-point Gaussian fit (``precond``: loc and scale in
    unconstrained space), which makes the posterior of every point roughly
    standard normal, so one step size suits all points and trees stay shallow.
    """
    from pyro.infer import MCMC, NUTS

    c, b = settings.nuts_chains, x.shape[0]
    x_rep = x.repeat(c, *([1] * (x.dim() - 1)))
    transforms, init = {}, {}
    for s in layout.sites:
        loc, scale = precond[s]
        ddim = layout.data_dim - layout.event_dims[s]  # the data plate's dim in the site's value
        loc_r = torch.cat([loc] * c, dim=ddim)
        scale_r = torch.cat([scale] * c, dim=ddim)
        to_real = biject_to(layout.supports[s]).inv
        transforms[s] = ComposeTransform([to_real, AffineTransform(loc_r, scale_r).inv])
        # Stan's default start: uniform(-2, 2) in the (here whitened) unconstrained space
        init[s] = torch.rand_like(loc_r) * 4 - 2
    kernel = NUTS(model.model, transforms=transforms, max_tree_depth=settings.max_tree_depth,
                  max_plate_nesting=layout.nest, target_accept_prob=0.8)
    mc = MCMC(kernel, num_samples=settings.nuts_samples, warmup_steps=settings.nuts_warmup, num_chains=1,
              initial_params=init, disable_progbar=not progress)
    t0 = time.perf_counter()
    mc.run(x_rep)
    seconds = time.perf_counter() - t0
    samples = mc.get_samples()
    n = settings.nuts_samples
    per_site = []
    for s in layout.sites:
        v = samples[s].detach()
        m = _site_matrix(v, layout.event_dims[s], layout.nest, layout.data_dim, n, c * b, leading_draw=True)
        per_site.append(m.reshape(n, c, b, -1).permute(1, 0, 2, 3))  # copy j of point i is row j*b + i
    z = torch.cat(per_site, -1).double()  # (chains, draws, points, latent)
    try:
        div = mc.diagnostics()["divergences"]["chain 0"]
    except (KeyError, TypeError):
        div = []
    diverging = np.zeros((c, n), dtype=bool)
    diverging[:, [int(i) for i in div]] = True  # one joint trajectory: a divergence touches every copy
    return z, diverging, seconds, float(kernel.step_size)


@torch.no_grad()
def grid_reference(model, x, layout: _Layout, center: np.ndarray, halfwidth: np.ndarray, prior_box: np.ndarray,
                   settings: DiagnoseSettings, num_draws: int = 4000):
    """The exact posterior of a 2-D latent on a grid: log p(x, z) normalized over cells.

    Two passes per point: a coarse grid over the union of the prior's range and
    +-8 sd of the local Gaussian fit finds where the mass is; a fine grid over
    that region gives the moments (midpoint rule) and draws (a cell by its
    probability, then uniform within it).
    """
    site = layout.sites[0]
    b = x.shape[0]
    lo = np.minimum(center - 8 * halfwidth, prior_box[0])
    hi = np.maximum(center + 8 * halfwidth, prior_box[1])
    coarse = _grid_logp(model, x, layout, site, lo, hi, 96)
    p = np.exp(coarse - coarse.max(axis=(1, 2), keepdims=True))
    p /= p.sum(axis=(1, 2), keepdims=True)
    h = (hi - lo) / 96
    lo2, hi2 = np.empty_like(lo), np.empty_like(hi)
    for i in range(b):
        keep = p[i] > 1e-9
        for a in range(2):
            idx = np.nonzero(keep.any(axis=1 - a))[0]
            lo2[i, a] = lo[i, a] + (idx.min() - 1) * h[i, a]
            hi2[i, a] = lo[i, a] + (idx.max() + 2) * h[i, a]
    g = settings.grid_size
    logp = _grid_logp(model, x, layout, site, lo2, hi2, g)
    logp = logp - _logsumexp(logp.reshape(b, -1), axis=1)[:, None, None]
    prob = np.exp(logp)
    h2 = (hi2 - lo2) / g
    axes = [lo2[:, a, None] + (np.arange(g)[None, :] + 0.5) * h2[:, a, None] for a in range(2)]  # (b, g)
    m0 = (prob.sum(2) * axes[0]).sum(1)
    m1 = (prob.sum(1) * axes[1]).sum(1)
    d0 = axes[0] - m0[:, None]
    d1 = axes[1] - m1[:, None]
    # midpoint rule; the uniform spread within a cell adds h^2/12 to each variance
    v0 = (prob.sum(2) * d0**2).sum(1) + h2[:, 0] ** 2 / 12
    v1 = (prob.sum(1) * d1**2).sum(1) + h2[:, 1] ** 2 / 12
    c01 = np.einsum("bij,bi,bj->b", prob, d0, d1)
    mean = np.stack([m0, m1], 1)
    cov = np.stack([np.stack([v0, c01], 1), np.stack([c01, v1], 1)], 1)
    # mass in the outermost cells: the fine grid should hold (nearly) all of it
    edge = np.maximum.reduce([prob[:, 0, :].sum(1), prob[:, -1, :].sum(1), prob[:, :, 0].sum(1), prob[:, :, -1].sum(1)])
    gen = torch.Generator().manual_seed(settings.seed + 7)
    draws = np.empty((num_draws, b, 2))
    for i in range(b):
        cells = torch.multinomial(torch.as_tensor(prob[i].reshape(-1)), num_draws, replacement=True, generator=gen).numpy()
        jitter = torch.rand(num_draws, 2, generator=gen, dtype=torch.float64).numpy()
        draws[:, i, 0] = lo2[i, 0] + (cells // g + jitter[:, 0]) * h2[i, 0]
        draws[:, i, 1] = lo2[i, 1] + (cells % g + jitter[:, 1]) * h2[i, 1]
    grid = {"log_prob": logp.astype(np.float32), "lo": lo2, "hi": hi2}
    return mean, cov, draws, grid, float(edge.max())


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _grid_logp(model, x, layout: _Layout, site: str, lo: np.ndarray, hi: np.ndarray, g: int) -> np.ndarray:
    """log p(x_i, z) on a g x g grid over [lo_i, hi_i] per point: (points, g, g)."""
    b = x.shape[0]
    device = x.device
    h = (hi - lo) / g
    ii, jj = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    cells = np.stack([ii.reshape(-1), jj.reshape(-1)], 1) + 0.5  # (g*g, 2)
    z_all = lo[None, :, :] + cells[:, None, :] * h[None, :, :]  # (g*g, b, 2)
    out = np.empty((g * g, b))
    step = _chunk_size(model, x, b) if b else 1
    nest, data_dim = layout.nest, layout.data_dim
    for k0 in range(0, g * g, max(1, step)):
        zc = torch.as_tensor(z_all[k0 : k0 + step], dtype=torch.float32, device=device)
        k = zc.shape[0]
        shape = [1] * (nest + 1)
        shape[0] = k
        shape[nest + 1 + data_dim] = b
        zc = zc.reshape(*shape, 2)
        with pyro.plate(PARTICLE_PLATE, k, dim=-(nest + 1)):
            tr = poutine.trace(poutine.condition(model.model, data={site: zc})).get_trace(x)
        lp = torch.zeros(k, b, dtype=torch.float64)
        for node in tr.nodes.values():
            if _is_density(node):
                lp = lp + _per_point(node["fn"].log_prob(node["value"]), nest, data_dim, k, b).double()
        out[k0 : k0 + k] = lp.cpu().numpy()
    return out.T.reshape(b, g, g)


@torch.no_grad()
def sbc_ranks(model, x, layout: _Layout, sims: int, draws: int) -> np.ndarray:
    """Ranks of z* ~ p(z) among ``draws`` draws from q(z | x ~ p(x | z*)): (sims, latent), ints in 0..draws.

    The data are simulated by the model itself (``poutine.uncondition`` turns
    the observed site into a sampled one), so this works for any model whose
    prior and likelihood can be sampled.
    """
    template = x[:1].expand(sims, *x.shape[1:]).contiguous()
    tr = poutine.trace(poutine.uncondition(model.model)).get_trace(template)
    x_sim = tr.nodes[model.obs_site]["value"].detach()
    lat = _latents(tr, layout.sites, layout.nest, layout.data_dim, 1, sims, draw_dim=False)
    z_true = torch.cat([lat[s] for s in layout.sites], -1)[0]  # (sims, latent)
    ranks = []
    step = _chunk_size(model, x, draws)
    for i in range(0, sims, step):
        xb = x_sim[i : i + step]
        bb = xb.shape[0]
        with pyro.plate(PARTICLE_PLATE, draws, dim=-(layout.nest + 1)):
            gtr = poutine.trace(model.guide).get_trace(xb)
        zq = torch.cat([v for v in _latents(gtr, layout.sites, layout.nest, layout.data_dim, draws, bb).values()], -1)
        ranks.append((zq < z_true[i : i + bb].double()).sum(0))
    return torch.cat(ranks, 0).cpu().numpy().astype(np.int64)


def sbc_uniformity(ranks: np.ndarray, draws: int, bins: int = 10) -> np.ndarray:
    """Chi-square p-value per latent dimension that the ranks (0..draws) are uniform."""
    from scipy.stats import chi2

    levels = draws + 1
    bins = min(bins, levels)
    binned = np.minimum((ranks * bins) // levels, bins - 1)
    counts = np.stack([np.bincount(binned[:, j], minlength=bins) for j in range(ranks.shape[1])], 1)
    # unequal bin widths when bins does not divide levels: expected counts follow the widths
    widths = np.bincount(np.minimum((np.arange(levels) * bins) // levels, bins - 1), minlength=bins)
    expected = ranks.shape[0] * widths[:, None] / levels
    stat = ((counts - expected) ** 2 / expected).sum(0)
    return chi2.sf(stat, bins - 1)


# ---------------------------------------------------------------------------
# comparisons


def moments(z: np.ndarray):
    """(draws, points, latent) -> means (points, latent), covariances (points, latent, latent)."""
    mean = z.mean(0)
    c = z - mean
    cov = np.einsum("kbi,kbj->bij", c, c) / max(1, z.shape[0] - 1)
    return mean, cov


def gaussian_kl(m0, c0, m1, c1) -> np.ndarray:
    """KL(N(m0, c0) || N(m1, c1)) per point; inf where c0 is singular (a point mass)."""
    out = np.empty(m0.shape[0])
    d = m0.shape[1]
    for i in range(m0.shape[0]):
        try:
            l1 = np.linalg.cholesky(c1[i])
        except np.linalg.LinAlgError:
            out[i] = np.nan
            continue
        sign, logdet0 = np.linalg.slogdet(c0[i])
        if sign <= 0 or not np.isfinite(logdet0) or np.min(np.linalg.eigvalsh(c0[i])) < 1e-12:
            out[i] = np.inf
            continue
        logdet1 = 2 * np.log(np.diag(l1)).sum()
        a = np.linalg.solve(l1, c0[i])
        tr = np.trace(np.linalg.solve(l1.T, a))
        dm = np.linalg.solve(l1, m1[i] - m0[i])
        out[i] = 0.5 * (tr + dm @ dm - d + logdet1 - logdet0)
    return out


def wasserstein_per_dim(zq: np.ndarray, zr: np.ndarray, n_quantiles: int = 200) -> np.ndarray:
    """1-D Wasserstein-2 distance per (point, latent dim), from matched quantiles of the draws."""
    u = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qq = np.quantile(zq, u, axis=0)
    qr = np.quantile(zr, u, axis=0)
    return np.sqrt(((qq - qr) ** 2).mean(0))


def compare(zq: np.ndarray, ref_mean, ref_cov, ref_draws) -> dict:
    """Per point: how far q (draws) is from the reference (exact moments and draws)."""
    qm, qc = moments(zq)
    q_sd = np.sqrt(np.clip(np.diagonal(qc, axis1=1, axis2=2), 0, None))
    r_sd = np.sqrt(np.clip(np.diagonal(ref_cov, axis1=1, axis2=2), 1e-300, None))
    dm = np.abs(qm - ref_mean)
    with np.errstate(divide="ignore"):
        log_ratio = np.log(q_sd / r_sd)  # -inf for a point mass: the geometric mean is then 0
    return {
        "mean_abs_error": dm.mean(1),
        "std_mean_error": (dm / r_sd).mean(1),
        "sd_ratio": np.exp(log_ratio.mean(1)),  # geometric mean over latent dims of sd_q / sd_ref
        "kl_gauss": gaussian_kl(qm, qc, ref_mean, ref_cov),
        "w2": wasserstein_per_dim(zq, ref_draws).mean(1),
    }


# ---------------------------------------------------------------------------
# the driver


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
    return RunDiagnosis(name, _jsonable(numbers), q_data, ref_data, nuts_data, grid)


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
    from .run import load_run, load_run_data

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


def load_diagnosis(folder) -> Diagnosis:
    """Read back what :meth:`Diagnosis.save` wrote."""
    folder = Path(folder)
    path = folder / "diagnostics.json"
    if not path.exists():
        raise PyroVAEError(f"no diagnostics.json in {str(folder)!r}: run 'pyro-vae diagnose ... --out {folder}' first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PyroVAEError(f"{path} is not valid JSON ({e}): run 'pyro-vae diagnose' again") from None
    if raw.get("format") != FORMAT:
        raise PyroVAEError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}: run 'pyro-vae diagnose' again")
    known = {f.name for f in dataclasses.fields(DiagnoseSettings)}
    settings = DiagnoseSettings(**{k: v for k, v in raw["settings"].items() if k in known})
    runs = []
    for n in raw["runs"]:
        sub = folder / n["folder"]
        get = lambda label: load_netcdf(sub / f"{label}.nc") if (sub / f"{label}.nc").exists() else None
        grid = dict(np.load(sub / "grid.npz")) if (sub / "grid.npz").exists() else None
        runs.append(RunDiagnosis(n["name"], n, get("q"), get("reference"), get("nuts"), grid))
    return Diagnosis(settings, runs, raw.get("warnings", []), raw.get("created", ""))


def _jsonable(obj):
    """numpy -> lists, non-finite floats -> None (JSON has no inf/nan)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().numpy())
    return obj
