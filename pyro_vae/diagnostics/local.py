"""Per-point variational fits: the amortization gap's local q, fitted until its ELBO stops changing.

The local q is an autoguide (``family="normal"``: AutoNormal, ``"delta"``:
AutoDelta), or, for a declared graph, a member of a guide law's own family
(``family="law"``): the per-point encoder OUTPUT vector ``out`` of each latent
node, freed from the encoder and optimized, warm-started at the encoder's
output (or, for another law than the node's, at the member of that law's
family nearest the encoder's q).  One fitting loop serves all of them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroParam
from pyro.poutine.messenger import Messenger

from ..errors import PyroVAEError
from ..infer.rng import isolated_rng
from ..infer.layout import Layout
from ..infer.sites import is_real, masked_like, node_mask, summing
from ..models.protocol import model_device
from .settings import DiagnoseSettings
from ..progress import progress_bar
from .draws import draw_q
from ..models.graph.guides import GUIDE_LAWS
from .local_flow import LOCAL_LAWS
from ..data import batch

# after the scheduled steps: averaged blocks of this share of them, at most this many (4x the schedule)
BLOCK_SHARE = 0.25
MAX_BLOCKS = 16
# converged: this many blocks in a row changed the ELBO by less than its standard error
QUIET_BLOCKS = 2
# a deterministic objective (a point mass) has converged when a block moves it less than this per point
POINT_MASS_TOL = 1e-4


class LocalModel:
    """The run's model with another guide (the per-point q), for the trace helpers."""

    def __init__(self, model, guide):
        self.model = model.model
        self.guide = guide
        self.latent_sites = model.latent_sites
        self.obs_site = model.obs_site
        # the same chunking as the run's model: both draw with the same noise, chunk by chunk
        self.likelihood = getattr(model, "likelihood", None)


@dataclass
class LocalFit:
    """The fitted per-point guide and how its optimization ended."""

    guide: object
    steps: int  # Adam steps taken in all
    converged: bool  # the last blocks changed the ELBO by less than its standard error
    better: np.ndarray  # (points,): the fit beats the amortized q on independent draws


def fit_local(model, x, layout: Layout, q_mean: np.ndarray, q_sd: np.ndarray, settings: DiagnoseSettings,
              family: str = "normal", progress: bool = False, desc: str = "", law: Optional[str] = None,
              start: Optional["LawGuide"] = None) -> LocalFit:
    """Fit q to each point alone, with the decoder fixed, starting from the amortized q.

    ``family="normal"``: AutoNormal (diagonal Gaussian, the normal encoder's
    family); ``"delta"``: AutoDelta (MAP); ``"law"``: each latent node's
    guide-law output ``out`` per point (:class:`LawGuide`), of the node's own
    law or, given ``law``, of that law, warm-started at ``start``'s q where given.  The model's parameters are
    not touched: gradients are taken with respect to the local guide's only.

    ``local_steps`` Adam steps with a step size decaying 10x, then blocks of
    a quarter as many at the final step size whose iterates are averaged,
    until ``QUIET_BLOCKS`` blocks in a row change the averaged guide's ELBO
    (summed over points, on the same check draws each time, so the change
    is measured with common noise) by less than its standard error, or
    ``MAX_BLOCKS`` blocks.  Discrete sites of the layout are no part of the
    local q: the fit maximizes the ELBO of q(z) against p(x, z) with them
    summed out (TraceEnum_ELBO, enumerating them in the model), the
    marginal the reference and the k-hat look at too.  A fit stopped short biases the gap low; what is
    left of that (a statistical floor of about (parameters / 2) / (particles
    x steps) nats per point) is why ``better`` says, per point, whether the
    fit beats the amortized q on independent draws.
    """
    guide = (LawGuide(model, x, layout, law, start) if family == "law" else
             _local_guide(model, x, layout, q_mean, q_sd, family))
    steps = settings.local_steps
    if steps == 0:
        return LocalFit(guide, 0, False, np.ones(batch.num_rows(x), dtype=bool))
    n_part = 1 if family == "delta" else settings.local_particles
    # a program that does not broadcast over a draw dim takes its particles one at a time
    objective = TraceEnum_ELBO if layout.summed else Trace_ELBO
    elbo = objective(num_particles=n_part, vectorize_particles=n_part > 1 and layout.broadcasts,
                     max_plate_nesting=layout.nest)
    fit_model = summing(model.model, layout.summed) if layout.summed else model.model
    block = max(1, int(math.ceil(BLOCK_SHARE * steps)))
    # progress None: a bar on a terminal, a line now and then elsewhere (progress.py)
    bar = progress_bar(steps + MAX_BLOCKS * block, None if progress is None else bool(progress), desc=desc, leave=False)
    fit = _Fit(lambda: elbo.differentiable_loss(fit_model, guide, **x),
               [p for p in guide.parameters() if p.requires_grad], settings.local_lr, bar)
    check = _Check(model, guide, x, layout, settings, family == "delta")
    with guide.create_plates.unflagged() if family != "law" else nullcontext():
        # the step size decays 10x over the scheduled steps, so they settle instead of jittering
        fit.run(steps, lambda t: settings.local_lr * 0.1 ** (t / steps))
        converged = fit.averaged_blocks(block, settings.local_lr * 0.1, check)
    if bar is not None:
        bar.close()
    # per point, whether the fit beats the amortized q on draws that neither trained nor will score it:
    # a fit a little short of an optimum q is at is no evidence of a gap
    amortized = _Check(model, model.guide, x, layout, settings, family == "delta")
    better = (check.per_point() - amortized.per_point()).mean(0) > 0
    return LocalFit(guide, fit.taken, converged, better)


