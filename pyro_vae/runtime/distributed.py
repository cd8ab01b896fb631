"""Data-parallel processes: torchrun's process group, and the few collectives training and evaluation need.

Started by ``torchrun`` (or anything that sets the same environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), :func:`init_from_env`
joins the process group: gloo on CPU, nccl on CUDA with the device chosen by
``LOCAL_RANK``.  Without that environment nothing happens and :func:`current`
is the one-process :data:`SINGLE`, whose every collective is a no-op.

What each process does.  Every rank draws the same permutation of the data
each epoch (the data stream is seeded identically everywhere) and takes its
contiguous slice of each global batch of ``train.batch_size`` rows.  After the
backward pass (or the replay of a recorded step) one ``all_reduce`` of a single
flat buffer carries every gradient, the loss, the non-finite flag and the stop
flag: gradients and loss are summed with weight (local rows / global rows) and
the loss of each rank is scaled by N / (local rows), so the update equals one
process's on the whole global batch and the minibatch ELBO stays an unbiased
full-data estimate.  Ranks therefore agree on every decision (skip, rollback,
raise, stop) without another message.

Random streams.  Rank 0 keeps the run's seed; rank r > 0 seeds the model's
stream (the latent draws) from :func:`rank_seed`.  So:

- exactly equal to one process with the same global batch and data order (to
  float tolerance): the data order, and every deterministic quantity (the whole
  loss history and the parameters of a model whose objective draws nothing,
  e.g. a point-mass ``guide = "delta"`` without dynamic binarization);
- equal only in distribution: the latent draws of a stochastic guide (rank r's
  rows get other noise than the same rows in one process);
- bit-identical between two runs with the same world size, always.

Evaluation shards the points: rank r takes a contiguous block and evaluates
it with seed :func:`rank_seed` ``(seed, r)``; the per-point results are gathered
to every rank in point order.  The result is the one-process evaluation of each
block with its own seed, concatenated: a point-mass guide's numbers are
identical to one process's, a stochastic guide's are another Monte Carlo draw.

Used directly (``Trainer`` under torchrun rather than ``pyro-vae train``), call
:func:`init_from_env` first and give every rank the same ``run_dir``: saving a
checkpoint is a collective (rank 0 writes, the others wait), so a rank without
one would leave the others waiting.

A rank that dies or hangs makes the others fail after at most
``PYRO_VAE_DIST_TIMEOUT`` seconds (default 300), never a hang; which rank
prints the run's one line is runtime/failures.py's choice.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..errors import PyroVAEError

#: seconds a collective (and the rendezvous) waits for the other ranks
TIMEOUT_ENV = "PYRO_VAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


class PeerFailure(PyroVAEError):
    """Another rank failed the same check first and reports it; this rank's failure only follows from it.

    Its message names that rank's error, for a caller in Python; the CLI prints nothing for it
    (runtime/failures.py), so a run's failure is one line.
    """


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0


SINGLE = ProcessGroup()
_group: ProcessGroup = SINGLE


def current() -> ProcessGroup:
    """The process group this process joined (:data:`SINGLE` when none is running)."""
    if _group.active and not torch.distributed.is_initialized():
        return SINGLE  # destroyed since
    return _group


def _env_int(name: str, default: Optional[int] = None) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PyroVAEError(f"environment variable {name}={value!r} is not an integer: it is set by torchrun; "
                           "start the run with torchrun, or unset it") from None


def env_world_size() -> int:
    """The number of processes torchrun's environment announces (1 without one, or when it is unreadable)."""
    try:
        return max(1, _env_int("WORLD_SIZE", 1))
    except PyroVAEError:
        return 1  # init_from_env names the bad value


def env_rank() -> int:
    """This process's rank in torchrun's environment (0 without one, or when it is unreadable)."""
    try:
        return _env_int("RANK", 0)
    except PyroVAEError:
        return 0


def timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise PyroVAEError(f"{TIMEOUT_ENV}={raw!r}: give a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def init_from_env(device: str = "auto") -> ProcessGroup:
    """Join torchrun's process group when its environment says there are several processes; idempotent.

    ``device`` is ``train.device``: CUDA (``"cuda"``, or ``"auto"`` with a GPU) uses nccl on
    ``cuda:LOCAL_RANK``, the CPU gloo.  A rendezvous that cannot be reached is one line.
    """
    global _group
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return current()
    if torch.distributed.is_initialized():
        _group = ProcessGroup(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                              _env_int("LOCAL_RANK", 0))
        return _group
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    if rank is None or not 0 <= rank < world:
        raise PyroVAEError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}: start the run with torchrun, "
                           "which sets both")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise PyroVAEError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                               "run at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timeout(),
                                             **({"device_id": torch.device("cuda", local)} if cuda else {}))
    except (RuntimeError, ValueError, OSError) as e:
        raise PyroVAEError(f"rank {rank} of {world} cannot join the process group at {where} ({_first_line(e)}): "
                           "check --rdzv-endpoint / MASTER_ADDR and MASTER_PORT, that every node started, and "
                           f"the firewall; {TIMEOUT_ENV} sets how long to wait") from None
    _group = ProcessGroup(rank, world, local)
    return _group


def shutdown() -> None:
    """Leave the process group (every rank, at the end of a run)."""
    global _group
    if _group.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _group = SINGLE


def _first_line(e: BaseException) -> str:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def _lost(e: BaseException, what: str) -> PyroVAEError:
    g = current()
    return PyroVAEError(f"rank {g.rank} of {g.world_size}: {what} failed ({_first_line(e)}): another process of "
                        f"the run stopped or cannot be reached; see its own error (the wait is capped by {TIMEOUT_ENV})")


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s model stream (and evaluation shard): ``seed`` itself on rank 0.

    ``step``: a resume under another world size restarts the new ranks' streams at that step.
    """
    if rank == 0 and step == 0:
        return seed
    digest = hashlib.sha256(f"pyro_vae.rank:{seed}:{rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # in [0, 2**63), like every seed


def check_batch_size(batch_size: int, group: Optional[ProcessGroup] = None) -> None:
    g = group or current()
    if batch_size % g.world_size:
        raise PyroVAEError(f"train.batch_size = {batch_size} is not divisible by the {g.world_size} processes: "
                           f"the global batch is split evenly across ranks; use a multiple of {g.world_size}")


def check_batches(batch_size: int, group_rows: Sequence[int], group: Optional[ProcessGroup] = None) -> None:
    """Every global batch must split across the ranks: ``batch_size`` divisible, no last batch with fewer rows than ranks."""
    g = group or current()
    if not g.active:
        return
    check_batch_size(batch_size, g)
    short = [r % batch_size for r in group_rows if 0 < r % batch_size < g.world_size]
    if short:
        raise PyroVAEError(f"the epoch's last batch has {short[0]} rows, fewer than the {g.world_size} processes: "
                           f"change train.batch_size so that the rows ({sum(group_rows)}) leave a last batch "
                           f"of at least {g.world_size}, or none")


def restore_rank_rng(rng: dict, seed: int, step: int, group: Optional[ProcessGroup] = None) -> None:
    """After a checkpoint's streams are loaded (rank 0's): rank r takes its own saved stream.

    A checkpoint saved under the same world size holds every rank's stream, so
    the resume is exact; under another world size, rank r > 0 starts a new
    stream at this step (:func:`rank_seed`), rank 0 continues the saved one.
    """
    g = group or current()
    if g.rank == 0:
        return
    saved = rng.get("ranks") or []
    if len(saved) == g.world_size:
        torch.set_rng_state(saved[g.rank])
    else:
        torch.manual_seed(rank_seed(seed, g.rank, step))


def shard(n: int, group: Optional[ProcessGroup] = None) -> slice:
    """Rank's contiguous block of ``n`` items (the first ``n % world`` ranks hold one more)."""
    g = group or current()
    base, extra = divmod(n, g.world_size)
    start = g.rank * base + min(g.rank, extra)
    return slice(start, start + base + (g.rank < extra))


