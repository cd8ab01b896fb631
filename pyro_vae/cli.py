"""``pyro-vae``: demo, train, evaluate, sample, diagnose and report from the shell.

Every user-fixable problem ends as one line on stderr and exit status 2; an
interrupted training run saves its state and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from . import __version__
from .app import diagnose_runs, evaluate_run, report_runs, train
from .app.sample import write_samples
from .app.sequences import write_sequences
from .app.demo import demo
from .app.keys import NAMES, examples_text, keys_text
from .app.evaluate import GapOptions
from .diagnostics.gaps import RICHER, check_richer
from .app.pipeline import FROM_CONFIG
from .config import Config, apply_overrides, config_from_dict, load_config
from .config.schema import THREADS_RULE
from .errors import PyroVAEError, TrainingInterrupted, without_trace_shapes
from .evaluation.quantities import ONE_LATENT
from .report.render import render_text
from .report.gaps import gaps_text
from .runtime import distributed, failures
from .runtime.launch import launch
from .runtime.threads import parse_setting
from .training.trainer import resolve_device

EXIT_USER_ERROR = 2
#: the most rows or columns a class table printed on a terminal has
MAX_TABLE_SIDE = 20

def _line(text: str) -> None:
    """One line on stderr in one write: the ranks of a torchrun job share the stream, and print() writes the
    text and its newline in two, between which another rank's line can land."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _log(msg: str) -> None:
    _line(msg)


def _quantities(m: dict) -> dict:
    """What the metrics estimate, in the model's names (log p(x|y), ...); a metrics.json written before they were
    recorded is of a model of one latent z and one observed x."""
    return dict(ONE_LATENT.to_json(), **(m.get("quantities") or {}))


#: the metrics' label column at most: a longer label sits on a line of its own, its value below it
LABEL_WIDTH = 48
#: latent dimensions the KL-per-dimension line names (the largest), so that it fits a terminal line
KL_DIMS_SHOWN = 5


def _log_likelihood_rows(m: dict, log_p: str, unit: str, num, se) -> list:
    """The importance-sampled log p(x) rows of the metrics text, as (label, text); a label of None is a line of
    its own."""
    out = []
    if m.get("log_likelihood") is not None:
        if m.get("log_likelihood_se") is None and m.get("log_likelihood_between_point_se") is not None:
            text = num("log_likelihood") + se("log_likelihood_between_point_se") + f" (between-point s.e., K = {m.get('iw_samples')}"
        else:
            text = num("log_likelihood") + se("log_likelihood_se") + f" (MC s.e., K = {m.get('iw_samples')}"
        if m.get("iw_ess_mean") is not None and m.get("iw_samples") != 1:  # one draw's ESS is 1, always
            text += f", ESS mean {m['iw_ess_mean']:.1f}"
            if m.get("iw_ess_min") is not None:
                text += f", min {m['iw_ess_min']:.1f}"
        out.append((f"{log_p} (importance sampled)", text + ")"))
        if m.get("iw_khat_above_0_7") is not None:
            k_max, k_med = m.get("iw_khat_max"), m.get("iw_khat_median")
            shown = "" if k_max is None else f"max {k_max:.2f}, median {k_med:.2f}, "
            out.append(("  PSIS k-hat of the weights", f"{shown}{m['iw_khat_above_0_7']} of {m['num_points']} {unit}s above 0.7"))
        if m.get("log_likelihood_warning"):
            out.append((None, f"    WARNING: {m['log_likelihood_warning']}"))
        elif "log_likelihood_warning" not in m and m.get("iw_ess_min") is not None and m["iw_ess_min"] < 5:
            # an older metrics.json: the delta-method s.e. comes from the same few dominant weights
            out.append((None, "    (some points have an ESS below 5: their estimate and s.e. rest on a few draws; raise K)"))
    else:
        out.append((f"{log_p} (importance sampled)", "not available (point-mass guide or no importance samples)"))
    return out


def _format_metrics(m: dict) -> str:
    """The metrics as text; tolerant of keys missing from older metrics.json files."""
    q = _quantities(m)
    log_p = q["log_likelihood"]
    # a label longer than the column (a program's densities name every input) goes on a line of its own
    width = min(max(38, len(q["reconstruction"]) + 19, len(q["kl"]) + 4), LABEL_WIDTH)

    def num(key, fmt="{:10.3f}"):
        v = m.get(key)
        return None if v is None else fmt.format(v)

    def row(label, text):
        if len(label) >= width:
            lines.append(f"  {label}")
            label = ""
        lines.append(f"  {label:<{width}}{text}")

    def se(key):
        v = m.get(key)
        return "" if v is None else f" ± {v:.3f}"

    chain = str(q.get("per", "")).startswith("sequence")
    unit = "sequence" if chain else "point"
    lengths = q.get("per") != "sequence"  # a program's own chain ("sequence") masks its steps as it does
    lines = [f"per sequence, in nats, on {m['num_points']} sequences"
             + (" (each of its own length, given: padded steps count for nothing):" if lengths else ":")
             if chain else f"per data point, in nats, on {m['num_points']} points:"]
    if m.get("elbo") is not None:
        draws = m.get("elbo_samples")
        # a point-mass guide has no entropy term: its objective is log p(x, z) at the code, not a bound on log p(x)
        label = "test objective (not a bound)" if m.get("kl_method") == "point_mass" else "test ELBO"
        if m.get("elbo_se") is None and m.get("elbo_between_point_se") is not None:
            # one draw a point has no Monte Carlo s.e.: how far the mean would move with other points, named so
            row(label, num("elbo") + se("elbo_between_point_se") + " (between-point s.e.)")
        else:
            row(label, num("elbo") + se("elbo_se") + (f" (MC s.e., {draws} draws per {unit})" if draws and m.get("elbo_se") else ""))
    if m.get("reconstruction") is not None:
        row(f"  reconstruction {q['reconstruction']}", num("reconstruction"))
    if m.get("kl") is not None:
        method = m.get("kl_method") or ("analytic" if m.get("kl_analytic") else "monte_carlo")
        note = {"analytic": "analytic", "monte_carlo": "Monte Carlo",
                "point_mass": "point-mass guide: -log p(z) at the code"}.get(method, method)
        if method == "analytic" and m.get("kl_mc") is not None:
            note += f"; Monte Carlo {m['kl_mc']:.3f}{se('kl_mc_se')}"
        latents = [n for n in m.get("nodes") or [] if n["kind"] != "observed"]
        alone = latents[0] if len(latents) == 1 and method == "monte_carlo" else None
        if alone is not None and alone.get("se") is not None:
            note += f", ± {alone['se']:.3f} MC s.e."
        row(f"  {q['kl']}", f"{num('kl')} ({note})")
        why = None if alone is None else _negative_kl(alone["name"], m.get("kl"), alone.get("se"))
        if why:
            lines.append(f"    note: {why}")
    for label, text in _log_likelihood_rows(m, log_p, unit, num, se):
        if label is None:
            lines.append(text)
        else:
            row(label, text)
    if m.get("log_likelihood_prior") is not None:
        text = num("log_likelihood_prior") + se("log_likelihood_prior_se") + f" (K = {m.get('prior_samples')}"
        if m.get("prior_ess_mean") is not None and m.get("prior_samples") != 1:
            text += f", ESS mean {m['prior_ess_mean']:.1f}"
        row(f"{log_p} (naive, latents ~ prior)", text + "; unreliable when the ESS is small)")
    for label, text in _latent_rows(m):
        row(label, text)
    return "\n".join(lines)