def _local_guide(model, x, layout: Layout, q_mean: np.ndarray, q_sd: np.ndarray, family: str):
    """The per-point guide, its parameters built and started at the amortized q's means (and scales)."""
    init_vals = layout.site_tensors(q_mean)
    init = init_to_value(values=init_vals) if init_vals else init_to_median
    # the local q covers the continuous sites: the summed ones are hidden from the guide's prototype
    target = poutine.block(model.model, hide=layout.summed) if layout.summed else model.model
    plates = _SizedPlates(batch.num_rows(x))
    guide = (_MaskedDelta(target, init_loc_fn=init, create_plates=plates) if family == "delta" else
             _MaskedNormal(target, init_loc_fn=init, init_scale=0.1, create_plates=plates))
    plates.guide = guide
    guide(**x)  # builds the prototype and the parameters
    device = model_device(model)
    guide.to(device)
    if family == "normal" and not layout.point_mass:
        scales = layout.site_tensors(np.maximum(q_sd, 1e-3))
        for s in layout.sites:
            # start at the amortized q's scale (real-valued sites: unconstrained = constrained)
            if scales and is_real(layout.supports[s]):
                deep_setattr(guide.scales, s, PyroParam(scales[s].to(device), guide.scale_constraint,
                                                        guide._event_dims[s]))
    return guide


class _ModelMasks(Messenger):
    """An autoguide's sites masked where the model masks them (a padded step of a shorter sequence): Pyro's
    autoguides draw every element of a site, so without the model's mask their log q would count elements the
    model's log p leaves out, and the fit would widen them without end for a positive ELBO."""

    def __init__(self, guide):
        super().__init__()
        self.guide = guide

    def _pyro_sample(self, msg):
        proto = getattr(self.guide, "prototype_trace", None)
        name = msg["name"]
        if proto is not None and name not in proto.nodes and name.endswith("_unconstrained"):
            name = name[: -len("_unconstrained")]  # AutoNormal draws a site there, then moves it to the support
        node = proto.nodes.get(name) if proto is not None else None
        if node is None or msg["is_observed"]:
            return
        mask = node_mask(node)  # the model's .mask() or poutine.mask, whichever it masks its padded steps with
        if mask is not None:
            msg["fn"] = masked_like(msg["fn"], mask)


class _MaskedNormal(AutoNormal):
    def forward(self, *args, **kwargs):
        with _ModelMasks(self):
            return super().forward(*args, **kwargs)


class _MaskedDelta(AutoDelta):
    def forward(self, *args, **kwargs):
        with _ModelMasks(self):
            return super().forward(*args, **kwargs)


class _Outputs(Messenger):
    """Each latent node's q drawn from its law at the free per-point ``out`` instead of the encoder's output."""

    def __init__(self, guide: "LawGuide"):
        super().__init__()
        self.guide = guide

    def _pyro_sample(self, msg):
        g = self.guide
        if msg["name"] in g.laws and not msg["is_observed"]:
            q = g.laws[msg["name"]].law(g.outs[msg["name"]], g.dims[msg["name"]])
            msg["fn"] = q.expand(msg["fn"].batch_shape)  # the plates the run's guide opened, particles included


