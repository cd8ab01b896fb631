"""Diagnosing runs and reporting on them: settings and output folder checked, runs loaded, diagnosed and saved.

A report reuses the diagnostics saved for the same runs and settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..diagnostics.results import Diagnosis, load_diagnosis
from ..diagnostics.run import check_reference_possible, diagnose
from ..diagnostics.settings import DiagnoseSettings
from ..errors import PyroVAEError
from ..report.render import write_report
from ..runtime.threads import ThreadSetting, check_setting, choose_threads, use_threads
from ..store.folder import check_name_lengths
from .subjects import matches, subjects_from_runs


def diagnose_runs(run_dirs: Sequence, out: os.PathLike, given: dict, *, progress: Optional[bool] = None,
                  log: Callable[[str], None], program_path=None, trust_code: bool = False,
                  threads: ThreadSetting = "auto") -> Tuple[Diagnosis, Path]:
    """``pyro-vae diagnose``: the runs' diagnosis under ``given`` settings (the rest default), saved in ``out``;
    returns it and its diagnostics.json.  ``threads``: torch's thread count while it runs ("auto": the free
    cores for the batched work, one thread for the local fits' and NUTS's tiny steps)."""
    settings = DiagnoseSettings(**given).check()
    threads = check_setting(threads, "threads")
    out = diagnose_out(out, run_dirs)
    return _diagnosed(run_dirs, out, settings, progress, log, program_path, trust_code, threads)


def report_runs(run_dirs: Sequence, out: os.PathLike, given: dict, *, progress: Optional[bool] = None,
                log: Callable[[str], None], program_path=None, trust_code: bool = False,
                threads: ThreadSetting = "auto") -> Tuple[Diagnosis, Dict[str, Path]]:
    """``pyro-vae report``: the runs' report in ``out``, from the diagnostics saved there when they are for the same
    runs and settings, else from a new diagnosis (``threads`` as for :func:`diagnose_runs`); returns the diagnosis
    and the report's files."""
    DiagnoseSettings(**given).check()
    threads = check_setting(threads, "threads")
    out = diagnose_out(out, run_dirs)
    saved = _saved_json(out / "diagnostics.json")
    if saved is not None and matches(saved, run_dirs, given):
        log(f"using the diagnostics in {out / 'diagnostics.json'} (same runs and settings)")
        result = load_diagnosis(out)
    else:
        if saved is not None:
            log(f"the diagnostics in {out} are for other runs or settings: computing them again")
        settings = DiagnoseSettings(**given).check()
        result, _ = _diagnosed(run_dirs, out, settings, progress, log, program_path, trust_code, threads)
    return result, write_report(result, out, log=log)


def _diagnosed(run_dirs, out: Path, settings: DiagnoseSettings, progress, log, program_path, trust_code,
               threads: ThreadSetting = "auto"):
    subjects = subjects_from_runs(run_dirs, settings.points, program_path=program_path, trust_code=trust_code)
    check_reference_possible(subjects, settings)  # fail before anything is written
    _make_out(out)
    choice = choose_threads(threads, work=None, key="threads")  # the tiny steps: diagnostics/sizing.py
    with use_threads(choice):
        result = diagnose(subjects, settings, progress=progress, log=log)
    log(choice.line())  # said once the diagnosis stands: a refusal on the way is the only line
    return result, result.save(out)


def _saved_json(path: Path) -> Optional[dict]:
    """A diagnostics.json already there, or None when there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict):
        raise PyroVAEError(f"{str(path)!r} holds a JSON {type(saved).__name__}, not a diagnosis (a table) that "
                           "pyro-vae diagnose writes: choose another --out, or move that file away")
    return saved


def diagnose_out(out: os.PathLike, run_dirs) -> Path:
    """Check --out before any work: a folder (created if missing) that is not one of the runs."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise PyroVAEError(f"--out {out}: is a file; choose a folder")
    for d in run_dirs:
        if path.resolve() == Path(d).resolve():
            raise PyroVAEError(f"--out {out}: is a run directory; choose another folder for the diagnostics")
    check_name_lengths(path)
    return path


def _make_out(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PyroVAEError(f"cannot create --out {str(path)!r} ({e.strerror}): choose a writable folder") from None
