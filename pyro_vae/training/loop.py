"""The epoch loop: each epoch's batches stepped in the order of its permutation, a stop after the step a signal
arrived in, and the epoch's history row, test ELBO and checkpoint at its end."""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from ..errors import TrainingInterrupted
from ..runtime import distributed
from .batches import FitData
from .callbacks import Hooks, TestElbo
from .signals import StopSignals


class EpochLoop:
    """The epochs of one :meth:`Trainer.fit`, from wherever the trainer's state stands (a resume starts mid-epoch).

    ``policy`` (nonfinite.py) marks each epoch's start for a rollback; ``first_step`` (validation.py) hears of
    every step; ``sync`` (runtime/distributed.py) carries this rank's share of a batch and its stop flag;
    ``hooks`` are the caller's callbacks, called in the writing process only.
    """

    def __init__(self, trainer, data: FitData, bar, *, policy, first_step, group: distributed.ProcessGroup,
                 sync: distributed.GradientSync, signals: StopSignals, hooks: Hooks, test_elbo: Optional[TestElbo]):
        self.trainer, self.data, self.bar = trainer, data, bar
        self.policy, self.first_step, self.group, self.sync, self.signals = policy, first_step, group, sync, signals
        self.hooks = hooks if group.is_main else Hooks()
        self.test_elbo = test_elbo

    def run(self) -> None:
        while self.trainer.state.epoch < self.trainer.config.epochs:
            self.epoch()

    def epoch(self) -> None:
        st, data = self.trainer.state, self.data
        if st.perm is None:
            st.perm = torch.randperm(data.n, generator=st.data_rng)
            st.batch, st.epoch_loss, st.epoch_finite, st.epoch_seconds = 0, 0.0, 0, 0.0
            self.policy.mark()
        # in-memory data is on the device and gathered there; a memory map is
        # read on the host (only this batch's rows) and the batch moved over
        plan = data.plan(st.perm)
        t0 = time.perf_counter()
        while st.batch < data.num_batches:
            self._step(*plan[st.batch])
            stop = self.signals.signum
            if self.sync.active:  # only a stop every rank agreed on in this step's reduce
                stop = self.sync.stop_signal(stop) if self.sync.stop_agreed else None
            if stop is not None:
                st.epoch_seconds += time.perf_counter() - t0
                self.hooks.signal_received(stop)
                raise TrainingInterrupted(stop, self.trainer.save_checkpoint())
        st.epoch_seconds += time.perf_counter() - t0
        st.epoch += 1
        self._end_epoch()

    def _step(self, idx: torch.Tensor, absent) -> None:
        t, st, data = self.trainer, self.trainer.state, self.data
        if self.group.active:  # this rank's contiguous slice of the global batch
            local = idx[distributed.shard(len(idx), self.group)]
            self.sync.share, self.sync.stop = len(local) / len(idx), self.signals.signum is not None
            idx = local
        x = data.rows(idx, absent)
        beta = t.beta_at(st.epoch + st.batch / data.num_batches)
        loss = t.step(x, beta)
        self.first_step.after_step()
        st.step += 1
        st.batch += 1
        value = float(loss) / data.n
        if math.isfinite(value):
            st.epoch_loss += value
            st.epoch_finite += 1
        if self.bar is not None:
            self.bar.update(1)
            if st.batch % 10 == 0 or st.batch == data.num_batches:
                self.bar.set_postfix_str(f"epoch {st.epoch + 1}/{t.config.epochs} loss {value:.4g}", refresh=False)

    def _end_epoch(self) -> None:
        t, cfg, st = self.trainer, self.trainer.config, self.trainer.state
        row = {
            "epoch": st.epoch,
            # the mean over the steps that had a loss; an epoch whose every step was skipped has none
            "train_loss": st.epoch_loss / st.epoch_finite if st.epoch_finite else None,
            "test_elbo": None,
            "seconds": st.epoch_seconds,
            "beta": t.beta_at(st.epoch),
        }
        last = st.epoch == cfg.epochs
        if self.data.test is not None and self.test_elbo is not None and (st.epoch % cfg.eval_every == 0 or last):
            row["test_elbo"] = self.test_elbo(t.model, self.data.test, seed=cfg.seed)
        st.history.append(row)
        st.perm = None
        st.batch = 0
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"epoch {st.epoch}/{cfg.epochs} loss "
                + (f"{row['train_loss']:.4g}" if row["train_loss"] is not None else "none (every step skipped)")
                + (f" test elbo {row['test_elbo']:.4g}" if row["test_elbo"] is not None else ""),
                refresh=True,
            )
        if st.epoch % cfg.checkpoint_every == 0 or last:
            t.save_checkpoint()  # nothing when no callback takes checkpoints
        self.hooks.epoch_ended(row)
