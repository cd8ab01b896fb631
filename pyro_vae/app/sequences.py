"""``pyro-vae sample --steps T``: whole sequences of a trained chain from its prior, or forecasts after an observed prefix.

Without ``--given-prefix`` each of the ``n`` sequences runs the chain from its
learned initial state, z_t ~ p(z_t | z_{t-1}), and emits the mean of
p(x_t | z_t).  With ``--given-prefix FILE`` (one (T0, D) sequence, or
(m, T0, D)) the guide reads the prefix and draws z_1 .. z_T0 from
q(z | x_1:T0); each draw's z_T0 (the last step's smoothing marginal, which
is the filtering one) starts the chain again for ``T`` more steps: ``n`` draws
of the forecast, whose spread is the model's uncertainty about what follows.
Both write an .npz of the arrays and a PNG of the traces next to it.  With
``draws`` (``--draws``) each emitted step is a draw x_t ~ p(x_t | z_t) (the
noisy sequences the model simulates) rather than its mean; a prefix's
observed steps are kept as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine

from ..data.arrays import read_array
from ..data.sequences import LENGTHS, read_sequences
from ..data.sizes import check_fits
from ..errors import PyroVAEError
from ..figures.sequences import save_forecast, save_sequence_samples
from ..models.graph.compile import broadcast_cat
from ..models.graph.sequence import step_site
from ..store.files import write_atomic
from .runs import load_run

__all__ = ["SequenceSamples", "write_sequences", "forecast", "emit", "chain_model"]

#: steps beyond which a sample asks for more than anyone plots (and a typo costs hours)
MAX_STEPS = 100_000


@dataclass(frozen=True)
class SequenceSamples:
    """Sequence samples written: the arrays, the figure, and what they hold in words."""

    path: Path
    figure: Path
    description: str


def chain_model(model, flag: str):
    if not hasattr(model, "sample_sequences") or not hasattr(model, "transition"):
        raise PyroVAEError(f"{flag} draws sequences from a declared model over time (a node with over = \"time\"), "
                           f"but this run's model is {type(model).__name__}: drop {flag}")
    if getattr(model, "inputs", ()):
        raise PyroVAEError(f"{flag}: this chain reads the input(s) {', '.join(model.inputs)} at every step, whose "
                           "future values a sample would need: not supported yet; drop the inputs or --steps")
    return model


def _check_draws(model) -> None:
    """Refuse ``--draws`` before anything is drawn where the chain's likelihood cannot draw a step on its own."""
    if getattr(model.likelihood, "reads_rows", False):
        raise PyroVAEError(f"--draws with --steps: likelihood {model.likelihood.name!r} takes each step's number "
                           "of trials from observed counts, which a simulated sequence has none of: drop --draws "
                           "(the means are the expected proportions)")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PyroVAEError(f"--steps must be an integer >= 1 (got {steps!r})")
    if steps > MAX_STEPS:
        raise PyroVAEError(f"--steps must be at most {MAX_STEPS:,} (got {steps}): pass a smaller value")


def _prefix(path: os.PathLike, width: int, name: str = "x") -> np.ndarray:
    """The observed prefix as (m, T0, D) float32, checked: its width, finite values.  An .npz is read as data.train
    reads sequences (its array ``name`` and ``lengths``, padding beyond them): the prefixes must share one length,
    since every forecast starts after step T0."""
    if Path(path).suffix.lower() == ".npz":
        seqs = read_sequences(str(path), (name,), "--given-prefix", False, [])
        lengths = seqs[LENGTHS]
        t0 = int(lengths.min())
        if int(lengths.max()) != t0:
            raise PyroVAEError(f"--given-prefix {path}: the prefixes' lengths run from {t0} to {int(lengths.max())}, "
                               "but every forecast starts after the same step: give prefixes of one length (e.g. "
                               f"each cut to its first {t0} steps)")
        a = seqs[name][:, :t0].numpy()
    else:
        a = np.asarray(read_array(str(path), "--given-prefix"))
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] < 1 or a.shape[0] < 1:
        raise PyroVAEError(f"--given-prefix {path}: shape {a.shape} is not a (T0, {width}) sequence or (m, T0, {width}) "
                           "sequences: give the observed steps, one row per step")
    if a.shape[2] != width:
        raise PyroVAEError(f"--given-prefix {path}: each step has {a.shape[2]} values but the model's x_t has {width}: "
                           "give the observed array's columns")
    if a.dtype.kind not in "biuf":
        raise PyroVAEError(f"--given-prefix {path}: {a.dtype} values are not numbers: give a numeric array")
    if not np.isfinite(a).all():
        raise PyroVAEError(f"--given-prefix {path}: {int((~np.isfinite(a)).sum())} values are NaN or Inf: give the "
                           "observed steps only (a shorter prefix), finite")
    return a.astype(np.float32)


