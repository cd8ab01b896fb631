"""Per-point variational fits: the amortization gap's local q."""

from __future__ import annotations


import numpy as np
import torch

from ..models.protocol import model_device
from .settings import DiagnoseSettings
from .draws import _Layout, _bar, _is_real, _site_tensors

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


