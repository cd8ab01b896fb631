"""Samples from a trained run: the mean of p(x | latents) with the latents drawn from their prior (or, asked, draws x ~ p(x)), as a PNG grid or a .npy array.

One meaning of "samples" everywhere (this command, ``plots/samples.png``,
``class_samples.png``): by default each sample is the likelihood's mean given
latents drawn ancestrally from the prior (a decoder's mean for a VAE), which
shows what the model has learned without the pixel noise of p(x | z);
``draws=True`` (``--draws``) writes draws x ~ p(x) instead.  ``--given
NAME=VALUE`` holds a label or an input at a value (app/given.py); the default
file name then says which (``samples-y3-seed0.png``) and the figure's title
says what was drawn given what.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..config import ProgramSpec
from ..data.sizes import check_fits
from ..errors import PyroVAEError
from ..figures.style import save_image_grid
from ..models.build import describe
from ..models.counts import LIBRARY_NAME, CountLikelihood, given_library, given_total
from ..models.sampling import PriorDraws, given_rows, prior_draws
from ..store.files import write_atomic
from .given import check_given, given_slug, given_text, given_values, latent_names, slots
from .prepare import load_config_data
from .runs import load_run
from .sample_words import SampleWords, run_vocabulary, words_path, write_sample_words

__all__ = ["Samples", "sample_run", "write_samples", "samples_title"]


@dataclass(frozen=True)
class Samples:
    """A sample file written: where, and what it holds in words (the figure's title)."""

    path: Path
    description: str
    words: Optional[SampleWords] = None  # each sample's most frequent words, where the run's columns are words


def samples_title(n: int, observed: str, given: dict, draws: bool) -> str:
    """What a sample file holds, in words: ``64 samples given y = 3: the mean of p(x | latents, y), latents ~ prior``."""
    cond = ", ".join(given)
    if draws:
        what = f"draws of {observed} ~ p({observed}{' | ' + cond if cond else ''})"
    else:
        what = f"the mean of p({observed} | latents{', ' + cond if cond else ''}), latents ~ prior"
    return f"{n} samples{' given ' + given_text(given) if given else ''}: {what}"


def sample_run(run_dir: os.PathLike, n: int = 64, out: Optional[os.PathLike] = None, *, seed: int = 0,
               given: Sequence[str] = (), draws: bool = False, program_path: Optional[os.PathLike] = None,
               trust_code: bool = False) -> Path:
    """:func:`write_samples`, returning the file written."""
    return write_samples(run_dir, n, out, seed=seed, given=given, draws=draws, program_path=program_path,
                         trust_code=trust_code).path


def write_samples(run_dir: os.PathLike, n: int = 64, out: Optional[os.PathLike] = None, *, seed: int = 0,
                  given: Sequence[str] = (), draws: bool = False, program_path: Optional[os.PathLike] = None,
                  trust_code: bool = False) -> Samples:
    """``pyro-vae sample``: ``n`` samples of a run's model into ``out``.

    Each sample is the mean of p(x | latents), the latents drawn from their prior, or with ``draws`` a draw
    x ~ p(x).  ``given``: ``NAME=VALUE`` holds a label or an input at a value, as on the command line.  The default
    ``out`` is RUN_DIR/samples-seedSEED.png (.npy for data that are not images), samples-y3-seedSEED.png given y = 3,
    and draws-seedSEED.png (draws-y3-...) with ``draws``.
    Every value and the output file are checked before anything is drawn or written.
    """
    if n < 1:
        raise PyroVAEError(f"-n must be >= 1 (got {n})")
    run = load_run(run_dir, program_path=program_path, trust_code=trust_code)
    if hasattr(run.model, "sample_sequences"):  # a declared chain: its samples are sequences (app/sequences.py)
        raise PyroVAEError("this run's model is over time: draw whole sequences with --steps T, or forecast after an "
                           "observed prefix with --given-prefix FILE")
    values = given_values(given)
    library = given_library(run.model, values)
    named = run.config is not None and (run.config.data.arrays or isinstance(run.config.data.train, dict)
                                        or run.config.data.labels is not None)
    if values and not named:
        if LIBRARY_NAME in values and isinstance(getattr(run.model, "likelihood", None), CountLikelihood):
            raise PyroVAEError(f"--given {LIBRARY_NAME}=N sets a row's library size, but this run's "
                               f"{run.model.likelihood.name!r} likelihood has none (model.library = \"none\"): drop "
                               f"it, or train with model.library = \"observed\" or \"latent\"")
        raise PyroVAEError("--given conditions on a named array (a label or an input), but this run was trained "
                           "on one array: drop --given")
    program = isinstance(getattr(run.config, "model", None), ProgramSpec)
    rows = program or getattr(getattr(run.model, "likelihood", None), "needs_rows", False)
    data = load_config_data(run.config) if named or rows else None
    if named:
        check_given(values, slots(run.model, data.train, data.observed), latent_names(run.model), data.observed)
    slug = f"-{given_slug({**values, **library})}" if values or library else ""
    # the two kinds never share a file: draws x ~ p(x) are not the means a samples-*.npy holds
    kind = "draws" if draws else "samples"
    default = f"{kind}{slug}-seed{seed}.{'png' if run.image_shape else 'npy'}"
    out = _checked_out(Path(out) if out else Path(run_dir) / default, default, run.image_shape)
    with given_total(run.model, library.get(LIBRARY_NAME)):
        xs = _draws(run, n, seed, values, data, named, draws, decoded=not library)
    totals = isinstance(xs, PriorDraws) and xs.row_totals
    xs = xs.x if isinstance(xs, PriorDraws) else xs
    arr = xs.cpu().numpy()
    title = samples_title(n, run.model.obs_site, values, draws)
    if totals:  # what else the draws are given: say it, as the draws cannot be read as p(x) alone
        title += ", each given the total count of a test row (in turn)"
    if out.suffix.lower() == ".png":
        save_image_grid(arr, run.image_shape, out, ncols=int(np.ceil(np.sqrt(n))), title=title)
    else:
        write_atomic(out, lambda f: np.save(f, arr))
    vocabulary = run_vocabulary(run)
    words = None if vocabulary is None else write_sample_words(arr, vocabulary, words_path(out), draws)
    return Samples(out, title, words)


def own_samples(model, n: int, width: int, seed: int) -> torch.Tensor:
    """A program's own ``sample(n)``: it returns ``(z, x)``, n draws of the latents from their prior and the
    (n, D) means of p(x | z) (README: bring your own program); anything else is one line naming the contract."""
    contract = f"sample(n) must return (z, x): n latent draws and an (n, {width}) tensor of x"
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        try:
            out = model.sample(n)
        except Exception as e:  # the user's method: its own error, in one line
            msg = " ".join(str(e).split())[:200] or type(e).__name__
            raise PyroVAEError(f"the program's sample({n}) failed ({type(e).__name__}: {msg}): {contract}") from None
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[1], torch.Tensor):
        raise PyroVAEError(f"the program's sample({n}) returned {type(out).__name__}: {contract}")
    x = out[1].detach()
    if tuple(x.shape) != (n, width):
        raise PyroVAEError(f"the program's sample({n}) returned x of shape {tuple(x.shape)}: {contract}")
    if not bool(torch.isfinite(x).all()):
        raise PyroVAEError(f"the program's sample({n}) returned x with NaN or Inf values: {contract}, finite")
    return x


