"""``pyro-vae``: train, evaluate and sample latent-variable models from the shell.

Every user-fixable problem ends as one line on stderr and exit status 2; an
interrupted training run saves its state and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

EXIT_USER_ERROR = 2

DEMO_CONFIG = {
    "data": {"source": "digits"},
    "model": {"latent_dim": 8, "likelihood": "bernoulli", "encoder": {"hidden": [256]}, "decoder": {"hidden": [256]}},
    "train": {"elbo": "meanfield", "epochs": 80, "batch_size": 64, "lr": 2e-3, "seed": 0},
}

METRIC_LINES = [
    ("elbo", "test ELBO"),
    ("reconstruction", "  reconstruction E_q[log p(x|z)]"),
    ("kl", "  KL(q(z|x) || p(z))"),
    ("log_likelihood", "log p(x) (importance sampled)"),
]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _format_metrics(m: dict) -> str:
    lines = [f"per data point, in nats, on {m['num_points']} points:"]
    for key, label in METRIC_LINES:
        v = m.get(key)
        if v is None:
            continue
        text = f"{v:10.3f}"
        if key == "log_likelihood" and m.get("log_likelihood_se") is not None:
            text += f" ± {m['log_likelihood_se']:.3f} (MC s.e., K = {m['iw_samples']}, mean ESS {m['iw_ess_mean']:.1f})"
        if key == "kl":
            text += " (analytic)" if m.get("kl_analytic") else " (Monte Carlo)"
        lines.append(f"  {label:<34}{text}")
    if m.get("log_likelihood") is None:
        lines.append("  log p(x): not available (point-mass guide: no proposal density)")
    return "\n".join(lines)


def _default_out(stem: str) -> Path:
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- commands ---------------------------------------------------------------


def cmd_demo(args) -> int:
    from .config import config_from_dict
    from .run import train

    cfg = config_from_dict(DEMO_CONFIG)
    if args.epochs is not None:
        from .config import apply_overrides

        cfg = config_from_dict(apply_overrides(cfg.to_dict(), [f"train.epochs={args.epochs}"]))
    out = Path(args.out)
    _log(f"training the demo VAE ({cfg.model.latent_dim}-d latent, Bernoulli likelihood) on scikit-learn's 8x8 digits -> {out}")
    t0 = time.perf_counter()
    run = train(cfg, out, overwrite=True, progress=None, log=_log)
    print(_format_metrics(run.metrics))
    print(f"trained {cfg.train.epochs} epochs in {time.perf_counter() - t0:.1f} s on {_device_name(cfg)}")
    print(f"run directory: {out}  (config.toml, checkpoint.pt, history.csv, metrics.json)")
    print(f"plots: {out / 'plots'}  ({', '.join(p.name for p in run.plots or [])})")
    return 0


def _device_name(cfg) -> str:
    from .train import resolve_device

    return str(resolve_device(cfg.train.device))


def cmd_train(args) -> int:
    from .config import Config, config_from_dict, load_config, apply_overrides
    from .run import train

    if args.resume:
        if args.config:
            raise _usage("give either CONFIG or --resume RUN_DIR, not both (a resumed run uses its own config.toml)")
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").exists():
            from .errors import PyroVAEError

            raise PyroVAEError(f"--resume {run_dir}: no run there (no config.toml): check the path")
        cfg = load_config(run_dir / "config.toml", tuple(args.set))
        out = run_dir
    else:
        if args.config:
            cfg = load_config(args.config, tuple(args.set))
            stem = Path(args.config).stem
        else:
            cfg = config_from_dict(apply_overrides(Config().to_dict(), args.set))
            stem = "run"
        out = Path(args.out) if args.out else _default_out(stem)
    run = train(cfg, out, resume=bool(args.resume), progress=False if args.quiet else None,
                iw_samples=args.iw_samples, plots=not args.no_plots, log=_log)
    print(_format_metrics(run.metrics))
    print(f"run directory: {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import as_matrix, read_array
    from .evaluate import evaluate
    from .run import check_support, load_run, load_run_data
    from .errors import PyroVAEError

    run = load_run(args.run_dir)
    if args.data:
        x = as_matrix(read_array(args.data, "--data"), f"--data ({Path(args.data).name})")
        if x.shape[1] != run.model.data_dim:
            raise PyroVAEError(
                f"--data has shape {tuple(x.shape)} but the model expects {run.model.data_dim} columns"
            )
        run.model.likelihood.check_support(x, f"--data ({Path(args.data).name})")
    else:
        x = load_run_data(run).test
    metrics = evaluate(run.model, x, iw_samples=args.iw_samples, seed=args.seed)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(_format_metrics(metrics))
    return 0


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .errors import PyroVAEError
    from .run import load_run
    from .plots import save_image_grid
    from .train import write_text_atomic  # noqa: F401  (atomic writes below)

    if args.n < 1:
        raise PyroVAEError(f"-n must be >= 1 (got {args.n})")
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise PyroVAEError(f"--out {out}: use a .png (image grid) or .npy (array) file name")
    if not out.parent.exists():
        raise PyroVAEError(f"--out {out}: folder {str(out.parent)!r} does not exist")
    run = load_run(args.run_dir)
    if suffix == ".png" and run.image_shape is None:
        raise PyroVAEError(f"--out {out}: this run's data are not images; write a .npy file instead")
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        _, xs = run.model.sample(args.n)
    arr = xs.cpu().numpy()
    tmp = out.with_name(f".tmp-{out.name}")
    if suffix == ".png":
        save_image_grid(arr, run.image_shape, tmp.with_suffix(".png"), ncols=int(np.ceil(np.sqrt(args.n))))
        tmp.with_suffix(".png").replace(out)
    else:
        with open(tmp, "wb") as f:
            np.save(f, arr)
        tmp.replace(out)
    print(f"wrote {args.n} samples to {out}")
    return 0


# -- parser -------------------------------------------------------------------


class _UsageError(Exception):
    pass


def _usage(msg):
    return _UsageError(msg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Declare, train, evaluate and sample latent-variable models (VAEs and autoencoders) with Pyro's SVI.",
        epilog="Run 'pyro-vae COMMAND --help' for a command's options. Start with 'pyro-vae demo'.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="train the default VAE on the built-in 8x8 digits and show the results",
                       description="Train the default VAE on scikit-learn's 8x8 digits (no download), print the test "
                       "metrics and write plots. Takes well under 2 minutes on 2 CPU cores; uses CUDA when present.")
    d.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists; default: runs/demo)")
    d.add_argument("--epochs", type=int, default=None, help="override the number of epochs (default: 80)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model described by a TOML config (see the README for every key). "
                       "Without CONFIG the defaults are used: a VAE on the 8x8 digits.")
    t.add_argument("config", nargs="?", help="TOML config file")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 --set model.latent_dim=2 (repeatable)")
    t.add_argument("--out", help="run directory to create (default: runs/<config name>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or finished run "
                   "(raise train.epochs with --set to train longer)")
    t.add_argument("--iw-samples", type=int, default=1000, metavar="K",
                   help="importance samples per point for the final log p(x) (default: 1000)")
    t.add_argument("--no-plots", action="store_true", help="skip writing plots/")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test ELBO, its parts and importance-sampled log p(x) of a run",
                       description="Evaluate a trained run: per data point, in nats, the ELBO, its reconstruction and "
                       "KL parts, and log p(x) importance-sampled with K draws from the guide, with its Monte Carlo "
                       "standard error. Parameters and the run are not changed.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", metavar="PATH", help=".npy/.npz/.csv to evaluate on (default: the run's test data)")
    e.add_argument("--iw-samples", type=int, default=1000, metavar="K", help="importance samples per point (default: 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation's own random stream (default: 0)")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="draw samples from a trained model's prior and decoder",
                       description="Draw z ~ p(z) and write the decoder means: a .png grid for image data, else a .npy array.")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument("--out", required=True, help="output file: .png or .npy")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    from .errors import PyroVAEError
    from .train import TrainingInterrupted

    try:
        return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except _UsageError as e:
        parser.error(str(e))
    except TrainingInterrupted as e:
        where = f"; state saved to {e.checkpoint} (continue with --resume {e.checkpoint.parent})" if e.checkpoint else ""
        print(f"pyro-vae: interrupted{where}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
