"""``train.elbo = "auto"``: the estimator a program gets, from one trace: analytic KL where it is exact, else Monte Carlo.

The mean-field ELBO (``TraceMeanField_ELBO``) replaces each latent's Monte Carlo
term log p - log q by its KL in closed form.  That lowers the variance, but it
is only the same ELBO when every latent's KL has a closed form for its guide and
prior families, the guide is reparameterized, and no latent's prior reads a
latent that the guide draws given it (infer/dependence.py).  Where all of that
holds "auto" is "meanfield"; anywhere it fails, "trace" (``Trace_ELBO``, every
KL by Monte Carlo), rather than a mean-field ELBO that mixes the two and warns;
a discrete latent (in the guide, or a mixture's component in the model alone)
is summed exactly by "enum".  The choice is a property of the program, so a run
chooses once, before training, and says which and why in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch
from torch.distributions import kl_divergence

from .dependence import describe, inexact_kl_sites
from .sites import elementwise_base, is_enumerable, is_latent, trace_pair

AUTO = "auto"

#: each estimator "auto" may choose, as its one line names it
ESTIMATORS = {
    "meanfield": "TraceMeanField_ELBO ('meanfield': every KL analytic)",
    "trace": "Trace_ELBO ('trace': every KL by Monte Carlo)",
    "enum": "TraceEnum_ELBO ('enum': discrete latents summed exactly)",
}


@dataclass(frozen=True)
class ObjectiveChoice:
    """What ``train.elbo = "auto"`` chose for a program (``name``, an objective's name) and why."""

    name: str
    reason: str

    def line(self) -> str:
        """The one line a run says it in."""
        return f"train.elbo = 'auto' chose {ESTIMATORS[self.name]}: {self.reason}"


def _family(fn) -> str:
    return type(elementwise_base(fn, through_masks=True)).__name__


def no_closed_form(gtr, mtr) -> Dict[str, str]:
    """Latent site -> why its KL(q || p) has no closed form here (no formula registered for the two families)."""
    out = {}
    for name, g in gtr.nodes.items():
        m = mtr.nodes.get(name)
        if not is_latent(g) or m is None or not is_latent(m):
            continue
        try:
            kl_divergence(g["fn"], m["fn"])
        except NotImplementedError:
            out[name] = f"no closed-form KL of {_family(g['fn'])} q against {_family(m['fn'])} p"
    return out


def _discrete(gtr, mtr) -> Dict[str, str]:
    """Discrete latent site -> where it is: in the guide, or in the model alone (a mixture's component)."""
    out = {name: "discrete in the guide" for name, site in gtr.nodes.items() if is_enumerable(site)}
    for name, site in mtr.nodes.items():
        if name not in gtr.nodes and is_enumerable(site):
            out[name] = "discrete, in the model alone"
    return out


def _not_reparameterized(gtr) -> Dict[str, str]:
    return {name: f"{_family(site['fn'])} has no reparameterized sampler (score-function gradients)"
            for name, site in gtr.nodes.items()
            if is_latent(site) and not is_enumerable(site) and not site["fn"].has_rsample}


#: latent sites a note names one by one; beyond, it names the first and the last (a chain's z_1 .. z_T)
MAX_NAMED = 6


def _described(why: Dict[str, str]) -> str:
    """The sites' reasons (dependence.describe), the first two only when there are many (a chain's steps), so that
    the note stays one line."""
    if len(why) <= MAX_NAMED // 2:
        return describe(why)
    names = list(why)
    return (f"{describe({n: why[n] for n in names[:2]})}; and {len(names) - 2} more sites ({names[2]!r} .. "
            f"{names[-1]!r})")


def choose_objective(model, examples: Sequence) -> ObjectiveChoice:
    """The objective ``train.elbo = "auto"`` trains ``model`` with, read off one trace on each of ``examples``
    (a few rows of each row group of the data: rows without a label run another branch of a program)."""
    discrete: Dict[str, str] = {}
    monte_carlo: Dict[str, str] = {}
    latents: list = []
    for data in examples:
        with torch.no_grad():
            gtr, mtr = trace_pair(model, data)
        latents += [n for n, s in gtr.nodes.items() if is_latent(s) and n not in latents]
        discrete |= _discrete(gtr, mtr)
        monte_carlo |= _not_reparameterized(gtr)
        monte_carlo |= {s: why for s, why in no_closed_form(gtr, mtr).items() if s not in monte_carlo}
        if not discrete and not monte_carlo:
            monte_carlo |= inexact_kl_sites(model, data)
    if discrete:
        return ObjectiveChoice("enum", f"{_described(discrete)}: summed over its values exactly")
    if monte_carlo:
        return ObjectiveChoice("trace", f"an analytic KL is not exact for {_described(monte_carlo)}")
    # a chain's 25 sites 'z_1' .. 'z_25' are named by their first and last, not one by one
    named = (", ".join(repr(n) for n in latents) if len(latents) <= MAX_NAMED else
             f"{latents[0]!r} .. {latents[-1]!r}, {len(latents)} sites") or "no latent"
    return ObjectiveChoice("meanfield", f"the KL of every latent ({named}) has a closed form, exact for this guide")
