"""Stochastic variational inference: an explicit-state trainer.

The low-level API is :meth:`Trainer.step` (one minibatch: loss, NaN guard,
optimizer step); :meth:`Trainer.fit` runs epochs over it with progress,
periodic test ELBO, checkpoints and signal handling.  All mutable training
state — parameters, optimizer moments, RNG streams, the current epoch's data
order and position — is saved in the checkpoint, so a resumed run continues
bit-exactly where it stopped (on CPU).

Why not ``pyro.infer.SVI``: ``SVI.step`` computes gradients and steps the
optimizer in one call, so a non-finite loss or gradient reaches the weights
before anyone can look.  Here the loss is the objective's
``differentiable_loss`` (the same Pyro ELBO SVI would use), and one
``torch.optim.Adam`` holds every parameter (one foreach update rather than
Pyro's optimizer per parameter).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import pyro
from pyro import poutine
from pyro.infer.util import is_validation_enabled

from .capture import Captures
from ..rundir.checkpoint import load_state_dict_checked, save_checkpoint
from ..rundir.files import clean_stale_temporaries
from ..config import TrainConfig
from ..serialize import to_plain
from ..errors import PyroVAEError
from ..infer.rng import forked_rng, isolated_rng
from ..evaluation.estimators import is_density_site
from ..evaluation.memory import is_oom, test_elbo_with_retry, training_oom_error
from ..models.protocol import check_protocol
from ..infer.objectives import make_objective, scale_sites
from ..data.mapped import MappedRows
from ..data.checks import all_finite, check_support as check_support_chunked
from .perf import (VALIDATION_MODES, GraphedStep, compile_networks, direct_adam_step, is_fused, make_adam, masked_adam_step, may_skip_validation, nonfinite_flag, restore_kernel_choice)
from ..errors import NonFiniteError, TrainingInterrupted
from ..rundir.history import write_history

MAX_CONSECUTIVE_NONFINITE = 20




def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PyroVAEError("train.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass
class TrainState:
    """Where training stands; everything here goes into the checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # minibatches processed (stepped or skipped)
    batch: int = 0  # minibatches done in the current epoch
    perm: Optional[torch.Tensor] = None  # the current epoch's data order (CPU)
    epoch_loss: float = 0.0  # sum of per-point minibatch losses in this epoch
    epoch_seconds: float = 0.0
    skipped: int = 0  # steps skipped or rolled back for non-finite values
    history: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "batch": self.batch, "perm": self.perm,
            "epoch_loss": self.epoch_loss, "epoch_seconds": self.epoch_seconds,
            "skipped": self.skipped, "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


