"""Corruption processes C(x~ | x) for denoising autoencoders and denoising VAEs.

A corruption is chosen by name (``model.corruption``) with one number,
``model.corruption_level``, whose meaning each process states.  The built-in
VAE applies it to the *encoder's input* during training steps only, while the
likelihood still scores the clean ``x``: the objective is
E_{x~ ~ C(.|x)} [ -log p(x | z = f(x~)) - log p(z) + ... ] for the delta guide
(a denoising autoencoder), and the ELBO with q(z | x~) for the normal guide (a
denoising VAE).

The draws come from torch's global generator on ``x``'s device — the training
stream that checkpoints save and restore, so a resumed run corrupts exactly as
an uninterrupted one.  They are *not* Pyro sample sites: C does not depend on
any parameter, so no score-function term is needed, and a guide-only site
would wrongly enter the ELBO as part of log q.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..registry import Registry

CORRUPTIONS: Registry = Registry("corruption process (model.corruption)")


class Corruption:
    """Base class: ``level`` is validated by :meth:`check_level` before any model is built."""

    #: what ``model.corruption_level`` means for this process (for messages and docs)
    level_meaning = ""
    #: False only for "none", which lets the model skip the call altogether
    active = True

    def __init__(self, level: float):
        self.level = float(level)

    @classmethod
    def check_level(cls, level: float) -> Optional[str]:
        """A one-line problem-and-fix if ``level`` is unusable, else None."""
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level:g})"


class _Probability(Corruption):
    """Processes whose level is a probability per entry."""

    level_meaning = "the probability that an entry is corrupted"

    @classmethod
    def check_level(cls, level):
        if not 0.0 < level < 1.0:
            return (f"{cls.name!r} needs model.corruption_level in (0, 1), {cls.level_meaning}: "
                    "set e.g. model.corruption_level = 0.25")
        return None


@CORRUPTIONS.register("none")
class NoCorruption(Corruption):
    name = "none"
    level_meaning = "unused"
    active = False

    @classmethod
    def check_level(cls, level):
        if level != 0.0:
            return ("a corruption level without a corruption process has no effect: set model.corruption = "
                    "'gaussian', 'masking' or 'salt_and_pepper', or remove model.corruption_level")
        return None

    def __call__(self, x):
        return x


@CORRUPTIONS.register("gaussian")
class GaussianCorruption(Corruption):
    """x~ = x + level * eps, eps ~ N(0, I): additive noise of variance level^2."""

    name = "gaussian"
    level_meaning = "the noise's standard deviation"

    @classmethod
    def check_level(cls, level):
        if not level > 0.0:
            return "'gaussian' needs model.corruption_level > 0, the noise's standard deviation: set e.g. 0.2"
        return None

    def __call__(self, x):
        return x + self.level * torch.randn_like(x)


@CORRUPTIONS.register("masking")
class MaskingCorruption(_Probability):
    """Each entry is set to 0 with probability ``level`` (dropout noise without rescaling)."""

    name = "masking"
    level_meaning = "the probability that an entry is set to 0"

    def __call__(self, x):
        keep = torch.rand_like(x) >= self.level
        return x * keep


@CORRUPTIONS.register("salt_and_pepper")
class SaltAndPepperCorruption(_Probability):
    """With probability ``level`` an entry is replaced by 0 or 1 (even odds).

    0 and 1 are the ends of the encoder's input range for image data in [0, 1]
    (and for categorical data, which the encoder sees rescaled to [0, 1]).
    """

    name = "salt_and_pepper"
    level_meaning = "the probability that an entry is replaced by 0 or 1"

    def __call__(self, x):
        hit = torch.rand_like(x) < self.level
        salt = (torch.rand_like(x) < 0.5).to(x.dtype)
        return torch.where(hit, salt, x)
