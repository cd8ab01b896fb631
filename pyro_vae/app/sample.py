"""Samples from a trained run: z ~ p(z) decoded, or a program's draws x ~ p(x), written as a PNG grid or a .npy array."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import ProgramSpec
from ..data.sizes import check_fits
from ..data.sources import load_data
from ..errors import PyroVAEError
from ..figures.style import save_image_grid
from ..models.build import describe
from ..models.sampling import given_rows, prior_predictive
from ..store.files import write_atomic
from .prepare import data_likelihood
from .runs import load_run


def sample_run(run_dir: os.PathLike, n: int = 64, out: Optional[os.PathLike] = None, *, seed: int = 0,
               given: Sequence[str] = (), program_path: Optional[os.PathLike] = None, trust_code: bool = False) -> Path:
    """``pyro-vae sample``: ``n`` draws of a run's model into ``out`` (default RUN_DIR/samples-seedSEED.png, or .npy
    for data that are not images); returns the file written.

    ``given``: ``NAME=VALUE`` conditions on the run's named arrays (a label or an input), as on the command line.
    """
    if n < 1:
        raise PyroVAEError(f"-n must be >= 1 (got {n})")
    run = load_run(run_dir, program_path=program_path, trust_code=trust_code)
    default = f"samples-seed{seed}.{'png' if run.image_shape else 'npy'}"
    out = Path(out) if out else Path(run_dir) / default
    suffix = out.suffix.lower()
    if out.is_dir():
        raise PyroVAEError(f"--out {out} is a folder: give a file name such as {out / default}")
    if suffix not in (".png", ".npy"):
        raise PyroVAEError(f"--out {out}: use a .png (image grid) or .npy (array) file name")
    if not out.parent.is_dir():
        raise PyroVAEError(f"--out {out}: folder {str(out.parent)!r} does not exist")
    if suffix == ".png" and run.image_shape is None:
        raise PyroVAEError(f"--out {out}: this run's data are not images; write a .npy file instead")
    values = given_values(given)
    named = run.config is not None and (run.config.data.arrays or isinstance(run.config.data.train, dict)
                                        or run.config.data.labels is not None)
    if values and not named:
        raise PyroVAEError("--given conditions on a named array (a label or an input), but this run was trained "
                           "on one array: drop --given")
    xs = _draws(run, n, seed, values, named)
    arr = xs.cpu().numpy()
    if suffix == ".png":
        save_image_grid(arr, run.image_shape, out, ncols=int(np.ceil(np.sqrt(n))))
    else:
        write_atomic(out, lambda f: np.save(f, arr))
    return out


def _draws(run, n: int, seed: int, given: dict, named: bool) -> torch.Tensor:
    """A one-latent model's decoded prior draws; else draws x ~ p(x) of its program, traced unconditioned."""
    if getattr(run.model, "one_latent", None) and not given:
        width = run.model.data_dim + describe(run.config.model)["latent_dim"]
        check_fits(4 * n * width * 3, f"-n {n} samples", "lower -n")  # z, the decoder's output, its mean
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, xs = run.model.sample(n)
        return xs
    check_fits(4 * n * run.data_dim * 4, f"-n {n} samples", "lower -n")  # two placeholders, two draws
    observed, rows, template = None, None, None
    if named or isinstance(getattr(run.config, "model", None), ProgramSpec):
        data = load_data(run.config.data, data_likelihood(run.config.model))
        # real rows to trace on: a count likelihood takes each row's number of trials from them
        template = data.test_x
        if named:
            observed, rows = data.observed, given_rows(data.train, data.observed, given, n)
    return prior_predictive(run.model, n, run.data_dim, seed=seed, observed=observed, given=rows, template=template)


def given_values(items: Sequence[str]) -> dict:
    """``--given name=value`` strings as {name: value}; values are TOML literals (3, 0.5, [0, 1])."""
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise PyroVAEError(f"--given {item!r}: expected NAME=VALUE, e.g. --given y=3")
        try:
            out[name] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise PyroVAEError(f"--given {item!r}: {raw.strip()!r} is not a number or a list of numbers") from None
    return out
