"""The autoencoder family's graph options: the contractive penalty, tied weights, and objectives without a minimizer.

Each classical autoencoder is a one-latent graph with a few options
(the one-latent keys desugar into them, config/short.py):

=====================  ==============================================================
undercomplete AE       ``guide = "delta"``: the MAP view, loss -log p(x|z) - log p(z) at z = f(x)
sparse AE              ``guide = "delta"``, ``prior = "laplace"``, ``sparsity = lambda``:
                       -log p(z) = lambda |z|_1 + const is the L1 penalty
contractive AE         ``contractive = lambda``: ``pyro.factor`` of -lambda ||df/dx||_F^2
denoising AE / VAE     ``corruption = "gaussian" | "masking" | "salt_and_pepper"`` with
                       ``corruption_level``: the encoder sees x~ ~ C(.|x), the likelihood x
tied weights           ``tied = true``: the decoder is the encoder mirrored, weights transposed
=====================  ==============================================================

The options compose (a tied, denoising, contractive, sparse autoencoder is a
valid spec).  This module holds the pieces the graph compiler builds from
them: the contractive penalty (exact, closed form for the library's MLP
encoders), the tied decoder, and the check for objectives that have no
minimizer.

**The rescaling degeneracy.**  Under the delta guide the code's scale is free:
multiply the encoder's last linear layer by c and the decoder's first linear
layer by 1/c and the reconstruction does not change, while ||df/dx||^2 falls
like c^2 and lambda |z|_1 like c.  An untied contractive or sparse
autoencoder therefore has no minimizer: training shrinks the code and grows the
decoder, and the penalty stops meaning anything.  Tied weights pin the scale
(the same matrix encodes and decodes), which is what the classical contractive
autoencoder does; ``tied = true`` is the fix, and building an untied one warns
with :class:`DegenerateObjectiveWarning`.  (The normal guide has no such
degeneracy: the KL's entropy term resists shrinking the posterior.)
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.func import jacrev, vmap

from ...errors import DegenerateObjectiveWarning, PyroVAEError
from ..nets import ACTIVATIONS


# --------------------------------------------------------------------------
# activation derivatives: a'(pre) from the pre-activation and the output


def _where(cond, a, b):
    return torch.where(cond, torch.as_tensor(a, dtype=b.dtype, device=b.device), b)


def _d_gelu(m, pre, out):
    if m.approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = torch.tanh(c * (pre + 0.044715 * pre**3))
        return 0.5 * (1 + t) + 0.5 * pre * (1 - t**2) * c * (1 + 3 * 0.044715 * pre**2)
    cdf = 0.5 * (1 + torch.erf(pre / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * pre**2) / math.sqrt(2 * math.pi)
    return cdf + pre * pdf


def _d_softplus(m, pre, out):
    # torch's softplus is linear above `threshold` (in beta * pre)
    bp = m.beta * pre
    return _where(bp > m.threshold, 1.0, torch.sigmoid(bp))


def _d_silu(m, pre, out):
    s = torch.sigmoid(pre)
    return s * (1 + pre * (1 - s))


#: activation module type -> (module, pre-activation, output) -> elementwise derivative
ACTIVATION_DERIVATIVES: Dict[type, Callable] = {
    nn.ReLU: lambda m, pre, out: (pre > 0).to(pre.dtype),
    nn.LeakyReLU: lambda m, pre, out: _where(pre > 0, 1.0, torch.full_like(pre, m.negative_slope)),
    nn.ELU: lambda m, pre, out: _where(pre > 0, 1.0, out + m.alpha),  # alpha e^pre = out + alpha
    nn.Tanh: lambda m, pre, out: 1 - out**2,
    nn.Sigmoid: lambda m, pre, out: out * (1 - out),
    nn.Softplus: _d_softplus,
    nn.SiLU: _d_silu,
    nn.GELU: _d_gelu,
}


# --------------------------------------------------------------------------
# the contractive penalty


def _mlp_layers(net) -> Optional[tuple]:
    """(linears, activations) if ``net`` is Linear (act Linear)*, as :func:`pyro_vae.nets.mlp` builds; else None."""
    if not isinstance(net, nn.Sequential):
        return None
    mods = list(net)
    linears, acts = mods[0::2], mods[1::2]
    if not linears or len(linears) != len(acts) + 1:
        return None
    if not all(isinstance(m, nn.Linear) for m in linears):
        return None
    if not all(type(a) in ACTIVATION_DERIVATIVES for a in acts):
        return None
    return linears, acts


def mlp_jacobian_sq_norm(net: nn.Sequential, x: torch.Tensor, rows: Optional[int] = None) -> torch.Tensor:
    """||d net(x)[:rows] / dx||_F^2 per row of ``x``, exactly, in closed form.

    For ``net = W_L a(... a(W_1 x + b_1) ...) + b_L`` the Jacobian is
    ``W_L[:rows] D_{L-1} W_{L-1} ... D_1 W_1`` with ``D_l = diag(a'(pre_l))``.

    - no hidden layer: the Jacobian is ``W[:rows]`` for every x;
    - one hidden layer: ||W_2 D W_1||_F^2 = d^T ((W_2^T W_2) o (W_1 W_1^T)) d with d = a'(pre):
      O(h^2) per point instead of O(rows * h * d) for the Jacobian itself;
    - deeper: reverse accumulation from the ``rows`` outputs, one batched matmul per layer.
    """
    layers = _mlp_layers(net)
    if layers is None:
        raise TypeError("mlp_jacobian_sq_norm needs an MLP built by pyro_vae.nets.mlp")
    linears, acts = layers
    last = linears[-1].weight if rows is None else linears[-1].weight[:rows]
    if not acts:
        return last.pow(2).sum().expand(x.shape[:-1])
    h, slopes = x, []
    for lin, act in zip(linears[:-1], acts):
        pre = lin(h)
        h = act(pre)
        slopes.append(ACTIVATION_DERIVATIVES[type(act)](act, pre, h))
    if len(acts) == 1:
        w1 = linears[0].weight
        quad = (last.T @ last) * (w1 @ w1.T)  # (h, h), shared by every point
        d = slopes[0]
        return ((d @ quad) * d).sum(-1)
    jac = last  # (rows, h_{L-1})
    for lin, d in zip(reversed(linears[:-1]), reversed(slopes)):
        jac = (jac * d.unsqueeze(-2)) @ lin.weight  # (..., rows, h_{l-1})
    return jac.pow(2).sum((-2, -1))


def jacobian_sq_norm_autograd(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """||d fn(x) / dx||_F^2 per row by ``torch.func.vmap(jacrev(...))``: any differentiable ``fn``."""
    def one(row):
        return fn(row.unsqueeze(0)).squeeze(0)

    return vmap(jacrev(one))(x).pow(2).sum((-2, -1))


class ContractivePenalty:
    """lambda * ||d f(x)/dx||_F^2 per point, f = the encoder's code (its mean for a normal guide).

    The derivative is taken with respect to what the encoder sees (for the
    categorical likelihood, the levels rescaled to [0, 1]), in closed form from
    the encoder's MLP.  Not a module: it only reads the encoder's weights, which
    the encoder owns.
    """

    def __init__(self, weight: float, net: nn.Sequential, rows: int):
        if _mlp_layers(net) is None:
            raise TypeError("ContractivePenalty needs an MLP built by pyro_vae.nets.mlp")
        self.weight = float(weight)
        self.rows = int(rows)
        self._net = (net,)  # a tuple, so nn.Module does not register it twice

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * mlp_jacobian_sq_norm(self._net[0], x, self.rows)

    def __repr__(self) -> str:
        return f"ContractivePenalty(weight={self.weight:g})"


# --------------------------------------------------------------------------
# tied weights


class TiedDecoder(nn.Module):
    """The encoder MLP mirrored: layer l of the decoder is F.linear(h, W^T, b') for the encoder's W.

    Only the biases are the decoder's own.  For a normal guide the code rows of
    the encoder's last layer (the mean's) are the ones tied.
    """

    def __init__(self, encoder_net: nn.Sequential, rows: int, activation: str):
        super().__init__()
        linears = [m for m in encoder_net if isinstance(m, nn.Linear)]
        # a tuple is not registered: the weights belong to (and are saved with) the encoder
        self._linears = tuple(reversed(linears))
        self.rows = int(rows)
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(lin.in_features)) for lin in self._linears])
        self.act = ACTIVATIONS[activation]()

    def forward(self, z):
        h = z
        last = len(self._linears) - 1
        for i, (lin, b) in enumerate(zip(self._linears, self.biases)):
            w = lin.weight[: self.rows] if i == 0 else lin.weight
            h = F.linear(h, w.T, b)
            if i < last:
                h = self.act(h)
        return h


def check_one_latent_mlp(spec, latent: str, observed: str, key) -> None:
    """``tied`` and ``contractive`` read the one latent's encoder MLP: one line when the graph has another shape.

    ``key(node, field)`` names a node's key as the user wrote it (config/short.py ``key_path``).
    """
    option = "tied" if spec.tied else "contractive"
    if latent is None:
        raise PyroVAEError(f"model.{option} needs a graph of one latent and one observed node (z -> x), whose "
                           f"encoder reads only x: remove model.{option}")
    enc, dec = spec.nodes[latent].encoder, spec.nodes[observed].net
    if enc.type == "conv" or (spec.tied and dec.type == "conv"):
        raise PyroVAEError(f"model.{option} works on MLP networks, but {key(latent, 'encoder') if enc.type == 'conv' else key(observed, 'net')}"
                           f".type = 'conv': use type = 'mlp' or remove model.{option}")
    if spec.tied and tuple(dec.hidden) != tuple(enc.hidden)[::-1]:
        raise PyroVAEError(
            f"model.tied = true needs mirrored networks, but {key(latent, 'encoder')}.hidden = {list(enc.hidden)} "
            f"and {key(observed, 'net')}.hidden = {list(dec.hidden)}: set {key(observed, 'net')}.hidden = "
            f"{list(enc.hidden[::-1])} or model.tied = false"
        )


def check_tied_outputs(likelihood, node, data_dim: int, key) -> None:
    """A tied decoder has one output per data column: a likelihood that needs more cannot be tied."""
    if likelihood.out_features != data_dim:
        raise PyroVAEError(
            f"model.tied = true needs one decoder output per data column, but likelihood {node.likelihood!r}"
            + (" with scale = 'amortized'" if node.scale == "amortized" else "")
            + f" needs {likelihood.out_features // data_dim} per column: set model.tied = false"
            + ("" if node.likelihood == "categorical" else " or use a fixed or learned scale")
        )


def check_degenerate(spec, latent: str) -> None:
    """Warn when the graph's objective has no minimizer (see the module docstring)."""
    node = spec.nodes[latent] if latent is not None else None
    if node is None or node.guide != "delta" or spec.tied:
        return
    penalties = []
    if spec.contractive > 0:
        penalties.append(f"the contractive penalty (model.contractive = {spec.contractive:g})")
    if node.family == "laplace":
        # (the normal prior's L2 pull on the code has the same flaw, but in a plain autoencoder the prior
        # is not the point of the model; in a sparse one the L1 penalty is)
        penalties.append(f"the L1 penalty of the Laplace prior (lambda = {1.0 / node.prior_scale:g})")
    if penalties:
        warnings.warn(
            f"{' and '.join(penalties)} under the delta guide with untied weights has no minimizer: scaling the "
            "code down and the decoder up lowers it forever without changing the reconstruction; "
            "set model.tied = true (with model.decoder.hidden the reverse of model.encoder.hidden)",
            DegenerateObjectiveWarning,
            stacklevel=4,
        )
