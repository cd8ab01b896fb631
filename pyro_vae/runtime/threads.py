"""Torch's intra-op thread count for a run: the user's when they set one, else chosen from the work per step and the cores free.

Why not torch's default (one thread per physical core): every intra-op
parallel region ends at a barrier, so a step is as slow as its slowest
thread.  When another process holds a core, the thread that shares it waits
for its time slice at every barrier, and a small VAE's step (thousands of
tiny parallel regions a second) slows by an order of magnitude; one thread
per *free* core avoids that.  On an idle machine a second thread pays only
where a step's matrix products are large enough to split.

Precedence, first match wins:

1. an explicit count (``train.threads = N``, ``--threads N``);
2. the environment, ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``), which torch
   itself read at start-up;
3. a ``torch.set_num_threads`` call the caller made before ours;
4. ``"auto"``: one thread for small steps or a busy machine; else as many as
   the step's work pays for, up to the cores free (shared among the processes
   of a job on this machine, ``LOCAL_WORLD_SIZE``); a GPU run keeps torch's.

:func:`choose_threads` decides (pure, given a :class:`MachineLoad`), and
:func:`use_threads` applies a choice for a block and restores the caller's
count after it.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping, Optional, Union

import torch

from ..config.schema import MAX_THREADS, THREADS_RULE
from ..errors import PyroVAEError

__all__ = ["MachineLoad", "ThreadChoice", "ThreadSetting", "WORK_PER_THREAD", "check_setting",
           "choose_threads", "fixed_by_user", "machine_load", "parse_setting", "step_work", "use_threads"]

#: ``"auto"`` or a thread count
ThreadSetting = Union[int, Literal["auto"]]
#: multiply-adds per training step that one more thread needs before it pays: below it the parallel regions'
#: hand-offs cost more than the split saves (calibrated with benchmarks/bench_threads.py --sweep)
WORK_PER_THREAD = 1_000_000
#: a core counts as busy when other processes use this share of it: a thread sharing it stalls every barrier
BUSY_SHARE = 0.25
#: how long the cores' use is sampled: long enough to see a neighbour's time slices, short beside a run
SAMPLE_SECONDS = 0.1
#: the environment variables torch reads its default count from, in its order of precedence
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_state = {"ours": None, "user": False}  # the count use_threads set (None: none active), and whether a user chose it


@dataclass(frozen=True)
class MachineLoad:
    """What this process can run on: ``cores`` it may use (affinity, cgroup quota), the cores ``busy`` with
    other processes (measured over a short window, this process's own time taken out), the 1-minute load
    average, and whether ``busy`` was measured (False: read off the load average, which counts this process too)."""

    cores: int
    busy: float
    load: float
    measured: bool = True

    @property
    def busy_cores(self) -> int:
        """Cores another process uses at least :data:`BUSY_SHARE` of, at most all of them."""
        return min(self.cores, max(0, math.floor(self.busy + 1 - BUSY_SHARE)))

    @property
    def free_cores(self) -> int:
        return max(1, self.cores - self.busy_cores)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run uses, who chose it (``config``, ``env``, ``caller`` or ``auto``) and why."""

    threads: int
    source: Literal["config", "env", "caller", "auto"]
    reason: str

    def line(self) -> str:
        """What a run prints, once: ``threads: 1 (auto: 1 of 2 cores busy, load 1.3)``."""
        return f"threads: {self.threads} ({self.reason})"

    def record(self) -> dict:
        """The resolved count and its reason, as metrics.json records them."""
        return {"threads": self.threads, "threads_reason": self.reason}


def check_setting(value, key: str = "train.threads") -> ThreadSetting:
    """``value`` as a thread setting ("auto" or an integer in [1, MAX_THREADS]), else one line naming ``key``."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise PyroVAEError(f"{key}: must be {THREADS_RULE} (got {value!r})")
    return value


def parse_setting(text: str) -> Optional[ThreadSetting]:
    """A command line's ``--threads`` text as a setting ("auto" or a count); None when it is neither."""
    try:
        value = text.strip() if text.strip() == "auto" else int(text)
    except ValueError:
        return None
    return value if value == "auto" or 1 <= value <= MAX_THREADS else None


def step_work(num_params: int, rows: int, particles: int = 1) -> int:
    """Multiply-adds of one forward pass: about one per parameter per row and particle (an MLP's exactly)."""
    return max(0, int(num_params)) * max(1, int(rows)) * max(1, int(particles))


def choose_threads(setting: ThreadSetting = "auto", *, work: Optional[int], device: str = "cpu",
                   key: str = "train.threads", env: Optional[Mapping[str, str]] = None,
                   current: Optional[int] = None,
                   load: Union[MachineLoad, Callable[[], MachineLoad], None] = None) -> ThreadChoice:
    """The count a run uses under ``setting``, by the precedence in this module's docstring.

    ``work``: multiply-adds per step (:func:`step_work`); None for work that is batched large (evaluation).
    ``env``, ``current`` (torch's count now) and ``load`` default to this process's and machine's; ``load`` is
    measured only when the choice depends on it.
    """
    setting = check_setting(setting, key)
    env = os.environ if env is None else env
    current = torch.get_num_threads() if current is None else current
    if setting != "auto":
        return ThreadChoice(setting, "config", f"{key} = {setting}")
    for name in ENV_VARS:
        if _env_count(env, name) is not None:
            return ThreadChoice(current, "env", f"{name}={env[name].strip()} in the environment")
    if current != _expected_count():
        return ThreadChoice(current, "caller", "torch.set_num_threads before the run")
    if device != "cpu":
        return ThreadChoice(current, "auto", f"auto: the work runs on {device}; torch's count kept")
    if work is not None and work < 2 * WORK_PER_THREAD:
        return ThreadChoice(1, "auto", f"auto: a small step ({_millions(work)} multiply-adds), "
                                       "where more threads only add hand-offs")
    load = machine_load() if load is None else load() if callable(load) else load
    wanted = load.cores if work is None else max(1, work // WORK_PER_THREAD)
    # the processes of one job on this machine (torchrun's workers) share its free cores
    threads = max(1, min(load.free_cores // (_env_count(env, "LOCAL_WORLD_SIZE") or 1), wanted))
    said = f"load {load.load:.1f}" + ("" if load.measured else ", busy cores read off the load average")
    if load.busy_cores:
        return ThreadChoice(threads, "auto", f"auto: {load.busy_cores} of {load.cores} cores busy, {said}")
    return ThreadChoice(threads, "auto", f"auto: {load.free_cores} of {load.cores} cores free, {said}")


def _millions(work: int) -> str:
    return f"{work / 1e6:.1f} M" if work >= 100_000 else f"{work:,}"


def _env_count(env: Mapping[str, str], name: str) -> Optional[int]:
    """The positive count ``name`` holds in ``env``; None when unset or not one (torch ignores it then too)."""
    try:
        value = int(str(env.get(name, "")).strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def _expected_count() -> int:
    """torch's count if no caller changed it: the one we set, else torch's start-up default (physical cores)."""
    return _state["ours"] if _state["ours"] is not None else _physical_cores()


def _physical_cores() -> int:
    """The machine's physical cores, as torch counts them for its default (cpuinfo): distinct (package, core)."""
    seen = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        try:
            seen.add(((cpu / "topology/physical_package_id").read_text().strip(),
                      (cpu / "topology/core_id").read_text().strip()))
        except OSError:
            continue
    return len(seen) or os.cpu_count() or 1


def fixed_by_user() -> bool:
    """Whether the count in force was set by the user (an explicit count, the environment or their own call),
    so that no part of the library may lower it for a stretch of small steps."""
    if _state["ours"] is not None:
        return _state["user"] or torch.get_num_threads() != _state["ours"]
    if any(_env_count(os.environ, name) is not None for name in ENV_VARS):
        return True
    return torch.get_num_threads() != _physical_cores()


@contextmanager
def use_threads(choice: ThreadChoice) -> Iterator[ThreadChoice]:
    """torch's intra-op count set to ``choice`` for the block; the caller's count (and ours before) restored after."""
    old, saved = torch.get_num_threads(), dict(_state)
    if choice.threads != old:
        torch.set_num_threads(choice.threads)
    _state.update(ours=choice.threads, user=choice.source != "auto")
    try:
        yield choice
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
        _state.update(saved)


def machine_load(window: float = SAMPLE_SECONDS) -> MachineLoad:
    """This machine's load now: the cores this process may use, and how many other processes keep busy."""
    cores = _usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    busy = _sampled_busy(window)
    if busy is None:  # no /proc/stat: the load average, which counts this process's recent running too
        return MachineLoad(cores, min(float(cores), load), load, measured=False)
    return MachineLoad(cores, busy, load)


def _usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, and a cgroup's CPU quota when one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _sampled_busy(window: float) -> Optional[float]:
    """Cores used by other processes over ``window`` seconds (the usable CPUs' busy time less this process's own
    CPU time), or None where /proc/stat cannot be read."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    before, own0, t0 = _cpu_times(allowed), time.process_time(), time.monotonic()
    if before is None:
        return None
    time.sleep(window)
    after, own1, t1 = _cpu_times(allowed), time.process_time(), time.monotonic()
    if after is None or after[1] <= before[1]:
        return None
    busy_share = (after[0] - before[0]) / (after[1] - before[1])  # of every usable CPU's time
    cpus = len(allowed) if allowed else os.cpu_count() or 1
    others = busy_share * cpus - (own1 - own0) / max(t1 - t0, 1e-9)
    return max(0.0, others)


def _cpu_times(allowed) -> Optional[tuple]:
    """(busy ticks, all ticks) summed over the CPUs in ``allowed`` (all when None), from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None