def _latent_rows(m: dict) -> List[tuple]:
    """The rows on the latent code of a one-latent model: active units, KL per dimension, reconstruction MSE."""
    out = []
    if m.get("active_units") is not None:
        out.append(("active units", f"{m['active_units']:10d} of {m.get('active_units_of', m.get('latent_dims'))} "
                    f"({m.get('active_units_rule', 'Cov_x E_q[z_j]')} > {m.get('active_units_threshold', 0.01):g})"))
    kl_dims = m.get("kl_per_dim")
    names = m.get("latent_names") or [f"z[{i}]" for i in range(len(kl_dims or []))]
    if kl_dims:
        pairs = sorted(zip(names, kl_dims), key=lambda p: -(p[1] or 0.0))
        shown = ", ".join(f"{n} {v:.2f}" for n, v in pairs[:KL_DIMS_SHOWN] if v is not None)
        more = f", ... and {len(pairs) - KL_DIMS_SHOWN} more (kl_per_dim)" if len(pairs) > KL_DIMS_SHOWN else ""
        out.append(("KL per latent dim (largest first)", f"{shown}{more}"))
    if m.get("reconstruction_mse") is not None:
        out.append(("reconstruction MSE", f"{m['reconstruction_mse']:10.4g} (decoder mean at encoder mean)"))
    return out


def _format_classes(c) -> str:
    """A ClassMetrics as text: the accuracy, then its table while it fits a terminal (else see --json)."""
    lines = []

    def row(label, text):
        lines.append(f"  {label:<38}{text}")

    if c.kind == "classifier":
        lines.append(f"classes of {c.node} (argmax q({c.node}|data) against {c.num_points} test labels):")
        row("accuracy", f"{c.accuracy:10.3f} ± {c.accuracy_se:.3f} (binomial s.e.)")
        what = "confusion matrix (rows: true class, columns: predicted)"
    else:
        rule = ("clusters matched to classes one to one, by the Hungarian algorithm" if c.matching == "one-to-one"
                else "each cluster matched to its majority class: more clusters in use than classes")
        lines.append(f"clusters of {c.node} against {c.num_points} test labels:")
        row("clustering accuracy", f"{c.accuracy:10.3f} ({rule})")
        row("clusters used", f"{c.clusters_used:10d} of {c.num_clusters}")
        what = "contingency table (rows: true class, columns: cluster)"
    if c.num_classes > MAX_TABLE_SIDE or c.num_clusters > MAX_TABLE_SIDE:
        lines.append(f"  {what}: {c.num_classes} x {c.num_clusters}, too large to print (see --json)")
        return "\n".join(lines)
    lines.append(f"  {what}:")
    table = c.table.tolist()
    names = [c.class_names[i] if c.class_names and i < len(c.class_names) else str(i) for i in range(c.num_classes)]
    left = max(len(n) for n in names)
    width = max(3, len(str(max(max(r) for r in table))), len(str(c.num_clusters - 1)))
    lines.append("    " + " " * left + " " + " ".join(f"{j:>{width}}" for j in range(c.num_clusters)))
    for name, r in zip(names, table):
        lines.append(f"    {name:>{left}} " + " ".join(f"{v:>{width}}" for v in r))
    return "\n".join(lines)


def _format_topics(t: dict) -> str:
    """A topic model's metrics (metrics.json's "topics") as text: perplexity, coherence, each topic's top words."""
    lines = [f"topics of {t['node']} ({len(t['top_words'])} topics, {t['num_documents']} held-out documents, "
             f"{t['num_words']} words):"]
    if t.get("perplexity") is not None:
        se = f" ± {t['perplexity_se']:.3g} (Monte Carlo s.e.)" if t.get("perplexity_se") is not None else ""
        lines.append(f"  {'perplexity per word':<38}{t['perplexity']:10.4g}{se} (from the {t['perplexity_from']})")
    else:
        lines.append(f"  {'perplexity per word':<38}       n/a (no importance-sampled log p(x): --iw-samples)")
    if t.get("perplexity_elbo") is not None:
        lines.append(f"  {'  bound from the ELBO':<38}{t['perplexity_elbo']:10.4g} (each document's ELBO for its "
                     "log p(x): an upper bound)")
    if t.get("npmi_mean") is not None:
        lines.append(f"  {'NPMI coherence (mean over topics)':<38}{t['npmi_mean']:10.3f} (top {t['npmi_words']} "
                     "words, held-out documents)")
    for k, (words, score) in enumerate(zip(t["top_words"], t["npmi"])):
        npmi = "   n/a" if score is None else f"{score:6.3f}"
        lines.append(f"  topic {k:<3} NPMI {npmi}  {' '.join(words)}")
    return "\n".join(lines)


