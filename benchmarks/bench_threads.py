"""Torch's thread count on a shared machine: torch's default, one and two threads, and ``train.threads = "auto"``.

Two workloads, each trained through ``pv.fit`` (which applies ``train.threads``) from the same initial weights:

- ``demo``: the ``pyro-vae demo`` model and data (64-256-8 Bernoulli VAE, 8x8 digits, batch 64), ``--demo-epochs``
  epochs (80 in the demo itself);
- ``fashion``: the 784-400-20 Bernoulli VAE of examples/vae_fashion_mnist.toml, batch 128, one epoch over a fixed
  slice of the Fashion-MNIST training images (``--fashion-rows``).

Under two conditions: ``idle`` (nothing of ours running beside it) and ``busy`` (this script starts one process that
spins a core, ``python -c "while True: pass"``, unpinned, and stops it after).  Every (condition, workload) cell runs
each variant once per round, the order rotating, for ``--rounds`` rounds; the table shows the median seconds of the
training loop (the epochs, as history.csv's ``seconds``; ``auto``'s one look at the cores before training, at most
``SAMPLE_SECONDS``, is not in it) and what ``auto`` chose.  The machine's load is printed beside each condition: the
1-minute load average and the cores other processes kept busy, measured just before (this script's own spinner
included under ``busy``).

    python benchmarks/bench_threads.py                          # ~3-6 min on 2 cores
    python benchmarks/bench_threads.py --rounds 1 --demo-epochs 5 --fashion-rows 2560   # a quick look
    python benchmarks/bench_threads.py --sweep                  # step time at 1 and 2 threads against work per step

``--sweep`` is how ``WORK_PER_THREAD`` (pyro_vae/runtime/threads.py) was chosen: ms per step at one and two threads
for MLP VAEs of growing size, idle.  Run it without ``OMP_NUM_THREADS`` set (it would decide every variant).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import pyro  # noqa: E402
import torch  # noqa: E402

import pyro_vae as pv  # noqa: E402
from pyro_vae.app.demo import DEMO_CONFIG  # noqa: E402
from pyro_vae.app.prepare import prepare  # noqa: E402
from pyro_vae.runtime.threads import SAMPLE_SECONDS, WORK_PER_THREAD, machine_load, step_work  # noqa: E402

FASHION = {"data": {"source": "fashion-mnist", "binarize": "static"},
           "model": {"latent_dim": 20, "likelihood": "bernoulli", "encoder": {"hidden": [400]},
                     "decoder": {"hidden": [400]}},
           "train": {"elbo": "meanfield", "epochs": 1, "batch_size": 128, "lr": 1e-3, "seed": 0}}


@dataclasses.dataclass
class Workload:
    name: str
    cfg: pv.Config
    model_state: dict
    model: object
    x: torch.Tensor


def workload(name: str, values: dict, rows=None) -> Workload:
    cfg, data, model = prepare(pv.config_from_dict(values))
    x = data.train if rows is None else data.train[:rows]
    return Workload(name, cfg, {k: v.clone() for k, v in model.state_dict().items()}, model, x.contiguous())


def train_once(w: Workload, threads) -> tuple:
    """(seconds of the training loop, the count the run used) for one fit from the initial weights."""
    w.model.load_state_dict(w.model_state)
    pyro.set_rng_seed(0)
    trainer = pv.fit(w.model, w.x, None, dataclasses.replace(w.cfg.train, threads=threads), progress=False,
                     binarize=w.cfg.data.binarize)
    return sum(h["seconds"] for h in trainer.state.history), trainer.threads


@contextlib.contextmanager
def busy_core(on: bool):
    """One process spinning a core while the block runs (none when ``on`` is False)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let it reach the run queue
        yield
    finally:
        proc.kill()
        proc.wait()


def cell(w: Workload, variants: dict, rounds: int) -> dict:
    """Each variant's median seconds over ``rounds`` (order rotated each round) and auto's choices."""
    names = list(variants)
    seconds = {n: [] for n in names}
    chosen = []
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            s, choice = train_once(w, variants[n])
            seconds[n].append(s)
            if variants[n] == "auto":
                chosen.append(choice)
    return {"median": {n: statistics.median(v) for n, v in seconds.items()}, "auto": chosen}


def load_line(label: str) -> str:
    probe = machine_load(1.0)
    return (f"{label}: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
            f"{probe.busy:.2f} of {probe.cores} cores busy with other processes over 1 s")