class Trainer:
    """Fits a latent-variable model with SVI.

    ``model`` is anything with ``model(x)``, ``guide(x)``, ``latent_sites`` and
    ``obs_site``; the constructor only stores its arguments.

    Performance switches (see :mod:`pyro_vae.perf`, :mod:`pyro_vae.capture` and the
    README's "Performance"): ``config.capture`` — ``"auto"`` records a built-in
    model's step once per batch shape and replays it (``"on"``: user models too,
    ``"off"``: never).  ``validation`` — ``"auto"`` runs Pyro validation for the
    trainer's first step and then switches it off (restoring it when ``fit``
    returns) when the model's likelihood checks the data's support up front;
    ``"always"`` keeps it on; ``"first"`` switches it off after the first step
    for any model.
    ``cuda_graph=True`` (CUDA only) replays the whole step as a captured CUDA
    graph.  ``compile=True`` (or a backend name) applies ``torch.compile`` to the
    encoder and decoder networks.
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
        self._data_rng = torch.Generator()
        self._stop_signal: Optional[int] = None
        self._snapshot = None
        self._consecutive_bad = 0
        self._site_order = {}  # sample-site names of guide and model, in trace order
        # performance switches (README "Performance"; benchmarks/bench_train.py measures them)
        self.validation = validation
        self.cuda_graph = cuda_graph
        self.compile = compile
        self._graphed = None  # a perf.GraphedStep once captured
        self._captures = Captures(self)  # recorded steps (capture.py), per batch shape and beta
        self._force_masked: Optional[bool] = None  # tests: the CUDA masked-update path on CPU
        self._unvalidated: Optional[contextlib.ExitStack] = None  # validation off inside fit
        self._validated = False
        if cuda_graph and self.device.type != "cuda":
            raise PyroVAEError("cuda_graph=True needs train.device = 'cuda' (or 'auto' on a machine with a GPU)")
        #: extra entries saved in every checkpoint (the run's config, data shape, ...)
        self.meta: dict = {}

    # -- setup --------------------------------------------------------------
    def setup(self, x_example: torch.Tensor, data_size: int) -> None:
        """Build objective and optimizer and check one forward pass; idempotent."""
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
        self._sanity_check(x_example)
        self.params, self.param_names = self._collect_params(x_example)
        if not self.params:
            raise PyroVAEError(f"{type(self.model).__name__} has no trainable parameters")
        self.optimizer = make_adam(self.params, cfg.lr, capturable=self._wants_graph())
        group = self.optimizer.param_groups[0]
        self._kernel_choice = {"fused": group["fused"], "foreach": group["foreach"], "capturable": group["capturable"]}
        if self.compile:  # True: inductor; a string names another torch.compile backend
            compile_networks(self.model, "inductor" if self.compile is True else self.compile)

    def _collect_params(self, x):
        """Module parameters plus any param-store params the model and guide use."""
        params, names, seen = [], [], set()
        if isinstance(self.model, torch.nn.Module):
            for name, p in self.model.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p)); params.append(p); names.append(name)
        with poutine.trace(param_only=True) as tr:
            self._loss(x[: min(len(x), 2)])
        for name, site in sorted(tr.trace.nodes.items()):
            p = site["value"].unconstrained()
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p)); params.append(p); names.append("param_store:" + name)
        return params, names

    def _sanity_check(self, x):
        """One loss on a tiny batch, before any training, with likely causes on failure."""
        try:
            with isolated_rng(0, self.device):
                loss = self._loss(x[: min(len(x), 4)])
        except PyroVAEError:
            raise
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
            if is_oom(e):
                raise training_oom_error(e, self.device, self.config.batch_size, self.config.num_particles) from None
            msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip()) or type(e).__name__
            raise PyroVAEError(
                f"the model fails on its first batch ({msg[:300]}); likely causes: data outside the "
                "likelihood's support, a data width that differs from the model's, or a site missing from the guide"
            ) from None
        if not torch.isfinite(loss):
            raise PyroVAEError(
                "the loss is not finite before training starts: check the data scale and the likelihood's scale"
            )
        # Remember the sites' order while the model still works: when a later step
        # fails inside a distribution's argument check, the site being built is the
        # one after the last site the (partial) trace reached.
        try:
            with isolated_rng(0, self.device), torch.no_grad():
                gtr = poutine.trace(self.model.guide).get_trace(x[: min(len(x), 4)])
                mtr = poutine.trace(poutine.replay(self.model.model, trace=gtr)).get_trace(x[: min(len(x), 4)])
            self._site_order = {label: [n for n, s in tr.nodes.items() if is_density_site(s)]
                                for label, tr in (("guide", gtr), ("model", mtr))}
        except Exception:  # only a diagnostic aid; a model that cannot be traced twice still trains
            self._site_order = {}

    # -- one step -------------------------------------------------------------
    def beta_at(self, epoch_progress: float) -> float:
        cfg = self.config
        if cfg.kl_warmup_epochs <= 0:
            return cfg.beta
        return cfg.beta * min(1.0, epoch_progress / cfg.kl_warmup_epochs)

    def _loss(self, x, beta: float = 1.0):
        """The minibatch loss: an unbiased estimate of the full-data negative ELBO."""
        b = x.shape[0]
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
        with scale_sites(self.model.latent_sites, beta) if torch.is_tensor(beta) or beta != 1.0 else _null():
            loss = self.objective.differentiable_loss(self.model.model, self.model.guide, x, **kwargs)
        return loss * outer if outer != 1.0 else loss

    def step(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """One SVI step on minibatch ``x``; returns the loss (full-data scale, detached)."""
        if self._captures.usable():
            if is_validation_enabled():
                # this trainer's first step: Pyro's checks run on this batch (a forward
                # pass on the side), then the update comes from the recording like every
                # other step's, so a resumed run computes exactly what a straight one does
                error = self._validate_batch(x, beta)
                if error is not None:
                    return self._on_nonfinite(x, None, error)
            captured = self._captures.get(x, beta)
            if captured is not None:
                return self._captured_step(captured, x, beta)
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        try:
            loss = self._loss(x, beta)
        except ValueError as e:
            # Pyro validates distribution arguments, so a NaN that reaches a
            # distribution (e.g. decoder logits) raises here instead of giving a
            # NaN loss: the same event, under the same policy.
            if not _is_invalid_parameter(e):
                raise
            return self._on_nonfinite(x, None, e)
        if self._masked_update():
            loss.backward()
            finite = self._update(nonfinite_flag(loss, self.params))
        else:
            finite = bool(torch.isfinite(loss))  # a NaN loss needs no backward pass
            if finite:
                loss.backward()
                finite = self._update(nonfinite_flag(None, self.params))
        if not finite:
            return self._on_nonfinite(x, loss)
        self._consecutive_bad = 0
        return loss.detach()

    def _update(self, bad: torch.Tensor) -> bool:
        """The Adam step unless ``bad`` (the NaN/Inf flag) is set; returns whether it stepped."""
        if self._masked_update():
            # CUDA: the update is queued without waiting for the device; the fused
            # kernel skips it on device when ``bad`` is set, and the one read of
            # ``bad`` comes after the whole step is queued
            masked_adam_step(self.optimizer, bad)
            return not bool(bad)
        if bool(bad):
            return False
        if not direct_adam_step(self.optimizer):
            self.optimizer.step()
        return True

    def _validate_batch(self, x, beta) -> Optional[ValueError]:
        """Pyro's argument and support checks on batch ``x``; the random streams are left as they were."""
        try:
            with forked_rng(self.device), torch.no_grad():
                self._loss(x, beta)
        except ValueError as e:
            if not _is_invalid_parameter(e):
                raise
            return e
        return None

    def _captured_step(self, captured, x, beta):
        """The recorded loss and gradients (capture.py), then the same update and policy as an eager step."""
        for p in self.params:  # last step's gradients must not stay alive through this one (peak memory)
            p.grad = None
        loss, bad, grads = captured(x, beta)
        for p, g in zip(self.params, grads):
            p.grad = g
        if not self._update(bad):
            return self._on_nonfinite(x, loss)
        self._consecutive_bad = 0
        return loss

    # -- CUDA graph (opt-in) ----------------------------------------------------
    def _wants_graph(self) -> bool:
        return bool(self.cuda_graph) and self.device.type == "cuda"

    def _graph_ready(self, x, beta) -> bool:
        """Whether this batch can run as a replay of the captured step."""
        if not self._wants_graph() or not self._validated:
            return False  # the first step runs eagerly, with Pyro validation on
        if x.shape[0] != self.config.batch_size or self.config.kl_warmup_epochs > 0:
            return False  # a short last batch, or a beta that changes every step: eager
        if not is_fused(self.optimizer):
            return False
        if self._graphed is None or not self._graphed.valid(x, beta):
            self._graphed = GraphedStep(self, tuple(x.shape), beta)
        return True

    def _graph_step(self, x, beta):
        loss, bad = self._graphed(x)
        # one read per step, after the whole step (update included) is queued
        loss_value, is_bad = torch.stack([loss.float(), bad.float()]).tolist()
        if is_bad:  # the kernel skipped the update; the policy runs as for an eager step
            return self._on_nonfinite(x, loss.clone())
        self._consecutive_bad = 0
        return torch.tensor(loss_value)

    def _masked_update(self) -> bool:
        """Step with the device-side skip (fused Adam's ``found_inf``) rather than a host check first."""
        if self._force_masked is not None:
            return self._force_masked
        return self.device.type == "cuda" and is_fused(self.optimizer)

    def _on_nonfinite(self, x, loss, error: Optional[ValueError] = None):
        """Apply ``train.on_nonfinite``; the optimizer has not stepped, so parameters are untouched."""
        policy = self.config.on_nonfinite
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped += 1
        self._consecutive_bad += 1
        where = f"step {self.state.step + 1}, epoch {self.state.epoch + 1}, batch {self.state.batch + 1}"
        if policy == "raise" or self._consecutive_bad > MAX_CONSECUTIVE_NONFINITE:
            # save first: the parameters are still those of the last good step
            saved = self.save_checkpoint() if self.run_dir is not None else None
            # diagnose on a forked RNG so the diagnosis itself draws nothing from the training stream
            # and with Pyro validation on (training switches it off after the first
            # step): its argument checks name the distribution argument that went bad
            with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []), \
                    pyro.validation_enabled(True):
                sites = self.nonfinite_sites(x)
            if error is not None:
                what = "values reached a distribution"
            else:
                what = "loss" if not torch.isfinite(loss) else "gradient"
            repeated = (f" ({self._consecutive_bad} steps in a row under on_nonfinite = {policy!r})"
                        if policy != "raise" else "")
            raise NonFiniteError(
                f"non-finite {what} at {where}{repeated} (sites with NaN/Inf: "
                f"{', '.join(sites) or 'none found; parameters or gradients'}); "
                + (f"last good state saved to {saved}; " if saved else "")
                + "lower train.lr, check the data, or set train.on_nonfinite = 'skip' or 'rollback'"
            )
        if policy == "rollback" and self._snapshot is not None:
            self._restore_snapshot()
        return torch.full((), float("nan"), device=self.device)

    @torch.no_grad()
    def nonfinite_sites(self, x) -> List[str]:
        """Names of sample sites whose value, log-density or distribution arguments are NaN/Inf on ``x``."""
        bad = []
        gtr = None
        for label in ("guide", "model"):
            fn = self.model.guide if label == "guide" else poutine.replay(self.model.model, trace=gtr)
            handler = poutine.trace(fn)
            try:
                tr = handler.get_trace(x)
            except ValueError as e:
                if not _is_invalid_parameter(e):
                    return bad + [f"(tracing the {label} failed: {str(e).splitlines()[0][:120]})"]
                # the partial trace ends before the site whose distribution got bad arguments
                done = [n for n, s in handler.msngr.trace.nodes.items() if is_density_site(s)]
                order = self._site_order.get(label, [])
                nxt = next((n for n in order if n not in done), None)
                arg = _invalid_parameter_name(e)
                return bad + [f"{label}:{nxt or '?'} ({arg})"]
            except Exception as e:  # the failure itself is the diagnosis
                return bad + [f"(tracing the {label} failed: {str(e).splitlines()[0][:120]})"]
            for name, site in tr.nodes.items():
                if not is_density_site(site):
                    continue
                v = site["value"]
                lp = site["fn"].log_prob(v)
                if not (torch.isfinite(v).all() and torch.isfinite(lp).all()):
                    bad.append(f"{label}:{name}")
            gtr = tr
        return bad

    def _take_snapshot(self):
        self._snapshot = (
            [p.detach().clone() for p in self.params],
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def _restore_snapshot(self):
        values, opt_state = self._snapshot
        with torch.no_grad():
            for p, v in zip(self.params, values):
                p.copy_(v)
        self.optimizer.load_state_dict(copy.deepcopy(opt_state))

    # -- epochs -----------------------------------------------------------------
    def fit(self, train_x: torch.Tensor, test_x: Optional[torch.Tensor] = None, *, binarize: str = "none") -> List[dict]:
        """Train for ``config.epochs`` epochs (continuing from the current state)."""
        cfg = self.config
        train_x = self._to_device(train_x, "training data")
        test_x = self._to_device(test_x, "test data") if test_x is not None else None
        n = train_x.shape[0]
        check_batch_size(n, cfg.batch_size)
        skip_validation = may_skip_validation(self.model, self.validation)
        if skip_validation and self.validation == "auto":
            # Pyro stops checking the data's support once validation is off, so
            # check it here, once (run.prepare did it too; this covers direct use)
            if binarize != "dynamic":
                check_support_chunked(self.model.likelihood, train_x, "the training data")
            if test_x is not None:
                check_support_chunked(self.model.likelihood, test_x, "the test data")
        self.setup(example_batch(train_x, binarize).to(self.device), n)
        if self.state.step == 0 and self.state.epoch == 0 and self.state.perm is None:
            # a fresh run (a checkpoint saved before the first step, e.g. by
            # on_nonfinite = 'raise', already holds its data order and RNG states)
            self._seed_fresh()
        if cfg.on_nonfinite == "rollback" and self._snapshot is None:
            # resumed mid-epoch: the restored state is the last good one
            self._take_snapshot()
        if self.run_dir is not None:
            clean_stale_temporaries(self.run_dir)
        num_batches = math.ceil(n / cfg.batch_size)
        bar = self._progress_bar(total=cfg.epochs * num_batches, initial=self.state.epoch * num_batches + self.state.batch)
        old_handlers = self._install_signal_handlers()
        # Pyro validation is on for this trainer's first step (shapes, supports,
        # arguments of every site), then off: it cost 3 ms of a 19 ms step at batch
        # 128 (benchmarks/bench_train.py) and its checks read values back from
        # the device, which also rules out CUDA-graph capture.  Later fits do not
        # check again (their data's support is checked above).  Validation never
        # changes what a step computes, so a resumed run, which checks its first
        # step, still matches a straight one bit for bit.  The ExitStack restores
        # the caller's setting however fit ends.
        self._unvalidated = contextlib.ExitStack() if skip_validation else None
        if self._unvalidated is not None and self._validated:
            self._unvalidated.enter_context(pyro.validation_enabled(False))
        try:
            while self.state.epoch < cfg.epochs:
                self._run_epoch(train_x, test_x, n, num_batches, binarize, bar)
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(e):
                raise
            raise training_oom_error(e, self.device, cfg.batch_size, cfg.num_particles) from None
        finally:
            if self._unvalidated is not None:
                self._unvalidated.close()
                self._unvalidated = None
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
        return self.state.history

    def _run_epoch(self, train_x, test_x, n, num_batches, binarize, bar):
        cfg, st = self.config, self.state
        if st.perm is None:
            st.perm = torch.randperm(n, generator=self._data_rng)
            st.batch, st.epoch_loss, st.epoch_seconds = 0, 0.0, 0.0
            if cfg.on_nonfinite == "rollback":
                self._take_snapshot()
        mapped = isinstance(train_x, MappedRows)
        # in-memory data is on the device and gathered there; a memory map is
        # read on the host (only this batch's rows) and the batch moved over
        perm = st.perm if mapped else st.perm.to(self.device)
        t0 = time.perf_counter()
        while st.batch < num_batches:
            idx = perm[st.batch * cfg.batch_size : (st.batch + 1) * cfg.batch_size]
            x = train_x[idx]
            if mapped:
                x = x.to(self.device, non_blocking=True)
            if binarize == "dynamic":
                x = torch.bernoulli(x)
            beta = self.beta_at(st.epoch + st.batch / num_batches)
            if self._graph_ready(x, beta):
                loss = self._graph_step(x, beta)
            else:
                loss = self.step(x, beta)
            if self._unvalidated is not None and not self._validated:
                self._unvalidated.enter_context(pyro.validation_enabled(False))
                self._validated = True
            st.step += 1
            st.batch += 1
            value = float(loss) / n
            if math.isfinite(value):
                st.epoch_loss += value
            if bar is not None:
                bar.update(1)
                if st.batch % 10 == 0 or st.batch == num_batches:
                    bar.set_postfix_str(f"epoch {st.epoch + 1}/{cfg.epochs} loss {value:.4g}", refresh=False)
            if self._stop_signal is not None:
                st.epoch_seconds += time.perf_counter() - t0
                saved = self.save_checkpoint() if self.run_dir is not None else None
                raise TrainingInterrupted(self._stop_signal, saved)
        st.epoch_seconds += time.perf_counter() - t0
        st.epoch += 1
        row = {
            "epoch": st.epoch,
            "train_loss": st.epoch_loss / num_batches,
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
                f"epoch {st.epoch}/{cfg.epochs} loss {row['train_loss']:.4g}"
                + (f" test elbo {row['test_elbo']:.4g}" if row["test_elbo"] is not None else ""),
                refresh=True,
            )
        if self.run_dir is not None and (st.epoch % cfg.checkpoint_every == 0 or st.epoch == cfg.epochs):
            self.save_checkpoint()

    def _seed_fresh(self):
        seed = self.config.seed
        pyro.set_rng_seed(seed)
        self._data_rng.manual_seed(seed)

    def _to_device(self, x, what):
        if isinstance(x, MappedRows):
            # stays on the host, read a batch at a time (finiteness was checked chunk by chunk)
            dim = getattr(self.model, "data_dim", None)
            if dim is not None and x.shape[1] != dim:
                raise PyroVAEError(
                    f"{what} has shape {tuple(x.shape)} but the model expects {dim} columns: "
                    "use data that matches the model, or build the model for this data"
                )
            return x
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
        x = x.to(self.device, torch.float32)
        if not all_finite(x):  # one pass, no data-sized temporaries (torch.isfinite makes three)
            # caught here, not as a NaN loss (or a distribution's argument error) steps later
            from ..data.checks import describe_nonfinite

            raise PyroVAEError(
                f"{what} has {describe_nonfinite(x)}: clean it, or load it with pyro_vae.load_data "
                "and data.drop_nonfinite = true"
            )
        return x

    def _progress_bar(self, total, initial):
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)

    # -- signals ---------------------------------------------------------------
    def _install_signal_handlers(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None
        self._stop_signal = None

        def handler(signum, frame):
            if self._stop_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

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
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data": self._data_rng.get_state(),
            },
            "train_config": to_plain(self.config),
        }

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
        self.state = TrainState.from_dict(payload["train_state"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(rng["cuda"])
            except RuntimeError:
                pass  # a different number of GPUs: the CUDA stream restarts
        self._data_rng.set_state(rng["data"])

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoint.pt"
        save_checkpoint(self.state_dict() | self.meta, path)
        write_history(self.state.history, self.run_dir / "history.csv")
        return path


def check_batch_size(rows: int, batch_size: int) -> None:
    if rows < batch_size:
        raise PyroVAEError(
            f"the training data has {rows} rows, fewer than one batch (train.batch_size = {batch_size}): "
            "lower train.batch_size or add data"
        )


def example_batch(x: torch.Tensor, binarize: str = "none", size: int = 64) -> torch.Tensor:
    """A few rows to build and sanity-check the model on (binarized like training batches)."""
    x = x[: min(len(x), size)]
    if binarize == "dynamic":
        with isolated_rng(0, x.device):
            x = torch.bernoulli(x)
    return x


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False



def _is_invalid_parameter(err: ValueError) -> bool:
    """A torch/Pyro distribution argument check failed (``validate_args``), e.g. NaN logits."""
    return str(err).lstrip().startswith("Expected parameter")


def _invalid_parameter_name(err: ValueError) -> str:
    # "Expected parameter logits (Tensor of shape ...) of distribution Bernoulli(...) to satisfy ..."
    import re

    m = re.match(r"\s*Expected parameter (\w+).*? of distribution (\w+)", str(err), re.S)
    return f"{m.group(2)} {m.group(1)} is NaN/Inf or invalid" if m else "invalid distribution argument"


def fit(model, train_x, test_x=None, config: TrainConfig = TrainConfig(), *, run_dir=None,
        progress: Optional[bool] = None, binarize: str = "none", validation: str = "auto") -> Trainer:
    """Train ``model`` on ``train_x`` and return the :class:`Trainer` (its ``state.history`` holds the curve).

    ``validation``: as for :class:`Trainer` ("first" vouches for the data of a model
    whose likelihood cannot check it up front, which also lets ``capture = "on"`` record it).
    """
    trainer = Trainer(model, config, run_dir=run_dir, progress=progress, validation=validation)
    trainer.fit(train_x, test_x, binarize=binarize)
    return trainer