def emit(model, z: torch.Tensor, draws: bool = False) -> torch.Tensor:
    """What a chain emits at latents ``z`` (..., T, z_dim): the mean of p(x_t | z_t) at each step, or with
    ``draws`` one draw from it (the likelihood's own law, so its noise is the model's)."""
    out = model.emitters[model.obs_site]({model.chain: z})
    if not draws:
        return model.likelihood.mean(out)
    return model.likelihood.law(out).sample()


@torch.no_grad()
def forecast(model, prefix: np.ndarray, n: int, steps: int, seed: int = 0, draws: bool = False):
    """(fitted (m, n, T0, D), forecast (m, n, steps, D), forecast latents (m, n, steps, z_dim)) for ``prefix``
    (m, T0, D): q(z_1:T0 | prefix) drawn ``n`` times, then the chain run on from each draw's z_T0; with
    ``draws`` the forecast's steps are draws of x_t, the fitted ones stay means."""
    m, t0, d = prefix.shape
    x = torch.as_tensor(prefix).repeat_interleave(n, 0)  # row i*n + j: prefix i, draw j
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tr = poutine.trace(model.guide).get_trace(**{model.obs_site: x})
        zq = torch.stack([tr.nodes[step_site(model.chain, t)]["value"] for t in range(1, t0 + 1)], -2)
        fitted = model.likelihood.mean(model.emitters[model.obs_site]({model.chain: zq}))
        z_prev, zs = zq[:, -1], []
        for _ in range(steps):
            loc, scale = model.transition(broadcast_cat([z_prev]))
            z_prev = dist.Normal(loc, scale).sample()
            zs.append(z_prev)
        z = torch.stack(zs, -2)
        ahead = emit(model, z, draws)
    shape = lambda t: t.reshape(m, n, *t.shape[1:]).cpu().numpy()  # noqa: E731
    return shape(fitted), shape(ahead), shape(z)


def _out(out: Optional[os.PathLike], run_dir: Path, default: str) -> Path:
    path = Path(out) if out else run_dir / default
    if path.suffix.lower() != ".npz":
        raise PyroVAEError(f"--out {path}: sequences are written as an .npz file (its figure next to it, .png)")
    if path.is_dir() or not path.parent.is_dir():
        raise PyroVAEError(f"--out {path}: give a file name in a folder that exists")
    return path


def write_sequences(run_dir: os.PathLike, n: int = 16, steps: int = 50, out: Optional[os.PathLike] = None, *,
                    seed: int = 0, given_prefix: Optional[os.PathLike] = None, draws: bool = False,
                    program_path: Optional[os.PathLike] = None, trust_code: bool = False) -> SequenceSamples:
    """``pyro-vae sample RUN --steps T [--given-prefix FILE]``: see the module docstring. Everything is checked
    before anything is drawn or written."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PyroVAEError(f"-n must be >= 1 (got {n})")
    _check_steps(steps)
    flag = "--given-prefix" if given_prefix is not None else "--steps"
    run = load_run(run_dir, program_path=program_path, trust_code=trust_code)
    model = chain_model(run.model, flag)
    width = int(model.obs_dim)
    prefix = _prefix(given_prefix, width, model.obs_site) if given_prefix is not None else None
    rows = n * (1 if prefix is None else prefix.shape[0])
    total = steps + (0 if prefix is None else prefix.shape[1])
    check_fits(4 * rows * total * (width + model.z_dim) * 3, f"-n {n} x {total} steps", "lower -n or --steps")
    if draws:
        _check_draws(model)
    kind = "forecast" if prefix is not None else "sequences"
    what = "draws of x_t ~ p(x_t | z_t)" if draws else "the mean of p(x_t | z_t)"
    path = _out(out, Path(run_dir), f"{kind}-seed{seed}.npz")
    figure = path.with_suffix(".png")
    if prefix is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            z, x = model.sample_sequences(n, steps)
            if draws:
                x = emit(model, z, draws=True)
        arrays = {"x": x.cpu().numpy(), "z": z.cpu().numpy()}
        title = f"{n} sequences of {steps} steps: {what}, z ~ the chain's prior"
        write_atomic(path, lambda f: np.savez(f, **arrays))
        save_sequence_samples(arrays["x"], figure, title)
    else:
        fitted, ahead, z = forecast(model, prefix, n, steps, seed, draws)
        arrays = {"prefix": prefix, "fitted": fitted, "forecast": ahead, "z": z}
        title = (f"{steps} steps after a prefix of {prefix.shape[1]}: {n} draws of "
                 f"{'x_t ~ p(x_t | z_t)' if draws else 'the mean of p(x_t | z_t)'}, "
                 "z_T0 ~ q(z | prefix), then the chain's prior")
        write_atomic(path, lambda f: np.savez(f, **arrays))
        save_forecast(prefix[0], fitted[0], ahead[0], figure, title)
    return SequenceSamples(path, figure, title)
