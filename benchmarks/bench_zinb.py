"""Seconds per epoch of the declared ZINB VAE (pyro_vae, Pyro's ZeroInflatedNegativeBinomial) against a
hand-written PyTorch ZINB VAE of the same sizes, on one synthetic sparse count matrix, in one run.

The data: ``data.source = "synthetic_counts"`` (ZINB counts of a known 10-D latent), ROWS x 2,000 genes, saved as
a SciPy sparse .npz and trained from it as a user would (pyro_vae reads it a batch of rows at a time; the
reference densifies the same batches of rows from the same CSR matrix).  Both models: encoder 2000-128-(2x10) on
log(1 + x), decoder 10-128-(2x2000) (mean proportions and dropout logits), one learned inverse dispersion per
gene, the observed library size (each row's total), batch 128, Adam at 1e-3, one thread.  ``--likelihood
negative_binomial`` runs both as NB VAEs instead (Pyro's NegativeBinomial; the decoder without dropout logits),
on the same data.  Each variant trains EPOCHS epochs, the two alternating (an epoch of pyro_vae, then one of the
reference, from a trainer callback), so that the load of a shared machine falls on both alike; the table gives
the median seconds per epoch after the first (pyro_vae records its step in the first: training/capture.py; both
first epochs are printed too), pyro_vae's from its history, its setup and evaluation left out, the reference's
the same loop, and the ratio; and the same in CPU seconds of the process (``time.process_time``), which the
other processes of a loaded machine do not add to, the steadier ratio there.

Where the time goes: both spend most of a step in lgamma/digamma, the two networks' matrix products and the
softplus/log-sigmoid terms of the likelihood.  Pyro's negative binomial broadcasts the per-gene dispersion to
every row before its lgamma (and autograd's digamma), which a hand-written ELBO takes once per gene; the
recorded step computes those once per gene too (training/graph_passes.py, an exact rewrite), and replays without
Pyro's Python.  Reading the sparse rows and the optimizer update are a few percent of an epoch.

    python benchmarks/bench_zinb.py                 # 20,000 x 2,000, 4 epochs each (median of epochs 2-4)
    python benchmarks/bench_zinb.py --rows 5000     # a quicker look (say so when quoting it)
    python benchmarks/bench_zinb.py --likelihood negative_binomial
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import machine_line  # noqa: E402
import pyro_vae as pv  # noqa: E402
from pyro_vae.config import DataConfig  # noqa: E402
from pyro_vae.data.sources import load_data  # noqa: E402
from pyro_vae.training.callbacks import Callbacks  # noqa: E402

GENES, HIDDEN, LATENT, BATCH = 2000, 128, 10, 128


class HandZINB(nn.Module):
    """The reference: a plain PyTorch ZINB VAE (scVI's parameterisation), its ELBO written out; ``gated=False``: the
    same VAE with a negative-binomial likelihood (no dropout logits)."""

    def __init__(self, gated: bool = True):
        super().__init__()
        self.gated = gated
        self.enc = nn.Sequential(nn.Linear(GENES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, (2 if gated else 1) * GENES))
        self.log_theta = nn.Parameter(torch.zeros(GENES))

    def loss(self, x: torch.Tensor, n_total: int) -> torch.Tensor:
        loc, raw = self.enc(torch.log1p(x)).split(LATENT, -1)
        scale = F.softplus(raw) + 1e-3
        z = loc + scale * torch.randn_like(loc)
        if not self.gated:
            return self.nb_loss(x, n_total, loc, scale, z)
        mu_out, gate = self.dec(z).split(GENES, -1)
        mu = torch.softmax(mu_out, -1) * x.sum(-1, keepdim=True).clamp(min=1)
        theta = self.log_theta.exp()
        # ZINB log-likelihood (scVI's): log of pi + (1 - pi) NB(0) at zeros, log(1 - pi) + log NB(x) elsewhere
        log_theta_mu = torch.log(theta + mu + 1e-8)
        nb_zero = theta * (self.log_theta - log_theta_mu)
        softplus_gate = F.softplus(-gate)
        case_zero = F.softplus(nb_zero - gate) - softplus_gate
        case_pos = (-softplus_gate - gate + theta * (self.log_theta - log_theta_mu)
                    + x * (torch.log(mu + 1e-8) - log_theta_mu)
                    + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))
        log_px = torch.where(x < 1e-8, case_zero, case_pos).sum(-1)
        kl = (0.5 * (loc ** 2 + scale ** 2 - 1) - torch.log(scale)).sum(-1)
        return -(log_px - kl).sum() * (n_total / x.shape[0])

    def nb_loss(self, x, n_total, loc, scale, z):
        mu = torch.softmax(self.dec(z), -1) * x.sum(-1, keepdim=True).clamp(min=1)
        theta = self.log_theta.exp()
        # NB log-likelihood (scVI's), mean mu and inverse dispersion theta
        log_theta_mu = torch.log(theta + mu + 1e-8)
        log_px = (theta * (self.log_theta - log_theta_mu) + x * (torch.log(mu + 1e-8) - log_theta_mu)
                  + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)).sum(-1)
        kl = (0.5 * (loc ** 2 + scale ** 2 - 1) - torch.log(scale)).sum(-1)
        return -(log_px - kl).sum() * (n_total / x.shape[0])


class HandTraining:
    """The reference's training loop, an epoch at a time, on its own torch random stream."""

    def __init__(self, m: sp.csr_matrix, seed: int = 0, likelihood: str = "zinb"):
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.model = HandZINB(gated=likelihood == "zinb")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(outer)
        self.m, self.seed = m, seed

    def epoch(self) -> tuple:
        """(wall-clock seconds, CPU seconds) of one epoch."""
        # its draws come from its own stream, so pyro_vae's training between its epochs draws what it would alone
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        m, model, opt = self.m, self.model, self.opt
        n = m.shape[0]
        perm = np.random.default_rng(self.seed).permutation(n)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n - BATCH + 1, BATCH):
            x = torch.from_numpy(m[perm[i:i + BATCH]].toarray().astype(np.float32))
            opt.zero_grad()
            loss = model.loss(x, n)
            loss.backward()
            opt.step()
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(outer)
        return seconds


