"""One process of the distributed tests: started with torchrun's environment by tests/test_distributed.py.

``python tests/dist_worker.py MODE OUT``: MODE ``fit`` trains a point-mass and a
stochastic VAE and evaluates them, twice (each rank's results to OUT/rankR.pt); ``die``: rank 1 exits after one epoch while rank 0 trains
on; ``term``: rank 1 gets SIGTERM while both train.  With no torchrun
environment the same code runs as one process (the reference).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import ModelConfig, NetConfig, PyroVAEError, Trainer, TrainConfig, TrainingInterrupted
from pyro_vae import build_model, evaluate_points
from pyro_vae.runtime import distributed

DIM = 6
ROWS = 200  # 200 = 6 batches of 32 and one of 8: the short batch is split too


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, DIM, generator=g), torch.randn(30, DIM, generator=g)


def model(guide: str):
    pyro.set_rng_seed(0)  # the same initial parameters on every rank and in the reference
    spec = ModelConfig(latent_dim=2, likelihood="normal", guide=guide,
                       encoder=NetConfig(hidden=(16,)), decoder=NetConfig(hidden=(16,)))
    return build_model(spec, DIM)


def train_config(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 1e-2, "seed": 0, "device": "cpu", **kw})


def fit_both() -> dict:
    """The results a test compares: per model the loss history, final parameters and the engine used."""
    x, test = data()
    out = {}
    for guide in ("delta", "normal"):
        m = model(guide)
        trainer = Trainer(m, train_config(), progress=False)
        trainer.fit(x)
        out[guide] = {"loss": [h["train_loss"] for h in trainer.state.history],
                      "params": {k: v.clone() for k, v in m.state_dict().items()},
                      "engine": trainer.engine_name}
        out[guide + "_eval"] = evaluate_points(m, test, iw_samples=20, seed=3)
    return out


def main(mode: str, out: Path) -> int:
    group = distributed.init_from_env("cpu")
    if mode == "fit":
        # the same run twice in the same processes: a fresh trainer reseeds every stream
        torch.save([fit_both(), fit_both()], out / f"rank{group.rank}.pt")
        return 0
    x, _ = data()
    epochs = 10_000 if mode == "term" else (1 if group.rank == 1 else 3)
    trainer = Trainer(model("normal"), train_config(epochs=epochs), run_dir=out,
                      progress=False)
    if mode == "die":
        if group.rank == 1:
            trainer.fit(x)
            os._exit(3)  # after one epoch, without a word: rank 0, in its second epoch, must not hang
        t0 = time.perf_counter()
        try:
            trainer.fit(x)
        except PyroVAEError as e:
            print(f"pyro-vae: error: {e}", file=sys.stderr)
            (out / "rank0.txt").write_text(f"{time.perf_counter() - t0}\n{e}")
            return 2
        return 0
    # term: a signal on rank 1 alone stops both ranks at the same step, with one checkpoint
    if group.rank == 1:
        def signal_once_training():  # after the handlers are installed: a few steps in
            while trainer.state.step < 3:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=signal_once_training, daemon=True).start()
    try:
        trainer.fit(x)
    except TrainingInterrupted as e:
        (out / f"rank{group.rank}.txt").write_text(f"{trainer.state.step} {e.signum} {e.checkpoint}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
