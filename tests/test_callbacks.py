"""The trainer's callbacks (training/callbacks.py) and the floors they keep apart: storage below training, the
evaluation and the app above it."""

from __future__ import annotations

import ast
import signal
from pathlib import Path

import pytest
import torch

import pyro_vae as pv
from pyro_vae.config import ModelConfig, NetConfig, TrainConfig
from pyro_vae.errors import TrainingInterrupted
from pyro_vae.models import build_model
from pyro_vae.training import Callbacks, Trainer

PACKAGE = Path(pv.__file__).parent


def _vae(d=5):
    torch.manual_seed(0)
    return build_model(ModelConfig(latent_dim=2, likelihood="normal", encoder=NetConfig((8,)), decoder=NetConfig((8,))), d)


class Recorder(Callbacks):
    def __init__(self):
        self.events = []

    def fit_started(self):
        self.events.append(("fit_started",))

    def epoch_ended(self, row):
        self.events.append(("epoch_ended", dict(row)))

    def checkpoint_due(self, payload):
        self.events.append(("checkpoint_due", payload["train_state"]["epoch"], sorted(payload)))
        return Path("/nowhere/checkpoint.pt")

    def signal_received(self, signum):
        self.events.append(("signal_received", signum))


def test_the_callbacks_hear_every_epoch_and_every_checkpoint_due():
    x, test = torch.randn(64, 5), torch.randn(16, 5)
    cb = Recorder()
    t = Trainer(_vae(), TrainConfig(epochs=3, batch_size=16, checkpoint_every=2), callbacks=[cb], progress=False)
    t.meta = {"config": {"made": "here"}}
    t.fit(x, test)
    kinds = [e[0] for e in cb.events]
    assert kinds == ["fit_started", "epoch_ended", "checkpoint_due", "epoch_ended", "checkpoint_due", "epoch_ended"]
    assert [e[1] for e in cb.events if e[0] == "epoch_ended"] == t.state.history
    # due every checkpoint_every epochs and after the last, with the trainer's payload and its meta
    assert [e[1] for e in cb.events if e[0] == "checkpoint_due"] == [2, 3]
    assert cb.events[2][2] == sorted(set(t.state_dict()) | {"config"})
    # the per-epoch test ELBO is evaluation's, handed to the trainer although training cannot import it
    assert all(isinstance(row["test_elbo"], float) for row in t.state.history)


def test_a_signal_is_heard_before_the_checkpoint_it_makes_due():
    cb = Recorder()
    t = Trainer(_vae(), TrainConfig(epochs=2, batch_size=16), callbacks=[cb], progress=False)
    real_step = t.step

    def stop_after_3(xb, beta=1.0):
        loss = real_step(xb, beta)
        if t.state.step == 2:
            t.request_stop(signal.SIGINT)  # as the signal handler does
        return loss

    t.step = stop_after_3
    with pytest.raises(TrainingInterrupted) as stopped:
        t.fit(torch.randn(64, 5))
    assert [e[0] for e in cb.events] == ["fit_started", "signal_received", "checkpoint_due"]
    assert cb.events[1] == ("signal_received", signal.SIGINT)
    assert stopped.value.checkpoint == Path("/nowhere/checkpoint.pt") and stopped.value.exit_code == 130


def test_an_injected_test_elbo_is_the_one_used_and_no_storage_means_no_checkpoint():
    calls = []

    def test_elbo(model, x, *, seed):  # x: the test data as named arrays, as inside the library
        calls.append((x["x"].shape, seed))
        return -1.5

    class EpochsOnly(Callbacks):  # takes no checkpoints: the trainer builds no payload
        def epoch_ended(self, row):
            pass

    t = Trainer(_vae(), TrainConfig(epochs=2, batch_size=16, seed=7), callbacks=[EpochsOnly()],
                test_elbo=test_elbo, progress=False)
    t.fit(torch.randn(64, 5), torch.randn(8, 5))
    assert [row["test_elbo"] for row in t.state.history] == [-1.5, -1.5]
    assert calls == [((8, 5), 7), ((8, 5), 7)]
    assert t.save_checkpoint() is None


def test_run_dir_is_the_stores_folder_storage(tmp_path):
    t = Trainer(_vae(), TrainConfig(epochs=1, batch_size=16), run_dir=tmp_path / "run", progress=False)
    t.fit(torch.randn(32, 5))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "history.csv"]
    assert t.save_checkpoint() == tmp_path / "run" / "checkpoint.pt"


def _imports(folder: str):
    """(file, imported pyro_vae module) for every import in pyro_vae/FOLDER, at any depth, relative ones resolved."""
    for path in sorted((PACKAGE / folder).glob("*.py")):
        here = ["pyro_vae", folder]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - (node.level - 1)] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                yield path.name, module
                yield from ((path.name, f"{module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.Import):
                yield from ((path.name, a.name) for a in node.names)


@pytest.mark.parametrize("folder, above", [
    ("store", ("training", "evaluation", "diagnostics", "figures", "report", "app", "cli")),
    ("training", ("evaluation", "diagnostics", "figures", "report", "app", "cli", "store.folder")),
])
def test_a_floor_imports_nothing_above_it(folder, above):
    found = {(f, m) for f, m in _imports(folder) if any(m == f"pyro_vae.{a}" or m.startswith(f"pyro_vae.{a}.")
                                                       for a in above)}
    assert not found