class ThenReference(Callbacks):
    """After each of pyro_vae's epochs (its time already taken), one epoch of the reference: the two alternate, so
    a change in the machine's load falls on both.  It also takes pyro_vae's CPU seconds per epoch, from the end of
    the reference's epoch before (or the fit's start) to the end of pyro_vae's."""

    def __init__(self, reference: HandTraining):
        self.reference, self.wall, self.cpu, self.ours_cpu = reference, [], [], []
        self._mark = 0.0

    def fit_started(self) -> None:
        self._mark = time.process_time()

    def epoch_ended(self, row: dict) -> None:
        self.ours_cpu.append(time.process_time() - self._mark)
        wall, cpu = self.reference.epoch()
        self.wall.append(wall)
        self.cpu.append(cpu)
        self._mark = time.process_time()


def interleaved_epochs(path: Path, m: sp.csr_matrix, epochs: int, seed: int = 0, likelihood: str = "zinb"):
    """{"wall": (pyro_vae's seconds per epoch, the reference's), "cpu": the same in CPU seconds}, the two trainings'
    epochs alternating."""
    ds = load_data(DataConfig(train=str(path), test_fraction=0.0), likelihood)
    model = pv.GraphModel(pv.ModelConfig(latent_dim=LATENT, likelihood=likelihood, library="observed",
                                         encoder={"hidden": [HIDDEN]}, decoder={"hidden": [HIDDEN]}), data_dim=GENES)
    cfg = pv.TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-3, seed=seed, eval_every=10 ** 6, threads=1)
    then = ThenReference(HandTraining(m, seed, likelihood))
    trainer = pv.Trainer(model, cfg, callbacks=[then], progress=False)
    trainer.fit(ds.train)
    return {"wall": ([h["seconds"] for h in trainer.state.history], then.wall), "cpu": (then.ours_cpu, then.cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--likelihood", choices=("zinb", "negative_binomial"), default="zinb",
                    help="the observation law of both VAEs (the data stay the synthetic ZINB counts)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = DataConfig(source="synthetic_counts", num_points=args.rows, synthetic_dim=GENES, synthetic_latent_dim=LATENT,
                     synthetic_dropout=0.3, synthetic_library=1000.0, test_fraction=0.0)
    x = load_data(cfg, "zinb").train
    m = sp.csr_matrix(x.numpy())
    del x
    print(machine_line())
    print(f"data: {m.shape[0]} x {m.shape[1]} synthetic ZINB counts, {100 * m.nnz / math.prod(m.shape):.1f}% non-zero")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counts.npz"
        sp.save_npz(path, m)
        times = interleaved_epochs(path, m, args.epochs, likelihood=args.likelihood)
    # pyro_vae's first epoch records its step once (training/capture.py): the steady state is the epochs after it
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    law = "ZINB" if args.likelihood == "zinb" else "NB"
    epochs = f"{'2' if args.epochs > 1 else '1'}-{args.epochs}"
    print(f"| variant | wall seconds per epoch (median of epochs {epochs}) | CPU seconds per epoch (median) |")
    print("|---|---|---|")
    med = {k: [statistics.median(v[steady]) for v in times[k]] for k in times}
    print(f"| pyro_vae {law} VAE (declared, Pyro) | {med['wall'][0]:.2f} | {med['cpu'][0]:.2f} |")
    print(f"| hand-written PyTorch {law} VAE | {med['wall'][1]:.2f} | {med['cpu'][1]:.2f} |")
    for k in ("wall", "cpu"):
        print(f"per epoch ({k}): pyro_vae", [round(s, 2) for s in times[k][0]], "hand-written",
              [round(s, 2) for s in times[k][1]])
    # CPU seconds are the process's own: the other processes of a loaded machine add little to them (a shared
    # cache and memory bandwidth still do), so they are the steadier ratio there
    print(f"ratio pyro_vae / hand-written: {med['wall'][0] / med['wall'][1]:.2f}x wall-clock, "
          f"{med['cpu'][0] / med['cpu'][1]:.2f}x CPU (goal <= 1.0x)")

if __name__ == "__main__":
    main()
