"""The declared deep Markov model vs a hand-written Pyro DMM: seconds per training epoch, measured in one run.

Ours: ``examples/sequence_dmm.toml``'s model (a gated transition, a backward GRU,
the combiner, a Bernoulli emitter of 88 notes) built from its ``[model.nodes]``
spec and trained by ``pv.fit`` (its default path).  The hand-written one has
the structure of Pyro's ``examples/dmm.py``, at the same sizes: a gated
transition, an emitter, a combiner ``0.5 * (tanh(W z_{t-1}) + h_t)``, a GRU over
the sequences reversed within their lengths and packed
(``pack_padded_sequence``), one observed site per step ``obs_x_t`` masked with
``.mask(...)``, ``pyro.markov`` in a plate, ``Trace_ELBO`` and ``ClippedAdam``,
stepped by ``SVI``.  Ours is timed by the trainer's own per-epoch seconds (history), its setup (the first
step's checks, ``train.elbo = "auto"``'s look at the program) reported apart.  Both train on the same synthetic chorales (lengths 20 to
40), batch 20, no per-epoch test ELBO.  Rounds alternate the two, the order
rotating; the ratio is the median of per-round ratios.

    python benchmarks/bench_dmm.py --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from _common import machine_line, median, paired_ratio, table

import pyro_vae as pv  # noqa: E402
from pyro_vae.config.schema import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: seconds each pv.fit spent outside its epochs (the first step's checks and the estimator's choice)
SETUP: list = []


class Emitter(nn.Module):
    def __init__(self, z_dim, hidden, out):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class Gated(nn.Module):
    def __init__(self, z_dim, hidden):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.proposal = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.loc = nn.Linear(z_dim, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        nn.init.eye_(self.loc.weight)
        nn.init.zeros_(self.loc.bias)

    def forward(self, z):
        gate = torch.sigmoid(self.gate(z))
        proposal = self.proposal(z)
        loc = (1 - gate) * self.loc(z) + gate * proposal
        return loc, nn.functional.softplus(self.scale(torch.relu(proposal)))


class Combine(nn.Module):
    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.z_to_h = nn.Linear(z_dim, rnn_dim)
        self.loc = nn.Linear(rnn_dim, z_dim)
        self.scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z, h):
        both = 0.5 * (torch.tanh(self.z_to_h(z)) + h)
        return self.loc(both), nn.functional.softplus(self.scale(both))


def reversed_within(x, lengths):
    t = torch.arange(x.shape[1])
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand(x.shape))


class HandDMM(nn.Module):
    """Pyro's examples/dmm.py structure at the declared model's sizes."""

    def __init__(self, z_dim=16, transition=64, emission=64, rnn_dim=64, notes=88):
        super().__init__()
        self.emitter = Emitter(z_dim, emission, notes)
        self.trans = Gated(z_dim, transition)
        self.combiner = Combine(z_dim, rnn_dim)
        self.rnn = nn.GRU(notes, rnn_dim, batch_first=True)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def model(self, x, reversed_x, mask, lengths):
        pyro.module("dmm", self)
        b, steps = x.shape[:2]
        z_prev = self.z_0.expand(b, -1)
        with pyro.plate("z_minibatch", b):
            for t in pyro.markov(range(1, steps + 1)):
                loc, scale = self.trans(z_prev)
                z_t = pyro.sample(f"z_{t}", dist.Normal(loc, scale).mask(mask[:, t - 1:t]).to_event(1))
                probs = self.emitter(z_t)
                pyro.sample(f"obs_x_{t}", dist.Bernoulli(probs).mask(mask[:, t - 1:t]).to_event(1),
                            obs=x[:, t - 1, :])
                z_prev = z_t

    def guide(self, x, reversed_x, mask, lengths):
        pyro.module("dmm", self)
        b, steps = x.shape[:2]
        packed = nn.utils.rnn.pack_padded_sequence(reversed_x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed, self.h_0.expand(1, b, -1).contiguous())
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=steps)
        h = reversed_within(out, lengths)
        z_prev = self.z_q_0.expand(b, -1)
        with pyro.plate("z_minibatch", b):
            for t in pyro.markov(range(1, steps + 1)):
                loc, scale = self.combiner(z_prev, h[:, t - 1])
                z_prev = pyro.sample(f"z_{t}", dist.Normal(loc, scale).mask(mask[:, t - 1:t]).to_event(1))


def hand_epochs(data, epochs: int, batch: int, seed: int) -> float:
    torch.manual_seed(seed)
    pyro.clear_param_store()
    dmm = HandDMM()
    svi = SVI(dmm.model, dmm.guide, ClippedAdam({"lr": 3e-3, "clip_norm": 10.0}), Trace_ELBO())
    x, lengths = data["x"], data["lengths"]
    mask = (torch.arange(x.shape[1]) < lengths[:, None]).float()
    rev = reversed_within(x, lengths)
    n = x.shape[0]
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            svi.step(x[idx], rev[idx], mask[idx], lengths[idx])
    return (time.perf_counter() - t0) / epochs


def our_epochs(data, epochs: int, batch: int, seed: int) -> float:
    cfg = pv.load_config(ROOT / "examples" / "sequence_dmm.toml")
    torch.manual_seed(seed)
    model = pv.build_model(cfg.model, 88)
    config = TrainConfig(epochs=epochs, batch_size=batch, lr=3e-3, seed=seed, eval_every=10 ** 6, threads=1)
    t0 = time.perf_counter()
    trainer = pv.fit(model, data, config=config, progress=False)
    total = time.perf_counter() - t0
    per_epoch = [h["seconds"] for h in trainer.state.history]
    SETUP.append(total - sum(per_epoch))
    return sum(per_epoch) / len(per_epoch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="epochs a variant trains each round")
    ap.add_argument("--sequences", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = pv.load_config(ROOT / "examples" / "sequence_dmm.toml")
    data_cfg = dataclasses.replace(cfg.data, num_points=args.sequences, test_fraction=0.0)
    data = pv.load_data(data_cfg, "bernoulli", ("x",)).train
    print(machine_line())
    print(f"{args.sequences} synthetic chorale sequences of 20 to 40 steps, 88 notes, batch 20, "
          f"{args.epochs} epochs a variant a round, {args.rounds} rounds")
    ours, hand = [], []
    for r in range(args.rounds):
        order = [("ours", our_epochs), ("hand", hand_epochs)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            (ours if name == "ours" else hand).append(fn(data, args.epochs, 20, r))
    rows = [["declared DMM (pv.fit)", f"{median(ours):.2f}"], ["hand-written Pyro DMM (SVI)", f"{median(hand):.2f}"]]
    print(table(["variant", "s / epoch (median)"], rows))
    print(f"ours / hand: {paired_ratio(ours, hand):.2f}x per epoch (median of per-round ratios); pv.fit's setup "
          f"outside the epochs (the first step's checks, the estimator's choice): {median(SETUP):.1f} s a fit")


if __name__ == "__main__":
    main()
