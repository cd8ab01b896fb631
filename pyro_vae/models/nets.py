"""Network builders: MLPs whose sizes come straight from a :class:`NetConfig`."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``; ``hidden = []`` gives one linear map.

    Works on inputs with any number of leading batch dimensions, which is what
    lets evaluation vectorize over importance samples.
    """
    act = _ACTIVATIONS[activation]
    layers = []
    sizes = [in_features, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)
