"""Synthetic sequence sources that need no download: a linear-Gaussian state space (its parameters saved as the truth), a noisy pendulum, and a polyphonic stand-in for the JSB chorales.

Each draws ``data.num_points`` sequences of ``data.sequence_length`` steps
from a fixed function of ``data.split_seed``; with ``data.min_length`` the
lengths are uniform in [min_length, sequence_length] and the rest is padding.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .arrays import Dataset
from .sequences import sequence_dataset
from .sizes import check_fits

#: the notes of a piano roll, as Pyro's polyphonic music data (and so the JSB chorales) hold them
PIANO_NOTES = 88


def _lengths(cfg, g: torch.Generator) -> Optional[torch.Tensor]:
    if cfg.min_length is None:
        return None
    return torch.randint(cfg.min_length, cfg.sequence_length + 1, (cfg.num_points,), generator=g)


def _check_size(cfg, width: int) -> None:
    check_fits(4 * cfg.num_points * cfg.sequence_length * (width + cfg.synthetic_latent_dim),
               f"the synthetic sequences ({cfg.num_points} x {cfg.sequence_length} steps x {width} values)",
               "lower data.num_points or data.sequence_length", memory=None)


def linear_gaussian_truth(cfg) -> dict:
    """The state space's parameters, a fixed function of the seed: z_t = A z_{t-1} + b + N(0, Q) from z_0 = (2, 0,
    ...), so z_1 ~ N(m1 = A z_0 + b, P1 = Q) (a declared linear chain's own form), and x_t = C z_t + d + N(0, R);
    A a rotation scaled to 0.95 (a stable, oscillating chain)."""
    g = torch.Generator().manual_seed(cfg.split_seed + 24680)
    k, d = cfg.synthetic_latent_dim, cfg.synthetic_dim
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=g))
    angle = 0.3
    rot = torch.eye(k)
    for i in range(0, k - 1, 2):
        rot[i:i + 2, i:i + 2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    a = 0.95 * q @ rot @ q.T
    z0 = torch.zeros(k)
    z0[0] = 2.0
    return {"A": a, "b": torch.zeros(k), "Q": 0.3 ** 2 * torch.eye(k), "C": torch.randn(d, k, generator=g),
            "d": torch.zeros(d), "R": cfg.synthetic_noise ** 2 * torch.eye(d), "m1": a @ z0,
            "P1": 0.3 ** 2 * torch.eye(k), "z0": z0}


def simulate_linear_gaussian(truth: dict, n: int, steps: int, g: torch.Generator):
    """(z, x): (n, steps, k) and (n, steps, d) drawn from the state space ``truth``."""
    k = truth["A"].shape[0]
    lq, lr, lp = (torch.linalg.cholesky(truth[m]) for m in ("Q", "R", "P1"))
    z = truth["m1"] + torch.randn(n, k, generator=g) @ lp.T
    zs = [z]
    for _ in range(steps - 1):
        z = z @ truth["A"].T + truth["b"] + torch.randn(n, k, generator=g) @ lq.T
        zs.append(z)
    z = torch.stack(zs, dim=1)
    x = z @ truth["C"].T + truth["d"] + torch.randn(n, steps, truth["C"].shape[0], generator=g) @ lr.T
    return z, x


def linear_gaussian(cfg, discrete: bool) -> Dataset:
    """data.source = "synthetic_sequences": a linear-Gaussian state space of known parameters (saved as the
    truth; diagnostics/kalman.py gives its exact log-likelihood and smoothed posterior)."""
    _check_size(cfg, cfg.synthetic_dim)
    truth = linear_gaussian_truth(cfg)
    g = torch.Generator().manual_seed(cfg.split_seed)
    _, x = simulate_linear_gaussian(truth, cfg.num_points, cfg.sequence_length, g)
    return sequence_dataset("synthetic_sequences", x, _lengths(cfg, g), cfg, truth=truth)


def pendulum(cfg, discrete: bool) -> Dataset:
    """data.source = "synthetic_pendulum": a damped pendulum pushed by noise, its bob's (x, y) seen in noise.

    theta'' = -(g/l) sin theta - c theta' (g/l = 9.81, c = 0.1), Euler steps of 0.05 s with torque noise of
    sd 0.5 per sqrt(s); the observations are (sin theta, -cos theta) + N(0, synthetic_noise^2): 2 values a step."""
    _check_size(cfg, 2)
    g = torch.Generator().manual_seed(cfg.split_seed)
    n, dt = cfg.num_points, 0.05
    theta = (torch.rand(n, generator=g) * 2 - 1) * 0.75 * math.pi
    omega = torch.randn(n, generator=g)
    xs = []
    for _ in range(cfg.sequence_length):
        xs.append(torch.stack([torch.sin(theta), -torch.cos(theta)], dim=-1))
        theta, omega = (theta + dt * omega,
                        omega + dt * (-9.81 * torch.sin(theta) - 0.1 * omega) + 0.5 * math.sqrt(dt) * torch.randn(n, generator=g))
    x = torch.stack(xs, dim=1)
    x = x + cfg.synthetic_noise * torch.randn(x.shape, generator=g)
    return sequence_dataset("synthetic_pendulum", x, _lengths(cfg, g), cfg,
                            truth={"dt": dt, "g_over_l": 9.81, "damping": 0.1, "noise": cfg.synthetic_noise})


def chorales(cfg, discrete: bool) -> Dataset:
    """data.source = "synthetic_chorales": a stand-in for the JSB chorales with their shape (88 binary notes a
    step): a sticky Markov chain over 12 four-note chords (a root in the tenor range, a major or minor triad and
    an octave), each note held with probability 0.95 and any other sounding with probability 0.002."""
    _check_size(cfg, PIANO_NOTES)
    g = torch.Generator().manual_seed(cfg.split_seed)
    chords = torch.zeros(12, PIANO_NOTES)
    for c in range(12):
        root = 27 + (c * 7) % 12 + 12  # a circle of fifths above A1 (MIDI 21 is note 0)
        third = 3 if c % 3 == 2 else 4
        for step in (0, third, 7, 12):
            chords[c, root + step] = 1.0
    n, steps = cfg.num_points, cfg.sequence_length
    state = torch.randint(0, 12, (n,), generator=g)
    rolls = []
    for _ in range(steps):
        on = chords[state]
        p = on * 0.95 + (1 - on) * 0.002
        rolls.append(torch.bernoulli(p, generator=g))
        move = torch.rand(n, generator=g) < 0.3  # a chord lasts about three steps; it moves a fifth up or down
        shift = torch.where(torch.rand(n, generator=g) < 0.5, 1, 11)
        state = torch.where(move, (state + shift) % 12, state)
    x = torch.stack(rolls, dim=1)
    return sequence_dataset("synthetic_chorales", x, _lengths(cfg, g), cfg)
