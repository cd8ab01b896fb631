"""Run-directory files: the one atomic, fsyncing writer every file of a run goes through."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import PyroVAEError

#: prefix of the temporary files a writer leaves behind only when it is killed mid-write
TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_atomic(path: os.PathLike, write: Callable, what: str = "file", *, to_path: bool = False) -> None:
    """Write ``path`` through ``write`` into a temporary file, fsync it and rename it over ``path``.

    ``write`` gets the open binary file, or with ``to_path=True`` the temporary
    file's path (for writers such as netCDF's that only take a name).  Readers see
    the old file or the new one, never half; a crash or a full disk mid-write
    leaves the old one intact.  OS errors become one line naming the file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as e:
        raise write_error(path, e, what) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make runs unreadable to others
        if to_path:
            os.close(fd)
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # torch's zip writer reports a full disk as "unexpected pos ...", not as an OSError:
        # look at the disk before the half-written file is removed and frees it again
        full = isinstance(e, RuntimeError) and _out_of_space(path.parent)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if full:
            raise write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), what) from None
        if isinstance(e, OSError):
            raise write_error(path, e, what) from None
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: os.PathLike, text: str) -> None:
    """:func:`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_error(path: Path, err: OSError, what: str = "file") -> PyroVAEError:
    """The one-line message for an OS error while writing ``path``."""
    keep = f"the previous {what} is intact; " if what != "file" and path.exists() else ""
    fix = "free disk space" if err.errno == errno.ENOSPC else "free disk space or fix the folder's permissions"
    return PyroVAEError(f"cannot write {what} {str(path)!r} ({err.strerror or err}): {keep}{fix}")


def _out_of_space(folder: Path, reserve: int = 1 << 20) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < reserve


def _fsync_dir(folder: Path) -> None:
    # the rename is durable only once the folder's entry is on disk too
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temporaries(folder: os.PathLike) -> list:
    """Remove temporary files a killed writer left behind; return their names."""
    removed = []
    for p in Path(folder).glob(TMP_PREFIX + "*"):
        try:
            p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed
