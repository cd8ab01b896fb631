"""Our IAF-guided VAE against a hand-written PyTorch IAF-VAE of the same sizes: seconds per epoch, and the ratio.

Model: the one of examples/guide_iaf.toml: 8x8 digits (64 pixels, dynamically
binarized in ours, a fixed binarization in the reference), a 64-256-8 MLP VAE
with a Bernoulli likelihood, and q(z|x) the encoder's diagonal Gaussian followed
by K = 4 conditional affine autoregressive transforms (Kingma et al. 2016's
gated form, hidden [128], a context of 16 from the encoder); batch 64, Adam.

The hand-written reference is a plain PyTorch loop: z0 = loc + scale * eps,
each transform's (mean, logit) from the same masked networks (the very modules,
copied from our model, so the sizes and initial weights are ours), y = s * z +
(1 - s) * mean with s = sigmoid(logit + 2), log q = log N(z0) - sum log s, the
Bernoulli log-likelihood with logits and log N(z; 0, I) written out, then
``loss.backward()`` and ``torch.optim.Adam``.  Ours is ``Trainer.fit`` (Pyro's
Trace_ELBO over the declared model; ``train.capture = "auto"``), one epoch at a
time.  Blocks alternate in one process, the order rotating each round; the
table gives medians over rounds and the median of the per-round ratios.

    python benchmarks/bench_iaf.py                # ~1 min on 2 idle CPU cores
    python benchmarks/bench_iaf.py --rounds 7 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import alternate, machine_line, median, paired_ratio, table

from pyro_vae.config import DataConfig, ModelConfig, NetConfig, TrainConfig  # noqa: E402
from pyro_vae.data.sources import load_data  # noqa: E402
from pyro_vae.models import build_model  # noqa: E402
from pyro_vae.models.graph.guides import MIN_SCALE  # noqa: E402
from pyro_vae.training.trainer import Trainer  # noqa: E402

LATENT, HIDDEN, FLOWS, FLOW_HIDDEN, BATCH = 8, 256, 4, 128, 64


def spec() -> ModelConfig:
    return ModelConfig(latent_dim=LATENT, likelihood="bernoulli", guide="iaf", flows=FLOWS, flow_hidden=(FLOW_HIDDEN,),
                       encoder=NetConfig((HIDDEN,)), decoder=NetConfig((HIDDEN,)))


class HandIAF(nn.Module):
    """The hand-written IAF-VAE: our model's networks copied, the ELBO and the flow written out in PyTorch."""

    def __init__(self, ours):
        super().__init__()
        self.enc = copy.deepcopy(ours.encoders["z"].mlp)
        self.dec = copy.deepcopy(ours.nets["x"].mlp)
        law = ours.families["z"].guide_law
        self.arns = nn.ModuleList(copy.deepcopy(t.nn) for t in law.transforms)  # the masked networks, same weights
        self.context = law.context

    def loss(self, x, scale: float):
        loc, raw, h = self.enc(x).split([LATENT, LATENT, self.context], dim=-1)
        sd = F.softplus(raw) + MIN_SCALE
        eps = torch.randn_like(loc)
        z = loc + sd * eps
        log_q = (-0.5 * eps.pow(2) - sd.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        for arn in self.arns:
            mean, logit = arn(z, context=h)
            logit = logit + 2.0  # the gate's bias, as Kingma et al. (and Pyro's stable form) start it near identity
            s = torch.sigmoid(logit)
            z = s * z + (1 - s) * mean
            log_q = log_q - F.logsigmoid(logit).sum(-1)
        log_px = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return -(log_px + log_pz - log_q).sum() * scale


class HandRunner:
    def __init__(self, net: HandIAF, data_size: int, lr: float, seed: int = 0):
        self.net, self.data_size = net, data_size
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.rng = torch.Generator().manual_seed(seed)

    def epoch(self, rows: torch.Tensor) -> float:
        perm = torch.randperm(rows.shape[0], generator=self.rng)
        t0 = time.perf_counter()
        for i in range(0, rows.shape[0], BATCH):
            x = rows[perm[i:i + BATCH]]
            self.opt.zero_grad(set_to_none=True)
            loss = self.net.loss(x, self.data_size / x.shape[0])
            loss.backward()
            self.opt.step()
            loss.item()  # a training loop logs its loss: the same read ours makes
        return time.perf_counter() - t0


class OurRunner:
    def __init__(self, model, lr: float, capture: str):
        self.trainer = Trainer(model, TrainConfig(elbo="trace", batch_size=BATCH, epochs=1, lr=lr, seed=0,
                                                  capture=capture, eval_every=10**6), progress=False)

    def epoch(self, rows: torch.Tensor) -> float:
        t = self.trainer
        t.config = dataclasses.replace(t.config, epochs=t.state.epoch + 1)
        t.fit(rows)
        return t.state.history[-1]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(source="digits", binarize="static"), "bernoulli")
    rows = data.train_x.float()
    lr = 2e-3
    models = []
    for _ in range(2):  # the same initial weights for each variant
        torch.manual_seed(0)
        models.append(build_model(spec(), rows.shape[1]))
    hand = HandIAF(models[0])
    variants = {
        "ours (capture auto)": OurRunner(models[0], lr, "auto").epoch,
        "ours (capture off)": OurRunner(models[1], lr, "off").epoch,
        "hand-written PyTorch": HandRunner(hand, rows.shape[0], lr).epoch,
    }
    times = alternate({k: (lambda r, f=f: f(rows)) for k, f in variants.items()}, args.rounds)
    ref = times["hand-written PyTorch"]
    print(machine_line())
    print(f"{rows.shape[0]} training rows of 8x8 digits, batch {BATCH}, {args.rounds} rounds, "
          f"torch threads {args.threads}")
    print(table(["variant", "s / epoch (median)", "ratio to hand-written (median of rounds)"],
                [[k, median(v), paired_ratio(v, ref)] for k, v in times.items()]))


if __name__ == "__main__":
    main()