class LawGuide(torch.nn.Module):
    """A declared graph's own guide with each latent node's encoder output replaced by a free per-point ``out``.

    The guide runs as trained (its plates, its order, its sites); only the law
    each latent site draws from changes, to ``law(out)`` of the node's guide law
    (or ``law``, a registered law name: a richer family, such as "fullrank").
    ``out`` starts at the encoder's output for the node's own law, else at
    ``warm_start`` of the encoder's q's mean and standard deviation, or of
    ``start``'s q (another, fitted ``LawGuide``: the richer flow family starts
    at the guide's own q*).  A law built here with parameters of its own (the
    per-point flow's transforms, local_flow.py) is fitted along with ``out``.
    """

    def __init__(self, model, x, layout: Layout, law: Optional[str] = None, start: Optional["LawGuide"] = None):
        super().__init__()
        check_law_fit(model, layout)
        # the run's model is used, not owned: as a submodule its parameters would join the fit's
        object.__setattr__(self, "model", model)
        self.laws: Dict[str, object] = {}
        self.dims: Dict[str, int] = {}
        self.outs = torch.nn.ParameterDict()
        self.fitted_laws = torch.nn.ModuleDict()  # laws built for this fit, whose own parameters it fits
        feats = model.encoder_inputs(dict(x))
        with torch.no_grad():
            for name in model.latent_sites:
                family, node = model.families[name], model.graph.nodes[name]
                own = family.guide_law
                chosen = own if law is None or law == node.guide else law_for(law, node)
                out = model.encoders[name](feats)
                if chosen is not own:
                    q = start.laws[name].law(start.outs[name], family.dim) if start is not None else family.guide(out)
                    loc, scale = _moments(q)
                    out = chosen.warm_start(loc, scale)
                    if isinstance(chosen, torch.nn.Module):
                        self.fitted_laws[name] = chosen.to(out.device)
                self.laws[name], self.dims[name] = chosen, family.dim
                self.outs[name] = torch.nn.Parameter(out.detach().clone())
        self.start = {n: p.detach().clone() for n, p in self.outs.items()}

    @torch.no_grad()
    def restart(self, where: np.ndarray) -> None:
        """``out`` back at its starting value on the points ``where`` is true."""
        for n, out in self.outs.items():
            keep = torch.as_tensor(where, device=out.device).reshape((-1,) + (1,) * (out.dim() - 1))
            out.copy_(torch.where(keep, self.start[n], out))

    def forward(self, *args, **kwargs):
        with _Outputs(self):
            return self.model.guide(*args, **kwargs)


def law_for(name: str, node):
    """The per-point family ``name`` bound to ``node``'s settings: a local family of its own (LOCAL_LAWS: "iaf" is
    the per-point flow), else the registered guide law (a rank the node gives another law is not this law's:
    lowrank then takes its default)."""
    if name in LOCAL_LAWS:
        return LOCAL_LAWS[name].for_node(node)
    if node.guide != name and node.rank is not None:
        node = dataclasses.replace(node, rank=None)
    return GUIDE_LAWS[name].for_node(node)


#: draws that estimate the moments of a q without closed-form ones (a flow), for a warm start
MOMENT_DRAWS = 256


def _moments(q):
    """q's mean and marginal standard deviations: exact where the law has them, else from draws (a flow's)."""
    try:
        return q.mean, q.variance.sqrt()
    except NotImplementedError:
        z = q.sample((MOMENT_DRAWS,))
        return z.mean(0), z.std(0)


def check_law_fit(model, layout: Layout) -> None:
    """One line unless every latent of ``model`` is a declared continuous node whose q reads the data alone."""
    if not (hasattr(model, "families") and hasattr(model, "encoders") and hasattr(model, "graph")):
        raise PyroVAEError(f"a local fit of the guide law's outputs needs a declared model ([model] keys or "
                           f"[model.nodes.NAME] tables), but this run's model is {type(model).__name__}, a program: "
                           "its guide has no law to free")
    g = model.graph
    for name in model.latent_sites:
        if model.families[name].discrete:
            raise PyroVAEError(f"node {name!r} is discrete: the gaps are split for continuous latents only "
                               "(a graph whose discrete nodes are summed in the model alone, such as a mixture "
                               "prior's component, is fine)")
        if g.guide_inputs(name):
            raise PyroVAEError(f"q({name} | ...) also reads {', '.join(g.guide_inputs(name))}: a per-point q of a "
                               "structured guide is not one law's output; the gaps of a model trained with "
                               "model.guide_structure = \"mean-field\" can be split")
    if layout.summed_guide:
        raise PyroVAEError(f"the guide samples discrete sites ({', '.join(layout.summed_guide)}): the gaps are "
                           "split for continuous latents only")