def _format_recovery(r: dict) -> str:
    """What a synthetic run recovered of its truth (metrics.json's "recovery") as text."""
    lines = ["recovery of the synthetic source's truth (truth.npz), on the held-out rows:"]
    names = {"theta": "inverse dispersion theta per feature", "dropout": "dropout probability per feature"}
    for key, label in names.items():
        found = r.get(key)
        if found is None:
            continue
        rel = found.get("median_relative_error")
        rel = "n/a" if rel is None else f"{rel:.1%}"
        lines.append(f"  {label:<38}median relative error {rel}, median absolute error "
                     f"{found['median_absolute_error']:.3g} ({len(found['true'])} features)")
    if r.get("theta") is not None or r.get("dropout") is not None:
        lines.append(f"  {'':<38}(read off p(x | z) at {r['draws']} draws z ~ q(z | x) of each of {r['points']} rows)")
    topics = r.get("topics")
    if topics is not None:
        best = topics["best_match"]
        lines.append(f"  {'topics: best cosine per true topic':<38}min {min(best):.3f}, mean "
                     f"{sum(best) / len(best):.3f}; one-to-one matched mean {topics['matched_mean']:.3f}")
    return "\n".join(lines)


# how each node's term was taken (evaluation/nodes.py), as the per-node table says it, by (kind, method)
_NODE_METHODS = {
    ("observed", "monte_carlo"): "Monte Carlo E_q[log p]",
    ("observed", "point_mass"): "log p at the code (point-mass guide)",
    ("latent", "analytic"): "analytic KL",
    ("latent", "monte_carlo"): "Monte Carlo KL",
    ("latent", "point_mass"): "point mass: -log p at the code",
    ("discrete", "exact_sum"): "KL, exact sum over its values",
}


def _negative_kl(name: str, term: Optional[float], se: Optional[float]) -> Optional[str]:
    """Why a Monte Carlo KL estimate came out negative, in one sentence; None when it is not negative."""
    if term is None or term >= 0:
        return None
    what = (f"{name}'s Monte Carlo KL {term:.3f} is negative, but it is an unbiased estimate of a KL, which is >= 0: "
            "a negative estimate is Monte Carlo noise around a small KL")
    if not se:
        return what + "; more draws (--iw-samples) shrink the noise"
    z = -term / se
    if z <= 2:
        return what + f" ({z:.1f} s.e. below 0, within the 2 s.e. noise allows)"
    return (f"{name}'s Monte Carlo KL {term:.3f} is {z:.1f} s.e. below 0, more than noise explains for an unbiased "
            "estimate of a KL (>= 0): its s.e. understates the error (heavy-tailed log q - log p draws); "
            "raise --iw-samples")


#: at most this many steps are listed by the per-step table (the first and the last half of them each); the
#: whole profile is in --json and metrics.json ("steps")
MAX_STEP_ROWS = 8