def _checked_out(out: Path, default: str, image_shape) -> Path:
    """``--out``: a .png (image data only) or .npy file in a folder that exists."""
    suffix = out.suffix.lower()
    if out.is_dir():
        raise PyroVAEError(f"--out {out} is a folder: give a file name such as {out / default}")
    if suffix not in (".png", ".npy"):
        raise PyroVAEError(f"--out {out}: use a .png (image grid) or .npy (array) file name")
    if not out.parent.is_dir():
        raise PyroVAEError(f"--out {out}: folder {str(out.parent)!r} does not exist")
    if suffix == ".png" and image_shape is None:
        raise PyroVAEError(f"--out {out}: this run's data are not images; write a .npy file instead")
    return out


def _draws(run, n: int, seed: int, given: dict, data, named: bool, draws: bool,
           decoded: bool = True) -> Union[torch.Tensor, PriorDraws]:
    """A one-latent model's decoded prior draws; else its program traced unconditioned on n rows, the given
    arrays held at their values (means of the observed site, or its draws)."""
    lik = getattr(run.model, "likelihood", None)
    if (getattr(run.model, "one_latent", None) and not given and not draws and decoded
            and not getattr(lik, "needs_rows", False)):
        width = run.model.data_dim + describe(run.config.model)["latent_dim"]
        check_fits(4 * n * width * 3, f"-n {n} samples", "lower -n")  # z, the decoder's output, its mean
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, xs = run.model.sample(n)
        return xs
    check_fits(4 * n * run.data_dim * 4, f"-n {n} samples", "lower -n")  # two placeholders, two draws
    if (isinstance(getattr(run.config, "model", None), ProgramSpec) and callable(getattr(run.model, "sample", None))
            and not given and not draws and decoded):
        return own_samples(run.model, n, run.data_dim, seed)
    observed, rows, template = None, None, None
    if data is not None:
        # real rows to trace on: a count likelihood takes each row's number of trials from them
        template = data.test_x
        if named:
            observed, rows = data.observed, given_rows(data.train, data.observed, given, n)
    return prior_draws(run.model, n, run.data_dim, seed=seed, observed=observed, given=rows, mean=not draws,
                       template=template)
