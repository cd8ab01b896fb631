"""RNG helpers: forked and isolated random streams (evaluation and recording never move the training stream)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` for the CPU stream and ``device``'s: both are restored on exit."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])



@contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Run with a fixed seed and restore every RNG stream afterwards."""
    with forked_rng(device):
        torch.manual_seed(seed)
        yield

