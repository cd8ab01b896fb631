"""What a chain's report figures need, drawn at diagnose time: each diagnosed sequence's steps, length and fit."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from pyro import poutine

from ..infer.rng import isolated_rng
from ..models.graph.sequence import step_site
from .results import Reference, SequenceFit

#: diagnosed sequences kept for the figures (the report draws a few; the rest are in the netCDF draws)
SHOW = 3
#: q's draws per sequence behind the figures' bands
FIT_DRAWS = 64


def is_chain(model) -> bool:
    """A declared model over time (a node with over = "time"): its chain, observed site and emitters."""
    return all(hasattr(model, a) for a in ("chain", "obs_site", "emitters", "likelihood", "guide"))


@torch.no_grad()
def sequence_fit(model, x: dict, reference: Reference, seed: int) -> Optional[SequenceFit]:
    """The first diagnosed sequences: observations, lengths (every step real without a ``lengths`` array), the
    mean of p(x_t | z_t) and z_t under q's draws, and the reference's per-step means and sds where it is the
    Kalman smoother (whose moments are per step); None for a model that is not a chain."""
    if not is_chain(model):
        return None
    obs = x[model.obs_site]
    m = min(SHOW, int(obs.shape[0]))
    rows = {k: v[:m] for k, v in x.items()}
    rep = {k: v.repeat_interleave(FIT_DRAWS, 0) for k, v in rows.items()}
    steps = int(obs.shape[1])
    with isolated_rng(seed, obs.device):
        tr = poutine.trace(model.guide).get_trace(**rep)
    z = torch.stack([tr.nodes[step_site(model.chain, t)]["value"] for t in range(1, steps + 1)], -2)
    feats = {model.chain: z, **{u: rep[u] for u in getattr(model, "inputs", ())}}
    recon = model.likelihood.mean(model.emitters[model.obs_site](feats))
    lengths = rows.get("lengths")
    lengths = np.full(m, steps) if lengths is None else lengths.cpu().numpy().astype(int)

    def per_draw(t):  # (m * draws, ...) -> (draws, m, ...)
        return t.reshape(m, FIT_DRAWS, *t.shape[1:]).transpose(0, 1).cpu().numpy()

    zd = int(z.shape[-1])
    ref_mean = ref_sd = np.zeros((0,))
    if reference.method == "kalman" and reference.mean is not None and reference.sd is not None:
        ref_mean = np.asarray(reference.mean)[:m].reshape(m, steps, zd)
        ref_sd = np.asarray(reference.sd)[:m].reshape(m, steps, zd)
    return SequenceFit(data=rows[model.obs_site].cpu().numpy(), lengths=lengths, reconstructions=per_draw(recon),
                       z=per_draw(z), reference_mean=ref_mean, reference_sd=ref_sd)