def _format_steps(m: dict) -> Optional[str]:
    """The ELBO's terms per time step, averaged over the sequences that reach each step; None without a chain."""
    prof = m.get("steps")
    if not prof:
        return None
    stems = list(prof["terms"])
    heads = [("E log p(" if prof["kinds"][s] == "observed" else "KL(") + s + "_t" + (")" if prof["kinds"][s] == "observed"
             else ")") for s in stems]
    width = max(12, *(len(h) + 2 for h in heads))
    lines = ["  per time step (means over the sequences that reach the step; padded steps count for nothing):",
             f"    {'t':>5}{'sequences':>11}" + "".join(f"{h:>{width}}" for h in heads)]
    rows = list(range(len(prof["steps"])))
    cut = len(rows) > MAX_STEP_ROWS
    if cut:
        rows = rows[: MAX_STEP_ROWS // 2] + [None] + rows[-MAX_STEP_ROWS // 2:]
    for i in rows:
        if i is None:
            lines.append(f"    {'...':>5}")
            continue
        cells = "".join(f"{'-':>{width}}" if prof["terms"][s][i] is None else f"{prof['terms'][s][i]:>{width}.3f}"
                        for s in stems)
        lines.append(f"    {prof['steps'][i]:>5}{prof['sequences'][i]:>11}{cells}")
    if cut:
        for s, h in zip(stems, heads):
            lines.append(f"    {h}: {_profile_line(prof['steps'], prof['terms'][s])}")
        lines.append(f"    (all {len(prof['steps'])} steps: --json, or \"steps\" in the run's metrics.json)")
    if m.get("iw_khat_length_note"):
        lines.append(f"    note: {m['iw_khat_length_note']}")
    return "\n".join(lines)


def _profile_line(steps: list, values: list) -> str:
    """One term over all the steps in a line: its mean over the steps, where it is largest and smallest."""
    got = [(t, v) for t, v in zip(steps, values) if v is not None]
    if not got:
        return "no sequence reaches any step"
    hi, lo = max(got, key=lambda p: p[1]), min(got, key=lambda p: p[1])
    mean = sum(v for _, v in got) / len(got)
    return (f"mean over steps {mean:.3f}; largest {hi[1]:.3f} at t = {hi[0]}, smallest {lo[1]:.3f} at t = {lo[0]} "
            f"(steps {got[0][0]}..{got[-1][0]})")


def _format_nodes(m: dict) -> Optional[str]:
    """The ELBO node by node, for a model with more than one latent or observed site; None for one of each.
    Sites named per step (z_1 .. z_T) are the per-step table's (``_format_steps``): one row sums each run."""
    nodes = _steps_folded(m.get("nodes") or [], m.get("steps"))
    summed = sorted({c for n in nodes for c in n.get("summed_over") or []})
    latent = sum(n["kind"] != "observed" for n in nodes) + len(summed)
    if latent < 2 and sum(n["kind"] == "observed" for n in nodes) < 2:
        return None
    width = max(len("node"), *(len(n["name"]) for n in nodes)) + 2

    def cell(v, fmt):
        return "-" if v is None else fmt.format(v)

    lines = ["  per node (ELBO = observed terms - latent terms; a latent's term is its KL):",
             f"    {'node':<{width}}{'kind':<10}{'term':>12}{'s.e.':>10}{'dims':>7}{'active':>10}   method"]
    for n in nodes:
        active = "-" if n.get("active_units") is None else f"{n['active_units']} of {n.get('active_of') or n['dims']}"
        method = _NODE_METHODS.get((n["kind"], n["method"]), n["method"])
        if n.get("summed_over"):
            method += f"; its density sums out {', '.join(n['summed_over'])}"
        lines.append(f"    {n['name']:<{width}}{n['kind']:<10}{cell(n.get('term'), '{:12.3f}')}"
                     f"{cell(n.get('se'), '{:10.3f}')}{n['dims']:7d}{active:>10}   {method}")
    if summed:
        lines.append(f"    ({', '.join(summed)}: discrete, only in the model: summed out of the densities that read it, "
                     "no term of its own)")
    for n in nodes:
        sampled = n["method"] == "monte_carlo" and n["kind"] == "latent"
        why = _negative_kl(n["name"], n.get("term"), n.get("se")) if sampled else None
        if why:
            lines.append(f"    note: {why}")
    return "\n".join(lines)


def _steps_folded(nodes: list, prof) -> list:
    """The nodes with each stem of the per-step profile summed into one row named stem_1..stem_T."""
    if not prof:
        return nodes
    out, folded = [], {}
    for n in nodes:
        stem, _, step = n["name"].rpartition("_")
        if stem in prof["terms"] and step.isdigit():
            f = folded.get(stem)
            if f is None:
                f = folded[stem] = dict(n, name=f"{stem}_{step}", term=0.0, se=0.0, dims=0, last=step,
                                        active_units=0 if n.get("active_units") is not None else None, active_of=0)
                out.append(f)
            if f["active_units"] is not None and n.get("active_units") is not None:
                # a chain's steps: its units active per step, among the steps' dims two or more sequences reach
                f["active_units"] += n["active_units"]
                f["active_of"] += n["active_of"] if n.get("active_of") is not None else n["dims"]
            f["term"] = None if f["term"] is None or n.get("term") is None else f["term"] + n["term"]
            f["se"] = None  # the steps' terms share their draws: their s.e.s do not add up in quadrature
            f["dims"] += n["dims"]
            f["last"] = step
        else:
            out.append(n)
    for stem, f in folded.items():
        f["name"] = f"{f['name']}..{stem}_{f.pop('last')}"
    return out


def _run_code(args) -> dict:
    """What the user allows a run folder's program to be built from (store/trust.py)."""
    return {"program_path": args.program_path, "trust_code": args.trust_run_code}


def _add_run_code_options(c) -> None:
    c.add_argument("--program-path", metavar="DIR", default=None,
                   help="for a run of a program of your own (model.program): import the program from DIR. By default "
                   "it is imported only from the installed packages, or from the folder the run records if you "
                   "trained from that very file on this machine; never from the run folder or the current directory")
    c.add_argument("--trust-run-code", action="store_true",
                   help="build the program the run names even if you did not train it here (from the folder it "
                   "records, or the run folder itself) or its source changed since training: only for runs you trust, "
                   "since this runs their code")


def _default_out(stem: str) -> Path:
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- commands ---------------------------------------------------------------


def cmd_demo(args) -> int:
    t0 = time.perf_counter()
    run = demo(args.out, args.epochs, log=_log, threads=args.threads)
    print(_format_metrics(run.metrics))
    print(_timing_line(run, time.perf_counter() - t0))
    print(f"run directory: {run.run_dir}  (config.toml, checkpoint.pt, history.csv, metrics.json)")
    print(f"plots: {run.run_dir / 'plots'}  ({', '.join(p.name for p in run.plots or [])})")
    return 0


def _timing_line(run, wall_seconds: float, plots: bool = True) -> str:
    """What this process trained and how long it took: training alone, and the whole command (and what it held)."""
    history = run.history or []
    done = history[run.start_epoch:]
    if not done:  # a resumed run whose epochs were all trained (stopped in its final evaluation, or finished)
        epochs = "its one epoch" if len(history) == 1 else f"all {len(history)} epochs"
        held = "the final evaluation and plots" if plots else "the final evaluation; --no-plots: no plots written"
        return f"{epochs} already trained, none this time; {wall_seconds:.1f} s for the whole command ({held})"
    seconds = sum(row["seconds"] for row in done)
    held = "training, evaluation and plots" if plots else "training and evaluation; --no-plots: no plots written"
    return (f"{_what_trained(run.start_epoch, run.start_batch, len(history))} in {seconds:.1f} s of training on "
            f"{_device_name(run.config)}; {wall_seconds:.1f} s for the whole command ({held})")


def _what_trained(start_epoch: int, start_batch: int, last: int) -> str:
    """The epochs this process trained, ``start_epoch`` (and ``start_batch`` of the next) done before it."""
    if not start_epoch and not start_batch:
        return f"trained {last} epoch" + ("" if last == 1 else "s")
    if start_batch:  # resumed inside epoch start_epoch + 1: its first batches were trained before
        first = start_epoch + 1
        rest = "" if last == first else f" and epoch {last}" if last == first + 1 else f" and epochs {first + 1}-{last}"
        return f"trained the rest of epoch {first}{rest} ({last} in all)"
    if last == start_epoch + 1:
        return f"trained epoch {last} (1 this time, {last} in all)"
    return f"trained epochs {start_epoch + 1}-{last} ({last - start_epoch} this time, {last} in all)"


def _device_name(cfg) -> str:
    device = str(resolve_device(cfg.train.device))
    world = distributed.env_world_size()
    return f"{device} ({world} processes)" if world > 1 else device


def cmd_train(args) -> int:
    if args.resume:
        if args.config:
            raise _usage("give either CONFIG or --resume RUN_DIR, not both (a resumed run uses its own config.toml)")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise _usage(f"--resume continues {args.resume} in place, so --out {args.out} cannot apply: drop --out "
                         f"(copy the run folder first to keep the original)")
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").exists():
            raise PyroVAEError(f"--resume {run_dir}: no run there (no config.toml): check the path")
        cfg = load_config(run_dir / "config.toml", tuple(args.set), run=True)
        out = run_dir
    else:
        if args.config:
            cfg = load_config(args.config, tuple(args.set))
            stem = Path(args.config).stem
        else:
            # the defaults, with an empty [model]: --set model.program or model.nodes may pick its form
            cfg = config_from_dict(apply_overrides(dict(Config().to_dict(), model={}), args.set))
            stem = "run"
        if not args.out and failures.several_processes():
            # each process would stamp its own default folder name
            raise _usage("under torchrun, name the run directory with --out RUN_DIR (the same on every process)")
        out = Path(args.out) if args.out else _default_out(stem)
    if args.threads is not None:  # as --set train.threads=N: config.toml records it
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, threads=args.threads))
    t0 = time.perf_counter()
    if not args.resume and (args.program_path or args.trust_run_code):
        raise _usage("--program-path and --trust-run-code are for --resume RUN_DIR (a config you train names its "
                     "program with model.program and model.program_dir)")
    if args.nproc_per_node is not None and args.nproc_per_node > 1:
        return _launch_train(args, cfg, out)
    run = train(cfg, out, resume=bool(args.resume), progress=False if args.quiet else None,
                iw_samples=FROM_CONFIG if args.iw_samples is None else args.iw_samples, plots=not args.no_plots,
                log=_log, **_run_code(args))
    if failures.several_processes() and distributed.env_rank() != 0:
        return 0  # under torchrun rank 0 reports for every process
    print(_format_metrics(run.metrics))
    if run.classes is not None:
        print(_format_classes(run.classes))
    if run.metrics.get("topics") is not None:
        print(_format_topics(run.metrics["topics"]))
    if run.metrics.get("recovery") is not None:
        print(_format_recovery(run.metrics["recovery"]))
    print(_timing_line(run, time.perf_counter() - t0, plots=not args.no_plots))
    print(f"run directory: {out}")
    return 0


