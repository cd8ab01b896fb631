"""A run directory: train a config end to end, and load a finished run back.

``RUN_DIR/``
  ``config.toml``    the resolved config (every default and "auto" filled in)
  ``checkpoint.pt``  parameters, optimizer state, RNG states, data order (atomic)
  ``history.csv``    per epoch: train loss, test ELBO, seconds, beta
  ``metrics.json``   the evaluation of the final model on the test data (and, for a model with classes,
                     ``"classes"``: evaluation/classes.py)
  ``plots/``         loss curve, reconstructions, samples, latent scatter, the model's graph; a graph's
                     samples per class and class table

Everything that can fail on bad input (config, data, support, output folder)
is checked before the folder is created, so a failed start writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import pyro
import torch

from ..config import Config, GraphSpec, ModelSpec, ProgramSpec, config_from_dict, load_config
from ..config.short import replace_node, spec_to_dict
from ..data.checks import check_support as check_support_chunked
from ..data.sizes import inferred_levels
from ..data.arrays import Dataset
from ..data.sources import load_data, resolve_binarize
from ..data import batch
from ..errors import PyroVAEError
from ..evaluation.classes import ClassMetrics, class_metrics
from ..evaluation.estimators import DEFAULT_IW_SAMPLES
from ..evaluation.memory import evaluate_with_retry
from ..infer.objectives import check_objective_name
from ..models import build_model, check_size, check_spec
from ..models.graph import GraphModel
from ..models.graph.spec import check_objective
from ..models.program import build_program
from ..models.protocol import model_modules
from ..runtime import distributed
from ..training.trainer import Trainer, check_batch_size, resolve_device
from .checkpoint import load_checkpoint, restore_model, upgrade
from .files import TMP_PREFIX, write_text_atomic
from .lock import LOCK_NAME, RunLock
from .trust import RunCode, build_args, remember


@dataclass
class Run:
    run_dir: Optional[Path]
    config: Optional[Config]  # None for a run pv.fit wrote from Python (no config.toml)
    model: object
    data: Optional[Dataset] = None
    history: Optional[list] = None
    metrics: Optional[dict] = None
    plots: Optional[list] = None
    image_shape: Optional[tuple] = None
    start_epoch: int = 0  # epochs already trained when this process started (a resumed run)
    data_dim: Optional[int] = None  # the data's number of columns (None: a run pv.fit wrote, which does not record it)
    classes: Optional[ClassMetrics] = None  # a trained model with classes: their agreement with the test labels


def main_observed(model: GraphSpec) -> str:
    """The graph's main observed node: the first declared (the data's observations)."""
    return next(name for name, n in model.nodes.items() if n.role == "observed")


def data_likelihood(model: ModelSpec) -> str:
    """The likelihood the data are loaded for: a program's is its own business, so its data are taken as they are."""
    if isinstance(model, ProgramSpec):
        return "normal"
    return model.nodes[main_observed(model)].likelihood


def resolve_config(cfg: Config, data: Dataset) -> Config:
    """Fill in what depends on the data: binarization mode and categorical levels."""
    model = cfg.model
    if isinstance(model, GraphSpec):
        x = main_observed(model)
        if model.nodes[x].likelihood == "categorical" and model.nodes[x].levels is None:
            model = replace_node(model, x, levels=inferred_levels(data.train_x, data.test_x))
    d = dataclasses.replace(cfg.data, binarize=resolve_binarize(cfg.data, data_likelihood(cfg.model)))
    return cfg.replace(data=d, model=model)


def check_support(model, data: Dataset) -> None:
    lik = getattr(model, "likelihood", None)
    if lik is None or not hasattr(lik, "check_support"):
        return
    if data.binarize != "dynamic":  # dynamic: batches are binarized as they are drawn
        # chunk by chunk when the training data is a memory map (data/mapped.py)
        check_support_chunked(lik, data.train_x, "the training data")
    lik.check_support(data.test_x, "the test data")


def check_config(cfg: Config) -> None:
    """What a config can be checked for before any data is read: every name it uses against the registry that
    defines it (objectives, likelihoods, families, guide laws, corruptions), and its graph as a whole."""
    check_objective_name(cfg.train.elbo)
    check_spec(cfg.model)
    if isinstance(cfg.model, GraphSpec):
        check_objective(cfg.model, cfg.train)


