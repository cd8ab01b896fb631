"""The README's own program: a conditional VAE of digit images given their label, written as Pyro users write one.

``model(x, y)`` and ``guide(x, y)`` take the images and their integer labels by name (``data.arrays = ["x",
"y"]`` in ``cvae.toml``); the observations sit in ``pyro.plate("data")``, and every tensor broadcasts over a
leading draw dim (``z.shape[:-1]``), so evaluation and diagnostics draw many samples per point at once.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F


class CVAE(nn.Module):
    """z ~ N(0, I);  x | z, y ~ Bernoulli(decoder(z, y));  q(z | x, y) = N(mu(x, y), diag s(x, y)^2)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, data_dim: int, classes: int = 10, z_dim: int = 2, hidden: int = 64):
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.decoder = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))
        self.encoder = nn.Sequential(nn.Linear(data_dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))

    def _label(self, y, like):
        """The one-hot label, broadcast to ``like``'s batch dims (the draws' dim included)."""
        y1 = F.one_hot(y, self.classes).to(like.dtype)
        return y1.expand(like.shape[:-1] + y1.shape[-1:])

    def model(self, x, y):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, self._label(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(torch.cat([x, self._label(y, x)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))
