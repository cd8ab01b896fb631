"""Re-measure the numbers the README quotes for its commands: each command run as the README prints it.

    python benchmarks/readme_numbers.py                      # everything (about 25 minutes on 2 idle cores)
    python benchmarks/readme_numbers.py --only conditional,mixture
    python benchmarks/readme_numbers.py --only demo,diagnostics

Each example is trained in a fresh folder by the ``pyro-vae`` command the README prints beside its numbers, in a
subprocess with one thread (``OMP_NUM_THREADS=1``), and the numbers are read back from the run's metrics.json.
The jobs after the examples time what the README says takes a while: ``pyro-vae demo`` (the install paragraph),
the ``train``/``diagnose``/``report`` commands of "Posterior diagnostics and reports" (with the k-hat counts that
section's comparison quotes), and the variations the examples quote (the semi-supervised classifier weights, the
mixture after 80 epochs).  The output is one line per example or job, in the README's words, with the machine's
load, so that a number in the README can be checked against (or replaced by) the line printed here.
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


def _accuracy(m: dict) -> str:
    c = m["classes"]
    return f"accuracy {c['accuracy']:.3f} ± {c['accuracy_se']:.3f}"


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


class Failed(Exception):
    """A command of a job failed: its last line of stderr."""


def pyro_vae(*args) -> tuple:
    """Run ``pyro-vae ARGS`` from the project root with one thread: (seconds, its stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise Failed(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return time.perf_counter() - t0, done.stderr


def run(name: str, folder: Path) -> str:
    args, describe = EXAMPLES[name]
    out = folder / name
    wall, _ = pyro_vae(*args, "--out", out, "--quiet", "--no-plots")
    m = json.loads((out / "metrics.json").read_text())
    return (f"{name}: `pyro-vae {' '.join(args)} --out runs/{name}`: {describe(m)}; "
            f"{m['seconds_train']:.1f} s of training, {wall:.0f} s for the command (without plots)")


def demo(folder: Path) -> str:
    """The install paragraph's demo, as a user runs it (with its plots)."""
    wall, _ = pyro_vae("demo", "--out", folder / "demo")
    m = json.loads((folder / "demo" / "metrics.json").read_text())
    return (f"demo: `pyro-vae demo`: {wall:.0f} s for the command; test ELBO {m['elbo']:.2f}, "
            f"log p(x) {m['log_likelihood']:.2f}, {m['seconds_train']:.1f} s of training")


def _compared(folder: Path) -> str:
    """Per run of a diagnosis (diagnostics.json): its k-hat bands, ELBO, error against the reference and gap."""
    runs = json.loads((folder / "diagnostics.json").read_text())["runs"]
    return "; ".join(f"{r['name']}: k-hat > 0.7 on {r['khat']['bad']} of {r['summary']['points']} points (max "
                     f"{r['khat']['max']:.2f}), ELBO {r['summary']['elbo_q']:.2f}, mean |error| against the reference "
                     f"{r['summary']['mean_abs_error']:.3f}, amortization gap {r['summary']['gap']:.3f}" for r in runs)


def diagnostics(folder: Path) -> str:
    """The four commands of "Posterior diagnostics and reports", as printed, each timed."""
    runs = {e: folder / e for e in ("trace", "meanfield")}
    times = [pyro_vae("train", "--set", f"train.elbo={e}", "--out", out)[0] for e, out in runs.items()]
    report = folder / "report"
    times.append(pyro_vae("diagnose", *runs.values(), "--out", report, "--quiet")[0])
    times.append(pyro_vae("report", *runs.values(), "--out", report, "--quiet")[0])
    return (f"diagnostics: `pyro-vae train --set train.elbo=trace` {times[0]:.0f} s, `... meanfield` {times[1]:.0f} s, "
            f"`pyro-vae diagnose` {times[2]:.0f} s, `pyro-vae report` (reusing the diagnosis) {times[3]:.0f} s; "
            f"{_compared(report)}")


def classifier_weights(folder: Path) -> str:
    """The semi-supervised example at the classifier weights the README quotes."""
    said = []
    for w in (0, 16, 50, 150):
        out = folder / f"semisupervised-w{w}"
        _, err = pyro_vae("train", "examples/graph_semisupervised.toml", "--out", out, "--quiet", "--no-plots",
                          "--set", f"model.nodes.y.classifier_weight={w}", "--iw-samples", "5")
        said.append(f"W = {w}: {_accuracy(json.loads((out / 'metrics.json').read_text()))}")
    kept = next((l.split("note: data: ")[1].split(";")[0] for l in err.splitlines() if "training labels kept" in l),
                "?")
    return f"classifier_weights: {kept}; " + ", ".join(said)


def mixture_80(folder: Path) -> str:
    """The mixture example stopped at 80 epochs."""
    out = folder / "mixture-80"
    pyro_vae("train", "examples/graph_mixture_prior.toml", "--out", out, "--quiet", "--no-plots",
             "--set", "train.epochs=80")
    return f"mixture_80: `--set train.epochs=80`: {_mixture(json.loads((out / 'metrics.json').read_text()))}"


#: the jobs after the examples: name -> job(folder) -> its line
JOBS = {"demo": demo, "diagnostics": diagnostics, "classifier_weights": classifier_weights, "mixture_80": mixture_80}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = [*EXAMPLES, *JOBS]
    p.add_argument("--only", default=",".join(every), help=f"examples and jobs to run, of {', '.join(every)}")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in every]
    if unknown:
        p.error(f"unknown example {unknown[0]!r}: choose from {', '.join(every)}")
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores, one thread each")
    with tempfile.TemporaryDirectory(prefix="readme-numbers-") as folder:
        for name in names:
            try:
                line = run(name, Path(folder)) if name in EXAMPLES else JOBS[name](Path(folder))
            except Failed as e:
                line = f"{name}: FAILED ({e})"
            print(line, flush=True)
        print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end", flush=True)


if __name__ == "__main__":
    main()