def prepare(cfg: Config, run_code: Optional[RunCode] = None):
    """Load data, resolve the config and build the model (seeded); writes nothing.

    ``run_code``: the config is a run folder's (resumed), whose program is built only as ``run_code`` allows.
    """
    check_config(cfg)  # every name and the graph first: a typo costs no data loading
    data = load_data(cfg.data, data_likelihood(cfg.model))
    if data.observed is not None and isinstance(cfg.model, GraphSpec) and cfg.model.short is not None:
        names = ", ".join(data.train)
        key, said = (("data.labels", f"data.labels = {cfg.data.labels!r} passes {names}") if cfg.data.labels is not None
                     else ("data.arrays", f"data.arrays names {names}"))
        raise PyroVAEError(f"{said} but the one-latent model (model.latent_dim, ...) takes one array: name the graph's "
                           f"nodes after the arrays ([model.nodes.NAME]), or use a program of your own "
                           f"(model.program = \"module:Class\"); or remove {key}")
    cfg = resolve_config(cfg, data)
    if isinstance(cfg.model, GraphSpec):
        check_size(cfg.model, data.dim, data.image_shape)  # before torch allocates it
    pyro.set_rng_seed(cfg.train.seed)  # parameter initialisation follows train.seed
    model, spec = build(cfg.model, data.dim, data.image_shape, run_code)
    cfg = cfg.replace(model=spec)
    if hasattr(model, "check_data"):  # a graph: its data nodes against the data's arrays
        model.check_data(data.train, "the training data")
        model.check_data(data.test, "the test data")
    check_support(model, data)
    return cfg, data, model


#: the files a run directory holds, all written by this library (plots/ holds PLOT_FILES)
RUN_FILES = ("config.toml", "checkpoint.pt", "history.csv", "metrics.json")
PLOTS_DIR = "plots"
PLOT_FILES = ("loss.png", "reconstructions.png", "samples.png", "latent.png", "graph.png",
              "class_samples.png", "confusion.png", "contingency.png")
SAMPLES_GLOB = "samples-seed*"  # what `pyro-vae sample` writes into a run by default


def _foreign_files(out: Path) -> list:
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


