"""The demo: the default VAE trained on scikit-learn's 8x8 digits (no download) into a folder whose previous demo it replaces."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional

from ..config import apply_overrides, config_from_dict
from ..runtime.threads import ThreadSetting
from ..store.folder import check_output_folder
from .runs import Run
from .pipeline import train

DEMO_CONFIG = {
    "data": {"source": "digits"},
    "model": {"latent_dim": 8, "likelihood": "bernoulli", "encoder": {"hidden": [256]}, "decoder": {"hidden": [256]}},
    "train": {"elbo": "meanfield", "epochs": 80, "batch_size": 64, "lr": 2e-3, "seed": 0},
}


def demo(out: os.PathLike, epochs: Optional[int] = None, *, log: Callable[[str], None],
         threads: ThreadSetting = "auto") -> Run:
    """``pyro-vae demo``: :data:`DEMO_CONFIG` (``epochs`` of it, when given; ``threads`` as train.threads) trained
    into ``out``."""
    cfg = config_from_dict(DEMO_CONFIG)
    cfg = config_from_dict(apply_overrides(cfg.to_dict(), [f"train.epochs={epochs}"])) if epochs is not None else cfg
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, threads=threads))  # checked as the config is
    out = Path(out)
    check_output_folder(out, replace=True)  # before the first line of output: a refusal is the only line
    log(f"training the demo VAE ({DEMO_CONFIG['model']['latent_dim']}-d latent, Bernoulli likelihood) on "
        f"scikit-learn's 8x8 digits -> {out}")
    return train(cfg, out, overwrite=True, progress=None, log=log)