def _launch_train(args, cfg, out: Path) -> int:
    """``train --nproc-per-node N``: the same command in N processes (runtime/launch.py), checked here first."""
    n = args.nproc_per_node
    if failures.several_processes():
        raise _usage("--nproc-per-node starts its own processes, but this one is already one of torchrun's: "
                     "drop --nproc-per-node, or run pyro-vae without torchrun")
    distributed.check_batch_size(cfg.train.batch_size, distributed.ProcessGroup(world_size=n))
    argv = ["train", "--resume", str(out)] if args.resume else ["train", *filter(None, [args.config]), "--out", str(out)]
    for override in args.set:
        argv += ["--set", override]
    if args.iw_samples is not None:  # else each worker takes the config's (a resumed run's: the one it started with)
        argv += ["--iw-samples", str(args.iw_samples)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    argv += ["--no-plots"] * args.no_plots + ["--quiet"] * args.quiet + ["--trust-run-code"] * args.trust_run_code
    if args.program_path:
        argv += ["--program-path", args.program_path]
    return launch(n, argv, say=_error)


def cmd_evaluate(args) -> int:
    """Under torchrun every rank evaluates its block of the points (runtime/distributed.py); rank 0 reports."""
    if args.gap_richer is not None and not args.gaps:
        raise PyroVAEError("--gap-richer names the richer families of the gap split: add --gaps")
    richer = RICHER if args.gap_richer is None else check_richer([f.strip() for f in args.gap_richer.split(",")
                                                                   if f.strip()])
    gaps = GapOptions(args.gap_points, args.gap_steps, args.gap_draws, richer) if args.gaps else None
    found = evaluate_run(args.run_dir, data=args.data, iw_samples=args.iw_samples, prior_samples=args.prior_samples,
                         seed=args.seed, budget=args.budget, per_point=args.per_point, log=_log, threads=args.threads,
                         per_feature=args.per_feature,
                         progress=False if args.quiet else None, gaps=gaps, **_run_code(args))
    if found is None:  # another rank: rank 0 writes and prints what every rank computed
        return 0
    metrics = found.metrics()
    if args.json:
        # allow_nan=False: the summary holds None, never NaN/Infinity, so this is strict JSON
        print(json.dumps(metrics, allow_nan=False))
    else:
        print(_format_metrics(metrics))
        nodes = _format_nodes(metrics)
        if nodes is not None:
            print(nodes)
        steps = _format_steps(metrics)
        if steps is not None:
            print(steps)
        if found.classes is not None:
            print(_format_classes(found.classes))
        if "gaps" in metrics:
            print(gaps_text(metrics["gaps"]))
        if found.topics is not None:
            print(_format_topics(found.topics.to_json()))
        if "recovery" in metrics:
            print(_format_recovery(metrics["recovery"]))
        if args.per_point:
            print(f"per-point results: {Path(args.per_point)}")
        if args.per_feature:
            print(f"per-feature E_q[log p(x_d | z)] with s.e.: {Path(args.per_feature)}")
    return 0


def cmd_sample(args) -> int:
    if args.steps is not None or args.given_prefix is not None:
        if args.given:
            raise PyroVAEError("--given is for samples of one step; with --steps or --given-prefix drop it")
        n = 16 if args.n is None else args.n
        steps = 50 if args.steps is None else args.steps
        seq = write_sequences(args.run_dir, n, steps, args.out, seed=args.seed, given_prefix=args.given_prefix,
                              draws=args.draws, **_run_code(args))
        print(f"wrote {seq.description} to {seq.path} (figure: {seq.figure})")
        return 0
    args.n = 64 if args.n is None else args.n
    written = write_samples(args.run_dir, args.n, args.out, seed=args.seed, given=args.given, draws=args.draws,
                            **_run_code(args))
    print(f"wrote {written.description} to {written.path}")
    if written.words is not None:
        print(f"each sample's most frequent words: {written.words.path}; the first:")
        for line in written.words.preview:
            print(f"  {line}")
    return 0


# -- diagnostics and reports -------------------------------------------------------------

_DIAGNOSE_OPTIONS = ("points", "reference", "draws", "nuts_warmup", "nuts_samples", "nuts_chains", "local_steps",
                     "sbc_sims", "seed", "gaps")


def _given_settings(args) -> dict:
    """The diagnostics settings given on the command line (None: not given, use the default)."""
    return {k: getattr(args, k) for k in _DIAGNOSE_OPTIONS if getattr(args, k, None) is not None}


def cmd_diagnose(args) -> int:
    result, path = diagnose_runs(args.run_dirs, args.out, _given_settings(args),
                                 progress=False if args.quiet else None,
                                 log=(lambda m: None) if args.quiet else _log, threads=args.threads,
                                 **_run_code(args))
    print(render_text(result))
    out = Path(args.out)
    print(f"diagnostics: {path}; draws (ArviZ, netCDF): {out}/<run>/q.nc, reference.nc")
    print(f"report: pyro-vae report {' '.join(args.run_dirs)} --out {out}")
    return 0


def cmd_report(args) -> int:
    result, paths = report_runs(args.run_dirs, args.out, _given_settings(args),
                                progress=False if args.quiet else None,
                                log=(lambda m: None) if args.quiet else _log, threads=args.threads,
                                **_run_code(args))
    print(render_text(result))
    print(f"report: {paths['html']} (self-contained), {paths['md']}, {paths['json']}")
    return 0


def _add_diagnose_options(c) -> None:
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by 'pyro-vae train'")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="folder for diagnostics.json, the netCDF draws (and the report); created if missing")
    c.add_argument("--points", type=int, default=None, metavar="N",
                   help="diagnose the first N test points of each run (default: 16)")
    c.add_argument("--reference", choices=("nuts", "grid", "none"), default=None,
                   help="reference posterior with the decoder fixed: nuts (plus the exact grid posterior for 2-D "
                   "latents), grid (2-D latents only; fast and exact) or none (default: nuts)")
    c.add_argument("--draws", type=int, default=None, metavar="K",
                   help="draws from q(z|x) per point for k-hat, moments and ELBOs (default: 1000)")
    c.add_argument("--nuts-warmup", type=int, default=None, metavar="N", help="NUTS warmup steps (default: 200)")
    c.add_argument("--nuts-samples", type=int, default=None, metavar="N", help="NUTS draws per chain (default: 300)")
    c.add_argument("--nuts-chains", type=int, default=None, metavar="C", help="NUTS chains, >= 2, run vectorized in one sampler (default: 4)")
    c.add_argument("--local-steps", type=int, default=None, metavar="N",
                   help="Adam steps fitting q to each point alone, for the amortization gap (default: 300)")
    c.add_argument("--sbc-sims", type=int, default=None, metavar="N",
                   help="simulation-based calibration simulations; 0 skips it (default: 200)")
    c.add_argument("--gaps", action="store_true", default=None,
                   help="also split each run's inference gap log p(x) - ELBO(q) into the approximation gap (its "
                   "family's) and the amortization gap (its encoder's), with q* of the guide's own family and of "
                   "fullrank fitted to each point alone (--local-steps each); a declared model with a density guide")
    c.add_argument("--seed", type=_seed, default=None, help="seed of the diagnostics' own random stream (default: 0)")
    c.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    _add_threads_option(c, "auto", "; the local fits' and NUTS's tiny steps take one thread under auto "
                        "(default: auto)")
    _add_run_code_options(c)


def _add_sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="draw samples from a trained model: means of p(x | latents), latents ~ prior",
                       description="Write N samples of a trained run: a .png grid for image data, else a .npy array. "
                       "A sample is the mean of the likelihood p(x | latents) with every latent drawn from its prior "
                       "(for a VAE: the decoder's mean at z ~ p(z)), the same as plots/samples.png; --draws writes "
                       "draws x ~ p(x) instead (binary images under a Bernoulli likelihood). --given NAME=VALUE holds a "
                       "label or input at a value; the default file name then says which (samples-y3-seed0.png) and "
                       "the figure's title what was drawn given what.")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("-n", type=int, default=None, help="number of samples (default: 64; 16 sequences with --steps)")
    s.add_argument("--steps", type=int, default=None, metavar="T",
                   help="for a model over time: draw whole sequences of T steps from the chain's prior, written as "
                        "an .npz (x: means of p(x_t | z_t), z) with a figure of their traces (default with "
                        "--given-prefix: 50)")
    s.add_argument("--given-prefix", default=None, metavar="FILE",
                   help="for a model over time: a .npy/.npz/.csv of observed steps, (T0, D) or (m, T0, D); the guide "
                        "reads them, then the chain runs on for --steps more: N forecast draws per sequence (.npz "
                        "and a figure with the observed prefix and the forecast's 90%% band)")
    s.add_argument("--given", action="append", default=[], metavar="NAME=VALUE",
                   help="condition on a label or input of the run (repeatable), e.g. --given y=3: a label takes an "
                        "integer class 0..K-1 (also for a one-hot array), a real-valued input a TOML list of its "
                        "width, e.g. --given u=[0.5,1.0]")
    s.add_argument("--draws", action="store_true",
                   help="write draws x ~ p(x | latents) instead of the likelihood's mean (the default); with "
                        "--steps, each step's x_t ~ p(x_t | z_t): noisy sequences (a forecast's future steps)")
    s.add_argument("--out", help="output file: .png (image grid) or .npy (array) (default: "
                   "RUN_DIR/samples-seedSEED.png, or .npy for data that are not images; samples-y3-seedSEED.png "
                   "given y = 3; draws-seedSEED.png with --draws); with --steps an .npz (default RUN_DIR/sequences-seedSEED.npz, or "
                   "forecast-seedSEED.npz given a prefix)")
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    _add_run_code_options(s)
    s.set_defaults(func=cmd_sample)


