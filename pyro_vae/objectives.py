"""Objectives: a name -> a Pyro ELBO, plus the KL-weight (beta) handler.

All three are Pyro ELBO classes and all expose ``differentiable_loss``, so the
trainer can check the loss and gradients for NaN/Inf *before* the optimizer
step (Pyro's ``SVI.step`` steps immediately).  Pyro 1.9's ``RenyiELBO`` has no
``differentiable_loss``; :class:`IWAE_ELBO` adds one, computed from the same
traces and sample-site densities as ``RenyiELBO.loss``.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.util import check_if_enumerated

from .registry import Registry

OBJECTIVES: Registry = Registry("objective (train.elbo)")


class IWAE_ELBO(RenyiELBO):
    """The importance-weighted bound, ``RenyiELBO(alpha=0)``, with a ``differentiable_loss``.

    Per data point: log (1/K) sum_k p(x, z_k) / q(z_k | x).  Gradients flow by
    reparameterization, which is what Pyro's own surrogate computes for
    reparameterized guides; a non-reparameterized guide site is rejected.

    Minibatch scaling must not happen inside the log-mean-exp (that would
    bound a tempered density), so ``minibatch_scale_inside = False`` tells the
    trainer to run the model unscaled and multiply the loss by N/B afterwards.
    """

    minibatch_scale_inside = False

    def __init__(self, num_particles: int = 1, **kwargs):
        super().__init__(alpha=0, num_particles=num_particles, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        per_particle = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            if is_validation_enabled():
                check_if_enumerated(guide_trace)
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise ValueError(
                            f"train.elbo = 'iwae' needs a reparameterized guide, but site {name!r} is not"
                        )
                    log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            per_particle.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            log_w = per_particle[0]
        else:
            log_w = torch.stack([torch.as_tensor(w) for w in per_particle])
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -bound.sum()


@OBJECTIVES.register("trace")
def _trace(num_particles: int = 1, max_plate_nesting=float("inf")):
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("meanfield")
def _meanfield(num_particles: int = 1, max_plate_nesting=float("inf")):
    return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                               max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("iwae")
def _iwae(num_particles: int = 1, max_plate_nesting=float("inf")):
    return IWAE_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                     max_plate_nesting=max_plate_nesting)


def make_objective(name: str, num_particles: int = 1, max_plate_nesting=float("inf")):
    return OBJECTIVES[name](num_particles=num_particles, max_plate_nesting=max_plate_nesting)


class scale_sites(Messenger):
    """Multiply the log-density of the named sample sites by ``scale``.

    ``poutine.scale`` scales every site in its context; the KL weight beta must
    scale only the latent sites (in model and guide alike), which is what this
    does — for built-in and user-written models, which name their latent sites.
    """

    def __init__(self, names, scale: float):
        super().__init__()
        self.names = frozenset(names)
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.names and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.scale
