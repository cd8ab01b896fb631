"""Data-parallel scaling on this machine: processes (one thread each, gloo) against training images/s.

Model: 784-400-20 MLP VAE, Bernoulli likelihood, Adam 1e-3, on random binary
784-pixel images (the speed of a step does not depend on the pixels); the
global batch is ``--batch`` rows for every process count, so each process of N
takes batch/N rows a step.  Each configuration is started as torchrun starts
it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... in the environment), trains
``--epochs`` epochs with the default (captured) step, and reports the epochs
after the first (which records the step); configurations alternate over
``--rounds`` rounds, the order reversed each round, and the table shows
medians and the ratio to one process measured in the same rounds.

    python benchmarks/bench_distributed.py                       # ~1-2 min on 2 CPU cores
    python benchmarks/bench_distributed.py --procs 1 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(rows: int, batch_size: int, epochs: int) -> None:
    sys.path.insert(0, str(ROOT))
    import pyro
    import torch

    from pyro_vae.config import ModelConfig, NetConfig, TrainConfig
    from pyro_vae.models import build_model
    from pyro_vae.runtime import distributed
    from pyro_vae.training import Trainer

    group = distributed.init_from_env("cpu")
    x = torch.bernoulli(torch.full((rows, 784), 0.3), generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    model = build_model(ModelConfig(latent_dim=20, likelihood="bernoulli", encoder=NetConfig(hidden=(400,)),
                                    decoder=NetConfig(hidden=(400,))), 784)
    trainer = Trainer(model, TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu"), progress=False)
    trainer.fit(x)
    seconds = sum(h["seconds"] for h in trainer.state.history[1:])
    if group.is_main:
        print(json.dumps({"images_per_s": rows * (epochs - 1) / seconds, "engine": trainer.engine_name}))
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(procs: int, args) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(procs), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--worker", "--rows", str(args.rows), "--batch", str(args.batch),
           "--epochs", str(args.epochs)]
    ps = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                           text=True) for r in range(procs)]
    outs = [p.communicate()[0] for p in ps]
    if any(p.returncode for p in ps):
        raise SystemExit(f"{procs} processes failed: {[p.returncode for p in ps]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.rows, args.batch, args.epochs)
        return
    results = {n: [] for n in args.procs}
    engines = {}
    for r in range(args.rounds):
        for n in (args.procs if r % 2 == 0 else args.procs[::-1]):
            out = launch(n, args)
            results[n].append(out["images_per_s"])
            engines[n] = out["engine"]
    print(f"# {os.cpu_count()} CPUs, load {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
          f"{args.rows} images, global batch {args.batch}, {args.epochs - 1} timed epochs, {args.rounds} rounds")
    base = statistics.median(results[args.procs[0]])
    print("| processes (1 thread each) | images/s (median) | vs 1 process | step |")
    print("|---|---|---|---|")
    for n in args.procs:
        med = statistics.median(results[n])
        print(f"| {n} | {med:,.0f} | {med / base:.2f}x | {engines[n]} |")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    if "--worker" not in sys.argv:
        print(f"# {time.perf_counter() - t0:.0f} s")
