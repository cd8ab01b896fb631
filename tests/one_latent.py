"""Test helpers: the parts of a one-latent graph z -> x the closed-form tests set and read."""

from __future__ import annotations

import torch


def encoder_net(model) -> torch.nn.Sequential:
    """The MLP of q(z | x): x's features -> the guide law's numbers (loc and raw scale, or the code)."""
    return model.encoders["z"].mlp


def decoder_net(model) -> torch.nn.Sequential:
    """The MLP of p(x | z): z -> the likelihood's numbers."""
    return model.nets["x"].mlp


def q_loc_scale(model, x):
    """(loc, scale) of q(z | x); (code, None) for a point-mass guide."""
    q = model.families["z"].guide(model.encoders["z"]({"x": model.likelihood.encoder_input(x)})).base_dist
    return (q.v, None) if hasattr(q, "v") else (q.loc, q.scale)


def decoder(model):
    """z -> the likelihood's numbers, as the model computes them."""
    return lambda z: model.nets["x"]({"z": z})


def prior(model):
    """p(z), one point's law."""
    return model.families["z"].prior(())
