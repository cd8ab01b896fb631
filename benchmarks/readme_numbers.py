"""Re-measure the numbers the README quotes for its example runs: each example's command, run as printed.

    python benchmarks/readme_numbers.py                      # every example (about 10 minutes on 2 idle cores)
    python benchmarks/readme_numbers.py --only conditional,mixture

Each example is trained in a fresh folder by the ``pyro-vae`` command the README prints beside its numbers, in a
subprocess with one thread (``OMP_NUM_THREADS=1``), and the numbers are read back from the run's metrics.json.
The output is one line per example, in the README's words, with the machine's load, so that a number in the
README can be checked against (or replaced by) the line printed here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _units(m: dict) -> str:
    nodes = [n for n in m.get("nodes") or [] if n.get("active_units") is not None]
    if nodes:
        return f"{sum(n['active_units'] for n in nodes)} of {sum(n['dims'] for n in nodes)} latent units active"
    return f"{m.get('active_units')} of {m.get('latent_dims')} units active"


def _khat(m: dict) -> str:
    return f"k-hat > 0.7 on {m.get('iw_khat_above_0_7')} of {m['num_points']} points"


def _hierarchical(m: dict) -> str:
    return (f"test ELBO {m['elbo']:.2f} (reconstruction {m['reconstruction']:.2f}, KL {m['kl']:.2f}), "
            f"log p(x) {m['log_likelihood']:.2f} (K = {m['iw_samples']}; {_khat(m)}), {_units(m)}")


def _conditional(m: dict) -> str:
    return (f"test ELBO {m['elbo']:.2f}, log p(x | y) {m['log_likelihood']:.2f} ± {m['log_likelihood_se']:.3f} "
            f"on the {m['num_points']} test digits")


def _semisupervised(m: dict) -> str:
    c = m["classes"]
    return (f"test accuracy {c['accuracy']:.3f} ± {c['accuracy_se']:.3f} on {c['num_points']} test digits, "
            f"test ELBO {m['elbo']:.2f}")


def _mixture(m: dict) -> str:
    c = m["classes"]
    return (f"clustering accuracy {c['accuracy']:.3f} ({c['clusters_used']} of {len(c['table'][0])} components in "
            f"use), test ELBO {m['elbo']:.2f}")


def _conv(m: dict) -> str:
    return f"test ELBO {m['elbo']:.2f}, log p(x) {m['log_likelihood']:.2f} ({_khat(m)}), {_units(m)}"


#: name -> (the command's arguments after `pyro-vae`, as the README prints them, the numbers it quotes)
EXAMPLES = {
    "hierarchical": (["train", "examples/graph_hierarchical.toml"], _hierarchical),
    "conditional": (["train", "examples/graph_conditional.toml"], _conditional),
    "semisupervised": (["train", "examples/graph_semisupervised.toml"], _semisupervised),
    "mixture": (["train", "examples/graph_mixture_prior.toml"], _mixture),
    "conv": (["train", "examples/vae_conv_fashion_mnist.toml", "--iw-samples", "50"], _conv),
}


def run(name: str, folder: Path) -> str:
    args, describe = EXAMPLES[name]
    out = folder / name
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *args, "--out", str(out), "--quiet", "--no-plots"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return f"{name}: FAILED ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
    m = json.loads((out / "metrics.json").read_text())
    return (f"{name}: `pyro-vae {' '.join(args)} --out runs/{name}`: {describe(m)}; "
            f"{m['seconds_train']:.1f} s of training, {wall:.0f} s for the command (without plots)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(EXAMPLES), help=f"examples to run, of {', '.join(EXAMPLES)}")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        p.error(f"unknown example {unknown[0]!r}: choose from {', '.join(EXAMPLES)}")
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores, one thread each")
    with tempfile.TemporaryDirectory(prefix="readme-numbers-") as folder:
        for name in names:
            print(run(name, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
