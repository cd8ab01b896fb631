"""Atomic checkpoints that hold everything needed to resume bit-exactly.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads
with ``torch.load(weights_only=True)`` (no pickled code runs on load).  It is
written to a temporary file in the same folder, fsynced, and moved over the
old one with ``os.replace``: a crash or a full disk mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import PyroVAEError

FORMAT = "pyro_vae.checkpoint"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"


def save_checkpoint(payload: dict, path: os.PathLike) -> None:
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
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


def load_checkpoint(path: os.PathLike, map_location="cpu") -> dict:
    """Load and check a checkpoint; every failure is one line naming the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise PyroVAEError(f"checkpoint {str(path)!r} does not exist: is this a run directory?")
    if path.stat().st_size == 0:
        raise PyroVAEError(f"checkpoint {str(path)!r} is empty (0 bytes): the run was killed while creating it; retrain")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PyroVAEError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({reason[:160]}): restore it or retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PyroVAEError(f"{str(path)!r} is not a pyro_vae checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PyroVAEError(
            f"checkpoint {str(path)!r} has format version {version}, newer than this pyro_vae reads "
            f"({FORMAT_VERSION}): upgrade pyro_vae"
        )
    return payload


def load_state_dict_checked(module: torch.nn.Module, state: dict, path) -> None:
    """``load_state_dict`` with a readable error when the architecture differs."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = [l.strip() for l in str(e).splitlines() if l.strip()][1:2]
        detail = first[0] if first else "parameter names or shapes differ"
        raise PyroVAEError(
            f"checkpoint {str(path)!r} was saved from a different architecture ({detail[:200]}): "
            "use the config.toml saved with it"
        ) from None