def _add_diagnose_parsers(sub) -> None:
    g = sub.add_parser("diagnose", help="compare each run's q(z|x) with a reference posterior (ArviZ, PSIS k-hat, SBC)",
                       description="For the first N test points of each run, with its decoder fixed: draws from q(z|x) "
                       "(saved as ArviZ netCDF), PSIS k-hat per point, the amortization gap, a reference posterior "
                       "(NUTS with R-hat and ESS; the exact grid posterior for 2-D latents), errors of q against it "
                       "and simulation-based calibration. Writes DIR/diagnostics.json and prints the main tables.")
    _add_diagnose_options(g)
    g.set_defaults(func=cmd_diagnose)
    r = sub.add_parser("report", help="write an HTML/Markdown report comparing runs' posteriors",
                       description="Write DIR/index.html (self-contained, figures embedded), DIR/report.md and "
                       "DIR/results.json (every number in the tables) for the runs. Reuses DIR/diagnostics.json from "
                       "'pyro-vae diagnose' when it is for the same runs and options; otherwise diagnoses first.")
    _add_diagnose_options(r)
    r.set_defaults(func=cmd_report)


# -- parser -------------------------------------------------------------------


class _UsageError(Exception):
    pass


def _usage(msg):
    return _UsageError(msg)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**63), got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _count_or_auto(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _threads(text: str):
    value = parse_setting(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be {THREADS_RULE}, got {text!r}")
    return value


_THREADS_HELP = ("torch's intra-op threads: a count, or auto = one thread for small steps or a busy machine, else "
                 "one per free core as the step's size pays for (OMP_NUM_THREADS or a count set before wins over "
                 "auto; see the README's performance section)")


def _add_threads_option(c, default, more: str = "") -> None:
    c.add_argument("--threads", type=_threads, default=default, metavar="N|auto",
                   help=f"{_THREADS_HELP}{more}")


class _Formatter(argparse.HelpFormatter):
    """argparse's help, its descriptions filled to the terminal as usual, but a text of several lines (an epilog
    listing examples by task) kept line by line."""

    def _fill_text(self, text, width, indent):
        paragraphs = text.split("\n\n")
        return "\n\n".join("\n".join(indent + line for line in p.splitlines()) if "\n" in p
                           else super(_Formatter, self)._fill_text(p, width, indent) for p in paragraphs)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the CLI's one line (no usage block), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        message = f"{message}: see '{self.prog} --help'"
        raise SystemExit(_error(message, _UsageError(message)))


def _add_evaluate_parser(sub) -> None:
    """``pyro-vae evaluate``: its estimates, files and the inference gap split."""
    e = sub.add_parser("evaluate", help="test ELBO, its parts and importance-sampled log p(x) of a run",
                       description="Evaluate a trained run: per data point, in nats, the ELBO, its reconstruction and "
                       "KL parts, log p(x) importance-sampled with K draws from the guide (Monte Carlo standard error, "
                       "effective sample size), the naive prior-sampling estimate, active units, KL per latent "
                       "dimension and the reconstruction MSE. Parameters and the run are not changed.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", metavar="PATH", help=".npy/.npz/.csv to evaluate on (default: the run's test data)")
    e.add_argument("--iw-samples", type=int, default=1000, metavar="K", help="importance samples per point (default: 1000)")
    e.add_argument("--prior-samples", type=int, default=None, metavar="K",
                   help="prior draws per point for the naive estimator (1/K) sum p(x|z_k), z_k ~ p(z) "
                   "(default: as many as --iw-samples; 0 skips it)")
    e.add_argument("--seed", type=_seed, default=0, help="seed of the evaluation's own random stream (default: 0)")
    e.add_argument("--budget", type=int, default=None, metavar="ELEMENTS",
                   help="largest tensor per chunk, in elements (particles x points x widest layer); "
                   "lower it to use less memory (default: 4194304)")
    e.add_argument("--per-point", metavar="FILE.csv", help="also write one row of results per data point")
    e.add_argument("--per-feature", metavar="FILE.csv",
                   help="also write each feature's E_q[log p(x_d | z)] over the points, with its s.e. (10 draws of z "
                        "per point): which features (genes, words, pixels) the model explains worst")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object (the metrics.json keys; "
                   "'quantities' says what elbo, reconstruction, kl and log_likelihood are for this model, e.g. "
                   "log p(x|y) for a model conditioned on an input y, log p(x,y) for one scored on its labels too)")
    e.add_argument("--gaps", action="store_true",
                   help="also split the inference gap log p(x) - ELBO(q) of the first --gap-points test points into "
                   "the approximation gap (what q's family cannot express) and the amortization gap (what the "
                   "encoder misses within it), Cremer et al. 2018: q* is q's family fitted to each point alone, "
                   "warm-started at the encoder's output; also with q* from each --gap-richer family (key 'gaps' "
                   "of the JSON; slow: a local fit per family)")
    e.add_argument("--gap-richer", metavar="LIST", default=None,
                   help="comma-separated families whose per-point q* the split also reports: normal, lowrank, "
                   "fullrank (a Gaussian per point) or iaf (a Gaussian per point through K affine autoregressive "
                   "transforms fitted for the points, warm-started at the guide's own q*; the node's flows and "
                   "flow_hidden, default 2) (default: fullrank; '' for none)")
    e.add_argument("--gap-points", type=int, default=16, metavar="N", help="points the gaps are split on (default: 16)")
    e.add_argument("--gap-steps", type=int, default=300, metavar="N",
                   help="Adam steps of each local fit before its averaged blocks (default: 300)")
    e.add_argument("--gap-draws", type=int, default=1000, metavar="K",
                   help="draws per point behind each ELBO and log p(x) of the split (default: 1000)")
    e.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    _add_threads_option(e, None, " (default: the run's train.threads)")
    _add_run_code_options(e)
    e.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pyro-vae",
        description="Declare, train, evaluate and sample latent-variable models with Pyro's SVI: VAEs and "
                    "autoencoders, graphs of latent nodes ([model.nodes]: hierarchies, conditional and "
                    "semi-supervised models, mixture priors, conv nets), or Pyro programs of your own.",
        epilog="Run 'pyro-vae COMMAND --help' for a command's options. Start with 'pyro-vae demo'; "
               "'pyro-vae keys' lists every config key, its default and meaning, and the likelihoods, guide laws, "
               "priors and data sources by name.\n\n" + _EXAMPLES_EPILOG,
    )
    p.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="train the default VAE on the built-in 8x8 digits and show the results",
                       description="Train the default VAE on scikit-learn's 8x8 digits (no download), print the test "
                       "metrics and write plots. Takes about a minute on 2 CPU cores; uses CUDA when present.")
    d.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo); a previous run there is "
                   "replaced, and a folder holding files pyro_vae did not write is refused, never emptied")
    d.add_argument("--epochs", type=int, default=None, help="override the number of epochs (default: 80)")
    _add_threads_option(d, "auto", " (default: auto)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model described by a TOML config (see the README for every key). "
                       "Its [model] section is the one-latent VAE, a graph of named nodes ([model.nodes.NAME] "
                       "tables: see examples/graph_*.toml) or a program of your own (model.program). "
                       "Without CONFIG the defaults are used: a VAE on the 8x8 digits.",
                       epilog="Every config key, its default and meaning: 'pyro-vae keys [SECTION]' (SECTION: "
                              "data, model, graph, nodes, program, train, evaluate, names).\n\n" + _EXAMPLES_EPILOG)
    t.add_argument("config", nargs="?", help="TOML config file")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 --set model.latent_dim=2 (repeatable)")
    t.add_argument("--out", help="run directory to create (default: runs/<config name>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or finished run "
                   "(raise train.epochs with --set to train longer)")
    t.add_argument("--iw-samples", type=_count_or_auto, default=None, metavar="K",
                   help="importance samples per point for the final log p(x), recorded in config.toml as "
                   "evaluate.iw_samples (default: the config's, auto = 1000 for up to 2000 test points, then 2 million "
                   "draws in all, at least 100 a point; with --resume, the number the run started with)")
    t.add_argument("--no-plots", action="store_true", help="skip writing plots/")
    t.add_argument("--quiet", action="store_true", help="no progress bar (a terminal) or progress lines (a pipe or a "
                   "log file: one per epoch, at most every 10 s)")
    t.add_argument("--nproc-per-node", type=_positive, default=None, metavar="N",
                   help="train with N processes on this machine, data-parallel (gloo on the CPU, one GPU each with "
                   "nccl), as 'torchrun --standalone --nproc-per-node N -m pyro_vae train ...' does; train.batch_size "
                   "must be divisible by N (default: one process)")
    _add_threads_option(t, None, "; the same as --set train.threads=N (default: the config's train.threads, auto)")
    _add_run_code_options(t)
    t.set_defaults(func=cmd_train)

    _add_evaluate_parser(sub)

    _add_sample_parser(sub)
    _add_diagnose_parsers(sub)
    _add_keys_parser(sub)
    return p


