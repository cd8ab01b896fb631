"""Whether the amortized guide lies in the per-point q's family: only then is a fit that cannot beat it a gap of 0.

The amortization gap's per-point q (diagnostics/local.py) is a diagonal
Gaussian per point (a point mass for a point-mass guide).  Where the guide
itself is one of those, a per-point fit that does not beat it leaves the guide
as the best per-point q found, and the gap is 0.  Where the guide is richer (a
chain's q(z_t | z_{t-1}, x), a structured q(z2 | x, z1), a full-rank or flow
law) the per-point family may be poorer than the guide: a fit that does not
beat it measures nothing, and the gap is not 0 but unknown.
"""

from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
from pyro import poutine

from ..data import batch
from ..infer.dependence import direct_dependencies
from ..infer.layout import Layout
from ..infer.rng import forked_rng
from ..infer.sites import elementwise_base, is_real

__all__ = ["guide_outside_family", "POORER"]

#: what a diagnosis says where the per-point family is poorer than the guide and the fit did not beat it
POORER = "per-point family poorer than the guide: gap not measured"


def guide_outside_family(model, x, layout: Layout) -> Optional[str]:
    """None when every latent site the guide draws is an independent diagonal Gaussian on the real line that
    reads no other latent (or the guide is a point mass, the MAP fit's family); else why not, in words."""
    if layout.point_mass:
        return None
    # all the diagnosed rows, not a slice: a user's guide may read its rows by index
    with forked_rng(batch.reference(x).device):
        tr = poutine.trace(model.guide).get_trace(**x)
    latents = [n for n in layout.sites if n in tr.nodes]
    for name in latents:
        fn = tr.nodes[name]["fn"]
        base = elementwise_base(fn, through_masks=True)
        if type(base) is not dist.Normal or not is_real(fn.support):
            return f"q({name}) is a {type(base).__name__}, not a diagonal Gaussian"
    deps = direct_dependencies(model.guide, x)
    for name in latents:
        reads = [n for n in latents if n in deps.get(name, ())]
        if reads:
            more = f" and {len(reads) - 3} more" if len(reads) > 3 else ""
            return f"q({name} | ...) reads {', '.join(reads[:3])}{more}"
    return None
