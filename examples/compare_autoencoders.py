"""Train the autoencoder family on one data set and compare them in a table and a figure.

    python3 examples/compare_autoencoders.py                     # every member, 30 epochs each
    python3 examples/compare_autoencoders.py --epochs 5 --out runs/quick
    python3 examples/compare_autoencoders.py --models ae_sparse ae_contractive

Each member is one of the example configs next to this file (ae_*.toml, vae_*.toml); they share the
data (the 8x8 digits), the likelihood (Gaussian, scale 0.1) and the network sizes, so the columns are
comparable.  Written to --out (default runs/compare_autoencoders):

- ``table.md``: per model, on the held-out digits —
  objective: the test ELBO for a normal guide (a lower bound on log p(x)); for a delta guide the
  negative penalized loss, log p(x|z) + log p(z) - penalties at z = f(x) (a MAP objective, not a bound);
  reconstruction error: sum over pixels of (x - decoder mean at the encoder mean)^2, clean inputs;
  active units: code dimensions j with Cov_x(E[z_j | x]) > 0.01;
  code sparsity: Hoyer's measure of the code vector E[z | x], averaged over test points,
  (sqrt(m) - |z|_1 / |z|_2) / (sqrt(m) - 1) for m code units: 0 when every entry has the same size,
  1 with a single nonzero; it does not depend on the code's scale, which the penalties also change;
  seconds: training time.
- ``reconstructions.png``: the same test digits reconstructed by every model, one row each.
- ``results.json``: the same numbers, plus each run's folder (config.toml, checkpoint.pt, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from pyro.infer import Trace_ELBO

import pyro_vae as pv

HERE = Path(__file__).resolve().parent
FAMILY = {
    # name: what it is (one line for the table)
    "ae_undercomplete": "undercomplete AE (delta guide)",
    "ae_sparse": "sparse AE (Laplace prior, L1, tied)",
    "ae_contractive": "contractive AE (Jacobian penalty, tied)",
    "ae_denoising": "denoising AE (gaussian 0.2)",
    "vae_gaussian": "VAE",
    "vae_beta": "beta-VAE (beta 4, KL warm-up)",
    "vae_denoising": "denoising VAE (masking 0.25)",
    "vae_iwae": "IWAE (K = 5)",
}
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def code_stats(model, x):
    """(active units, code sparsity) of the encoder means on ``x``."""
    z = model.encode(x)
    active = int((z.var(0) > ACTIVE_THRESHOLD).sum())
    m = z.shape[-1]
    if m == 1:
        return active, 1.0
    l1, l2 = z.abs().sum(-1), z.norm(dim=-1)
    hoyer = (math.sqrt(m) - l1 / l2.clamp_min(1e-30)) / (math.sqrt(m) - 1)
    hoyer = torch.where(l2 > 0, hoyer, torch.ones_like(hoyer))  # an all-zero code is as sparse as it gets
    return active, float(hoyer.mean())


@torch.no_grad()
def reconstruction_error(model, x):
    return float((x - model.decode(model.encode(x))).pow(2).sum(-1).mean())


@torch.no_grad()
def objective(run, x):
    """Test ELBO (normal guide) or the negative penalized MAP loss (delta guide), per point."""
    if run.config.model.nodes["z"].guide != "delta":
        return run.metrics["elbo"], "ELBO"
    # deterministic for a delta guide; Trace_ELBO's loss includes pyro.factor penalties
    loss = Trace_ELBO().loss(run.model.model, run.model.guide, x)
    return -loss / x.shape[0], "-loss"


def train_member(name, epochs, out, log):
    cfg = pv.load_config(HERE / f"{name}.toml", (f"train.epochs={epochs}",))
    if cfg.train.kl_warmup_epochs > epochs:  # short runs: keep the warm-up inside the run
        cfg = pv.load_config(HERE / f"{name}.toml", (f"train.epochs={epochs}", f"train.kl_warmup_epochs={epochs // 2}"))
    log(f"training {name} ({FAMILY.get(name, name)}) for {epochs} epochs ...")
    t0 = time.perf_counter()
    run = pv.train(cfg, out / name, overwrite=True, progress=False, iw_samples=None, plots=False)
    wall = time.perf_counter() - t0
    x = run.data.test
    value, kind = objective(run, x)
    active, sparsity = code_stats(run.model, x)
    return run, {
        "model": name,
        "what": FAMILY.get(name, name),
        "latent_dim": cfg.model.nodes["z"].dim,
        "objective": value,
        "objective_kind": kind,
        "reconstruction_error": reconstruction_error(run.model, x),
        "active_units": active,
        "code_sparsity": sparsity,
        "seconds": run.metrics.get("seconds_train", wall),
        "run_dir": str(out / name),
    }


def markdown_table(rows, epochs, data_name, n_test):
    lines = [
        f"Autoencoder family on {data_name} ({n_test} test points, {epochs} epochs each; per test point).",
        "",
        "| model | what | latent | objective (nats) | recon. error | active units | code sparsity | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['what']} | {r['latent_dim']} | {r['objective']:.2f} ({r['objective_kind']}) "
            f"| {r['reconstruction_error']:.3f} | {r['active_units']}/{r['latent_dim']} | {r['code_sparsity']:.2f} "
            f"| {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "objective: test ELBO for a normal guide; for a delta guide -loss = log p(x|z) + log p(z) - penalties "
        "at z = f(x) (MAP, not a bound on log p(x)). recon. error: sum over pixels of squared error at the "
        f"encoder mean, clean inputs. active: Cov_x E[z_j|x] > {ACTIVE_THRESHOLD}. code sparsity: Hoyer's measure "
        "of E[z|x], mean over test points (0: all entries equal in size, 1: a single nonzero).",
    ]
    return "\n".join(lines) + "\n"


def reconstruction_figure(runs, x, image_shape, path, n=10):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x[:n]
    rows = [("data", x)] + [(name, run.model.decode(run.model.encode(x))) for name, run in runs]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8 + 1.6, len(rows) * 0.85), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        imgs = imgs.detach().cpu().clamp(0, 1).numpy()
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j].reshape(image_shape), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("test digits (top) and their reconstructions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="epochs per model (default: 30)")
    p.add_argument("--models", nargs="+", default=list(FAMILY), metavar="NAME",
                   help=f"which example configs to train (default: all of {', '.join(FAMILY)})")
    p.add_argument("--out", default="runs/compare_autoencoders", help="output folder")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    missing = [m for m in args.models if not (HERE / f"{m}.toml").exists()]
    if missing:
        p.error(f"no example config for {', '.join(missing)} in {HERE}: choose from {', '.join(FAMILY)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    rows, runs = [], []
    for name in args.models:
        run, row = train_member(name, args.epochs, out, log)
        rows.append(row)
        runs.append((name, run))
    data = runs[0][1].data
    table = markdown_table(rows, args.epochs, data.name, len(data.test))
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if data.image_shape is not None:
        reconstruction_figure(runs, data.test, data.image_shape, out / "reconstructions.png")
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}"
          + (f", {out / 'reconstructions.png'}" if data.image_shape is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
