"""Streaming evaluation: per-point running statistics over chunks of draws, and the chunk plan that bounds their memory.

An evaluation draws K particles for each of n points, too many to hold at
once, so it takes them in chunks of (particles x points) under an element
``budget`` (:func:`plan_chunks`) and keeps only running sums per point
(:class:`Moments`, :class:`LogMeanExp`) and the largest few log-weights, the
tail PSIS fits (:class:`Tail`, about 3 sqrt K of them): memory does not grow
with K.  Sums are taken in float64 and shifted by the first chunk's mean, so
the variance of draws far from zero keeps its digits.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from ..infer.psis import tail_draws, pareto_khat

# elements of the widest per-chunk tensor (particles x points x widest layer)
DEFAULT_BUDGET = 2**22

__all__ = ["DEFAULT_BUDGET", "Pace", "plan_chunks", "plan_draws", "chunks", "HeapTrimmer", "Moments", "LogMeanExp",
           "tail_size", "Tail", "importance_summary"]


# -- pace: how long an evaluation will take, and how far it is ---------------------------------------

#: an evaluation estimated to take longer than this (seconds) says so up front, and reports as it goes
LONG_EVALUATION_S = 30.0
#: the least time between two progress lines (seconds)
PROGRESS_EVERY_S = 30.0
#: a first chunk slower than this (seconds) gives the estimate on its own
FIRST_CHUNK_S = 10.0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Pace:
    """An evaluation's draws counted as they are made: a long one's estimated duration (one line through ``log``),
    then, where no progress bar shows it, a line every :data:`PROGRESS_EVERY_S`.

    The estimate is read off the chunks after the first (which also pays for tracing and allocation), unless the
    first alone took longer than :data:`FIRST_CHUNK_S`: then it is all there is, and the caller hears at once.
    """

    def __init__(self, total: int, what: str, log: Optional[Callable[[str], None]], bar=None):
        self.total, self.what, self.log, self.bar = max(int(total), 1), what, log, bar
        self.done, self.t0, self.told, self.long = 0, time.perf_counter(), False, False
        self.first = self.last = None  # (draws, time) after the first chunk; the time of the last line

    def add(self, draws: int) -> None:
        self.done += int(draws)
        if self.bar is not None:
            self.bar.update(int(draws))
        if self.log is None or self.done >= self.total:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (self.done, now)
            if now - self.t0 < FIRST_CHUNK_S:
                return
            rate = self.done / (now - self.t0)
        else:
            rate = (self.done - self.first[0]) / max(now - self.first[1], 1e-9)
        left = (self.total - self.done) / rate
        if not self.told:
            self.told, self.last = True, now
            self.long = now - self.t0 + left > LONG_EVALUATION_S
            if self.long:
                self.log(f"{self.what}: about {_duration(now - self.t0 + left)} in all ({self.total:,} draws)")
        elif self.long and self.bar is None and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.log(f"{self.what}: {100 * self.done / self.total:.0f}% done, about {_duration(left)} left")


# -- chunk plans ------------------------------------------------------------------------------------


def plan_chunks(num_points: int, num_samples: int, width: int, budget: int = DEFAULT_BUDGET) -> Tuple[int, int]:
    """(particles per chunk, points per chunk) with particles x points x width <= budget where possible.

    Particles are chunked first (all K draws of a point before the next
    point), so K = 5000 on any number of points needs only ``budget`` elements
    per tensor; one particle of one point is the floor.
    """
    k_chunk = max(1, min(num_samples, budget // max(width, 1)))
    b_chunk = max(1, min(num_points, budget // (max(width, 1) * k_chunk)))
    return k_chunk, b_chunk


def plan_draws(n: int, k: int, width: int, d: int, broadcasts: bool, budget: int) -> Tuple[int, int]:
    """(particles, points) per chunk: :func:`plan_chunks`, or, for draws traced one at a time, as many points
    as one draw's trace may hold and as many draws as their stacked per-point terms (about 2 d + 4 numbers) allow."""
    if broadcasts:
        return plan_chunks(n, k, width, budget)
    b_chunk = plan_chunks(n, 1, width, budget)[1]
    return max(1, min(k, budget // (b_chunk * (2 * d + 4)))), b_chunk


class HeapTrimmer:
    """Hand freed heap memory back to the OS every few chunks (glibc only; a no-op elsewhere).

    Each chunk allocates and frees tensors of ~budget elements; with several
    threads' arenas glibc's heaps fragment and the resident size grows far
    beyond what is live, which ``malloc_trim`` gives back.
    """

    EVERY = 16  # chunks between trims

    def __init__(self):
        self.count = 0
        self.trim = _malloc_trim()

    def tick(self):
        self.count += 1
        if self.trim is not None and self.count % self.EVERY == 0:
            self.trim(0)

    def release(self):
        if self.trim is not None:
            self.trim(0)


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of ``size`` each, the last one shorter."""
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# -- streaming per-point statistics -------------------------------------------------------------


class Moments:
    """Running mean and variance per point of (k, b) draws, shifted for float64 accuracy."""

    def __init__(self):
        self.count = 0
        self.shift = self.s1 = self.s2 = None

    def add(self, v: torch.Tensor):
        v = v.double()
        if self.shift is None:
            self.shift = v.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
        d = v - self.shift
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        self.count += v.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    def var_of_mean(self) -> torch.Tensor:
        """Monte Carlo variance of the mean (NaN with one draw: it cannot be estimated)."""
        if self.count < 2:
            return torch.full_like(self.shift, float("nan"))
        var = (self.s2 - self.s1**2 / self.count) / (self.count - 1)
        return var.clamp_min(0.0) / self.count


class LogMeanExp:
    """Running log-sum-exp of the weights and of their squares, per point."""

    def __init__(self, keep: bool = False):
        self.count = 0
        self.lse1 = self.lse2 = self.top = None
        self.kept = [] if keep else None

    def add(self, log_w: torch.Tensor):
        log_w = log_w.double()
        l1, l2, top = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), log_w.max(0).values
        if self.lse1 is None:
            self.lse1, self.lse2, self.top = l1, l2, top
        else:
            self.lse1 = torch.logaddexp(self.lse1, l1)
            self.lse2 = torch.logaddexp(self.lse2, l2)
            self.top = torch.maximum(self.top, top)
        self.count += log_w.shape[0]
        if self.kept is not None:
            self.kept.append(log_w.T.cpu())

    def result(self):
        """(log mean w, delta-method variance of it, ESS, largest normalized weight) per point."""
        k = self.count
        est = self.lse1 - math.log(k)
        sum_w2 = torch.exp(self.lse2 - 2 * self.lse1)  # sum of squared normalized weights
        # Var[log mean w] ~= Var[w] / (K E[w]^2), estimated by (K sum w_norm^2 - 1) / K
        if k > 1:
            var = ((k * sum_w2 - 1.0) / k).clamp_min(0.0)
        else:
            var = torch.full_like(est, float("nan"))
        return est, var, 1.0 / sum_w2, torch.exp(self.top - self.lse1)


def tail_size(num_draws: int) -> int:
    """How many of the largest log-weights PSIS looks at: its M tail draws and the cutoff below them.

    ArviZ's psislw (r_eff = 1) fits the M largest weights above the (M+1)-th
    largest (M = tail_draws(K): ceil(min(K/5, 3 sqrt K)) on ArviZ 0.x, one fewer
    at most on 1.x); nothing else enters k-hat.
    """
    return min(num_draws, tail_draws(num_draws) + 1)


class Tail:
    """The largest log-weights of each point, in a buffer of fixed size (PSIS needs no others)."""

    def __init__(self, num_draws: int):
        self.num_draws = num_draws
        self.size = tail_size(num_draws)
        self.top = None  # (size, b), largest first

    def add(self, log_w: torch.Tensor):
        t = log_w.double() if self.top is None else torch.cat([self.top, log_w.double()], 0)
        self.top = t.topk(min(self.size, t.shape[0]), dim=0).values

    def khat(self, ess: torch.Tensor) -> torch.Tensor:
        """PSIS k-hat per point, exactly as of all K weights: NaN for K = 1, -inf where all K are equal."""
        k_total, b = self.num_draws, self.top.shape[1]
        if k_total < 2:
            return torch.full((b,), float("nan"), dtype=torch.float64)
        top = self.top.T.cpu().numpy()
        out = np.empty(b)
        rows = max(1, 2**20 // k_total)  # bounded scratch: rows x K at a time
        for i in range(0, b, rows):
            t = top[i : i + rows]
            # the draws below the tail only fix the cutoff: copies of the cutoff give the same fit
            full = np.repeat(t[:, -1:], k_total, axis=1)
            full[:, : t.shape[1]] = t
            out[i : i + rows] = pareto_khat(full)
        k = torch.as_tensor(out, dtype=torch.float64)
        # equal weights (q is the posterior up to a constant) have no tail to fit: bounded, k = -inf
        return torch.where(ess.cpu().double() >= k_total * (1 - 1e-9), torch.tensor(-math.inf, dtype=torch.float64), k)


def importance_summary(log_w: torch.Tensor):
    """Per point, from (K, b) log-weights: log mean w, the delta-method variance of it, and the ESS.

    The variance is NaN for K = 1, where it cannot be estimated.
    """
    acc = LogMeanExp()
    acc.add(log_w)
    est, var, ess, _ = acc.result()
    return est, var, ess
