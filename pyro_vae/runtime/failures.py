"""Which process of a multi-process run reports its failure: the rank that failed first, in one line.

Under torchrun every rank runs the same command, so a failure tends to show on
several ranks at once: the same bad input on each, or one rank's error and the
others' lost collectives that follow from it.  One line is printed for the
run, by one rank:

- a failure the ranks agree on, met at the same step in the same words (an
  interrupt, the non-finite policy's stop), is reported by rank 0;
- a set-up check that failed on some ranks (:func:`distributed.agree`) is
  reported by the lowest rank that failed it; the others raise
  :class:`~pyro_vae.runtime.distributed.PeerFailure` and stay quiet;
- any other failure (bad input that each rank meets on its own, a rank's own
  error, a collective broken by a rank that stopped) is reported by the rank
  that claims it first in torchrun's store, the agent's TCP store, which
  outlives every worker.  A rank that fails claims before it leaves the
  process group (:func:`claim_on_error`), so a rank whose collective then
  breaks finds the claim and stays quiet.

Started without torchrun's agent (the same environment set by hand), no store
outlives the ranks, and each rank whose failure is its own reports it.

The rank that reports also writes torchrun's error file
(``TORCHELASTIC_ERROR_FILE``), so torchrun's summary, and ``pyro-vae train
--nproc-per-node``, name the message instead of "error_file: <N/A>".
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from typing import Iterator, Optional, Tuple

import torch

from ..errors import NonFiniteError, TrainingInterrupted
from .distributed import PeerFailure, env_rank, env_world_size

#: the failures every rank meets together, in the same words: rank 0 reports them
TOGETHER = (NonFiniteError, TrainingInterrupted, KeyboardInterrupt)
#: how long a rank waits for torchrun's store before it reports its failure itself
STORE_SECONDS = 5.0

#: where the error file keeps the reporting process's exit status
EXIT_KEY = "pyro_vae_exit_status"
#: the last failure asked about and the answer: the same exception is asked about again on its way up
_decided: Optional[Tuple[BaseException, bool]] = None


def several_processes() -> bool:
    """This process is one of several that torchrun (or the same environment) started."""
    return env_world_size() > 1


def reports(error: BaseException) -> bool:
    """Whether this process prints ``error``: always in one process, else as the module docstring says.

    Asked again about the same exception (on its way up to the CLI), it gives the same answer.
    """
    global _decided
    if not several_processes():
        return True
    if _decided is None or _decided[0] is not error:
        rank = env_rank()
        if isinstance(error, PeerFailure):
            answer = False
        elif isinstance(error, TOGETHER):
            answer = rank == 0
        else:
            answer = _claim(rank)
        _decided = (error, answer)
    return _decided[1]


def _claim(rank: int) -> bool:
    """True when this rank is the first to claim the run's failure (or the store cannot say: then report)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return True  # started without torchrun's agent: no store outlives the ranks, each reports
    key = "pyro_vae/failed/{}/{}".format(os.environ.get("TORCHELASTIC_RUN_ID", ""),
                                         os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    try:
        store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                           is_master=False, timeout=datetime.timedelta(seconds=STORE_SECONDS),
                                           wait_for_workers=False)
        return store.compare_set(key, "", str(rank)) == str(rank).encode()
    except (KeyError, ValueError, RuntimeError, OSError):
        return True  # better a second line than none


@contextlib.contextmanager
def claim_on_error() -> Iterator[None]:
    """Around a multi-process job's work: a failure inside is claimed (:func:`reports`) before it leaves,
    that is before the caller leaves the process group and the other ranks' collectives break."""
    try:
        yield
    except BaseException as e:
        reports(e)
        raise


def write_error_file(line: str, exit_status: int) -> None:
    """torchrun's error file for this worker (``TORCHELASTIC_ERROR_FILE``): the one line, in the JSON layout that
    torch's own ``@record`` writes (without a traceback: the line is the whole report), and the exit status
    the process is about to end with (torchrun may stop it first, when another rank exits before it)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return  # torchrun refuses to overwrite it either; the first record stands
    try:
        with open(path, "w") as f:
            json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time())),
                                                                  EXIT_KEY: exit_status}}}, f)
    except OSError:
        pass  # the line is on stderr already; the file only repeats it to torchrun's summary