def _remove_run_files(out: Path) -> None:
    """Remove a previous run's files from ``out``: only the names this library writes."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for sample in out.glob(SAMPLES_GLOB):
        sample.unlink()
    plots = out / PLOTS_DIR
    if plots.is_dir():
        for name in PLOT_FILES:
            (plots / name).unlink(missing_ok=True)
        plots.rmdir()  # empty: _foreign_files found nothing else in it


def build(spec: ModelSpec, data_dim: int, image_shape=None, run_code: Optional[RunCode] = None):
    """(the model a config's model section describes, that section as resolved): a built-in, or a program.

    ``run_code`` None: a config the user trains, whose program they named by running it; else a run folder's,
    whose program runs only as the user allows (rundir/trust.py).
    """
    if isinstance(spec, ProgramSpec):
        return build_program(spec, data_dim, **build_args(spec, run_code))
    return build_model(spec, data_dim, image_shape), spec


def check_output_folder(out: Path, replace: bool) -> None:
    """Fail before any work unless ``out`` can become (or be replaced by) a run directory."""
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"output path {str(out)!r} is a file: choose a folder with --out")
    held = [p for p in out.iterdir() if p.name != LOCK_NAME and not p.name.startswith(TMP_PREFIX)] if out.is_dir() else []
    if held:
        foreign = _foreign_files(out)
        if foreign:
            raise PyroVAEError(f"output folder {str(out)!r} holds files pyro_vae did not write "
                               f"({_some(foreign)}): choose another --out")
        if not replace:
            raise PyroVAEError(
                f"output folder {str(out)!r} already holds a run: choose another --out, or continue it with --resume {out}"
            )
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PyroVAEError(f"cannot write to {str(probe_dir)!r} ({e.strerror}): choose a writable --out") from None


def _resume_payload(out: Optional[Path], log) -> Optional[dict]:
    """The checkpoint to continue from; None for a run that stopped before its first checkpoint."""
    if out is None or not (out / "config.toml").is_file():
        raise PyroVAEError(f"--resume {out}: no run there (no config.toml): check the path")
    if (out / "checkpoint.pt").exists():
        return load_checkpoint(out / "checkpoint.pt")
    foreign = _foreign_files(out)
    if foreign:
        raise PyroVAEError(f"--resume {out}: the run has no checkpoint.pt and the folder holds files pyro_vae did "
                           f"not write ({_some(foreign)}): start it elsewhere with --out NEW_DIR")
    log(f"note: {out} has no checkpoint.pt (it stopped before its first checkpoint): starting it afresh in place")
    return None


def _check_resumable(payload: dict, out: Path, cfg: Config, data: Dataset) -> None:
    if isinstance(payload.get("data_dim"), int) and payload["data_dim"] != data.dim:
        raise PyroVAEError(
            f"--resume {out}: the checkpoint's model takes {payload['data_dim']} columns but the data now has "
            f"shape {tuple(data.train_x.shape)}: resume with the data the run was trained on"
        )
    done = payload.get("train_state", {}).get("epoch", 0)
    if cfg.train.epochs < done:
        raise PyroVAEError(
            f"--resume {out}: train.epochs = {cfg.train.epochs} but the run has already trained {done} epochs: "
            f"raise it to train longer (e.g. --set train.epochs={2 * done}), or use pyro-vae evaluate {out}"
        )


def train(config: Config, out_dir: Optional[os.PathLike] = None, *, resume: bool = False,
          progress: Optional[bool] = None, iw_samples: Union[int, str] = "auto", plots: bool = True,
          overwrite: bool = False, log=None, program_path: Optional[os.PathLike] = None,
          trust_code: bool = False) -> Run:
    """Train ``config`` into ``out_dir``: a new folder, an existing run with ``resume=True``, or, with
    ``overwrite=True``, a folder whose previous run is replaced (only files this library wrote are removed).

    A resumed run's program is built as :func:`load_run` builds it (``program_path``, ``trust_code``); a new run
    records the program file it trains from, for this user's later commands on the run (rundir/trust.py).

    Under torchrun every process calls this: they train data-parallel
    (runtime/distributed.py) and rank 0 alone writes the folder and logs.
    """
    joined = not torch.distributed.is_initialized()
    group = distributed.init_from_env(config.train.device)
    joined = joined and group.active
    if group.active:
        try:
            return _train(config, out_dir, resume, progress if group.is_main else False, iw_samples, plots,
                          overwrite, log if group.is_main else None, group, program_path, trust_code)
        finally:
            if joined:  # on a failure too: a process group left at exit aborts the process
                distributed.shutdown()
    return _train(config, out_dir, resume, progress, iw_samples, plots, overwrite, log, group, program_path, trust_code)


def _train(config, out_dir, resume, progress, iw_samples, plots, overwrite, log, group, program_path=None,
           trust_code=False) -> Run:
    log = log or (lambda msg: None)
    out = Path(out_dir) if out_dir is not None else None
    if iw_samples not in ("auto", None) and (isinstance(iw_samples, bool) or not isinstance(iw_samples, int) or iw_samples < 1):
        # checked now, not after training, when the final evaluation would reject it
        raise PyroVAEError(f"--iw-samples must be an integer >= 1 or 'auto' (got {iw_samples!r}): pass a positive number of samples")
    try:  # every rank checks; a failure anywhere stops every rank before a file is written
        payload = _resume_payload(out, log) if resume else None
        run_code = RunCode(out, Path(program_path) if program_path else None, trust_code) if resume else None
        cfg, data, model = prepare(config, run_code)
        if payload is not None:
            _check_resumable(payload, out, cfg, data)
        check_batch_size(batch.num_rows(data.train), cfg.train.batch_size)
        distributed.check_batches(cfg.train.batch_size, [len(g["rows"]) for g in batch.groups(data.train)], group)
        if out is not None and not resume:
            check_output_folder(out, replace=overwrite)
        failed = None
    except PyroVAEError as e:
        if not group.active:
            raise
        cfg = data = payload = None
        failed = e
    if group.active:
        distributed.agree(distributed.fingerprint(
            None if cfg is None else cfg.to_toml(), None if data is None else batch.describe(data.train),
            None if data is None else batch.describe(data.test), out and out.resolve(), resume,
            None if payload is None else payload.get("train_state", {}).get("step")), failed)
    for note in data.notes:
        log(f"note: {note}")
    trainer = Trainer(model, cfg.train, run_dir=out, progress=progress)
    trainer.meta = {"config": cfg.to_dict(), "data_dim": data.dim,
                    "image_shape": list(data.image_shape) if data.image_shape else None}
    trainer.setup_data(data.train, data.binarize)
    if payload is not None:
        trainer.load_state_dict(upgrade(payload, model), out / "checkpoint.pt")
    start_epoch = trainer.state.epoch
    with contextlib.ExitStack() as held:
        if out is not None and group.is_main:
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(out))
            if not resume:
                # checked again under the lock: another process may have written here since
                check_output_folder(out, replace=overwrite)
                _remove_run_files(out)
            write_text_atomic(out / "config.toml", cfg.to_toml())
            if isinstance(cfg.model, ProgramSpec):
                remember(cfg.model.program_file, cfg.model.program_sha256)
        held_out = density_data(model, data.test)
        history = trainer.fit(data.train, held_out, binarize=data.binarize)
        for m in model_modules(model):
            m.eval()
        n = batch.num_rows(data.test)
        k = default_iw_samples(n) if iw_samples == "auto" else iw_samples
        log(f"evaluating on {n} test points" + (f" ({k} importance samples each)..." if k else "..."))
        # on out-of-memory the evaluation retries in smaller chunks (evaluation/memory.py)
        metrics = evaluate_with_retry(model, held_out, iw_samples=k, seed=cfg.train.seed, log=log, progress=progress)
        metrics["seconds_train"] = sum(h["seconds"] for h in history)
        classes = _class_metrics(model, data, log) if group.is_main else None
        if classes is not None:
            metrics["classes"] = classes.to_json()
        figures = None
        if out is not None and group.is_main:
            write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            # imported here: diagnostics/results.py imports rundir/files.py, whose package face imports this
            # module, and the figures import diagnostics; at the top this would be a circle at import time
            from ..figures import run as run_figures

            if plots and getattr(model, "one_latent", None):
                figures = run_figures.run_plots(model, data, history, out / PLOTS_DIR)
            elif plots and isinstance(model, GraphModel):
                figures = run_figures.graph_plots(model, data, history, out / PLOTS_DIR, classes)
            elif plots:  # a model of your own: its curve and graph (the others need a built-in's encoder and decoder)
                figures = run_figures.program_plots(model, data, history, out / PLOTS_DIR)
    return Run(out, cfg, model, data, history, metrics, figures, data.image_shape, start_epoch=start_epoch,
               data_dim=data.dim, classes=classes)


def density_data(model, data):
    """The held-out arrays log p(x) is computed on: a graph leaves out its partial nodes' labels (summed)."""
    return model.density_data(data) if hasattr(model, "density_data") else data


def _class_metrics(model, data: Dataset, log) -> Optional[ClassMetrics]:
    """The model's class metrics on the test data, or None; a model whose classes cannot be read is noted, not
    failed, since its training has already succeeded."""
    try:
        return class_metrics(model, data.test, data.test_labels, data.class_names)
    except PyroVAEError as e:
        log(f"note: no class metrics: {e}")
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
        _remove_run_files(out)
        yield out


def default_iw_samples(num_points: int) -> int:
    """K for a run's final log p(x): 1000 per point up to 2000 points, then about 2 million draws in all (>= 100)."""
    return DEFAULT_IW_SAMPLES if num_points <= 2000 else max(100, 2_000_000 // num_points)


#: what every checkpoint the trainer writes holds; :func:`train` adds the config and the data's width
_TRAINER_KEYS = ("model", "train_state")
_RUN_KEYS = ("config", "data_dim")


def load_run(run_dir: os.PathLike, device: str = "cpu", model=None, *, program_path: Optional[os.PathLike] = None,
             trust_code: bool = False) -> Run:
    """Load a finished (or interrupted) run: the config and the trained model, in eval mode.

    The model is built from ``config.toml``, which must agree with the copy
    inside ``checkpoint.pt``.  A program of your own (``model.program``) is
    imported only from the installed packages, from ``program_path``, or from
    the folder the run records when this user trained from that very file; the
    run folder's own code runs only with ``trust_code=True`` (rundir/trust.py).

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
        return Run(run_dir, None, model, None, _history(payload, path), _read_metrics(run_dir))
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
    return Run(run_dir, cfg, model, None, history, _read_metrics(run_dir), image_shape=shape, data_dim=data_dim)


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
        saved = config_from_dict(payload["config"]).model
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


def _read_metrics(run_dir: Path) -> Optional[dict]:
    """metrics.json, or None when it is missing or damaged (only commands that show it need it)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def load_run_data(run: Run) -> Dataset:
    """The data a run was trained on (as its config names it)."""
    if run.config is None:
        raise PyroVAEError(f"{str(run.run_dir)!r} was written by pv.fit from Python and does not record its data: "
                           "pass the data yourself")
    return load_data(run.config.data, data_likelihood(run.config.model))
