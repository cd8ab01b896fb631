"""``--nproc-per-node N``: N worker processes on this machine through torchrun's own launcher, their failure one line.

:func:`launch` is what ``torchrun --standalone --nproc-per-node N -m pyro_vae ARGS``
does (``torch.distributed.launcher.api.elastic_launch`` with a c10d
rendezvous on a free local port, no restarts), run inside the ``pyro-vae``
process so that its end is the CLI's: torchrun's own log lines and its
``ChildFailedError`` traceback are not shown.  The workers print their output
as under torchrun; a failure is printed by the one rank that reports it
(runtime/failures.py), which also writes torchrun's error file, so the
launcher knows the line is out and only chooses the exit status.  A worker
that stops without reporting (killed, or a bug's traceback) gets one line from
the launcher.  Ctrl-C reaches the workers once, through the launcher (they run
in their own sessions): they save and stop as one process does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import uuid
from typing import Callable, Dict, Iterator, Sequence

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, ProcessFailure, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .failures import EXIT_KEY

#: exit status of a failure that is bad input (the CLI's), and of any other failure
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
#: the loggers whose lines ("Sending process ... closing signal", "failed (exitcode: 2)") the CLI does not show
_TORCH_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


def launch(nproc: int, argv: Sequence[str], say: Callable[[str], None]) -> int:
    """Run ``python -m pyro_vae ARGV`` in ``nproc`` processes here; the exit status of the whole.

    ``say`` prints one line (the CLI's error line), used only when no worker reported its failure.
    """
    with tempfile.TemporaryDirectory(prefix="pyro-vae-launch-") as logs, _quiet_torch_logs(), _worker_env():
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"pyro-vae-{uuid.uuid4().hex}",
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                              logs_specs=DefaultLogsSpecs(log_dir=logs))
        try:
            elastic_launch(config, sys.executable)("-m", "pyro_vae", *argv)
        except ChildFailedError as e:
            return _exit_status(e.failures, nproc, say)
        except SignalException as e:  # the launcher's Ctrl-C or SIGTERM, passed on to the workers, who saved
            return 128 + int(e.sigval)
    return 0


def _exit_status(failures: Dict[int, ProcessFailure], nproc: int, say: Callable[[str], None]) -> int:
    """The status for failed workers: the reporting rank's (2 for bad input), else 1 and a line saying who stopped."""
    reported = sorted(r for r, f in failures.items() if isinstance(f.message, dict) and EXIT_KEY in
                      f.message.get("extraInfo", {}))
    if reported:
        # the status the reporting rank meant to end with: torchrun may have stopped it first
        code = failures[reported[0]].message["extraInfo"][EXIT_KEY]
        return code if code == EXIT_USER_ERROR or code > 128 else EXIT_FAILURE
    rank = min(failures, key=lambda r: (failures[r].timestamp, r))
    f = failures[rank]
    how = (f"was killed by signal {f.signal_name()}" if f.exitcode < 0
           else f"stopped with exit status {f.exitcode}")
    say(f"rank {rank} of {nproc} {how} without reporting an error: see its output above (a traceback is a bug in "
        "pyro_vae or in your program; no output: the system stopped it, e.g. for lack of memory)")
    return EXIT_FAILURE


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch's elastic agent logs each step of stopping the workers; the CLI says what happened in one line."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(_TORCH_LOGGERS)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _worker_env() -> Iterator[None]:
    """As torchrun does for several processes: one OpenMP thread each unless OMP_NUM_THREADS says otherwise."""
    unset = "OMP_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if unset:
            os.environ.pop("OMP_NUM_THREADS", None)
