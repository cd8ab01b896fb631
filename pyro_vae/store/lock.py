"""The run-directory lock: one writing process per run directory, released when that process ends."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import PyroVAEError

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as the ``with`` block runs.

    The kernel drops a ``flock`` when its holder dies, so a lock left by a killed
    process is free again with nothing to clean up; the file is removed on release.
    """

    def __init__(self, folder: os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd = None

    def __enter__(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise PyroVAEError(
                    f"run directory {str(self.path.parent)!r} is in use by another pyro-vae process (pid {holder}): "
                    "wait for it to finish, or choose another --out"
                ) from None
            # a releasing holder unlinks the file after we opened it: lock the file that is there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
