"""The SVI trainer: setup, the step, the epoch loop, signals, checkpoints.

:meth:`Trainer.step` is one minibatch (a step engine, then the non-finite
policy); :meth:`Trainer.fit` runs epochs over it with progress, periodic test
ELBO, checkpoints and signal handling.  All mutable training state is in the
checkpoint, so a resumed run continues bit-exactly where it stopped (on CPU).

Why not ``pyro.infer.SVI``: ``SVI.step`` computes gradients and steps the
optimizer in one call, so a non-finite loss or gradient reaches the weights
before anyone can look.  Here the loss is the objective's
``differentiable_loss`` (the same Pyro ELBO SVI would use), and one
``torch.optim.Adam`` holds every parameter.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import List, Optional

import torch
from pyro import poutine

from ..config import TrainConfig
from ..data.checks import all_finite, check_support as check_support_chunked, describe_nonfinite
from ..data import batch
from ..data.mapped import MappedRows
from ..errors import PyroVAEError, TrainingInterrupted
from ..evaluation.memory import is_oom, test_elbo_with_retry, training_oom_error
from ..infer.objectives import make_objective, scale_sites
from ..infer.rng import isolated_rng
from ..infer.probe import likely_cause
from ..infer.sites import observed_name
from ..models.params import runs_own_model
from ..models.protocol import check_protocol
from ..rundir.checkpoint import load_state_dict_checked, save_checkpoint
from ..rundir.files import clean_stale_temporaries
from ..rundir.history import write_history
from ..progress import progress_bar
from ..serialize import to_plain
from ..runtime import distributed
from .capture import Captures
from .engines import CapturedEngine, EagerEngine, GraphEngine, compile_networks
from .nonfinite import NonFinitePolicy, nonfinite_sites, site_order
from .optim import is_fused, kernel_choice, make_adam, restore_kernel_choice
from .state import TrainState
from .validation import VALIDATION_MODES, FirstStepValidation


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PyroVAEError("train.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(name)


class Trainer:
    """Fits a latent-variable model with SVI.

    ``model`` is anything with ``model(x)``, ``guide(x)``, ``latent_sites`` and
    ``obs_site``; the constructor only stores its arguments.

    Performance switches: ``config.capture`` (capture.py) — ``"auto"`` records
    a built-in model's step once per batch shape and replays it (``"on"``: user
    models too, ``"off"``: never).  ``validation`` (validation.py) — ``"auto"``
    runs Pyro validation for the first step only when the model's likelihood
    checks the data's support up front; ``"always"`` keeps it on; ``"first"``
    switches it off after the first step for any model.  ``cuda_graph=True``
    (CUDA only) replays the whole step as a CUDA graph.  ``compile=True`` (or a
    backend name) applies ``torch.compile`` to the encoder and decoder networks.
    """

    def __init__(self, model, config: TrainConfig = TrainConfig(), *, run_dir: Optional[os.PathLike] = None,
                 progress: Optional[bool] = None, validation: str = "auto", cuda_graph: bool = False,
                 compile: bool | str = False):
        if validation not in VALIDATION_MODES:
            raise PyroVAEError(f"validation = {validation!r}: expected one of {', '.join(VALIDATION_MODES)}")
        self.model = model
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.device = resolve_device(config.device)
        self.state = TrainState()
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.params: List[torch.Tensor] = []
        self.param_names: List[str] = []
        self._stop_signal: Optional[int] = None
        self._site_order = {}  # sample-site names of guide and model, in trace order
        self.validation = validation
        self.cuda_graph = cuda_graph
        self.compile = compile
        self._first_step = FirstStepValidation(model, validation)
        self._captures = Captures(self, self._first_step)  # recorded steps, per batch shape and beta
        self._engine = None  # built by setup
        self._policy: Optional[NonFinitePolicy] = None
        self._dist = distributed.SINGLE  # the process group, joined by setup (runtime/distributed.py)
        self._sync = distributed.GradientSync()
        self._last_engine: Optional[str] = None
        if cuda_graph and self.device.type != "cuda":
            raise PyroVAEError("cuda_graph=True needs train.device = 'cuda' (or 'auto' on a machine with a GPU)")
        #: extra entries saved in every checkpoint (the run's config, data shape, ...)
        self.meta: dict = {}

    # -- setup --------------------------------------------------------------
    @runs_own_model
    def setup(self, x_example: torch.Tensor, data_size: int, more_examples=()) -> None:
        """Build objective and optimizer and check one forward pass; idempotent.

        ``more_examples``: batches of the other row groups of named data (rows
        without a label run another branch of the program, with its own parameters).
        """
        check_protocol(self.model)
        if self.optimizer is not None:
            return
        if isinstance(self.model, torch.nn.Module):
            self.model.to(self.device)
        cfg = self.config
        self.objective = make_objective(cfg.elbo, cfg.num_particles, getattr(self.model, "max_plate_nesting", float("inf")))
        self._scale_inside = getattr(self.objective, "minibatch_scale_inside", True)
        self._takes_data_size = "data_size" in inspect.signature(self.model.model).parameters
        self.data_size = int(data_size)
        for x in (x_example, *more_examples):
            self._sanity_check(x)
        self.params, self.param_names = self._collect_params(x_example, *more_examples)
        if not self.params:
            raise PyroVAEError(f"{type(self.model).__name__} has no trainable parameters")
        wants_graph = bool(self.cuda_graph) and self.device.type == "cuda"
        self.optimizer = make_adam(self.params, cfg.lr, capturable=wants_graph)
        self._kernel_choice = kernel_choice(self.optimizer)
        # CUDA: the fused kernel skips a non-finite update on the device, so the host reads
        # the flag once, after the step is queued, instead of stalling in the middle of it
        masked = self.device.type == "cuda" and is_fused(self.optimizer)
        # several processes (torchrun): every engine averages the gradients across them (runtime/distributed.py)
        self._dist = distributed.current()
        self._sync = distributed.GradientSync(self._dist)
        if wants_graph and self._dist.active:
            raise PyroVAEError("cuda_graph=True runs one process only: drop it under torchrun (the step is "
                               "captured all the same)")
        eager = EagerEngine(self.loss, self.params, self.optimizer, masked=masked, sync=self._sync)
        self._engine = CapturedEngine(self._captures, eager, self.device)
        if wants_graph:
            self._engine = GraphEngine(self._engine, eager, cfg.batch_size, cfg.kl_warmup_epochs <= 0,
                                       self._first_step, self.device)
        self._policy = NonFinitePolicy(cfg.on_nonfinite, self.params, self.optimizer)
        if self.compile:  # True: inductor; a string names another torch.compile backend
            compile_networks(self.model, "inductor" if self.compile is True else self.compile)

    def setup_data(self, train_x, binarize: str = "none", obs: Optional[str] = None) -> None:
        """:meth:`setup` on a few rows of each row group of the training data (what :meth:`fit` does first).

        ``obs``: the observations' array of named data, when the caller has found it (sites.observed_name).
        """
        groups = batch.groups(train_x)
        obs = observed_name(self.model, train_x) if obs is None else obs
        examples = [batch.to(example_batch(train_x, binarize, obs=obs, group=g), self.device)
                    for g in groups]
        self.setup(examples[0], batch.num_rows(train_x), more_examples=examples[1:])

    def _collect_params(self, *examples):
        """Module parameters plus any param-store params the model and guide use (on any of the example batches)."""
        params, names, seen = [], [], set()
        if isinstance(self.model, torch.nn.Module):
            for name, p in self.model.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p)); params.append(p); names.append(name)
        with poutine.trace(param_only=True) as tr:
            for x in examples:
                self.loss(_head(x, 2))
        for name, site in sorted(tr.trace.nodes.items()):
            p = site["value"].unconstrained()
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p)); params.append(p); names.append("param_store:" + name)
        return params, names

    def _sanity_check(self, x):
        """The objective fitted to the program, and one loss on a tiny batch, before any training.

        A failure names the cause seen (infer/sites.py words it as for evaluation).
        """
        try:
            with isolated_rng(0, self.device):
                self.objective.prepare(self.model, _head(x, 4))
                loss = self.loss(_head(x, 4))
        except PyroVAEError:
            raise
        except (ValueError, RuntimeError, TypeError, NotImplementedError, IndexError, AssertionError) as e:
            if is_oom(e):
                raise training_oom_error(e, self.device, self.config.batch_size, self.config.num_particles) from None
            msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip()) or type(e).__name__
            raise PyroVAEError(f"the model fails on its first batch ({msg[:300]}): {likely_cause(e)}") from None
        if not torch.isfinite(loss):
            raise PyroVAEError(
                "the loss is not finite before training starts: check the data scale and the likelihood's scale"
            )
        with isolated_rng(0, self.device):
            self._site_order = site_order(self.model, _head(x, 4))

    # -- one step -------------------------------------------------------------
    def beta_at(self, epoch_progress: float) -> float:
        cfg = self.config
        if cfg.kl_warmup_epochs <= 0:
            return cfg.beta
        return cfg.beta * min(1.0, epoch_progress / cfg.kl_warmup_epochs)

    @runs_own_model
    def loss(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """The minibatch loss (differentiable): an unbiased estimate of the full-data negative ELBO."""
        b = batch.num_rows(x)
        kwargs = {}
        outer = 1.0
        factor = self.data_size / b
        if not self._scale_inside:
            outer = factor  # e.g. IWAE: scale after the log-mean-exp, not inside it
        elif self._takes_data_size:
            kwargs["data_size"] = self.data_size
        elif factor != 1.0:
            outer = factor  # equal to poutine.scale on every site
        # (a tensor beta: a step recorded with the KL weight as an input, capture.py)
        scaled = torch.is_tensor(beta) or beta != 1.0
        with scale_sites(self.model.latent_sites, beta) if scaled else contextlib.nullcontext():
            loss = batch.call(self.objective.differentiable_loss, x, self.model.model, self.model.guide, **kwargs)
        return loss * outer if outer != 1.0 else loss

    @runs_own_model
    def step(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """One SVI step on minibatch ``x``; returns the loss (full-data scale, detached; NaN if not applied)."""
        result = self._engine.step(x, beta)
        self._last_engine = result.engine
        if not result.finite:
            return self._on_nonfinite(x, result)
        self._policy.good_step()
        return result.loss

    @property
    def engine_name(self) -> Optional[str]:
        """Which engine took the last step: 'eager', 'captured' or 'cuda_graph' (None before the first)."""
        return self._last_engine

    @property
    def captured_shapes(self) -> List[tuple]:
        """The batch shapes whose steps replay a recording (capture.py)."""
        return self._captures.shapes

    @runs_own_model
    def record(self, x: torch.Tensor, beta: float = 1.0):
        """The recorded step for batches like ``x`` (recording it now if new); None: they run eagerly.

        The recording draws nothing from the training random streams.
        """
        return self._captures.get(x, beta) if self._captures.usable() else None

    def _on_nonfinite(self, x, result):
        st = self.state
        st.skipped += 1
        self._policy.bad_step(
            where=f"step {st.step + 1}, epoch {st.epoch + 1}, batch {st.batch + 1}",
            diagnose=lambda: self.nonfinite_sites(x),
            save=lambda: self.save_checkpoint() if self.run_dir is not None else None,
            loss=result.loss, error=result.error, device=self.device)
        return torch.full((), float("nan"), device=self.device)

    @runs_own_model
    def nonfinite_sites(self, x) -> List[str]:
        """Names of sample sites whose value, log-density or distribution arguments are NaN/Inf on ``x``."""
        return nonfinite_sites(self.model, x, self._site_order)

    # -- epochs -----------------------------------------------------------------
    @runs_own_model
    def fit(self, train_x: torch.Tensor, test_x: Optional[torch.Tensor] = None, *, binarize: str = "none") -> List[dict]:
        """Train for ``config.epochs`` epochs (continuing from the current state)."""
        cfg = self.config
        if isinstance(self.model, torch.nn.Module):
            self.model.to(self.device)  # before the data's arrays are matched to its sites
        train_x = self._to_device(train_x, "training data")
        self._obs = observed_name(self.model, train_x)  # None for one tensor
        self._check_width(train_x, "training data")
        test_x = self._to_device(test_x, "test data") if test_x is not None else None
        if test_x is not None:
            self._check_width(test_x, "test data")
        n = batch.num_rows(train_x)
        self._groups = batch.groups(train_x)
        if any(self._obs in g["absent"] for g in self._groups):
            raise PyroVAEError(f"training data[{self._obs!r}] holds the observations but has missing rows (-1 or "
                               "NaN throughout): drop those rows; only labels and inputs may be missing")
        check_batch_size(n, cfg.batch_size)
        distributed.check_batches(cfg.batch_size, [len(g["rows"]) for g in self._groups])
        if test_x is not None and len(batch.groups(test_x)) > 1:
            raise PyroVAEError("the test data has arrays that are missing (-1 or NaN) in some rows only: give the test "
                               "set whole (every label), or leave the partly missing array out of it")
        if self._first_step.skips and self.validation == "auto":
            # Pyro stops checking the data's support once validation is off, so
            # check it here, once (run.prepare did it too; this covers direct use)
            obs = self._obs
            if binarize != "dynamic":
                check_support_chunked(self.model.likelihood, batch.observed(train_x, obs), "the training data")
            if test_x is not None:
                check_support_chunked(self.model.likelihood, batch.observed(test_x, obs), "the test data")
        self.setup_data(train_x, binarize, obs=self._obs)
        if self.state.fresh:
            self.state.seed(cfg.seed)
            if self._dist.rank:  # the model's draws on rank r > 0: its own stream (runtime/distributed.py)
                torch.manual_seed(distributed.rank_seed(cfg.seed, self._dist.rank))
        if not self._policy.marked:
            self._policy.mark()  # resumed mid-epoch: the restored state is the last good one
        if self.run_dir is not None and self._dist.is_main:
            from ..rundir.run import make_folder  # the run-directory layer sits above the trainer

            make_folder(self.run_dir)  # now, not at the first checkpoint after an epoch of training
            clean_stale_temporaries(self.run_dir)
        num_batches = sum(math.ceil(len(g["rows"]) / cfg.batch_size) for g in self._groups)
        bar = progress_bar(cfg.epochs * num_batches, self.progress, unit="step", leave=True,
                           initial=self.state.epoch * num_batches + self.state.batch)
        old_handlers = self._install_signal_handlers()
        try:
            with self._first_step.during_fit():
                while self.state.epoch < cfg.epochs:
                    self._run_epoch(train_x, test_x, n, num_batches, binarize, bar)
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(e):
                raise
            raise training_oom_error(e, self.device, cfg.batch_size, cfg.num_particles) from None
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
        return self.state.history

    def _run_epoch(self, train_x, test_x, n, num_batches, binarize, bar):
        cfg, st = self.config, self.state
        if st.perm is None:
            st.perm = torch.randperm(n, generator=st.data_rng)
            st.batch, st.epoch_loss, st.epoch_finite, st.epoch_seconds = 0, 0.0, 0, 0.0
            self._policy.mark()
        mapped = isinstance(train_x, MappedRows)
        # in-memory data is on the device and gathered there; a memory map is
        # read on the host (only this batch's rows) and the batch moved over
        plan = epoch_batches(st.perm, self._groups, cfg.batch_size, None if mapped else self.device)
        t0 = time.perf_counter()
        while st.batch < num_batches:
            idx, absent = plan[st.batch]
            if self._dist.active:  # this rank's contiguous slice of the global batch
                local = idx[distributed.shard(len(idx), self._dist)]
                self._sync.share, self._sync.stop = len(local) / len(idx), self._stop_signal is not None
                idx = local
            x = batch.without(batch.rows(train_x, idx), absent)
            if mapped:
                x = x.to(self.device, non_blocking=True)
            if binarize == "dynamic":
                obs = self._obs
                x = batch.replace(x, obs, torch.bernoulli(batch.observed(x, obs)))
            beta = self.beta_at(st.epoch + st.batch / num_batches)
            loss = self.step(x, beta)
            self._first_step.after_step()
            st.step += 1
            st.batch += 1
            value = float(loss) / n
            if math.isfinite(value):
                st.epoch_loss += value
                st.epoch_finite += 1
            if bar is not None:
                bar.update(1)
                if st.batch % 10 == 0 or st.batch == num_batches:
                    bar.set_postfix_str(f"epoch {st.epoch + 1}/{cfg.epochs} loss {value:.4g}", refresh=False)
            stop = self._stop_signal
            if self._sync.active:  # only a stop every rank agreed on in this step's reduce
                stop = self._sync.stop_signal(stop) if self._sync.stop_agreed else None
            if stop is not None:
                st.epoch_seconds += time.perf_counter() - t0
                saved = self.save_checkpoint() if self.run_dir is not None else None
                raise TrainingInterrupted(stop, saved)
        st.epoch_seconds += time.perf_counter() - t0
        st.epoch += 1
        row = {
            "epoch": st.epoch,
            # the mean over the steps that had a loss; an epoch whose every step was skipped has none
            "train_loss": st.epoch_loss / st.epoch_finite if st.epoch_finite else None,
            "test_elbo": None,
            "seconds": st.epoch_seconds,
            "beta": self.beta_at(st.epoch),
        }
        if test_x is not None and (st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs):
            row["test_elbo"] = test_elbo_with_retry(self.model, test_x, seed=cfg.seed)
        st.history.append(row)
        st.perm = None
        st.batch = 0
        if bar is not None:
            bar.set_postfix_str(
                f"epoch {st.epoch}/{cfg.epochs} loss "
                + (f"{row['train_loss']:.4g}" if row["train_loss"] is not None else "none (every step skipped)")
                + (f" test elbo {row['test_elbo']:.4g}" if row["test_elbo"] is not None else ""),
                refresh=True,
            )
        if self.run_dir is not None and (st.epoch % cfg.checkpoint_every == 0 or st.epoch == cfg.epochs):
            self.save_checkpoint()

    def _check_width(self, x, what) -> None:
        """Named data: the observations' array has the model's columns (one tensor: _to_device checks it)."""
        dim = getattr(self.model, "data_dim", None)
        if not batch.is_named(x) or dim is None:
            return
        obs = batch.observed(x, self._obs)
        if obs.dim() != 2 or obs.shape[1] != dim:
            raise PyroVAEError(f"{what}[{self._obs!r}] has shape {tuple(obs.shape)} but the model "
                               f"expects {dim} columns: use data that matches the model")

    def _to_device(self, x, what):
        if batch.is_named(x):
            return batch.prepare(x, what, self.device, torch.float32)  # its width: _check_width
        mapped = isinstance(x, MappedRows)
        if not mapped:
            if not isinstance(x, torch.Tensor):
                raise PyroVAEError(f"{what} must be a torch.Tensor (use pyro_vae.load_data or torch.as_tensor)")
            if x.dim() != 2 or x.shape[0] == 0:
                raise PyroVAEError(f"{what} must be a non-empty (rows, columns) matrix, got shape {tuple(x.shape)}")
        dim = getattr(self.model, "data_dim", None)
        if dim is not None and x.shape[1] != dim:
            raise PyroVAEError(
                f"{what} has shape {tuple(x.shape)} but the model expects {dim} columns: "
                "use data that matches the model, or build the model for this data"
            )
        if mapped:
            # stays on the host, read a batch at a time (finiteness was checked chunk by chunk)
            return x
        x = x.to(self.device, torch.float32)
        if not all_finite(x):  # one pass, no data-sized temporaries (torch.isfinite makes three)
            # caught here, not as a NaN loss (or a distribution's argument error) steps later
            raise PyroVAEError(
                f"{what} has {describe_nonfinite(x)}: clean it, or load it with pyro_vae.load_data "
                "and data.drop_nonfinite = true"
            )
        return x

    # -- signals ---------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        self._stop_signal = None

        def handler(signum, frame):
            if self._stop_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop ``fit`` after the current step, saving a checkpoint, as SIGINT/SIGTERM do."""
        self._stop_signal = signum

    def _restore_signal_handlers(self, old):
        if old:
            for s, h in old.items():
                signal.signal(s, h)

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict() if isinstance(self.model, torch.nn.Module) else {},
            "params": {name: p.detach().cpu() for name, p in zip(self.param_names, self.params)
                       if name.startswith("param_store:")},
            "optimizer": self.optimizer.state_dict(),
            "train_state": self.state.to_dict(),
            "rng": self.state.rng_dict(),
            "train_config": to_plain(self.config),
        }

    @runs_own_model
    def load_state_dict(self, payload: dict, path="checkpoint") -> None:
        """Restore a :meth:`state_dict` (call :meth:`setup` first)."""
        if isinstance(self.model, torch.nn.Module):
            load_state_dict_checked(self.model, payload["model"], path)
        with torch.no_grad():
            lookup = dict(zip(self.param_names, self.params))
            for name, value in payload.get("params", {}).items():
                if name not in lookup:
                    raise PyroVAEError(f"checkpoint {path!s} has parameter {name!r} that the model lacks")
                lookup[name].copy_(value)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as e:
            raise PyroVAEError(f"checkpoint {path!s}: optimizer state does not fit this model ({e})") from None
        # the saved groups carry the saving trainer's kernel flags; keep this trainer's
        restore_kernel_choice(self.optimizer, **self._kernel_choice)
        self.state = TrainState.from_dict(payload["train_state"], payload["rng"])
        distributed.restore_rank_rng(payload["rng"], self.config.seed, self.state.step, self._dist)

    def save_checkpoint(self) -> Path:
        """Rank 0 writes (every rank's model stream included); the others wait until it is on disk."""
        path = self.run_dir / "checkpoint.pt"
        payload = self.state_dict() | self.meta
        if self._dist.active:
            payload["rng"]["ranks"] = distributed.all_gather_objects(torch.get_rng_state())
        if self._dist.is_main:
            save_checkpoint(payload, path)
            write_history(self.state.history, self.run_dir / "history.csv")
        distributed.barrier()
        return path


