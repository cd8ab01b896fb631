"""The variational autoencoder: prior p(z), decoder + likelihood p(x|z), encoder q(z|x).

Both callables are plain Pyro: ``model`` samples ``z`` from the prior and
scores ``x`` under the likelihood; ``guide`` samples ``z`` from the amortized
encoder.  Every density the objectives, the evaluator and the diagnostics use
comes from these two sample sites.  A ``delta`` guide makes the same model a
deterministic autoencoder fitted by MAP: its ELBO is log p(x|z) + log p(z) at
z = f(x).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule

from .corruption import CORRUPTIONS
from .likelihoods import LIKELIHOODS
from .nets import encoder_network
from .plate import DataPlate
from ..registry import Registry
from . import MODELS
from .autoencoders import build_contractive, build_decoder, check_degenerate

PRIORS: Registry = Registry("prior")
GUIDES: Registry = Registry("guide")

MIN_ENCODER_SCALE = 1e-4


class _Prior(nn.Module):
    family = None

    def __init__(self, latent_dim: int, scale: float = 1.0):
        super().__init__()
        # buffers follow .to(device), so the prior lives where the data lives
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), float(scale)))

    def forward(self) -> dist.Distribution:
        return self.family(self.loc, self.scale).to_event(1)


@PRIORS.register("normal")
class NormalPrior(_Prior):
    family = dist.Normal


@PRIORS.register("laplace")
class LaplacePrior(_Prior):
    family = dist.Laplace


@GUIDES.register("normal")
class NormalEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag sigma(x)^2)."""

    def __init__(self, data_dim: int, latent_dim: int, net, image_shape=None):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = encoder_network(data_dim, 2 * latent_dim, net, image_shape, "model.encoder")

    def forward(self, x):
        loc, raw = self.net(x).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_ENCODER_SCALE

    def distribution(self, x) -> dist.Distribution:
        loc, scale = self(x)
        return dist.Normal(loc, scale).to_event(1)

    def mean(self, x):
        return self(x)[0]


@GUIDES.register("delta")
class DeltaEncoder(nn.Module):
    """q(z|x) = point mass at f(x): a deterministic encoder."""

    def __init__(self, data_dim: int, latent_dim: int, net, image_shape=None):
        super().__init__()
        self.net = encoder_network(data_dim, latent_dim, net, image_shape, "model.encoder")

    def forward(self, x):
        return self.net(x)

    def distribution(self, x) -> dist.Distribution:
        return dist.Delta(self(x)).to_event(1)

    def mean(self, x):
        return self(x)


@MODELS.register("vae")
class VAE(PyroModule):
    """A single-latent VAE built from a :class:`~pyro_vae.config.ModelConfig`.

    The constructor only stores and builds modules: it touches no global state
    (no param-store clearing, no reseeding), so models can be built freely.
    """

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, spec, data_dim: int, image_shape=None):
        super().__init__()
        self.spec = spec
        self.data_dim = int(data_dim)
        self.latent_dim = spec.latent_dim
        # model.sparsity = lambda is the Laplace prior's rate: -log p(z) = lambda |z|_1 + const
        prior_scale = spec.prior_scale if spec.sparsity is None else 1.0 / spec.sparsity
        self.prior = PRIORS[spec.prior](spec.latent_dim, prior_scale)
        self.likelihood = LIKELIHOODS[spec.likelihood](data_dim, spec.scale, spec.levels)
        self.encoder = GUIDES[spec.guide](data_dim, spec.latent_dim, spec.encoder, image_shape)
        # an MLP or conv net, or with model.tied the encoder mirrored (models/autoencoders.py)
        self.decoder = build_decoder(spec, self.encoder, self.likelihood, data_dim, image_shape)
        self.corruption = CORRUPTIONS[spec.corruption](spec.corruption_level)
        self.contractive = build_contractive(spec, self.encoder)
        check_degenerate(spec)
        self._data_plate = DataPlate()

    # -- the Pyro program -------------------------------------------------
    def _plate(self, x, data_size):
        return self._data_plate(x.shape[-2], x.device, data_size)

    def model(self, x, data_size=None):
        with self._plate(x, data_size):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
            if self.contractive is not None:
                # a penalty, not a density: it enters the joint as a factor, at the clean x
                pyro.factor("contractive", -self.contractive(self.likelihood.encoder_input(x)))

    def guide(self, x, data_size=None):
        with self._plate(x, data_size):
            pyro.sample("z", self.encoder.distribution(self._encoder_input(x)))

    def _encoder_input(self, x):
        x = self.likelihood.encoder_input(x)
        # Denoising: corruption belongs to the training objective only, so it is applied in
        # training mode with gradients on (a training step) and never in evaluation, which
        # runs under torch.no_grad (or after model.eval()) and must see the clean x.
        if self.corruption.active and self.training and torch.is_grad_enabled():
            x = self.corruption(x)
        return x

    # -- conveniences -----------------------------------------------------
    @torch.no_grad()
    def encode(self, x):
        """Mean of q(z|x)."""
        return self.encoder.mean(self.likelihood.encoder_input(x))

    @torch.no_grad()
    def decode(self, z):
        """Mean of p(x|z)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int):
        """Draw ``z ~ p(z)`` and return (z, mean of p(x|z))."""
        prior = self.prior()
        z = prior.sample((n,))
        return z, self.decode(z)
