"""Which latent sites each site's distribution reads, and so where an analytic KL is exact.

The mean-field ELBO replaces a latent site's Monte Carlo term
log p(z_s | pa_p) - log q(z_s | pa_q) by -KL(q(z_s | pa_q) || p(z_s | pa_p)),
evaluated at the values the guide drew for the other latents.  That is the
expectation of the term given those values only when, given them, z_s is
still distributed as q(z_s | pa_q): by the guide's local Markov property,
when no model parent of s is a guide descendant of s.  A mean-field guide
(no guide latent reads another) always passes; so does a guide that follows
the model's order (q(z2) q(z1 | z2) for p(z2) p(z1 | z2)).  A guide that
inverts it (q(z1 | x) q(z2 | z1)) does not for z1: p(z1 | z2) is read at a z2
drawn given z1, and the analytic KL there is biased.

Dependencies come from one trace of guide and model under Pyro's provenance
tracking (``pyro.infer.inspect.get_dependencies``, point masses included), on
a couple of data rows: direct dependencies are a property of the program, not
of the values.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Mapping

import pyro
import torch
from pyro.infer.inspect import get_dependencies

from ..data import batch
from .rng import forked_rng
from .probe import TRACE_ERRORS, first_line
from .sites import is_latent, trace_pair


def direct_dependencies(fn, data) -> Dict[str, FrozenSet[str]]:
    """site -> the earlier sample sites whose values its distribution reads, for ``fn`` called on ``data``."""
    device = batch.tensors(data)[0].device
    with forked_rng(device), pyro.validation_enabled(False):
        deps = get_dependencies(lambda: fn(**data), include_deterministic=True)["prior_dependencies"]
    return {site: frozenset(u for u in ups if u != site) for site, ups in deps.items()}


def _descendants(parents: Mapping[str, FrozenSet[str]]) -> Dict[str, FrozenSet[str]]:
    """site -> every site that reads it, directly or through other sites."""
    children: Dict[str, set] = {}
    for site, ups in parents.items():
        for u in ups:
            children.setdefault(u, set()).add(site)
    out = {}
    for site in parents:
        seen, todo = set(), list(children.get(site, ()))
        while todo:
            c = todo.pop()
            if c not in seen:
                seen.add(c)
                todo.extend(children.get(c, ()))
        out[site] = frozenset(seen)
    return out


def inexact_kl_sites(model, data) -> Dict[str, str]:
    """Latent site -> why an analytic KL there would be biased (or could be: untraceable dependencies).

    Empty for a mean-field guide, and for any guide whose dependencies follow the model's.
    """
    try:
        guide_deps = direct_dependencies(model.guide, data)
        model_deps = direct_dependencies(model.model, data)
    except TRACE_ERRORS as e:  # a program provenance cannot follow: no analytic KL is known to be exact
        with torch.no_grad(), forked_rng(batch.tensors(data)[0].device):
            gtr, _ = trace_pair(model, data)
        why = f"the guide's dependencies could not be traced ({first_line(e)[:200]})"
        return {name: why for name, site in gtr.nodes.items() if is_latent(site)}
    below = _descendants(guide_deps)
    out = {}
    for site in guide_deps:
        for parent in sorted(model_deps.get(site, ())):
            if parent in below[site]:
                out[site] = f"its prior reads {parent!r}, which the guide draws given {site!r}"
                break
    return out


def describe(inexact: Mapping[str, str]) -> str:
    """One phrase per site: ``'z1' (its prior reads 'z2', which the guide draws given 'z1')``."""
    return "; ".join(f"{s!r} ({why})" for s, why in inexact.items())
