"""What an evaluation's numbers are, in the model's own names: log p(x|y), E_q[log p(x|y,z)], KL(q(z|x,y) || p(z)).

The ELBO of any program splits exactly as

    E_q[log p(O, Z | C)] - E_q[log q(Z | ...)]
        = sum over observed sites o of E_q[log p(o | its parents)]  -  KL(q(Z | what q reads) || p(Z | C'))

with O the observed sites, Z the latents, C the conditioning inputs (arrays the
program reads that no site scores) and C' the data the latents' prior reads.
So the labels follow from which values each site's density reads: one trace of
guide and model on a couple of rows with every array and every sampled value
tagged by name (Pyro's provenance tracking), each site's density then carrying
the names it was computed from.  A one-latent VAE reads "log p(x)",
"E_q[log p(x|z)]", "KL(q(z|x) || p(z))"; a conditional VAE whose label y is an
input "log p(x|y)"; M2 scored on labelled rows "log p(x,y)" with the
reconstruction E_q[log p(y) + log p(x|y,z)].  A program whose densities cannot
be traced this way gets the labels that hold for any program: everything
conditioned on every input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger

from ..data import batch
from ..data.sequences import LENGTHS
from ..infer.layout import Layout
from ..infer.probe import TRACE_ERRORS
from ..infer.rng import forked_rng
from ..infer.sites import is_latent, is_observed
from .steps import collapse_names, collapse_terms, is_chain

__all__ = ["Quantities", "read_quantities", "ONE_LATENT"]


@dataclass(frozen=True)
class Quantities:
    """What each number of an evaluation estimates, as text (the keys of metrics.json they describe)."""

    log_likelihood: str  # e.g. "log p(x|y)"
    reconstruction: str  # e.g. "E_q[log p(x|y,z)]"
    kl: str  # e.g. "KL(q(z|x,y) || p(z))"
    observed: Tuple[str, ...] = ()  # the observed sites, the main one first
    inputs: Tuple[str, ...] = ()  # the arrays the model conditions on that no site scores
    # what one "point" of the numbers is: a data point, or a whole sequence of a chain, whose length is given (it
    # says which steps are real, as the shape of any data point is given; it is no variable the model explains)
    per: str = "data point"

    @property
    def unit(self) -> str:
        """What one row of the numbers is called in a sentence: "sequence" for a chain, else "point"."""
        return "sequence" if self.per.startswith("sequence") else "point"

    @property
    def elbo(self) -> str:
        return f"{self.reconstruction} - {self.kl}: a lower bound on {self.log_likelihood}"

    @property
    def log_likelihood_prior(self) -> str:
        return f"{self.log_likelihood}, with the latents drawn from their prior instead of q"

    def to_json(self) -> Dict[str, str]:
        """{metrics.json key: what it estimates}."""
        return {"elbo": self.elbo, "reconstruction": self.reconstruction, "kl": self.kl,
                "log_likelihood": self.log_likelihood, "log_likelihood_prior": self.log_likelihood_prior,
                "per": self.per}


#: the labels of a model of one latent z and one observed x (and of a metrics.json written before labels were)
ONE_LATENT = Quantities("log p(x)", "E_q[log p(x|z)]", "KL(q(z|x) || p(z))", ("x",))


class _Tagged(Messenger):
    """Each sample site's value tagged with its own name; recorded: the names its density reads, and for an
    observed site the tags its value came with (which array it scores)."""

    def __init__(self):
        super().__init__()
        self.reads: Dict[str, FrozenSet[str]] = {}
        self.sources: Dict[str, FrozenSet[str]] = {}

    def _pyro_post_sample(self, msg):
        if msg["type"] != "sample" or msg["value"] is None:
            return
        if msg["is_observed"]:
            self.sources[msg["name"]] = frozenset(get_provenance(msg["value"]))
        value = detach_provenance(msg["value"])
        try:
            self.reads[msg["name"]] = frozenset(get_provenance(msg["fn"].log_prob(value)))
        except TRACE_ERRORS:  # a density that cannot score here: its reads stay unknown
            pass
        msg["value"] = ProvenanceTensor(value, frozenset({msg["name"]}))


def _traced(model, data, obs_site: str):
    """(guide trace, model trace, the guide's messenger, the model's) on ``data``, each array tagged by its name
    (one array, the observations: by the observed site's, the name the quantities are read in)."""
    tagged = {k: ProvenanceTensor(v, frozenset({k if len(data) > 1 else obs_site})) for k, v in data.items()}
    guide, prior = _Tagged(), _Tagged()
    with forked_rng(batch.reference(data).device), torch.no_grad(), pyro.validation_enabled(False):
        with guide:
            gtr = poutine.trace(poutine.block(model.guide, hide_types=["param"])).get_trace(**tagged)
        with prior:
            replayed = poutine.replay(poutine.block(model.model, hide_types=["param"]), trace=gtr)
            mtr = poutine.trace(replayed).get_trace(**tagged)
    return gtr, mtr, guide, prior


def _names(items: Sequence[str]) -> str:
    return ",".join(collapse_names(list(items)))


def _density(site: str, given: Sequence[str]) -> str:
    return f"p({site}|{_names(given)})" if given else f"p({site})"


def read_quantities(model, x, layout: Layout) -> Quantities:
    """The labels of an evaluation of ``model`` on ``x`` (a couple of rows suffice), read off its program.

    A count likelihood scaled by each row's own total (``library = "observed"``, models/counts.py, scVI's observed
    library size) scores x given that total, which is read off x itself: its numbers are log p(x | library), said
    so, not a density of x alone."""
    found = _read_quantities(model, x, layout)
    if getattr(getattr(model, "likelihood", None), "library", None) != "observed":
        return found
    x_alone, x_given = f"p({model.obs_site})", f"p({model.obs_site}|"

    def given_library(text: str) -> str:
        if x_alone in text:
            return text.replace(x_alone, f"p({model.obs_site}|library)")
        return text.replace(x_given, f"p({model.obs_site}|library,")

    return dataclasses.replace(found, log_likelihood=given_library(found.log_likelihood),
                               reconstruction=given_library(found.reconstruction))


def _read_quantities(model, x, layout: Layout) -> Quantities:
    observed = sorted(layout.observed, key=lambda s: (s != model.obs_site, layout.observed.index(s)))
    arrays = list(x) if len(x) > 1 else [model.obs_site]
    try:
        gtr, mtr, guide, prior = _traced(model, x, model.obs_site)
    except Exception:  # noqa: BLE001 - a program provenance cannot follow: labels true of any program, never a failure
        return _any_program(observed, [a for a in arrays if a not in observed], layout)
    # an array is the observations of the first site that scores it (M2's ys is also its classifier's target)
    site_of = {}
    for site in observed:
        for a in prior.sources.get(site, ()):
            if a in arrays:
                site_of.setdefault(a, site)
    inputs = [a for a in arrays if a not in site_of and a not in observed]
    per = "data point"
    if LENGTHS in inputs and _is_chain(mtr):
        # a chain's lengths mask its padded steps: every number is per sequence with its length given, which the
        # labels say once ("per sequence") rather than as a conditioning in every density
        inputs.remove(LENGTHS)
        per = SEQUENCE
    elif _is_chain(mtr):
        per = CHAIN  # a program's own chain: its rows are sequences, whatever arrays say how long each is

    def renamed(names) -> FrozenSet[str]:
        return frozenset(site_of.get(n, n) for n in names)

    order = [n for n, s in mtr.nodes.items() if is_latent(s) or is_observed(s)]
    latent = [n for n in order if is_latent(mtr.nodes[n])]
    kl_sites = [n for n in latent if n not in layout.summed_model_only]
    q_sites = [n for n in kl_sites if n in gtr.nodes]
    if any(n not in prior.reads for n in order) or any(n not in guide.reads for n in q_sites):
        return _any_program(observed, inputs, layout)
    # a density reads the inputs and the sites drawn before it: what a later site seems to give (x.new_zeros for
    # a prior's shape) is not a parent
    parents = {n: renamed(prior.reads[n] - {LENGTHS if per == SEQUENCE else ""}) & (set(inputs) | set(order[:i]))
               for i, n in enumerate(order)}
    data_names = observed + inputs

    def ordered(names) -> List[str]:  # the data first (the main observations first), then latents in model order
        return [n for n in data_names if n in names] + [n for n in kl_sites if n in names]

    given = ordered({n for s in order for n in parents[s]} & set(inputs))
    recon = [f"log {_density(o, ordered(parents[o]))}" for o in observed]
    q_given = ordered({n for s in q_sites for n in renamed(guide.reads[s])} & set(data_names))  # lengths: not data
    p_given = ordered({n for s in latent for n in parents[s]} - set(latent))
    zs = _names(kl_sites)
    return Quantities(
        log_likelihood=f"log {_density(_names(observed), given)}",
        reconstruction=f"E_q[{' + '.join(collapse_terms(recon))}]",
        kl=f"KL(q({zs}{'|' + _names(q_given) if q_given else ''}) || {_density(zs, p_given)})",
        observed=tuple(observed), inputs=tuple(given), per=per)


#: what one point of a chain's numbers is
SEQUENCE = "sequence (its length given)"
#: what one point of a chain's numbers is when its program reads no ``lengths`` array (how it masks is its own)
CHAIN = "sequence"


def _is_chain(trace) -> bool:
    """Whether a trace holds a latent named per time step over 3+ consecutive steps (``z_1 .. z_T``)."""
    return is_chain([n for n, site in trace.nodes.items() if is_latent(site)])


def _any_program(observed: List[str], inputs: List[str], layout: Layout) -> Quantities:
    """The labels true of any program with these observed sites, latents and inputs: everything given every input."""
    latents = list(layout.summed_guide) + [s for s in layout.sites if s not in layout.summed_guide]
    obs, zs = _names(observed), _names(latents)
    return Quantities(
        log_likelihood=f"log {_density(obs, inputs)}",
        reconstruction=f"E_q[log {_density(obs, inputs + latents)}]",
        kl=f"KL(q({zs}|{_names(observed + inputs)}) || {_density(zs, inputs)})",
        observed=tuple(observed), inputs=tuple(inputs), per=CHAIN if is_chain(layout.sites) else "data point")
