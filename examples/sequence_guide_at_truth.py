"""The structured guide alone against the Kalman smoother: a linear chain pinned at the synthetic source's true
parameters, only its guide trained, then |E_q[z_t,d] - E[z_t,d | x]| / sd_t,d on every test sequence, step and
coordinate (the issue's per-step check, at fixed parameters).

    python3 examples/sequence_guide_at_truth.py                                   # the slow test's setting
    python3 examples/sequence_guide_at_truth.py --elbo auto --particles 4 --schedule 100:0.02,300:0.005,200:0.001
    python3 examples/sequence_guide_at_truth.py --schedule 100:0.02,50:0.002 --particles 16 --rnn 32
"""

import argparse
import time

import numpy as np
import torch

import pyro_vae as pv
from pyro_vae.config import config_from_dict
from pyro_vae.config.schema import TrainConfig
from pyro_vae.diagnostics.kalman import LinearGaussian, kalman_smoother
from pyro_vae.diagnostics.step_means import guide_step_means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--schedule", default="100:0.02,1200:0.005,800:0.001",
                    help="EPOCHS:LR,... trained in turn (default: the slow test's)")
    ap.add_argument("--elbo", default="stl", choices=["auto", "trace", "meanfield", "stl"],
                    help="train.elbo: stl (the path derivative; the slow test's), auto, trace or meanfield")
    ap.add_argument("--particles", type=int, default=1, help="ELBO particles a step (default 1, the slow test's)")
    ap.add_argument("--batch-size", type=int, default=100, help="sequences a step (default 100)")
    ap.add_argument("--rnn", type=int, default=16, help="the backward GRU's hidden size (default 16)")
    ap.add_argument("--encoder", type=int, default=16, help="the combiner's hidden width (default 16)")
    ap.add_argument("--sequences", type=int, default=300, help="sequences, a tenth held out (default 300)")
    ap.add_argument("--draws", type=int, default=2000, help="antithetic pairs for E_q (default 2000)")
    a = ap.parse_args()
    schedule = [(int(e), float(lr)) for e, lr in (part.split(":") for part in a.schedule.split(","))]
    steps = 12
    cfg = config_from_dict({
        "data": {"source": "synthetic_sequences", "num_points": a.sequences, "sequence_length": steps,
                 "min_length": 4, "synthetic_dim": 3, "synthetic_noise": 1.0, "test_fraction": 30 / a.sequences},
        "model": {"nodes": {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"},
                                  "rnn": {"hidden": a.rnn}, "encoder": {"hidden": [a.encoder]}},
                            "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                                  "net": {"hidden": []}}}}})
    data = pv.load_data(cfg.data, "normal", ("x",))
    torch.manual_seed(0)
    model = pv.build_model(cfg.model, 3)
    model.set_linear_gaussian(data.truth)
    test = data.test
    exact = kalman_smoother(LinearGaussian.from_dict(data.truth), test["x"], test["lengths"])
    real = (torch.arange(steps) < test["lengths"][:, None]).unsqueeze(-1).expand(exact.means.shape)
    start = time.perf_counter()
    for seed, (epochs, lr) in enumerate(schedule):
        pv.fit(model, data.train, config=TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=lr,
                                                      num_particles=a.particles, elbo=a.elbo, eval_every=10 ** 6, seed=seed),
               progress=False)
        q = guide_step_means(model, test, draws=a.draws)
        dev = torch.where(real, (q.means - exact.means).abs() / exact.sds, torch.zeros_like(q.means))
        i, t, d = np.unravel_index(int(dev.argmax()), dev.shape)
        print(f"after {epochs} epochs at {lr:g} ({time.perf_counter() - start:.0f} s): max {float(dev.max()):.3f} "
              f"(sequence {i}, step {t + 1} of {int(test['lengths'][i])}, coordinate {d}), mean "
              f"{float(dev[real].mean()):.3f}, share above 0.1: {float((dev[real] > 0.1).double().mean()):.3f}; "
              f"E_q's MC s.e. <= {float((q.se / exact.sds)[real].max()):.4f} sd", flush=True)
    points = pv.evaluate_points(model, test, iw_samples=1000, seed=0, prior_samples=0)  # as the slow tests
    kalman = float(exact.log_likelihood.mean())
    print(f"{len(test['x'])} test sequences: Kalman log p(x) {kalman:.3f}, ELBO {float(points.elbo.mean()):.3f} "
          f"({100 * (kalman - float(points.elbo.mean())) / abs(kalman):.3f}% below)")
    n = len(test["x"])
    z = ((points.log_likelihood - exact.log_likelihood) / points.log_likelihood_var.sqrt()).numpy()
    print(f"  IS log p(x), K = 1000, in s.e. from Kalman's: {int((np.abs(z) > 3).sum())} of {n} beyond 3, max "
          f"|z| {np.abs(z).max():.2f}, mean z * sqrt(n) {z.mean() * np.sqrt(n):.2f}, sum of z^2 {(z ** 2).sum():.1f}")
    from_start = torch.arange(steps).expand(n, steps)
    from_end = test["lengths"][:, None] - 1 - torch.arange(steps)
    for name, index in (("from its start", from_start), ("from its end", from_end)):
        means = [float(dev[(index == r).unsqueeze(-1).expand(dev.shape) & real].mean()) for r in range(8)]
        print(f"  mean deviation by step {name}, 1..8: " + " ".join(f"{v:.3f}" for v in means))

if __name__ == "__main__":
    main()
