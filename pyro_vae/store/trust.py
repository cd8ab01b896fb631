"""Which program a command may run for a run folder: installed, named by the user, trained from by this user, or opted in.

A run folder may come from someone else, and whoever made it wrote every file
in it, so nothing inside the folder can say that its code is safe.  The
decision rests on what the folder cannot forge:

- a per-user record, outside any run folder, of the program files (path and
  sha256) this user trained from (:func:`remember`, called when a run starts);
- what the user says on this command: ``--program-path DIR`` (import from a
  folder they choose) or ``--trust-run-code`` (run whatever the run names).

Installed packages are importable as they are.  The source of a run's program
must also be the one it was trained from (its recorded sha256), unless the
user opts in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

from ..errors import PyroVAEError
from ..models.program import ProgramSource
from .files import write_text_atomic

#: where the record lives: this variable, else $XDG_CONFIG_HOME/pyro_vae/, else ~/.config/pyro_vae/
TRUST_FILE_ENV = "PYRO_VAE_TRUST_FILE"
TRUST_FORMAT = "pyro_vae.trusted_programs/1"
OPT_IN = "--trust-run-code (trust_code=True in Python)"


def trust_file() -> Path:
    if os.environ.get(TRUST_FILE_ENV):
        return Path(os.environ[TRUST_FILE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "pyro_vae" / "trusted_programs.json"


def _read(path: Path) -> Set[Tuple[str, str]]:
    """The (file, sha256) pairs recorded; a missing or damaged record trusts nothing (and is rewritten whole)."""
    try:
        data = json.loads(path.read_text())
        return {(e["file"], e["sha256"]) for e in data["sources"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer of the record at a time, so that two runs starting together both stay recorded."""
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remember(file: Optional[str], sha256: Optional[str]) -> None:
    """Record that this user trained from ``file`` as it is now; later commands on the run may then build it."""
    if not file or not sha256:
        return  # an installed or built-in module needs no record
    path = trust_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            known = _read(path)
            if (file, sha256) in known:
                return
            sources = [{"file": f, "sha256": s} for f, s in sorted(known | {(file, sha256)})]
            write_text_atomic(path, json.dumps({"format": TRUST_FORMAT, "sources": sources}, indent=1) + "\n")
    except (OSError, PyroVAEError) as e:
        raise PyroVAEError(f"cannot record the trained program in {str(path)!r} ({e}): make it writable, or set "
                           f"{TRUST_FILE_ENV} to a writable file") from None


def is_remembered(file: Optional[Path], sha256: Optional[str]) -> bool:
    return file is not None and sha256 is not None and (str(file), sha256) in _read(trust_file())


@dataclass(frozen=True)
class RunCode:
    """What the user said on this command about the code a run folder names.

    ``program_path``: a folder of the user's to import the program from.
    ``trust_code``: run the program the run names even if this user has not
    trained from it, from the folder it records or the run folder itself, and
    even if its source changed since training.
    """

    run_dir: Path
    program_path: Optional[Path] = None
    trust_code: bool = False

    def folders(self, spec) -> List[Path]:
        """Where the program is looked for before the installed packages."""
        if self.program_path is not None:
            if not Path(self.program_path).is_dir():
                raise PyroVAEError(f"--program-path {str(self.program_path)!r} is not a folder: name the folder that "
                                   f"holds the program's module")
            return [Path(self.program_path)]
        recorded = [Path(spec.program_dir)] if spec.program_dir else []
        return recorded + ([self.run_dir] if self.trust_code else [])

    def exclude(self) -> List[Path]:
        """Never "installed packages": the run folder (a received folder may carry modules)."""
        return [self.run_dir]

    def vetter(self, spec):
        """The check :func:`build_program` runs on the located source, before any of its code runs."""

        def vet(source: ProgramSource) -> None:
            if self.trust_code:
                return
            if spec.program_sha256 and source.sha256 != spec.program_sha256:
                trained = f" in {spec.program_file!r}" if spec.program_file else ""
                raise PyroVAEError(
                    f"{source.key}: the program's source changed since {self.run_dir} was trained: "
                    f"{str(source.file)!r} has sha256 {str(source.sha256)[:12]}..., the run was trained from "
                    f"{spec.program_sha256[:12]}...{trained}: put back the code it was trained with, or pass {OPT_IN} "
                    f"to build it from the code as it is now")
            chosen = self.program_path is not None and source.folder is not None
            if source.folder is not None and not chosen and not is_remembered(source.file, source.sha256):
                raise PyroVAEError(
                    f"{source.key}: {self.run_dir} names code in {str(source.file)!r}, which this user has not "
                    f"trained from (a run folder may come from anyone): pass {OPT_IN} to run it, or --program-path "
                    f"DIR (program_path=DIR) to import the program from a folder you choose, or install it")

        return vet


def build_args(spec, run_code: Optional[RunCode]) -> dict:
    """The keyword arguments of ``build_program`` for a config the user trains (``run_code`` None: it was named
    by running it, and its folder and the current directory are searched as they always were) or a run's."""
    if run_code is None:
        folders = ([Path(spec.program_dir)] if spec.program_dir else []) + [Path.cwd()]
        return {"folders": folders}
    return {"folders": run_code.folders(spec), "exclude": run_code.exclude(), "vet": run_code.vetter(spec)}
