"""A run as Python holds it (:class:`Run`), and a finished run loaded back: config.toml checked against checkpoint.pt, the trained model, its data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import Config, config_from_dict, load_config
from ..config.short import spec_to_dict
from ..data.arrays import Dataset
from ..errors import PyroVAEError
from ..evaluation.classes import ClassMetrics
from ..models.protocol import model_modules
from ..store.checkpoint import load_checkpoint, restore_model, upgrade
from ..store.folder import read_metrics
from ..store.trust import RunCode
from ..training.trainer import resolve_device
from .prepare import build, load_config_data


@dataclass
class Run:
    """A trained run: its folder, config, model (in eval mode after loading), data, curve, metrics and plots."""

    run_dir: Optional[Path]
    config: Optional[Config]  # None for a run pv.fit wrote from Python (no config.toml)
    model: object
    data: Optional[Dataset] = None
    history: Optional[list] = None
    metrics: Optional[dict] = None
    plots: Optional[list] = None
    image_shape: Optional[tuple] = None
    start_epoch: int = 0  # epochs already trained when this process started (a resumed run)
    start_batch: int = 0  # batches of the next epoch already trained then (a run resumed inside an epoch)
    data_dim: Optional[int] = None  # the data's number of columns (None: a run pv.fit wrote, which does not record it)
    classes: Optional[ClassMetrics] = None  # a trained model with classes: their agreement with the test labels


#: what every checkpoint the trainer writes holds; :func:`~pyro_vae.app.pipeline.train` adds the config and the data's width
_TRAINER_KEYS = ("model", "train_state")
_RUN_KEYS = ("config", "data_dim")


def load_run(run_dir: os.PathLike, device: str = "cpu", model=None, *, program_path: Optional[os.PathLike] = None,
             trust_code: bool = False) -> Run:
    """Load a finished (or interrupted) run: the config and the trained model, in eval mode.

    The model is built from ``config.toml``, which must agree with the copy
    inside ``checkpoint.pt``.  A program of your own (``model.program``) is
    imported only from the installed packages, from ``program_path``, or from
    the folder the run records when this user trained from that very file; the
    run folder's own code runs only with ``trust_code=True`` (store/trust.py).

    ``model``: the object to load the trained parameters into instead of
    building one from config.toml; needed for a run ``pv.fit(..., run_dir=D)``
    wrote from Python, which records no way to build the model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PyroVAEError(f"run directory {str(run_dir)!r} does not exist: check the path")
    path = run_dir / "checkpoint.pt"
    payload = load_checkpoint(path)
    missing = [k for k in _TRAINER_KEYS + _RUN_KEYS if k not in payload]
    if missing and missing != list(_RUN_KEYS):
        raise PyroVAEError(f"checkpoint {str(path)!r} lacks {', '.join(map(repr, missing))}: "
                           "it was not written by pyro_vae train; retrain the run")
    if missing:  # the trainer's state alone: pv.fit(..., run_dir=D) wrote it
        if model is None:
            raise PyroVAEError(
                f"{str(run_dir)!r} was written by pv.fit from Python, which records no way to rebuild the model: "
                f"load it with pv.load_run({str(run_dir)!r}, model=YourModel(...)) built as it was for training"
            )
        restore_model(model, payload, path)
        _eval(model, device)
        return Run(run_dir, None, model, None, _history(payload, path), read_metrics(run_dir))
    try:
        data_dim = int(payload["data_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise PyroVAEError(f"checkpoint {str(path)!r} holds an unreadable run description ({e}): retrain the run") from None
    cfg = run_config(run_dir, payload)
    history = _history(payload, path)
    shape = tuple(payload["image_shape"]) if payload.get("image_shape") else None
    if model is None:
        run_code = RunCode(run_dir, Path(program_path) if program_path else None, trust_code)
        model, _ = build(cfg.model, data_dim, shape, run_code)
    restore_model(model, upgrade(payload, model), path)
    _eval(model, device)
    return Run(run_dir, cfg, model, None, history, read_metrics(run_dir), image_shape=shape, data_dim=data_dim)


def _history(payload: dict, path: Path) -> list:
    try:
        return list(payload["train_state"]["history"])
    except (KeyError, TypeError) as e:
        raise PyroVAEError(f"checkpoint {str(path)!r} holds an unreadable training state ({e}): retrain the run") from None


def _eval(model, device: str) -> None:
    """The loaded model on ``device``, in eval mode (a model that is not a Module holds its Modules as attributes)."""
    for m in model_modules(model):
        m.to(resolve_device(device)).eval()


def run_config(run_dir: Path, payload: dict) -> Config:
    """The run's config: ``config.toml``, which is authoritative, checked against the copy ``checkpoint.pt`` holds.

    A run whose config.toml is missing or unreadable is refused rather than rebuilt from the checkpoint's copy
    alone, so that what a run builds is always what its config.toml says.
    """
    toml = run_dir / "config.toml"
    if not toml.is_file():
        raise PyroVAEError(f"{str(run_dir)!r} has checkpoint.pt but no config.toml, which says what the run builds: "
                           "put back the run's own config.toml")
    cfg = load_config(toml, run=True)
    try:
        saved = config_from_dict(payload["config"], recorded=True).model
    except (PyroVAEError, KeyError, TypeError, ValueError) as e:
        raise PyroVAEError(f"checkpoint {str(run_dir / 'checkpoint.pt')!r} holds an unreadable run description "
                           f"({str(e)[:160]}): retrain the run") from None
    if saved != cfg.model:
        key, said, trained = _first_difference(spec_to_dict(cfg.model), spec_to_dict(saved), "model")
        raise PyroVAEError(
            f"{str(run_dir)!r}: checkpoint.pt was trained with {key} = {trained!r} but config.toml says "
            f"{said!r}: the two files come from different runs; put back the run's own config.toml or checkpoint"
        )
    return cfg


def _first_difference(a, b, key: str):
    """(the first key path where two plain values differ, its value in a, in b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}")
    return key, a, b


def load_run_data(run: Run) -> Dataset:
    """The data a run was trained on (as its config names it)."""
    if run.config is None:
        raise PyroVAEError(f"{str(run.run_dir)!r} was written by pv.fit from Python and does not record its data: "
                           "pass the data yourself")
    return load_config_data(run.config)
