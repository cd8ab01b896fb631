"""Input files: the checks every data or config file passes before a byte of it is read.

A path the user names is ``stat``-ed first, and every way that can fail
(missing, a folder, a name too long for the file system, no permission, a
FIFO, socket or device such as ``/dev/zero``) becomes one line naming the path
and the fix.  Only regular files are opened: a FIFO would block the process
and a character device would be read forever.  Text is decoded here too, so
a file that is not UTF-8 fails in one line instead of deep in a parser.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Optional

from ..errors import PyroVAEError


@dataclass(frozen=True)
class FileStamp:
    """What identifies a file's contents cheaply: size, modification time (ns), inode and device."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: os.PathLike, st: Optional[os.stat_result] = None) -> "FileStamp":
        st = st if st is not None else os.stat(path)
        return cls(str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def changes(self) -> Optional[str]:
        """What differs now (e.g. "its size went from 400 to 0 bytes"), or None if nothing does."""
        try:
            now = FileStamp.of(self.path)
        except OSError as e:
            return f"it can no longer be read ({e.strerror})"
        if (now.inode, now.device) != (self.inode, self.device):
            return "it was replaced by another file"
        if now.size != self.size:
            return f"its size went from {self.size} to {now.size} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "it was rewritten"
        return None


_KIND = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def os_problem(e: OSError) -> str:
    """A short reason for an OS error on an input path (the errno's meaning, in words)."""
    if e.errno == errno.ENAMETOOLONG:
        return "a name in the path is too long for the file system"
    if e.errno == errno.ENOENT:
        return "it does not exist"
    if e.errno == errno.ENOTDIR:
        return "a component of the path is not a folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ELOOP:
        return "it is a loop of symbolic links"
    return e.strerror or str(e)


def regular_file(path: os.PathLike, what: str, hint: str = "check the path") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file; else one line naming ``what``, the path and the fix."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise PyroVAEError(f"{what} file {p!r} does not exist: {hint}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = os_problem(e) if isinstance(e, OSError) else "the path contains a NUL character"
        fix = "use a shorter name" if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG else hint
        raise PyroVAEError(f"{what} path {p!r} cannot be used ({reason}): {fix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise PyroVAEError(f"{what} path {p!r} is a folder: give a file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KIND if test(st.st_mode)), "not a regular file")
        raise PyroVAEError(f"{what} path {p!r} is {kind}, not a regular file: give a file saved on disk")
    return st


def read_bytes(path: os.PathLike, what: str, hint: str = "check the path") -> bytes:
    """The bytes of a regular file (checked by :func:`regular_file` first)."""
    regular_file(path, what, hint)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PyroVAEError(f"{what} file {str(path)!r} cannot be read ({os_problem(e)}): {hint}") from None


def read_text(path: os.PathLike, what: str, hint: str = "check the path") -> str:
    """A regular file's text as UTF-8; a leading byte-order mark (as some editors write) is dropped."""
    raw = read_bytes(path, what, hint)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PyroVAEError(
            f"{what} file {str(path)!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}): save it as UTF-8"
        ) from None
