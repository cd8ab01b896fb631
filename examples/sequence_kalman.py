"""A trained linear-Gaussian chain against the Kalman filter: its test ELBO and IS log p(x) per sequence beside the
exact log-likelihood at the run's own parameters, and q's per-step means beside the RTS smoother's.

    pyro-vae train examples/sequence_linear_gaussian.toml --out runs/lgssm
    python3 examples/sequence_kalman.py runs/lgssm
"""

import sys

import torch

import pyro_vae as pv
from pyro_vae.app.runs import load_run_data
from pyro_vae.diagnostics.kalman import LinearGaussian, kalman_smoother


def main(run_dir: str, iw_samples: int = 1000) -> None:
    run = pv.load_run(run_dir)
    params = LinearGaussian.from_model(run.model)
    if params is None:
        sys.exit("the run's chain is not linear-Gaussian (transition.type = \"linear\", a normal likelihood of a "
                 "linear map, net.hidden = [])")
    data = load_run_data(run)
    test = data.test
    exact = kalman_smoother(params, test["x"], test["lengths"])
    ev = pv.evaluate_points(run.model, test, iw_samples=iw_samples, seed=0, prior_samples=0)
    n, steps = test["x"].shape[:2]
    z_dim = params.A.shape[0]
    real = torch.arange(steps) < test["lengths"][:, None]
    dev = ((ev.posterior_mean.reshape(n, steps, z_dim) - exact.means).abs() / exact.sds)[real]
    within = (ev.log_likelihood - exact.log_likelihood).abs() <= 3 * ev.log_likelihood_var.sqrt()
    kalman = float(exact.log_likelihood.mean())
    print(f"{n} test sequences of up to {steps} steps, nats per sequence:")
    print(f"  Kalman log p(x) at the run's parameters  {kalman:.3f}")
    if data.truth is not None:  # the synthetic_sequences source: its generating parameters
        truth = float(kalman_smoother(LinearGaussian.from_dict(data.truth), test["x"], test["lengths"])
                      .log_likelihood.mean())
        print(f"  Kalman log p(x) at the true parameters   {truth:.3f}")
    print(f"  test ELBO                                {float(ev.elbo.mean()):.3f}  "
          f"({100 * (kalman - float(ev.elbo.mean())) / abs(kalman):.2f}% below)")
    print(f"  IS log p(x), K = {iw_samples}                  {float(ev.log_likelihood.mean()):.3f}  "
          f"(within 3 s.e. of Kalman on {int(within.sum())} of {n} sequences)")
    print(f"  |E_q[z_t] - smoother mean| / smoother sd: mean {float(dev.mean()):.3f}, max {float(dev.max()):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
