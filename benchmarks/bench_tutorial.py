"""Our trainer vs the Pyro tutorial VAE: seconds per Fashion-MNIST epoch, same process, alternating.

The target: on 2 CPU cores, training a 784-400-20 Bernoulli VAE with
batch 128 on Fashion-MNIST is no slower per epoch than a hand-written Pyro
tutorial VAE (``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``, ``pyro.module``,
a plate without subsampling) timed in the same run.

Both see the same statically binarized data in the same batch order (one
``randperm`` per epoch from generators seeded alike).  Ours runs through
``Trainer.fit`` with ``elbo = "trace"`` (the same estimator as the tutorial)
and with the default ``"meanfield"``; its hidden units are softplus, as the
tutorial's.  One block is one full epoch; the variants alternate and the
order rotates every round.  Seconds are those of the batch loop (our
``history.csv`` "seconds"; the tutorial's loop timed the same way).

    python benchmarks/bench_tutorial.py                 # 3 rounds, ~2-4 min on 2 cores
    python benchmarks/bench_tutorial.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from _common import (OurRunner, TutorialRunner, alternate, fashion_mnist, machine_line, median, our_model,
                     paired_ratio, table)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="epochs per variant (alternating)")
    ap.add_argument("--rows", type=int, default=None, help="train on the first ROWS images (default: all 60000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, _ = fashion_mnist(args.rows)
    n, b = train.shape[0], args.batch_size
    print(machine_line())
    print(f"data: Fashion-MNIST, {n} training images, static binarization; batch {b}; 784-400-20, softplus hidden units")

    tutorial = TutorialRunner(batch_size=b)
    ours_trace = OurRunner(our_model("softplus"), batch_size=b, elbo="trace", data_size=n)
    ours_mf = OurRunner(our_model("softplus"), batch_size=b, elbo="meanfield", data_size=n)
    warm = train[: 20 * b]  # a short first block: imports, allocator, optimizer state

    def block(runner):
        return lambda r: runner.train_block(warm if r < 0 else train)

    res = alternate({"tutorial": block(tutorial), "trace": block(ours_trace), "meanfield": block(ours_mf)},
                    rounds=args.rounds)
    ref = res["tutorial"]
    rows = [
        ["Pyro tutorial VAE (SVI, Trace_ELBO, pyro.optim.Adam)", median(ref), n / median(ref), 1.0],
        ['pyro_vae Trainer, elbo = "trace"', median(res["trace"]), n / median(res["trace"]),
         paired_ratio(res["trace"], ref)],
        ['pyro_vae Trainer, elbo = "meanfield"', median(res["meanfield"]), n / median(res["meanfield"]),
         paired_ratio(res["meanfield"], ref)],
    ]
    print()
    print(table(["variant", "s / epoch", "images / s", "ratio to tutorial"], rows))
    print()
    print("per-round seconds:", {k: [round(v, 2) for v in vs] for k, vs in res.items()})
    print("ratio = median over rounds of (ours / tutorial), each pair timed back to back; < 1 means ours is faster")
    print(machine_line())


if __name__ == "__main__":
    main()
