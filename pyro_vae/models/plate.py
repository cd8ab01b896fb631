"""The built-in models' data plate: a minibatch of n rows, scaled to an unbiased full-data ELBO."""

from __future__ import annotations

from typing import Dict, Optional

import pyro
import torch

#: the data plate's name: a sample site of this name would clash with it
PLATE = "data"


class DataPlate:
    """``pyro.plate("data")`` over a batch's rows, with ``data_size`` the full data set's size when given."""

    def __init__(self):
        self._positions: Dict[tuple, torch.Tensor] = {}

    def __call__(self, n: int, device, data_size: Optional[int] = None):
        if data_size is None or data_size == n:
            return pyro.plate(PLATE, n, dim=-1)
        # Hand the plate the batch's own positions: with ``subsample_size`` it
        # would draw a fresh randperm of the whole data set on every step.
        key = (n, device)
        idx = self._positions.get(key)
        if idx is None:
            idx = self._positions[key] = torch.arange(n, device=device)
        return pyro.plate(PLATE, size=data_size, subsample=idx, dim=-1)
