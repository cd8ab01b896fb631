"""Learned priors of root latents: ``prior = "flow"`` (transforms of the fixed prior) and ``prior = "vamp"`` (VampPrior).

``prior = "flow"``: p(z) is the node's fixed prior pushed through K affine
autoregressive transforms (Pyro's ``affine_autoregressive`` TransformModules,
held in an ``nn.ModuleList`` so their parameters train and are checkpointed).
Each transform enters as its inverse, a masked autoregressive flow: the
density of a guide's draw, which every step needs, is then one network pass
per transform, and only a draw from the prior (sampling, SBC) pays the
sequential inverse.  The density is Pyro's ``TransformedDistribution``'s.

``prior = "vamp"`` (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), the
node's own guide at K learned pseudo-inputs u_k, one per data array its
encoder reads (in the features the encoder reads).  The sum over k is exact,
a logsumexp inside Pyro's ``MixtureSameFamily``, with nothing enumerated.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import pyro.distributions as dist
from pyro.distributions.transforms import affine_autoregressive

from .flows import DEFAULT_FLOWS, hidden_sizes, quiet_made

#: pseudo-inputs of a VampPrior when ``pseudo_inputs`` is not given
DEFAULT_PSEUDO_INPUTS = 50



class FlowPrior(nn.Module):
    """K learned autoregressive transforms applied to a root's fixed prior."""

    def __init__(self, node):
        super().__init__()
        dim = int(node.dim)
        hidden = hidden_sizes(dim, node.flow_hidden)
        count = int(node.flows or DEFAULT_FLOWS)
        self.transforms = nn.ModuleList(quiet_made(lambda: affine_autoregressive(dim, hidden_dims=hidden))
                                        for _ in range(count))

    def law(self, base: dist.Distribution) -> dist.Distribution:
        """p(z): ``base`` (the fixed prior, already of the batch's shape) through the transforms."""
        return dist.TransformedDistribution(base, [t.inv for t in self.transforms])


class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q(z | u_k): a mixture of the node's guide at K learned pseudo-inputs.

    ``inputs``: (name, feature width) of each data array the node's encoder reads.  The pseudo-inputs start at
    uniform draws in [0, 1) (the scale of image and binary data, where the digits and MNIST sources lie)."""

    def __init__(self, inputs: Sequence[Tuple[str, int]], count: int):
        super().__init__()
        self.count = int(count)
        self.pseudo = nn.ParameterDict({name: nn.Parameter(torch.rand(self.count, width)) for name, width in inputs})
        self.register_buffer("logits", torch.zeros(self.count))

    def features(self) -> Dict[str, torch.Tensor]:
        """The pseudo-inputs as the encoder reads its data's features."""
        return dict(self.pseudo.items())

    def law(self, family, encoder: nn.Module, shape) -> dist.Distribution:
        """p(z) of the batch ``shape``: the components are the family's guide law at the encoder's outputs."""
        components = family.guide(encoder(self.features()))  # batch (K,), event (dim,)
        mixing = dist.Categorical(logits=self.logits)
        return dist.MixtureSameFamily(mixing, components).expand(tuple(shape))
