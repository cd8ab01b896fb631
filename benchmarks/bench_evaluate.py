"""Evaluation benchmark: K importance samples on the Fashion-MNIST test images.

A 784-400-20 Bernoulli VAE (MLP encoder and decoder, one hidden layer of 400
ReLU units, 20-d latent), briefly trained on the training images (``--epochs``,
default 1; 0 = untrained), is evaluated on the 10,000 test images (binarized
once with a fixed seed, as pyro_vae does for every run) with
``pyro_vae.evaluate_points``: the importance-sampled log p(x) with K
draws per image, and then, timed separately, the naive prior-sampling
estimator with the same K.  Prints seconds and peak resident memory (the
process high-water mark from getrusage, which sees torch's allocations;
tracemalloc would not).

    python3 benchmarks/bench_evaluate.py                 # K = 1000, 10,000 images
    python3 benchmarks/bench_evaluate.py --points 500    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import pyro  # noqa: E402

import pyro_vae as pv  # noqa: E402
from pyro_vae.evaluation.estimators import evaluate_points  # noqa: E402
from pyro_vae.evaluation.streaming import DEFAULT_BUDGET, plan_chunks  # noqa: E402


def cpu_seconds() -> float:
    # user + system time of this process: what the work cost, even on a machine shared with other jobs
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iw-samples", type=int, default=1000, metavar="K")
    ap.add_argument("--points", type=int, default=10_000, help="test images to evaluate (default: all 10,000)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs before evaluating (0: untrained)")
    ap.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="elements per chunk tensor")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-prior", action="store_true", help="skip the naive prior-sampling estimator")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = pv.load_data(pv.DataConfig(source="fashion-mnist", path=args.data_dir), "bernoulli")
    x = data.test[: args.points]
    pyro.set_rng_seed(0)
    spec = pv.ModelConfig(latent_dim=20, likelihood="bernoulli",
                          encoder=pv.NetConfig((400,)), decoder=pv.NetConfig((400,)))
    model = pv.build_model(spec, data.dim)
    t0 = time.perf_counter()
    if args.epochs > 0:
        pv.fit(model, data.train, None, pv.TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, device="cpu"),
               binarize=data.binarize, progress=False)
    train_s = time.perf_counter() - t0
    k_chunk, b_chunk = plan_chunks(len(x), args.iw_samples, 784, args.budget)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start; {len(x)} test images, K = {args.iw_samples}, "
          f"budget {args.budget} elements -> chunks of {k_chunk} draws x {b_chunk} images")
    print(f"model 784-400-20 Bernoulli VAE, {'untrained' if args.epochs == 0 else f'trained {args.epochs} epoch(s) in {train_s:.1f} s'}")
    rss0 = peak_rss_mib()
    print(f"peak RSS before evaluating (data + model): {rss0:.0f} MiB", flush=True)

    t0, c0 = time.perf_counter(), cpu_seconds()
    iw = evaluate_points(model, x, iw_samples=args.iw_samples, prior_samples=0, seed=0, budget=args.budget)
    iw_s, iw_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rss1 = peak_rss_mib()
    s = iw.summary()
    print(f"importance sampling (ELBO, log p(x), ESS, active units, MSE): {iw_s:.1f} s wall, {iw_cpu:.1f} s CPU, "
          f"peak RSS {rss1:.0f} MiB (+{rss1 - rss0:.0f})", flush=True)
    print(f"  ELBO {s['elbo']:.2f} ± {s['elbo_se']:.3f}, log p(x) {s['log_likelihood']:.2f} ± {s['log_likelihood_se']:.3f}, "
          f"ESS mean {s['iw_ess_mean']:.1f} / {args.iw_samples}, active units {s['active_units']} / 20")
    out = {"points": len(x), "K": args.iw_samples, "threads": torch.get_num_threads(), "train_seconds": train_s,
           "iw_seconds": iw_s, "iw_cpu_seconds": iw_cpu, "peak_rss_mib_before": rss0, "peak_rss_mib_after_iw": rss1, "metrics": s}
    if not args.no_prior:
        t0, c0 = time.perf_counter(), cpu_seconds()
        pr = evaluate_points(model, x, iw_samples=None, prior_samples=args.iw_samples, seed=0, budget=args.budget,
                             reconstruction_error=False)
        pr_s, pr_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        rss2 = peak_rss_mib()
        p = pr.summary()
        print(f"naive prior sampling, same K: {pr_s:.1f} s wall, {pr_cpu:.1f} s CPU, peak RSS {rss2:.0f} MiB; "
              f"log p(x) {p['log_likelihood_prior']:.2f} ± {p['log_likelihood_prior_se']:.3f}, "
              f"ESS mean {p['prior_ess_mean']:.2f} / {args.iw_samples}")
        out.update(prior_seconds=pr_s, prior_cpu_seconds=pr_cpu, peak_rss_mib_after_prior=rss2, prior_metrics={
            k: p[k] for k in ("log_likelihood_prior", "log_likelihood_prior_se", "prior_ess_mean", "prior_ess_min")})
    print(json.dumps({k: v for k, v in out.items() if k not in ("metrics", "prior_metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
