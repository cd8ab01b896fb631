"""One process of the sequence torchrun test (tests/test_sequence_rest.py), started with torchrun's environment.

``python tests/seq_dist_worker.py OUT``: trains a declared chain for 2 epochs on 30 sequences of their own lengths
and records, for each training step, which sequences this rank was given (each sequence's first number is its row)
and the length each came with, into OUT/rankR.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import Trainer, TrainConfig, build_model
from pyro_vae.config import config_from_dict
from pyro_vae.runtime import distributed

ROWS, STEPS, DIM = 30, 7, 2


def sequences():
    """30 sequences whose first number is their row, with lengths 1..7 (the padding zeroed)."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, STEPS + 1, (ROWS,), generator=g)
    x = torch.randn(ROWS, STEPS, DIM, generator=g) * (torch.arange(STEPS) < lengths[:, None]).unsqueeze(-1)
    x[:, 0, 0] = torch.arange(ROWS, dtype=x.dtype)
    return {"x": x, "lengths": lengths}


def main(out: Path) -> int:
    distributed.init_from_env()
    group = distributed.current()
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"}, "rnn": {"type": "gru", "hidden": 4},
                   "encoder": {"hidden": [4]}},
             "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"], "net": {"hidden": []}}}
    pyro.set_rng_seed(0)
    model = build_model(config_from_dict({"model": {"nodes": nodes}}).model, DIM)
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=0, device="cpu"), progress=False)
    seen = []
    step = trainer.step

    def recording(x, beta):
        seen.append((trainer.state.epoch, x["x"][:, 0, 0].round().long().tolist(), x["lengths"].tolist()))
        return step(x, beta)

    trainer.step = recording
    trainer.fit(sequences())
    torch.save({"seen": seen, "rank": group.rank, "world": group.world_size}, out / f"rank{group.rank}.pt")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
