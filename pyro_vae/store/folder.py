"""A run folder: the files it may hold, checked before any work, made, emptied of a previous run, and read back.

``RUN_DIR/``
  ``config.toml``    the resolved config (every default and "auto" filled in)
  ``checkpoint.pt``  parameters, optimizer state, RNG states, data order (atomic)
  ``history.csv``    per epoch: train loss, test ELBO, seconds, beta
  ``metrics.json``   the evaluation of the final model on the test data (and, for a model with classes,
                     ``"classes"``: evaluation/classes.py; a synthetic source's ``"recovery"``)
  ``truth.npz``      a synthetic source's known truth (store/truth.py), as NumPy arrays
  ``plots/``         loss curve, reconstructions, samples, latent scatter, the model's graph; a graph's
                     samples per class and class table; a count model's mean-variance and zero share per
                     feature, and a topic model's top words

Only files this library wrote are ever removed or overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from ..errors import PyroVAEError
from .checkpoint import load_checkpoint
from .files import TMP_PREFIX
from .lock import LOCK_NAME, RunLock
from .truth import TRUTH_FILE

#: the files a run directory holds, all written by this library (plots/ holds PLOT_FILES)
RUN_FILES = ("config.toml", "checkpoint.pt", "history.csv", "metrics.json", TRUTH_FILE)
PLOTS_DIR = "plots"
PLOT_FILES = ("loss.png", "reconstructions.png", "samples.png", "latent.png", "graph.png",
              "class_samples.png", "confusion.png", "contingency.png",
              "mean_variance.png", "zero_fraction.png", "topics.png", "recovery.png")
SAMPLES_GLOB = "samples-seed*"  # what `pyro-vae sample` writes into a run by default


def foreign_files(out: Path) -> List[str]:
    """Entries of ``out`` that this library did not write (never removed, never overwritten)."""
    ours = set(RUN_FILES) | {PLOTS_DIR, LOCK_NAME}
    found = [p.name for p in out.iterdir()
             if p.name not in ours and not p.name.startswith(TMP_PREFIX) and not p.match(SAMPLES_GLOB)]
    plots = out / PLOTS_DIR
    if plots.is_dir():
        found += [f"{PLOTS_DIR}/{p.name}" for p in plots.iterdir() if p.name not in PLOT_FILES]
    elif plots.exists():
        found.append(PLOTS_DIR)
    return sorted(found)


def _some(names: list) -> str:
    """The first few of ``names`` for a one-line message."""
    return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")


def remove_run_files(out: Path) -> None:
    """Remove a previous run's files from ``out``: only the names this library writes."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for sample in out.glob(SAMPLES_GLOB):
        sample.unlink()
    plots = out / PLOTS_DIR
    if plots.is_dir():
        for name in PLOT_FILES:
            (plots / name).unlink(missing_ok=True)
        plots.rmdir()  # empty: foreign_files found nothing else in it


def nearest_existing(out: Path) -> Path:
    """``out`` itself if it exists, else its nearest existing parent folder."""
    return out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))


def check_name_lengths(out: Path) -> None:
    """Fail before any folder is made when a name in ``out`` below its nearest existing folder is longer than
    the file system allows: the folders above it would be made before the long one failed."""
    existing = nearest_existing(out)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    for part in out.parts[len(existing.parts) if out.is_absolute() == existing.is_absolute() else 0:]:
        size = len(os.fsencode(part))
        if size > name_max:
            short = part if len(part) <= 40 else part[:37] + "..."
            raise PyroVAEError(f"--out: the name {short!r} is {size} bytes long, more than the file system allows "
                               f"({name_max}): choose a shorter --out")


def check_output_folder(out: Path, replace: bool) -> None:
    """Fail before any work unless ``out`` can become (or be replaced by) a run directory."""
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"output path {str(out)!r} is a file: choose a folder with --out")
    held = [p for p in out.iterdir() if p.name != LOCK_NAME and not p.name.startswith(TMP_PREFIX)] if out.is_dir() else []
    if held:
        foreign = foreign_files(out)
        if foreign:
            raise PyroVAEError(f"output folder {str(out)!r} holds files pyro_vae did not write "
                               f"({_some(foreign)}): choose another --out")
        if not replace:
            raise PyroVAEError(
                f"output folder {str(out)!r} already holds a run: choose another --out, or continue it with --resume {out}"
            )
    probe_dir = nearest_existing(out)
    check_name_lengths(out)
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PyroVAEError(f"cannot write to {str(probe_dir)!r} ({e.strerror}): choose a writable --out") from None


def resume_payload(out: Optional[Path], log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint to continue from; None for a run that stopped before its first checkpoint."""
    if out is None or not (out / "config.toml").is_file():
        raise PyroVAEError(f"--resume {out}: no run there (no config.toml): check the path")
    if (out / "checkpoint.pt").exists():
        return load_checkpoint(out / "checkpoint.pt")
    foreign = foreign_files(out)
    if foreign:
        raise PyroVAEError(f"--resume {out}: the run has no checkpoint.pt and the folder holds files pyro_vae did "
                           f"not write ({_some(foreign)}): start it elsewhere with --out NEW_DIR")
    log(f"note: {out} has no checkpoint.pt (it stopped before its first checkpoint): starting it afresh in place")
    return None


def make_folder(out: Path) -> None:
    """Create the run directory a trainer writes into (before any training), or fail in one line."""
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"run_dir {str(out)!r} is a file: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PyroVAEError(f"cannot write to run_dir {str(out)!r} ({e.strerror}): choose a writable folder") from None


@contextlib.contextmanager
def fit_folder(out_dir: os.PathLike) -> Iterator[Path]:
    """The folder ``pv.fit(..., run_dir=D)`` trains into: checked and created before any training, locked while
    it trains, and emptied of a previous run's files (a fresh fit replaces the run)."""
    out = Path(out_dir)
    check_output_folder(out, replace=True)
    make_folder(out)
    with RunLock(out):
        check_output_folder(out, replace=True)  # again under the lock: another process may have written here since
        remove_run_files(out)
        yield out


def read_metrics(run_dir: Path) -> Optional[dict]:
    """metrics.json, or None when it is missing or damaged (only commands that show it need it)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None