def compare(args) -> None:
    default = torch.get_num_threads()
    variants = {"1 thread": 1, "2 threads": 2}
    variants = {name + (" = torch default" if n == default else ""): n for name, n in variants.items()}
    if default not in (1, 2):
        variants[f"torch default ({default})"] = default
    variants["auto"] = "auto"
    default_name = next(n for n, v in variants.items() if v == default)
    demo_cfg = dict(DEMO_CONFIG, train=dict(DEMO_CONFIG["train"], epochs=args.demo_epochs))
    works = [workload("demo", demo_cfg), workload("fashion", FASHION, args.fashion_rows)]
    for w in works:  # a warm-up fit each: the first fit records the step and warms the allocator
        train_once(w, 1)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {os.cpu_count()} CPUs; torch's default count "
          f"{default}; demo: {args.demo_epochs} epochs of {len(works[0].x)} images, batch 64; fashion: 1 epoch of "
          f"{len(works[1].x)} images, batch 128; {args.rounds} rounds; work per step: "
          f"demo {_work(works[0]) / 1e6:.1f} M, fashion {_work(works[1]) / 1e6:.1f} M multiply-adds "
          f"(WORK_PER_THREAD {WORK_PER_THREAD / 1e6:.0f} M)")
    results, loads = {}, {}
    for condition in ("idle", "busy"):
        with busy_core(condition == "busy"):
            loads[condition] = [load_line(f"{condition}, before")]
            for w in works:
                results[condition, w.name] = cell(w, variants, args.rounds)
            loads[condition].append(load_line(f"{condition}, after"))
        for line in loads[condition]:
            print(line)
    print()
    print("| workload | condition | " + " | ".join(f"{n} (s)" for n in variants) + " | auto chose | load (1 min) |")
    print("|---|---|" + "---|" * (len(variants) + 2))
    for (condition, name), res in results.items():
        last = res["auto"][-1]
        chose = f"{', '.join(str(c.threads) for c in res['auto'])} (last: {last.reason})"
        load = loads[condition][0].split("load average ")[1].split(",")[0]
        print(f"| {name} | {condition} | " + " | ".join(f"{res['median'][n]:.2f}" for n in variants)
              + f" | {chose} | {load} |")
    print()
    for w in works:
        idle, busy = results["idle", w.name]["median"], results["busy", w.name]["median"]
        best = min(v for n, v in idle.items() if variants[n] in (1, 2))
        print(f"{w.name}: busy auto / idle auto = {busy['auto'] / idle['auto']:.2f} (goal <= 1.5); "
              f"busy auto / idle best fixed = {busy['auto'] / best:.2f}; idle auto / idle best fixed "
              f"= {idle['auto'] / best:.2f} (goal <= 1.10); busy default / busy auto = "
              f"{busy[default_name] / busy['auto']:.1f}x")


def _work(w: Workload) -> int:
    params = sum(p.numel() for p in w.model.parameters())
    return step_work(params, min(w.cfg.train.batch_size, len(w.x)), w.cfg.train.num_particles)


def sweep(args) -> None:
    """ms per step at one and two threads, for MLP VAEs of growing work per step (random binary data)."""
    print(f"{load_line('before')}")
    print("| data dim | hidden | batch | work (M multiply-adds) | 1 thread (ms) | 2 threads (ms) | 2 / 1 |")
    print("|---|---|---|---|---|---|---|")
    for dim, hidden, batch in ((64, 256, 64), (64, 256, 256), (784, 400, 32), (784, 200, 128), (784, 400, 128),
                               (784, 400, 512)):
        values = {"data": {"source": "synthetic", "synthetic_dim": dim, "num_points": max(4 * batch, 512)},
                  "model": {"latent_dim": 8, "likelihood": "normal", "encoder": {"hidden": [hidden]},
                            "decoder": {"hidden": [hidden]}},
                  "train": {"batch_size": batch, "epochs": 1}}
        cfg, data, model = prepare(pv.config_from_dict(values))
        trainer = pv.Trainer(model, cfg.train, progress=False)
        trainer.setup_data(data.train)
        x = data.train[:batch].contiguous()
        times = {}
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            for _ in range(5):
                trainer.step(x)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.step(x)
            times.setdefault(threads, []).append((time.perf_counter() - t0) / args.steps * 1e3)
        t1, t2 = min(times[1]), min(times[2])
        work = step_work(sum(p.numel() for p in model.parameters()), batch)
        print(f"| {dim} | {hidden} | {batch} | {work / 1e6:.1f} | {t1:.2f} | {t2:.2f} | {t2 / t1:.2f} |")
    print(load_line("after"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell (default: 3)")
    ap.add_argument("--demo-epochs", type=int, default=20, help="epochs of the demo workload (default: 20)")
    ap.add_argument("--fashion-rows", type=int, default=12800,
                    help="Fashion-MNIST training images in the slice (default: 12800, 100 batches)")
    ap.add_argument("--sweep", action="store_true", help="step time at 1 and 2 threads against work per step")
    ap.add_argument("--steps", type=int, default=60, help="--sweep: timed steps per measurement (default: 60)")
    args = ap.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name):
            sys.exit(f"bench_threads.py: unset {name}: it would decide every variant's thread count")
    print(f"(auto looks at the cores for up to {SAMPLE_SECONDS} s before a large step's training; not timed below)")
    sweep(args) if args.sweep else compare(args)


if __name__ == "__main__":
    main()