class _SizedPlates:
    """An autoguide's ``create_plates``: a size for each plate the program opens without one.

    Pyro's M2 example writes ``pyro.plate("data")``, whose size the tensors
    decide.  An autoguide re-opens the model's plates at their recorded size,
    which is then -1, and fails drawing a subsample of -1 elements.  The local
    guide is fitted to the ``n`` rows it is given, so such a plate has ``n``.
    """

    def __init__(self, n: int):
        self.n = n
        self.guide = None  # the autoguide, whose prototype trace records the plates

    def sizeless(self) -> dict:
        """{name: frame} of the plates the program opens without a size, from the guide's prototype trace."""
        return {f.name: f for site in self.guide.prototype_trace.nodes.values() if site["type"] == "sample"
                for f in site["cond_indep_stack"] if f.vectorized and (f.size is None or f.size < 0)}

    def __call__(self, *args, **kwargs):
        return [pyro.plate(name, self.n, dim=f.dim) for name, f in self.sizeless().items()]

    @contextmanager
    def unflagged(self):
        """Pyro's check of model against guide reads a plate sized here as the guide's own (the model's, without
        a size, records no subsample site): that one warning is off inside, any other plate's stays on."""
        names = sorted(self.sizeless())
        if not names:  # every plate has its size: nothing to unflag, the warning filters stay as they are
            yield
            return
        alternatives = "|".join(re.escape(repr(n)) for n in names)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=rf"Found plate statements in guide but not model: "
                                                      rf"\{{(?:(?:{alternatives})(?:, )?)+\}}\Z")
            yield


class _Fit:
    """Adam on a local guide's parameters, and the running sum of its iterates for averaging."""

    def __init__(self, loss, params, lr: float, bar):
        self.loss, self.params, self.bar = loss, params, bar
        self.opt = torch.optim.Adam(params, lr=lr)
        self.total = None  # the sum of the iterates since averaging began
        self.taken = 0

    def run(self, n: int, lr_at) -> None:
        for t in range(n):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(t)
            grads = torch.autograd.grad(self.loss(), self.params)
            for p, g in zip(self.params, grads):
                p.grad = g
            self.opt.step()
            if self.total is not None:
                for a, p in zip(self.total, self.params):
                    a += p.detach()
            if self.bar is not None:
                self.bar.update(1)
        self.taken += n

    def averaged_blocks(self, block: int, lr: float, check: "_Check") -> bool:
        """Blocks at ``lr`` whose iterates are averaged (Polyak-Ruppert: the iterates jitter about the optimum
        with the gradient noise, and their running mean is far closer to it than any one of them), until
        ``QUIET_BLOCKS`` in a row leave the averaged guide's ELBO unchanged; whether that happened."""
        self.total = [torch.zeros_like(p) for p in self.params]
        current = [p.detach().clone() for p in self.params]
        before, averaged, quiet = check(), 0, 0
        for _ in range(MAX_BLOCKS):
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)  # the optimizer goes on from its own iterate, not from the average
            self.run(block, lambda t: lr)
            averaged += block
            with torch.no_grad():
                for p, c, a in zip(self.params, current, self.total):
                    c.copy_(p)
                    p.copy_(a / averaged)
            after = check()
            quiet = quiet + 1 if check.unchanged(before, after) else 0
            if quiet >= QUIET_BLOCKS:
                return True
            before = after
        return False


class _Check:
    """A guide's per-draw ELBO on the same check draws every time (its own stream)."""

    def __init__(self, model, guide, x, layout, settings, deterministic: bool):
        self.args = (LocalModel(model, guide), x, 1 if deterministic else settings.draws, layout)
        self.seed = settings.seed + 3  # neither q's draws nor the ones that score the gap
        self.deterministic = deterministic
        self.points = batch.num_rows(x)

    @torch.no_grad()
    def per_point(self) -> np.ndarray:
        with isolated_rng(self.seed, batch.reference(self.args[1]).device):
            _, lp, lq = draw_q(*self.args, split="draws")
        return (lp - lq).cpu().numpy()  # (draws, points)

    def __call__(self) -> np.ndarray:
        return self.per_point().sum(1)  # (draws,): the objective the fit maximizes

    def unchanged(self, before: np.ndarray, after: np.ndarray) -> bool:
        d = after - before
        if self.deterministic:
            return abs(float(d[0])) <= POINT_MASS_TOL * self.points
        return abs(float(d.mean())) <= float(d.std(ddof=1)) / math.sqrt(len(d))
