"""A run directory: train a config end to end, and load a finished run back.

``RUN_DIR/``
  ``config.toml``    the resolved config (every default and "auto" filled in)
  ``checkpoint.pt``  parameters, optimizer state, RNG states, data order (atomic)
  ``history.csv``    per epoch: train loss, test ELBO, seconds, beta
  ``metrics.json``   the evaluation of the final model on the test data
  ``plots/``         loss curve, reconstructions, samples, latent scatter

Everything that can fail on bad input (config, data, support, output folder)
is checked before the folder is created, so a failed start writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyro

from .checkpoint import load_checkpoint
from ..config import Config, config_from_dict
from ..data.sources import Dataset, load_data, resolve_binarize
from ..errors import PyroVAEError
from ..evaluation.estimators import DEFAULT_IW_SAMPLES
from ..models import build_model
from ..evaluation.memory import evaluate_with_retry
from ..data.checks import check_support as check_support_chunked
from ..training.trainer import Trainer, check_batch_size, example_batch, resolve_device
from .files import write_text_atomic


@dataclass
class Run:
    run_dir: Optional[Path]
    config: Config
    model: object
    data: Optional[Dataset] = None
    history: Optional[list] = None
    metrics: Optional[dict] = None
    plots: Optional[list] = None
    image_shape: Optional[tuple] = None


def resolve_config(cfg: Config, data: Dataset) -> Config:
    """Fill in what depends on the data: binarization mode and categorical levels."""
    model = cfg.model
    if model.likelihood == "categorical" and model.levels is None:
        top = int(max(float(data.train.max()), float(data.test.max())))
        model = dataclasses.replace(model, levels=max(2, top + 1))
    d = dataclasses.replace(cfg.data, binarize=resolve_binarize(cfg.data, cfg.model.likelihood))
    return cfg.replace(data=d, model=model)


def check_support(model, data: Dataset) -> None:
    lik = getattr(model, "likelihood", None)
    if lik is None or not hasattr(lik, "check_support"):
        return
    if data.binarize != "dynamic":  # dynamic: batches are binarized as they are drawn
        # chunk by chunk when the training data is a memory map (pyro_vae/mapped.py)
        check_support_chunked(lik, data.train, "the training data")
    lik.check_support(data.test, "the test data")


def prepare(cfg: Config):
    """Load data, resolve the config and build the model (seeded); writes nothing."""
    data = load_data(cfg.data, cfg.model.likelihood)
    cfg = resolve_config(cfg, data)
    pyro.set_rng_seed(cfg.train.seed)  # parameter initialisation follows train.seed
    model = build_model(cfg.model, data.dim)
    check_support(model, data)
    return cfg, data, model


def _check_writable(out: Path, allow_existing: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"output path {str(out)!r} is a file: choose a folder with --out")
    if out.exists() and any(out.iterdir()) and not allow_existing:
        raise PyroVAEError(
            f"output folder {str(out)!r} is not empty: choose another --out, or continue it with --resume {out}"
        )
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PyroVAEError(f"cannot write to {str(probe_dir)!r} ({e.strerror}): choose a writable --out") from None


def train(config: Config, out_dir: Optional[os.PathLike] = None, *, resume: bool = False,
          progress: Optional[bool] = None, iw_samples: int = DEFAULT_IW_SAMPLES, plots: bool = True,
          overwrite: bool = False, log=None) -> Run:
    """Train ``config`` into ``out_dir`` (a new folder, or an existing run with ``resume=True``)."""
    log = log or (lambda msg: None)
    out = Path(out_dir) if out_dir is not None else None
    if iw_samples is not None and (isinstance(iw_samples, bool) or not isinstance(iw_samples, int) or iw_samples < 1):
        # checked now, not after training, when the final evaluation would reject it
        raise PyroVAEError(f"--iw-samples must be an integer >= 1 (got {iw_samples!r}): pass a positive number of samples")
    payload = None
    if resume:
        if out is None or not out.is_dir():
            raise PyroVAEError(f"--resume {out}: no run directory there: check the path")
        if not (out / "checkpoint.pt").exists():
            raise PyroVAEError(
                f"--resume {out}: the run has no checkpoint.pt (it stopped before its first checkpoint): "
                f"start it afresh with: pyro-vae train {out / 'config.toml'} --out NEW_DIR"
            )
        payload = load_checkpoint(out / "checkpoint.pt")
    cfg, data, model = prepare(config)
    if payload is not None and isinstance(payload.get("data_dim"), int) and payload["data_dim"] != data.dim:
        raise PyroVAEError(
            f"--resume {out}: the checkpoint's model takes {payload['data_dim']} columns but the data now has "
            f"shape {tuple(data.train.shape)}: resume with the data the run was trained on"
        )
    check_batch_size(len(data.train), cfg.train.batch_size)
    if out is not None:
        _check_writable(out, allow_existing=resume or overwrite)
    for note in data.notes:
        log(f"note: {note}")
    trainer = Trainer(model, cfg.train, run_dir=out, progress=progress)
    trainer.meta = {"config": cfg.to_dict(), "data_dim": data.dim,
                    "image_shape": list(data.image_shape) if data.image_shape else None}
    trainer.setup(example_batch(data.train, data.binarize).to(trainer.device), len(data.train))
    if payload is not None:
        trainer.load_state_dict(payload, out / "checkpoint.pt")
    if out is not None:
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.toml", cfg.to_toml())
    history = trainer.fit(data.train, data.test, binarize=data.binarize)
    model.eval()
    # on out-of-memory the evaluation retries in smaller chunks (pyro_vae/memory.py)
    metrics = evaluate_with_retry(model, data.test, iw_samples=iw_samples, seed=cfg.train.seed, log=log)
    metrics["seconds_train"] = sum(h["seconds"] for h in history)
    figures = None
    if out is not None:
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if plots and hasattr(model, "encode"):
            from ..plots import run_plots

            figures = run_plots(model, data, history, out / "plots")
    return Run(out, cfg, model, data, history, metrics, figures, data.image_shape)


def load_run(run_dir: os.PathLike, device: str = "cpu") -> Run:
    """Load a finished (or interrupted) run: the config and the trained model, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PyroVAEError(f"run directory {str(run_dir)!r} does not exist: check the path")
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    try:
        cfg = config_from_dict(payload["config"])
        data_dim = int(payload["data_dim"])
    except KeyError as e:
        raise PyroVAEError(f"checkpoint in {str(run_dir)!r} lacks {e}: it was not written by pyro_vae train") from None
    model = build_model(cfg.model, data_dim)
    from .checkpoint import load_state_dict_checked

    load_state_dict_checked(model, payload["model"], run_dir / "checkpoint.pt")
    model.to(resolve_device(device)).eval()
    history = payload["train_state"]["history"]
    metrics = None
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    shape = tuple(payload["image_shape"]) if payload.get("image_shape") else None
    return Run(run_dir, cfg, model, None, history, metrics, image_shape=shape)


def load_run_data(run: Run) -> Dataset:
    """The data a run was trained on (as its config names it)."""
    return load_data(run.config.data, run.config.model.likelihood)
