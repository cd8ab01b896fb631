"""Shared pieces of the training benchmarks: data, reference implementations, timing, tables.

Timing discipline (the machine is shared and noisy): every variant runs in the
same process, in short blocks that alternate (the order rotates each round),
and the tables report medians over rounds plus ratios taken against a
reference measured in the same rounds.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402

from pyro_vae.config import DataConfig, ModelConfig, NetConfig, TrainConfig  # noqa: E402
from pyro_vae.data.sources import load_data  # noqa: E402
from pyro_vae.models import build_model  # noqa: E402
from pyro_vae.training.trainer import Trainer  # noqa: E402

DATA_DIM, HIDDEN, LATENT = 784, 400, 20


def machine_line() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"pyro {pyro.__version__}, {dev}; load average {load}")


def fashion_mnist(rows: Optional[int] = None):
    """Fashion-MNIST, statically binarized (the same bits for every variant)."""
    ds = load_data(DataConfig(source="fashion-mnist", binarize="static"), likelihood="bernoulli")
    train = ds.train if rows is None else ds.train[:rows]
    return train.contiguous(), ds.test.contiguous()


def our_model(activation: str = "relu", seed: int = 0):
    pyro.set_rng_seed(seed)
    spec = ModelConfig(latent_dim=LATENT, likelihood="bernoulli",
                       encoder=NetConfig((HIDDEN,), activation), decoder=NetConfig((HIDDEN,), activation))
    return build_model(spec, DATA_DIM)


class OurRunner:
    """Our trainer, driven through ``Trainer.fit`` one epoch (over one block of rows) at a time."""

    def __init__(self, model, device="cpu", batch_size=128, elbo="meanfield", data_size=60000, **trainer_kwargs):
        self.cfg = TrainConfig(elbo=elbo, batch_size=batch_size, device=str(device), epochs=1, seed=0)
        self.trainer = Trainer(model, self.cfg, progress=False, **trainer_kwargs)
        self.model = model
        self.data_size = data_size

    def train_block(self, rows: torch.Tensor) -> float:
        """One epoch over ``rows``; returns the seconds of its batch loop (as history records it)."""
        t = self.trainer
        t.config = dataclasses.replace(t.config, epochs=t.state.epoch + 1)
        t.fit(rows)
        return t.state.history[-1]["seconds"]


class HandVAE(nn.Module):
    """The hand-written PyTorch VAE: BCE-with-logits + closed-form Gaussian KL (pytorch/examples, improved)."""

    def __init__(self, activation=nn.ReLU):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(DATA_DIM, HIDDEN), activation(), nn.Linear(HIDDEN, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), activation(), nn.Linear(HIDDEN, DATA_DIM))

    def encode(self, x):
        loc, raw = self.enc(x).split(LATENT, dim=-1)
        return loc, F.softplus(raw) + 1e-4  # the same parameterization as ours

    def loss(self, x, scale: float = 1.0):
        loc, sc = self.encode(x)
        z = loc + sc * torch.randn_like(loc)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + sc.pow(2) - 1).sum() - sc.log().sum()
        return (rec + kl) * scale

    def copy_from(self, ours) -> "HandVAE":
        """Start from our model's initial weights, so the two differ only in the training code."""
        self.enc.load_state_dict(ours.encoders["z"].mlp.state_dict())  # the one-latent graph z -> x's networks
        self.dec.load_state_dict(ours.nets["x"].mlp.state_dict())
        return self


class HandRunner:
    """The hand-written loop: gather a batch by index, zero_grad, loss, backward, Adam step."""

    def __init__(self, net: HandVAE, device="cpu", batch_size=128, data_size=60000, adam: str = "default", seed=0):
        self.net = net.to(device)
        kw = {"fused": True} if adam == "fused" else {}
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, **kw)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.data_size = data_size
        self.rng = torch.Generator().manual_seed(seed)  # the batch order our trainer draws

    def train_block(self, rows: torch.Tensor) -> float:
        n, b = rows.shape[0], self.batch_size
        perm = torch.randperm(n, generator=self.rng).to(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, n, b):
            x = rows[perm[i : i + b]]
            self.opt.zero_grad(set_to_none=True)
            loss = self.net.loss(x, self.data_size / x.shape[0])
            loss.backward()
            self.opt.step()
            total += loss.item()  # a training loop logs its loss: the same read ours makes
        sync(self.device)
        return time.perf_counter() - t0


class TutorialEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(DATA_DIM, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)

    def forward(self, x):
        hidden = F.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class TutorialDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(LATENT, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, DATA_DIM)

    def forward(self, z):
        return torch.sigmoid(self.fc21(F.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    """The VAE of Pyro's tutorial (https://pyro.ai/examples/vae.html), sizes 784-400-20.

    ``pyro.module`` registration, ``pyro.plate("data", B)`` without
    subsampling, Bernoulli(probs) after a sigmoid, softplus hidden units,
    ``exp`` encoder scale; trained by ``SVI(Trace_ELBO, pyro.optim.Adam)``.
    """

    def __init__(self):
        super().__init__()
        self.encoder = TutorialEncoder()
        self.decoder = TutorialDecoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z_scale = x.new_ones(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            # as in the tutorial: no argument validation on the image probabilities
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


class TutorialRunner:
    def __init__(self, device="cpu", batch_size=128, seed=0):
        from pyro.infer import SVI, Trace_ELBO
        from pyro.optim import Adam

        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        self.vae = TutorialVAE().to(device)
        self.svi = SVI(self.vae.model, self.vae.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rng = torch.Generator().manual_seed(seed)

    def train_block(self, rows: torch.Tensor) -> float:
        n, b = rows.shape[0], self.batch_size
        perm = torch.randperm(n, generator=self.rng).to(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        for i in range(0, n, b):
            self.svi.step(rows[perm[i : i + b]])  # returns the loss as a float (a host read)
        sync(self.device)
        return time.perf_counter() - t0


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def alternate(variants: Dict[str, Callable[[int], float]], rounds: int, warmup: bool = True) -> Dict[str, List[float]]:
    """Call each variant once per round (order rotated each round); collect what each returns.

    ``variants[name](round)`` runs one block and returns its measurement.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name](-1)
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(variants[name](r))
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a/b (each round's pair ran back to back)."""
    return statistics.median(x / y for x, y in zip(a, b))


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def test_elbo(encode, decode_logits, x: torch.Tensor, samples: int = 4, seed: int = 123, chunk: int = 2500) -> float:
    """Per-point test ELBO (nats): E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), the same estimator for every variant."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        loc, sc = encode(xb)
        kl = (0.5 * (loc.pow(2) + sc.pow(2) - 1) - sc.log()).sum()
        rec = 0.0
        for _ in range(samples):
            z = loc + sc * torch.randn(loc.shape, generator=g, device=x.device)
            rec += -F.binary_cross_entropy_with_logits(decode_logits(z), xb, reduction="sum") / samples
        total += float(rec - kl)
    return total / x.shape[0]


def our_encode_decode(model):
    """(x -> (loc, scale) of q(z|x), z -> the decoder's logits) of our one-latent graph, for :func:`test_elbo`."""

    def encode(x):
        q = model.families["z"].guide(model.encoders["z"]({"x": model.likelihood.encoder_input(x)})).base_dist
        return q.loc, q.scale

    return encode, lambda z: model.nets["x"]({"z": z})
