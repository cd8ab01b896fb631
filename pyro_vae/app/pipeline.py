"""Training a config into a run folder, in order: prepare, check the folder, fit, evaluate, class metrics, plots.

Everything that can fail on bad input (config, data, support, output folder) is checked before the folder
is created, so a failed start writes nothing.  The folder's files: store/folder.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from ..config import Config, EvalConfig, ProgramSpec
from ..data import batch
from ..data.arrays import Dataset
from ..errors import PyroVAEError
from ..evaluation.memory import test_elbo_with_retry
from ..evaluation.steps import row_unit
from ..infer.rng import forked_rng
from ..infer.sites import is_latent, observed_name, trace_pair
from ..figures import counts as count_figures, run as run_figures, topics as topic_figures
from ..models.counts import CountLikelihood
from ..models.graph import GraphModel
from ..models.protocol import model_device, model_modules
from ..runtime import distributed, failures
from ..runtime.threads import ThreadChoice, use_threads
from ..store.checkpoint import upgrade
from ..store.files import write_text_atomic
from ..store.truth import truth_arrays, write_truth
from ..store.folder import PLOTS_DIR, check_output_folder, remove_run_files, resume_payload
from ..store.lock import RunLock
from ..store.trust import RunCode, remember
from ..training.batches import check_arrays, check_batch_size
from ..training.signals import interrupting
from ..training.trainer import Trainer
from .evaluate import RunEvaluation, default_iw_samples, density_data, evaluate_model
from .model_fit import fit_threads
from .prepare import named_splits, prepare
from .runs import Run


#: ``train(iw_samples=...)`` not given: the config's ``evaluate.iw_samples`` (a resumed run's, the one it started with)
FROM_CONFIG = "from config"


def train(config: Config, out_dir: Optional[os.PathLike] = None, *, resume: bool = False,
          progress: Optional[bool] = None, iw_samples: Union[int, str, None] = FROM_CONFIG, plots: bool = True,
          overwrite: bool = False, log=None, program_path: Optional[os.PathLike] = None,
          trust_code: bool = False) -> Run:
    """Train ``config`` into ``out_dir``: a new folder, an existing run with ``resume=True``, or, with
    ``overwrite=True``, a folder whose previous run is replaced (only files this library wrote are removed).

    A resumed run's program is built as :func:`~pyro_vae.app.runs.load_run` builds it (``program_path``,
    ``trust_code``); a new run records the program file it trains from, for this user's later commands on the
    run (store/trust.py).

    ``iw_samples``: importance samples per test point of the final log p(x) ("auto"; None skips it); by default the
    config's ``evaluate.iw_samples``.  What is used is recorded there (resolved), so a resumed run keeps it.

    Under torchrun every process calls this: they train data-parallel
    (runtime/distributed.py) and rank 0 alone writes the folder and logs.
    """
    joined = not torch.distributed.is_initialized()
    with failures.claim_on_error():
        group = distributed.init_from_env(config.train.device)
    joined = joined and group.active
    if group.active:
        try:
            with failures.claim_on_error():  # before the group closes under the other ranks
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
    if iw_samples not in ("auto", None, FROM_CONFIG) and (isinstance(iw_samples, bool)
                                                           or not isinstance(iw_samples, int) or iw_samples < 1):
        # checked now, not after training, when the final evaluation would reject it
        raise PyroVAEError(f"--iw-samples must be an integer >= 1 or 'auto' (got {iw_samples!r}): pass a positive number of samples")
    if iw_samples != FROM_CONFIG:  # given: it replaces the config's (a resumed run's too), and is recorded
        config = config.replace(evaluate=EvalConfig("none" if iw_samples is None else iw_samples))
    run_code = RunCode(out, Path(program_path) if program_path else None, trust_code) if resume else None
    cfg, data, model, payload = _start(config, out, resume, overwrite, run_code, group, log)
    train_data, test_data = named_splits(model, data)
    cfg = _resolved_evaluation(cfg, batch.num_rows(test_data))
    for note in data.notes:
        log(f"note: {note}")
    notes: list = []  # the estimator train.elbo = "auto" chose: said once training stands, as the thread count
    trainer = Trainer(model, cfg.train, run_dir=out, test_elbo=test_elbo_with_retry, progress=progress,
                      log=notes.append)
    trainer.setup_data(train_data, data.binarize)
    # train.elbo = "auto" is chosen now, from the program: the run's config.toml and checkpoint name the choice,
    # so that a resume, or a later version whose rule differs, trains on with the same estimator
    cfg = cfg.replace(train=trainer.config)
    trainer.meta = {"config": cfg.to_dict(), "data_dim": data.dim,
                    "image_shape": list(data.image_shape) if data.image_shape else None}
    if payload is not None:
        trainer.load_state_dict(upgrade(payload, model), out / "checkpoint.pt")
    start_epoch, start_batch = trainer.state.epoch, trainer.state.batch
    writes = out is not None and group.is_main
    trainer.threads = _threads(model, cfg, data, payload)
    trainer.meta["threads"] = trainer.threads.threads  # in every checkpoint: a resume under auto keeps it
    with contextlib.ExitStack() as held:
        if writes:
            held.enter_context(_claim(out, cfg, resume, overwrite))
            write_truth(out, data.truth)  # a synthetic source's: beside the run, as data
        if payload is not None:  # said once the folder is ours: a refusal (a run in use) is the only line
            log(_resume_note(start_epoch, start_batch, cfg.train.epochs))
        held.enter_context(use_threads(trainer.threads))  # the final evaluation too: it shares the machine alike
        held_out = density_data(model, test_data)
        history = trainer.fit(train_data, held_out, binarize=data.binarize)
        for note in [*notes, trainer.threads.line()]:  # once training stands: a failure on the way is the only line
            log(note)
        for m in model_modules(model):
            m.eval()
        # the trained state is saved: a signal from here on stops at once, the lock released as the stack unwinds
        saved = out / "checkpoint.pt" if writes and (out / "checkpoint.pt").exists() else None
        held.enter_context(interrupting(saved))
        found = _final_evaluation(model, data, cfg.evaluate.iw_samples, cfg.train.seed, progress, group.is_main, log)
        metrics = found.metrics(seconds_train=sum(h["seconds"] for h in history), **trainer.threads.record())
        figures = None
        if writes:
            write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            figures = _plots(model, data, history, out / PLOTS_DIR, found) if plots else None
    return Run(out, cfg, model, data, history, metrics, figures, data.image_shape, start_epoch=start_epoch,
               start_batch=start_batch, data_dim=data.dim, classes=found.classes)


def _resume_note(epoch: int, batch: int, epochs: int) -> str:
    """Where a resumed run picks up: ``epoch`` epochs and ``batch`` batches of the next done, of ``epochs``."""
    if epoch >= epochs:  # stopped in its final evaluation, or finished: nothing left to train
        return f"note: {'its one epoch' if epochs == 1 else f'all {epochs} epochs'} already trained; running the final evaluation"
    if batch:
        return f"resuming in epoch {epoch + 1} of {epochs}, after its batch {batch}"
    if epoch:
        return f"resuming after epoch {epoch} of {epochs}"
    return f"resuming at the start of epoch 1 of {epochs} (the run stopped before its first step)"


def _start(config: Config, out: Optional[Path], resume: bool, overwrite: bool, run_code: Optional[RunCode], group,
           log):
    """(config resolved, data, model, checkpoint to resume or None), every check passed on every rank: a failure
    anywhere stops every rank before a file is written."""
    try:
        payload = resume_payload(out, log) if resume else None
        cfg, data, model = prepare(config, run_code)
        if payload is not None:
            _check_resumable(payload, out, cfg, data)
        train, test = named_splits(model, data)
        check_batch_size(batch.num_rows(train), cfg.train.batch_size)
        # the fit's own checks of the arrays, now: found once the folder is made, they would leave it behind
        check_arrays(model, train, density_data(model, test), observed_name(model, train))
        distributed.check_batches(cfg.train.batch_size, [len(g["rows"]) for g in batch.groups(train)], group)
        if out is not None and not resume:
            check_output_folder(out, replace=overwrite)
        failed = None
    except PyroVAEError as e:
        if not group.active:
            raise
        cfg = data = model = payload = None
        failed = e
    if group.active:
        distributed.agree(distributed.fingerprint(
            None if cfg is None else cfg.to_toml(), None if data is None else batch.describe(train),
            None if data is None else batch.describe(test), out and out.resolve(), resume,
            None if payload is None else payload.get("train_state", {}).get("step")), failed)
    return cfg, data, model, payload


def _threads(model, cfg: Config, data: Dataset, payload: Optional[dict]) -> ThreadChoice:
    """The run's thread count (runtime/threads.py); a resumed run under auto keeps the count it trained with, since
    another count can change the float sums of large products and an exact resume is promised."""
    choice = fit_threads(model, cfg.train, len(data.train_x))
    kept = (payload or {}).get("threads")
    if choice.source == "auto" and isinstance(kept, int) and not isinstance(kept, bool) and kept >= 1:
        return ThreadChoice(kept, "auto", f"auto: {kept}, the count this run trained with, so that it resumes "
                                          "bit for bit")
    return choice


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


@contextlib.contextmanager
def _claim(out: Path, cfg: Config, resume: bool, overwrite: bool):
    """The run folder, made and locked while the run trains: a fresh run's folder emptied of a previous run's
    files, and the resolved config written (a program's source recorded as trained from by this user)."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    unmade = False
    try:
        with RunLock(out):
            if not resume:
                # checked again under the lock: another process may have written here since
                check_output_folder(out, replace=overwrite)
                remove_run_files(out)
            write_text_atomic(out / "config.toml", cfg.to_toml())
            if isinstance(cfg.model, ProgramSpec):
                remember(cfg.model.program_file, cfg.model.program_sha256)
            try:
                yield
            except PyroVAEError:
                # an error before the first checkpoint leaves no run to resume: the files this run wrote (under
                # its lock) would only make the retry refuse the folder ("already holds a run")
                if not resume and not (out / "checkpoint.pt").exists():
                    remove_run_files(out)
                    unmade = made
                raise
    finally:
        if unmade:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: nothing else was put there meanwhile


def _resolved_evaluation(cfg: Config, num_test: int) -> Config:
    """``evaluate.iw_samples = "auto"`` as the number it stands for with ``num_test`` test points."""
    if cfg.evaluate.iw_samples != "auto":
        return cfg
    return cfg.replace(evaluate=EvalConfig(default_iw_samples(num_test)))


def unit_of_test_rows(model, test) -> str:
    """What one test row is called, by the evaluation header's rule: "sequence" for a chain (a declared one, or a
    program's own z_1 .. z_T), else "point"."""
    if hasattr(model, "chain"):
        return "sequence"
    try:
        device = model_device(model)
        with torch.no_grad(), forked_rng(device):  # the run's random stream stays as it was
            _, mtr = trace_pair(model, batch.to(batch.rows(test, slice(0, 1)), device))
    except Exception:  # noqa: BLE001 - a word in a progress line: the evaluation itself reports a failing program
        return "point"
    return row_unit([n for n, site in mtr.nodes.items() if is_latent(site)])


def _final_evaluation(model, data: Dataset, iw_samples, seed: int, progress, reports: bool, log) -> RunEvaluation:
    """The trained model on the test data (every rank; the class metrics on the rank that reports)."""
    n = len(data.test_x)
    k = None if iw_samples == "none" else iw_samples
    unit = unit_of_test_rows(model, data.test) + "s"
    log(f"evaluating on {n} test {unit}" + (f" ({k} importance samples each)..." if k else "..."))
    return evaluate_model(model, data.test, iw_samples=k, seed=seed, labels=data.test_labels,
                          class_names=data.class_names, progress=progress, classes=reports, log=log,
                          counts=data.test_x, vocabulary=data.feature_names,
                          truth=truth_arrays(data.truth) if data.truth else None)


def _plots(model, data: Dataset, history, folder: Path, found: RunEvaluation):
    """The run's figures: a one-latent model's, a graph's, or a program's curve and graph (the others need a
    built-in's encoder and decoder); a count model's (figures/counts.py) are not images, and a topic model's
    add its topics' top words (figures/topics.py)."""
    if isinstance(getattr(model, "likelihood", None), CountLikelihood):
        out = count_figures.count_plots(model, data, history, folder)
        if found.topics is not None:
            out.append(topic_figures.topic_words(found.topics, folder / "topics.png"))
        if found.recovery is not None:
            out.append(count_figures.recovery_figure(found.recovery, folder / "recovery.png"))
        return out
    if getattr(model, "one_latent", None):
        return run_figures.run_plots(model, data, history, folder)
    if hasattr(model, "sample_sequences") and hasattr(model, "chain"):  # a declared model over time
        return run_figures.sequence_plots(model, data, history, folder, found.metrics())
    if isinstance(model, GraphModel):
        return run_figures.graph_plots(model, data, history, folder, found.classes)
    return run_figures.program_plots(model, data, history, folder)