#: the example configs by task, as the epilogs of ``pyro-vae --help`` and ``train --help`` list them
_EXAMPLES_EPILOG = examples_text(width=78)


def cmd_keys(args) -> int:
    sys.stdout.write(keys_text(args.section))
    return 0


def _add_keys_parser(sub) -> None:
    k = sub.add_parser("keys", help="list every config key with its default and meaning, and the registries' names",
                       description="Print the keys a TOML config may set, section by section: each key's default, "
                       "its values when they are a fixed set, and what it means (read off the schema), then the "
                       "names the model is built from (likelihoods, guide laws, priors, node families, objectives, "
                       "corruptions, data sources) and the example configs by task.",
                       epilog=_EXAMPLES_EPILOG)
    k.add_argument("section", nargs="?", default=None, metavar="SECTION",
                   help="only this section: data, model (the one-latent form), graph ([model] keys of a graph), "
                        f"nodes ([model.nodes.NAME]), program, train, evaluate, or {NAMES} (the registries' names) "
                        "(default: all)")
    k.set_defaults(func=cmd_keys)


@contextlib.contextmanager
def _library_warnings_as_lines():
    """pyro_vae's own warnings as one ``pyro-vae: warning: ...`` line (no source line), others as usual.

    Only the formatting changes (``warnings.formatwarning``), so filters and
    ``catch_warnings(record=True)`` see the warnings as before.
    """
    formatted = warnings.formatwarning

    def format_line(message, category, filename, lineno, line=None):
        if category.__module__.startswith("pyro_vae."):
            return f"pyro-vae: warning: {message}\n"
        return formatted(message, category, filename, lineno, line)

    warnings.formatwarning = format_line
    try:
        yield
    finally:
        warnings.formatwarning = formatted


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; return its exit status (0, 2 for a user error, 128+N for signal N)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    # every expected failure ends here as one line; only a bug shows a traceback
    try:
        with _library_warnings_as_lines(), _quiet_pyro():
            return args.func(args)
    except PyroVAEError as e:
        return _error(str(e), e)
    except _UsageError as e:
        return _error(f"{e}: see 'pyro-vae {args.command} --help'", e)
    except TrainingInterrupted as e:
        where = f"; state saved to {e.checkpoint} (continue with --resume {e.checkpoint.parent})" if e.checkpoint else ""
        return _report(f"pyro-vae: interrupted{where}", e, e.exit_code)
    except KeyboardInterrupt as e:
        return _report("pyro-vae: interrupted", e, 130)
    except OSError as e:  # a file the command reads or writes: name it and the OS's reason
        name = f"{e.filename}: " if e.filename else ""
        return _error(f"{name}{e.strerror or e}: check the path, its permissions and the free disk space", e)


def _error(message: str, error: Optional[BaseException] = None) -> int:
    """The one error line (exit status 2); ``error``, the exception behind it, lets torchrun's ranks print it once."""
    # one line, whatever the message held
    return _report("pyro-vae: error: " + " ".join(without_trace_shapes(message).split()), error, EXIT_USER_ERROR)


def _report(line: str, error: Optional[BaseException], exit_status: int) -> int:
    """Print ``line`` unless another rank of a torchrun job reports this failure (runtime/failures.py);
    returns ``exit_status``."""
    if error is None or failures.reports(error):
        _line(line)
        if error is not None:
            failures.write_error_file(line, exit_status)
    return exit_status


@contextlib.contextmanager
def _quiet_pyro():
    """Pyro's chatter that the CLI reports itself: its INFO log lines and its NaN-loss warning."""
    logger = logging.getLogger("pyro")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # the trainer's non-finite policy reports these steps in its own words
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
