"""The negative binomial's inverse dispersion: where a run leaves theta, from a given start, and what it costs.

    python benchmarks/bench_nb_dispersion.py --init 1 --epochs 30      # the digits' levels, NB, theta started at 1
    python benchmarks/bench_nb_dispersion.py --init 10 --epochs 30 --config examples/counts_zinb.toml --likelihood zinb
    python benchmarks/bench_nb_dispersion.py --dispersion-of RUN_DIR    # (x - E[x|z])^2 / E[x|z] of a trained run

Each training run prints its held-out test ELBO and IS log p(x) (K = 1000, as ``pyro-vae train`` evaluates) and the
learned theta per feature; on a synthetic source, theta's and the dropout's recovery against the truth.
``--dispersion-of`` reads a trained run's conditional dispersion: per feature, the squared residual of the counts
about the decoder's mean at z ~ q(z | x) (20 draws a row) over that mean, pooled over the test rows.  About 1 is
Poisson given z; above 1 over-dispersed (where an NB's finite theta helps); below 1 under-dispersed.
"""

import argparse
import math
import time

import numpy as np
import torch
from pyro import poutine

import pyro_vae as pv
from pyro_vae.app.prepare import prepare
from pyro_vae.app.runs import load_run, load_run_data
from pyro_vae.evaluation.recovery import recovery
from pyro_vae.store.truth import truth_arrays


def train_from(init: float, epochs: int, config: str, likelihood: str) -> None:
    cfg = pv.load_config(config, (f"model.likelihood={likelihood}", f"train.epochs={epochs}"))
    cfg, data, model = prepare(cfg, None)
    with torch.no_grad():
        model.likelihood.log_theta.fill_(math.log(init))
    t0 = time.perf_counter()
    pv.fit(model, data.train, None, cfg.train, progress=False)
    s = pv.evaluate_points(model, data.test, iw_samples=1000, seed=cfg.train.seed).summary()
    theta = model.likelihood.theta().detach()
    print(f"{config} {likelihood}, theta started at {init:g}, {epochs} epochs ({time.perf_counter() - t0:.0f} s): "
          f"test ELBO {s['elbo']:.2f}, IS log p(x) {s['log_likelihood']:.2f} (s.e. {s['log_likelihood_se']:.3f}); "
          f"learned theta median {theta.median():.2f}, min {theta.min():.2f}, max {theta.max():.2f}")
    if data.truth is not None:
        found = recovery(model, data.test, truth_arrays(data.truth), seed=cfg.train.seed)
        for name in ("theta", "dropout"):
            r = getattr(found, name) if found is not None else None
            if r is not None:
                print(f"  {name}: median relative error {r.median_relative_error:.1%} against the truth")


@torch.no_grad()
def dispersion_of(run_dir: str, draws: int = 20) -> None:
    run = load_run(run_dir)
    x = load_run_data(run).test_x
    model = run.model
    resid = mean = 0.0
    for _ in range(draws):
        guide = poutine.trace(model.guide).get_trace(x=x)
        tr = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x=x)
        mu = tr.nodes[model.obs_site]["fn"].mean
        resid, mean = resid + ((x - mu) ** 2).sum(0), mean + mu.sum(0)
    ratio = (resid / mean)[x.mean(0) > 0.5].numpy()
    print(f"{run_dir}: (x - E[x|z])^2 / E[x|z] per feature (mean count > 0.5, {len(ratio)} features): median "
          f"{np.median(ratio):.2f}, quartiles {np.percentile(ratio, 25):.2f} {np.percentile(ratio, 75):.2f}, "
          f"below 1 for {np.mean(ratio < 1):.0%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", type=float, default=10.0, help="theta's start (default: the library's, 10)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--config", default="examples/counts_digits_poisson.toml")
    p.add_argument("--likelihood", default="negative_binomial", choices=["negative_binomial", "zinb"])
    p.add_argument("--dispersion-of", metavar="RUN_DIR", help="only read this trained run's conditional dispersion")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dispersion_of:
        dispersion_of(args.dispersion_of)
    else:
        train_from(args.init, args.epochs, args.config, args.likelihood)


if __name__ == "__main__":
    main()