def agree(fingerprint: str, error: Optional[BaseException] = None, what: str = "set-up") -> None:
    """Every rank checks the others: same ``fingerprint`` (the resolved config and data shape), no failure.

    Called after each rank's checks and before any file is written, so a rank
    whose config, data or checks differ stops every rank with one line.
    """
    g = current()
    if not g.active:
        if error is not None:
            raise error
        return
    mine = (fingerprint, None if error is None else str(error))
    everyone: List = [None] * g.world_size
    try:
        torch.distributed.all_gather_object(everyone, mine)
    except (RuntimeError, ValueError) as e:
        raise _lost(e, f"the {what} check") from None
    failed = [(r, msg) for r, (_, msg) in enumerate(everyone) if msg is not None]
    if failed:
        r, msg = failed[0]
        if error is not None and r == g.rank:
            raise error  # the lowest rank that failed reports its own error; the others follow it quietly
        raise PeerFailure(f"rank {r} of {g.world_size} failed its {what}: {msg}")
    differ = [r for r, (fp, _) in enumerate(everyone) if fp != everyone[0][0]]
    if differ:
        message = (f"rank {differ[0]} of {g.world_size} has another config or data than rank 0 (resolved config "
                   "and data shape differ): give every process the same config, --set overrides and data files")
        raise PyroVAEError(message) if g.is_main else PeerFailure(message)


def fingerprint(*parts) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def barrier() -> None:
    if current().active:
        try:
            torch.distributed.barrier()
        except RuntimeError as e:
            raise _lost(e, "a barrier") from None


def all_gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    g = current()
    if not g.active:
        return [obj]
    out: List = [None] * g.world_size
    try:
        torch.distributed.all_gather_object(out, obj)
    except RuntimeError as e:
        raise _lost(e, "gathering results") from None
    return out


class GradientSync:
    """One step's all-reduce: gradients, loss, the non-finite flag and the stop flag in one flat buffer.

    The trainer sets :attr:`share` (this rank's rows / the global batch's rows)
    and :attr:`stop` (a signal arrived here) before each step; after it,
    :attr:`stop_agreed` says whether any rank asked to stop.  Inactive (one
    process), :meth:`reduce` is never called.
    """

    def __init__(self, group: ProcessGroup = SINGLE):
        self.group = group
        self.share = 1.0
        self.stop = False
        self.stop_agreed = False

    @property
    def active(self) -> bool:
        return self.group.active

    def reduce(self, loss: Optional[torch.Tensor], params: Sequence[torch.Tensor], bad) -> tuple:
        """Average this rank's ``.grad`` of ``params`` with the other ranks'; returns (loss, bad) for all of them.

        ``loss`` None or ``bad`` set: this rank's step failed; its gradients count
        as zero and the flag makes every rank skip the update together.
        """
        bad = loss is None or bool(bad)
        # a NaN loss anywhere makes the sum NaN: the trainer then names the loss, not a gradient
        local_loss = float("nan") if loss is None else float(loss.detach())
        ref = params[0]
        parts, present = [], []
        for p in params:
            g = p.grad
            present.append(g is not None)
            parts.append((g if g is not None else torch.zeros_like(p)).reshape(-1))
        head = torch.tensor([local_loss, float(bad), float(self.stop),
                             *map(float, present)], device=ref.device, dtype=ref.dtype)
        flat = torch.cat([t.to(ref.dtype) for t in parts] + [head])
        flat[: flat.numel() - head.numel()] *= self.share
        flat[-head.numel()] *= self.share  # the loss too; the flags and the presence are counts
        try:
            torch.distributed.all_reduce(flat)
        except RuntimeError as e:
            raise _lost(e, "the gradient all-reduce") from None
        tail = flat[-head.numel():].tolist()
        total_loss, n_bad, n_stop, counts = tail[0], tail[1], tail[2], tail[3:]
        self.stop_agreed = n_stop > 0
        offset = 0
        for p, count in zip(params, counts):
            size = p.numel()
            p.grad = flat[offset:offset + size].view_as(p).to(p.dtype) if count > 0 else None
            offset += size
        return torch.tensor(total_loss, device=ref.device), torch.tensor(n_bad > 0, device=ref.device)

    def stop_signal(self, local: Optional[int]) -> Optional[int]:
        """The signal this rank stops for: its own, else SIGTERM when another rank received one."""
        if local is not None:
            return local
        return signal.SIGTERM if self.stop_agreed else None