def check_batch_size(rows: int, batch_size: int) -> None:
    if rows < batch_size:
        raise PyroVAEError(
            f"the training data has {rows} rows, fewer than one batch (train.batch_size = {batch_size}): "
            "lower train.batch_size or add data"
        )


def example_batch(x, binarize: str = "none", size: int = 64, obs: Optional[str] = None, group=None):
    """A few rows (of one row group of named data) to build and sanity-check the model on, binarized like training batches."""
    if group is not None:
        x = batch.without(batch.rows(x, group["rows"][:size]), group["absent"])
    else:
        x = batch.rows(x, slice(0, min(batch.num_rows(x), size)))
    if binarize == "dynamic":
        o = batch.observed(x, obs)
        with isolated_rng(0, o.device):
            x = batch.replace(x, obs, torch.bernoulli(o))
    return x


def _head(x, k: int):
    return batch.rows(x, slice(0, min(batch.num_rows(x), k)))


def epoch_batches(perm: torch.Tensor, groups, batch_size: int, device=None):
    """The epoch's batches as (row indices on ``device``, absent names), from its permutation.

    One row group (no missing arrays): consecutive slices of ``perm``.  Several:
    rows are dealt in ``perm`` order to their group's open batch, and a batch
    is emitted when full (the groups' last, short batches at the end), so
    batches never mix labelled and unlabelled rows and the order needs no
    random stream beyond the permutation (an exact resume rebuilds it).
    """
    if len(groups) == 1:
        absent = groups[0]["absent"]
        return [(idx, absent) for idx in perm.to(device).split(batch_size)]  # one transfer, then views
    n = int(perm.numel())
    owner = torch.empty(n, dtype=torch.long)
    for i, g in enumerate(groups):
        owner[g["rows"]] = i
    open_rows = [[] for _ in groups]
    out = []
    for r, o in zip(perm.tolist(), owner[perm].tolist()):
        open_rows[o].append(r)
        if len(open_rows[o]) == batch_size:
            out.append((torch.tensor(open_rows[o], device=device), groups[o]["absent"]))
            open_rows[o] = []
    out.extend((torch.tensor(rows, device=device), groups[o]["absent"]) for o, rows in enumerate(open_rows) if rows)
    return out


def fit(model, train_x, test_x=None, config: TrainConfig = TrainConfig(), *, run_dir=None,
        progress: Optional[bool] = None, binarize: str = "none", validation: str = "auto") -> Trainer:
    """Train ``model`` on ``train_x`` and return the :class:`Trainer` (its ``state.history`` holds the curve).

    ``validation``: as for :class:`Trainer` ("first" vouches for the data of a model
    whose likelihood cannot check it up front, which also lets ``capture = "on"`` record it).
    """
    from ..rundir.run import fit_folder  # the run-directory layer sits above the trainer

    trainer = Trainer(model, config, run_dir=run_dir, progress=progress, validation=validation)
    # run_dir is checked and created before any training, not when the first checkpoint is written
    with fit_folder(run_dir) if run_dir is not None else contextlib.nullcontext():
        trainer.fit(train_x, test_x, binarize=binarize)
    return trainer
