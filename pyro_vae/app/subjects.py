"""Run folders as diagnosis subjects: loaded, named, fingerprinted, and matched against diagnostics saved for them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List, Optional, Sequence

from ..data import batch
from ..diagnostics.settings import FORMAT, DiagnoseSettings, Subject
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..models.build import describe
from .prepare import data_likelihood
from .runs import load_run, load_run_data


def subjects_from_runs(run_dirs: Sequence, points: int = DiagnoseSettings.points, device: str = "cpu", *,
                       program_path=None, trust_code: bool = False) -> List[Subject]:
    """Load runs (``pyro-vae train`` output folders) and pick the first ``points`` test rows of each.

    A run's own program is built as :func:`~pyro_vae.app.runs.load_run` allows (``program_path``, ``trust_code``).
    """
    if not run_dirs:
        raise PyroVAEError("give at least one run directory")
    subjects, names, cache = [], set(), {}
    for d in run_dirs:
        run = load_run(d, device=device, program_path=program_path, trust_code=trust_code)
        key = json.dumps(run.config.data.__dict__ | {"lik": data_likelihood(run.config.model)}, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = load_run_data(run)
        data = cache[key]
        name = Path(d).resolve().name or "run"
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        test = named_data(run.model, data.test, "the test data")
        n = min(points, batch.num_rows(test))
        cfg = run.config
        m = run.metrics or {}
        info = run_fingerprint(d) | {
            "objective": cfg.train.elbo, **describe(cfg.model),
            "epochs": len(run.history or []), "data": data.name,
            "test_elbo": m.get("elbo"), "log_likelihood": m.get("log_likelihood"),
            "log_likelihood_se": m.get("log_likelihood_se"), "active_units": m.get("active_units"),
            # what log_likelihood is for this model (log p(x|y) for one conditioned on an input y); older runs: log p(x)
            "log_likelihood_quantity": (m.get("quantities") or {}).get("log_likelihood", "log p(x)"),
            # a topic model's top words, perplexity and NPMI (evaluation/topics.py), for the report's topics
            "topics": m.get("topics"),
            # a synthetic run's learned parameters against its truth (evaluation/recovery.py), for the report's
            "recovery": m.get("recovery"),
        }
        subjects.append(Subject(name, run.model, batch.rows(test, slice(0, n)), list(range(n)), run=run, data=data, info=info))
    return subjects


def run_fingerprint(run_dir) -> dict:
    """What identifies a trained run: its folder and the hash of its checkpoint."""
    return {"run_dir": str(Path(run_dir).resolve()), "checkpoint_sha256": _sha256(Path(run_dir) / "checkpoint.pt")}


def matches(diagnosis_json: dict, run_dirs: Sequence, given: dict) -> bool:
    """Whether saved diagnostics are for exactly these runs (same checkpoints, same order) and these settings."""
    runs = diagnosis_json.get("runs") or []
    if diagnosis_json.get("format") != FORMAT or not isinstance(runs, list) or len(runs) != len(run_dirs):
        return False
    for r, d in zip(runs, run_dirs):
        info = r.get("info") if isinstance(r, dict) else None
        if not isinstance(info, dict):  # a file edited or written by someone else: not ours to reuse
            return False
        if any(info.get(k) != v for k, v in run_fingerprint(d).items()):
            return False
    stored = diagnosis_json.get("settings", {})
    return isinstance(stored, dict) and all(stored.get(k) == v for k, v in given.items())


def _sha256(path: Path) -> Optional[str]:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None
