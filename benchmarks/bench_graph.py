"""Graph models vs hand-written PyTorch: ms per training step of a declared graph and of the conv VAE.

Two models, each trained two ways in this one process:

1. the two-stochastic-layer VAE of ``examples/graph_hierarchical.toml``
   (p(z2) p(z1 | z2) p(x | z1), q(z1 | x) q(z2 | x, z1)), compiled from its
   ``[model.nodes]`` spec and trained by our ``Trainer`` (default path:
   ``capture = "auto"``, ``elbo = "meanfield"``), against a hand-written loop of
   the same four MLPs and the same estimator: the Bernoulli log-likelihood at one
   reparameterized draw, the Monte Carlo KL of z1 (log q(z1|x) - log p(z1|z2) at
   the draws: its prior reads z2, which the guide draws given z1, so the
   meanfield ELBO takes it by Monte Carlo too) and the analytic KL of z2;
2. the conv VAE of ``examples/vae_conv_fashion_mnist.toml`` (the one-latent
   form with ``type = "conv"`` encoder and decoder) against a hand-written conv
   VAE of the same layers (BCE-with-logits + closed-form KL).

Both hand-written loops start from our models' initial weights, use
``torch.optim.Adam`` (its default kernel, as ``pytorch/examples`` writes it;
"torch_fused" passes ``fused=True``), scale the loss by N/B as ours does and read
the loss once a step.  Blocks of batches alternate, the order rotating each
round; ratios are medians of per-round ratios.  Fashion-MNIST, statically
binarized, when its IDX files are installed; otherwise synthetic 0/1 rows of
784 columns (the timing does not depend on the pixel values).

    python benchmarks/bench_graph.py --threads 1            # ~2-4 min on 2 busy cores
    python benchmarks/bench_graph.py --only hierarchical --rounds 9
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import (ROOT, HandRunner, OurRunner, alternate, machine_line, median, paired_ratio, table)

import pyro  # noqa: E402
import pyro_vae as pv  # noqa: E402
from pyro_vae.errors import CaptureWarning  # noqa: E402

MODELS = ("hierarchical", "conv")
EXAMPLE = {"hierarchical": "graph_hierarchical", "conv": "vae_conv_fashion_mnist"}
MIN_SCALE = 1e-4  # the floor our families and encoders put on every predicted scale


def load_train(rows: int):
    """(rows, 784) 0/1 images: Fashion-MNIST when installed, else synthetic; and a line saying which."""
    try:
        ds = pv.load_data(pv.DataConfig(source="fashion-mnist", binarize="static"), likelihood="bernoulli")
        return ds.train[:rows].contiguous(), f"Fashion-MNIST, first {rows} training images, static binarization"
    except pv.PyroVAEError as e:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(rows, 784, generator=g) < 0.3).float()
        return x, f"synthetic 0/1 rows ({rows} x 784): Fashion-MNIST is not available ({e})"


def example_config(name: str):
    return pv.load_config(ROOT / "examples" / f"{EXAMPLE[name]}.toml")


def our_model(name: str, seed: int = 0):
    pyro.set_rng_seed(seed)
    cfg = example_config(name)
    return pv.build_model(cfg.model, 784, image_shape=(28, 28)), cfg


def copy_params(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s parameters into ``dst``'s, in order (the same layers, declared in the same order)."""
    a, b = list(dst.parameters()), list(src.parameters())
    assert [p.shape for p in a] == [p.shape for p in b], ([p.shape for p in a], [p.shape for p in b])
    with torch.no_grad():
        for p, q in zip(a, b):
            p.copy_(q)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def plain_mlp(sizes, activation: str):
    """Linear layers of ``sizes`` with ``activation`` between them (the example's nets are relu or tanh)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def loc_scale(out: torch.Tensor, dim: int):
    loc, raw = out.split(dim, dim=-1)
    return loc, F.softplus(raw) + MIN_SCALE


def normal_log_prob(v, loc, scale):
    return (-0.5 * ((v - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum()


class HandHierarchical(nn.Module):
    """The two-layer VAE written out by hand: four MLPs, one reparameterized draw of z1 and of z2."""

    def __init__(self, ours):
        super().__init__()
        n = ours.graph.nodes
        self.d1, self.d2 = n["z1"].dim, n["z2"].dim
        enc1, enc2, net1, netx = n["z1"].encoder, n["z2"].encoder, n["z1"].net, n["x"].net
        self.q1 = plain_mlp([784, *enc1.hidden, 2 * self.d1], enc1.activation)  # q(z1 | x)
        self.q2 = plain_mlp([784 + self.d1, *enc2.hidden, 2 * self.d2], enc2.activation)  # q(z2 | x, z1)
        self.p1 = plain_mlp([self.d2, *net1.hidden, 2 * self.d1], net1.activation)  # p(z1 | z2)
        self.px = plain_mlp([self.d1, *netx.hidden, 784], netx.activation)  # p(x | z1): Bernoulli logits
        copy_params(self.q1, ours.encoders["z1"])
        copy_params(self.q2, ours.encoders["z2"])
        copy_params(self.p1, ours.nets["z1"])
        copy_params(self.px, ours.nets["x"])

    def loss(self, x, scale: float = 1.0):
        loc1, s1 = loc_scale(self.q1(x), self.d1)
        z1 = loc1 + s1 * torch.randn_like(loc1)
        loc2, s2 = loc_scale(self.q2(torch.cat([x, z1], dim=-1)), self.d2)
        z2 = loc2 + s2 * torch.randn_like(loc2)
        ploc1, ps1 = loc_scale(self.p1(z2), self.d1)
        rec = F.binary_cross_entropy_with_logits(self.px(z1), x, reduction="sum")
        kl1 = normal_log_prob(z1, loc1, s1) - normal_log_prob(z1, ploc1, ps1)  # Monte Carlo
        kl2 = 0.5 * (loc2.pow(2) + s2.pow(2) - 1).sum() - s2.log().sum()  # analytic, against N(0, I)
        return (rec + kl1 + kl2) * scale


class HandConvVAE(nn.Module):
    """The conv VAE written out by hand: conv encoder + MLP, MLP + transposed-conv decoder, BCE + closed-form KL."""

    def __init__(self, ours):
        super().__init__()
        z, x = ours.spec.nodes["z"], ours.spec.nodes["x"]  # the one-latent form's graph z -> x
        c1, c2 = z.encoder.channels
        d1, d2 = x.net.channels
        self.latent = z.dim
        (h,), (hd,) = z.encoder.hidden, x.net.hidden
        self.enc = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(c2 * 49, h), nn.ReLU(), nn.Linear(h, 2 * self.latent))
        self.dec = nn.Sequential(
            nn.Linear(self.latent, hd), nn.ReLU(), nn.Linear(hd, d2 * 49), nn.ReLU(), nn.Unflatten(1, (d2, 7, 7)),
            nn.ConvTranspose2d(d2, d1, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(d1, 1, 4, stride=2, padding=1), nn.Flatten())
        copy_params(self.enc, ours.encoders["z"])
        copy_params(self.dec, ours.nets["x"])

    def loss(self, x, scale: float = 1.0):
        loc, sc = loc_scale(self.enc(x), self.latent)
        z = loc + sc * torch.randn_like(loc)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + sc.pow(2) - 1).sum() - sc.log().sum()
        return (rec + kl) * scale


def check_same_loss(ours, hand, x: torch.Tensor, data_size: int) -> float:
    """The two losses at the same initial weights, as full-data estimates averaged over draws (they must agree)."""
    torch.manual_seed(0)
    with torch.no_grad():
        a = sum(float(hand.loss(x, data_size / x.shape[0])) for _ in range(100)) / 100
    t = pv.Trainer(ours, pv.TrainConfig(elbo="meanfield"), progress=False)
    t.setup(x, data_size)
    with torch.no_grad():
        b = sum(float(t.loss(x)) for _ in range(100)) / 100
    return a / b


def make_runners(name: str, batch_size: int, data_size: int, x_check: torch.Tensor):
    runners, notes = {}, []
    for variant in ("torch", "torch_fused", "ours", "ours_no_capture"):
        ours, cfg = our_model(name)
        if variant.startswith("torch"):
            hand = (HandHierarchical if name == "hierarchical" else HandConvVAE)(ours)
            if variant == "torch":
                ratio = check_same_loss(our_model(name)[0], hand, x_check, data_size)
                # a few times the 100-draw means' noise: more means the two loops do not compute the same ELBO
                verdict = "the same objective" if abs(ratio - 1) < 1e-3 else "MISMATCH: not the same objective"
                notes.append(f"loss of the hand-written loop / ours at the same weights (100-draw means): "
                             f"{ratio:.4f} ({verdict})")
            runners[variant] = HandRunner(hand, "cpu", batch_size, data_size,
                                          adam="fused" if variant == "torch_fused" else "default")
            continue
        runner = OurRunner(ours, "cpu", batch_size, cfg.train.elbo, data_size)
        t = runner.trainer
        if variant == "ours_no_capture":
            t.config = dataclasses.replace(t.config, capture="off")
        t.setup(torch.zeros(2, 784), data_size)  # the full data's size, as a run over all of it has
        runners[variant] = runner
    return runners, notes


def step_table(name: str, train: torch.Tensor, batch_size: int, rounds: int, block_batches: int):
    n = train.shape[0]
    k = block_batches * batch_size
    def run(v):
        def f(r):
            start = (max(r, 0) * k) % (n - k + 1)
            rows = train[start : start + k]
            return 1e3 * runners[v].train_block(rows) / block_batches
        return f

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runners, notes = make_runners(name, batch_size, 60000, train[:batch_size])
        res = alternate({v: run(v) for v in runners}, rounds)
    ours = runners["ours"].trainer
    engine = (f"ours: step engine {ours.engine_name!r}, captured batch shapes {ours.captured_shapes}; "
              f"ours_no_capture: {runners['ours_no_capture'].trainer.engine_name!r}")
    # every warning the trainer gave, once: a CaptureWarning says why a step was not captured
    said = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    rows = [[v, median(res[v]), batch_size * 1e3 / median(res[v]), paired_ratio(res[v], res["torch"]),
             paired_ratio(res[v], res["torch_fused"])] for v in runners]
    text = table(["variant", "ms / step", "images / s", "ratio to torch", "ratio to torch (fused Adam)"], rows)
    captured = "no CaptureWarning" if not any(w.category is CaptureWarning for w in caught) else "a CaptureWarning (below)"
    return text, [engine + f"; {captured}", *notes, *said], res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="blocks per variant (alternating)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--block-batches", type=int, default=30, help="steps per timed block")
    ap.add_argument("--rows", type=int, default=16384, help="training images to cycle through")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--only", default=",".join(MODELS), help=f"models to run, of {', '.join(MODELS)}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, what = load_train(args.rows)
    print(machine_line())
    print(f"data: {what}; batch {args.batch_size}; {args.rounds} alternating blocks of {args.block_batches} steps\n")
    t0 = time.perf_counter()
    for name in args.only.split(","):
        title = {"hierarchical": "two-layer hierarchical VAE from a [model.nodes] graph (examples/graph_hierarchical.toml)",
                 "conv": "conv VAE, one-latent form (examples/vae_conv_fashion_mnist.toml)"}[name]
        print(f"## {title}")
        text, lines, res = step_table(name, train, args.batch_size, args.rounds, args.block_batches)
        print(text)
        for line in lines:
            print("- " + line)
        print("per-round ms/step:", {k: [round(v, 2) for v in vs] for k, vs in res.items()}, "\n", flush=True)
    print("ratios: median over rounds of variant/reference, each round's blocks timed back to back; < 1 means faster")
    print(f"total {time.perf_counter() - t0:.0f} s; {machine_line()}")


if __name__ == "__main__":
    main()
