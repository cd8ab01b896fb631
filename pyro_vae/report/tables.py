"""The report's tables as data (raw values in the rows), and how a cell shows a value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from ..diagnostics.loo_check import KHAT_TOLERANCE as LOO_KHAT_TOLERANCE, LOG_PX_Z
from ..diagnostics.results import Diagnosis, KhatSummary, NutsCheck, RunDiagnosis
from ..evaluation.results import ACTIVE_UNIT_THRESHOLD
from ..evaluation.steps import row_unit
from ..infer.psis import KHAT_BAD, KHAT_GOOD
from ..diagnostics.settings import RHAT_FAIL, RHAT_FRACTION, RHAT_MAX

MISSING = "—"
# a latent dim counts as contracted when its posterior variance is this share below the prior's
CONTRACTED = 0.1


@dataclass
class Table:
    """One table: HTML, Markdown and the terminal format the same raw rows."""

    id: str
    title: str
    columns: List[str]
    rows: List[list]
    note: str


def unit(diagnosis: Diagnosis) -> str:
    """What one diagnosed row is called in the tables: "sequence" when every run is a chain, else "point"."""
    units = {row_unit(r.latent_labels) for r in diagnosis.runs}
    return "sequence" if units == {"sequence"} else "point"


def fmt(v) -> str:
    """How a table cell shows a value: 4 significant digits, integers exact, None as a dash."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return MISSING
        return f"{v:.4g}"
    return str(v)


def _khat_verdict(k: KhatSummary, n: int) -> str:
    if k.bad is None:
        return "n/a (point-mass guide)"
    if k.bad > n / 2:
        return "POOR: q misses posterior mass"
    if k.bad > 0:
        return "mixed: check the worst points"
    return "good" if k.ok == 0 else f"good (k-hat {KHAT_GOOD}-{KHAT_BAD} for {k.ok} of {n})"


def _rhat_count(n: NutsCheck) -> str:
    """How many (point, latent dim) pairs have R-hat above the threshold, as "k of n"; a padded step's coordinate,
    held fixed, has no R-hat (NaN) and is not counted."""
    return f"{n.rhat_above} of {int(np.isfinite(np.asarray(n.rhat, dtype=float)).sum())}"


def _contracted(r: RunDiagnosis) -> int:
    """Latent dims whose posterior contraction exceeds CONTRACTED: counted here, beside the definition the table states."""
    return int((np.asarray(r.contraction, dtype=float) > CONTRACTED).sum())


#: the per-point fields of a NodeComparison the per-node table averages
_NODE_COLUMNS = ("mean_abs_error", "std_mean_error", "sd_ratio", "kl_gauss", "w2")


def build_tables(diagnosis: Diagnosis) -> List[Table]:
    """The report's tables, built from the typed results only."""
    builders = (_runs_table, _side_by_side_table, _khat_table, _worst_table, _loo_table, _reference_tables, _comparison_table, _nodes_table,
                _sbc_table, _sampled_documents_table, _topics_table, _recovery_table)
    return [table for build in builders for table in build(diagnosis)]


def _runs_table(diagnosis: Diagnosis) -> List[Table]:
    """The runs: objective, guide, sizes, and the numbers of their own metrics.json."""
    runs = diagnosis.runs
    tables = []
    # evaluate's active units, where the run's metrics recorded them
    units = any(r.info.get("active_units") is not None for r in runs)
    # what each run's log-likelihood is: log p(x), or log p(x|y) for a model conditioned on an input y, ...
    quantity = [r.info.get("log_likelihood_quantity") or "log p(x)" for r in runs]
    shared = quantity[0] if len(set(quantity)) == 1 else None
    rows = []
    for r, q in zip(runs, quantity):
        i = r.info
        rows.append([r.name, i.get("objective"), i.get("guide"), len(r.latent_labels)]
                    + ([i.get("active_units")] if units else [])
                    + [_contracted(r), i.get("epochs"), i.get("test_elbo")] + ([] if shared else [q])
                    + [i.get("log_likelihood"), i.get("log_likelihood_se")])
    log_p = shared or "log-likelihood"
    tables.append(Table(
        "runs", "Runs",
        ["run", "objective", "guide", "latent dims"] + (["active units"] if units else [])
        + [f"contracted dims (> {CONTRACTED:g})", "epochs", "test ELBO"] + ([] if shared else ["of"])
        + [log_p, f"{log_p} s.e."],
        rows,
        f"Test ELBO and importance-sampled {log_p} per {'data point' if unit(diagnosis) == 'point' else 'sequence'} "
        "in nats, from the run's metrics.json "
        + ("" if shared else "('of' names each run's: log p(x|y) for a model conditioned on an input y, "
           "log p(x,y) for one scored on its labels too) ")
        + f"(for a point-mass guide, guide = delta, the 'test ELBO' is its objective log p(x, z) at the code: "
        f"not a bound on {log_p}). "
        + ("Active units (from the run's evaluation): latent dimensions whose encoder mean varies across the test "
           f"data, Cov_x(E_q[z_j|x]) > {ACTIVE_UNIT_THRESHOLD:g}. " if units else "")
        + f"Contracted dims: latent dimensions whose posterior contraction, 1 - posterior variance / prior "
        f"variance averaged over the diagnosed points, exceeds {CONTRACTED:g} (posterior variance at least "
        f"{CONTRACTED:.0%} below the prior's); not the same count as evaluate's active units.",
    ))
    return tables


def seconds_per_epoch(r: RunDiagnosis):
    """The median seconds of the run's training epochs (its history.csv), or None without a history."""
    seconds = [h.get("seconds") for h in (r.history or []) if isinstance(h, dict)]
    seconds = [float(v) for v in seconds if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.median(seconds)) if seconds else None


def _side_by_side_table(diagnosis: Diagnosis) -> List[Table]:
    """The runs side by side on the diagnosed points: ELBO, log p(x), the inference gap and its two parts, seconds
    per epoch (k-hat has its own table next); the gap columns stay empty for a run diagnosed without ``--gaps``.
    At most 14 columns with one richer family: a page 1400 px wide shows it whole, a narrower one scrolls it."""
    runs = diagnosis.runs
    richer = sorted({s.family for r in runs if r.gaps is not None for s in r.gaps.richer})
    rows = []
    for r in runs:
        g = r.gaps
        row = [r.name, r.info.get("guide"), seconds_per_epoch(r), float(np.mean(r.q.elbo))]
        if g is None:
            row += [None] * 8
        else:
            row += [g.total_log_px, g.total_log_px_se, g.total_inference, g.total_inference_se,
                    g.own.total_approximation, g.own.total_approximation_se, g.own.total_amortization,
                    g.own.total_amortization_se]
        for family in richer:
            split = next((s for s in (g.splits() if g is not None else []) if s.family == family), None)
            row += [None, None] if split is None else [split.total_approximation, split.total_approximation_se]
        rows.append(row)
    if not any(r.gaps is not None for r in runs):
        note_gaps = "The gap columns are filled by 'pyro-vae diagnose --gaps' (or 'report --gaps'). "
    else:
        note_gaps = ""
    return [Table(
        "side_by_side", "The runs side by side",
        ["run", "guide", "seconds per epoch", "ELBO of q", "log p(x)", "log p(x) s.e.", "inference gap", "s.e.",
         "approximation gap", "s.e.", "amortization gap", "s.e."]
        + [c for f in richer for c in (f"approximation gap, {f} q*", "s.e.")],
        rows,
        f"Nats per {unit(diagnosis)}, means over the diagnosed {unit(diagnosis)}s. ELBO of q: the encoder's q(z|x), on its own draws. "
        "log p(x): importance-sampled from the best per-point q* found (s.e. by the delta method). Inference gap = "
        "log p(x) - ELBO(q) = approximation gap (log p(x) - ELBO(q*), q* the guide's own family fitted to each point "
        "alone: what the family cannot express) + amortization gap (ELBO(q*) - ELBO(q): what the encoder misses "
        "within its family) (Cremer et al. 2018); a richer family's q* (fullrank) says what a better family would "
        f"buy. Seconds per epoch: the median of the run's history.csv. The k-hat of each run's q follows, {unit(diagnosis)} by "
        f"{unit(diagnosis)}. " + note_gaps,
    )]


def _khat_table(diagnosis: Diagnosis) -> List[Table]:
    """PSIS k-hat of q per run: its distribution over the diagnosed points and a verdict."""
    runs, u = diagnosis.runs, unit(diagnosis)
    tables = []
    rows = []
    for r in runs:
        k = r.khat
        rows.append([r.name, r.summary.points, k.median, k.max, k.good, k.ok, k.bad, _khat_verdict(k, r.summary.points)])
    tables.append(Table(
        "khat", f"PSIS k-hat of q(z|x), per {'data point' if u == 'point' else u}",
        ["run", f"{u}s", "median k-hat", "max k-hat", f"k-hat <= {KHAT_GOOD}", f"{KHAT_GOOD} < k-hat <= {KHAT_BAD}",
         f"k-hat > {KHAT_BAD}", "verdict"],
        rows,
        f"k-hat is the Pareto shape of the importance weights p(x, z) / q(z|x), z ~ q(z|x), fitted to each "
        f"{u}'s own {diagnosis.settings.draws} draws. Below {KHAT_GOOD}: q covers the posterior well; "
        f"{KHAT_GOOD}-{KHAT_BAD}: usable with care; above {KHAT_BAD}: q misses posterior mass and "
        f"importance sampling (and posterior summaries from q) cannot be trusted for that {u}.",
    ))
    return tables


def _worst_table(diagnosis: Diagnosis) -> List[Table]:
    """The points with the highest k-hat, run by run."""
    runs, u = diagnosis.runs, unit(diagnosis)
    tables = []
    rows = []
    for r in runs:
        for rank, w in enumerate(r.summary.worst, 1):
            rows.append([r.name, rank, f"test[{w.point}]", w.khat, w.std_mean_error, w.gap])
    tables.append(Table(
        "worst", f"Worst {u}s (highest k-hat)",
        ["run", "rank", u, "k-hat", "|mean error| / reference sd", "amortization gap"],
        rows,
        f"{u.capitalize()}s are rows of the run's test data. The amortization gap is in nats.",
    ))
    return tables


def _loo_table(diagnosis: Diagnosis) -> List[Table]:
    """Our k-hat and log p(x) against ArviZ 1.x's loo_approximate_posterior on the same draws."""
    runs, u = diagnosis.runs, unit(diagnosis)
    tables = []
    rows = []
    for r in runs:
        c = r.loo_check
        if c is not None:
            rows.append([r.name, c.arviz, c.khat_max_abs_diff, c.compared, c.log_px_max_z,
                         "agree" if c.agree else "DISAGREE"])
        elif r.point_mass_guide:
            rows.append([r.name, diagnosis.arviz or None, None, None, None, "n/a (point-mass guide: no weights)"])
        elif diagnosis.arviz:
            rows.append([r.name, diagnosis.arviz, None, None, None, f"not available: diagnosed with ArviZ "
                         f"{diagnosis.arviz}, which has no loo_approximate_posterior (ArviZ >= 1.0)"])
        else:  # a diagnosis saved before the check existed
            rows.append([r.name, None, None, None, None, "not available: this diagnosis predates the check"])
    tables.append(Table(
        "loo", "Our k-hat and log p(x) against ArviZ's loo_approximate_posterior",
        ["run", "ArviZ", "largest k-hat difference", f"{u}s with k-hat <= {KHAT_BAD}",
         "largest log p(x) difference / s.e.", "verdict"],
        rows,
        "The same draws given to ArviZ's PSIS-LOO for variational posteriors, each point an observation whose LOO "
        "ratio is its importance weight p(x, z) / q(z|x): its Pareto k must equal ours (the same fit of the same "
        f"weights; agreement means within {LOO_KHAT_TOLERANCE:g}), and minus its elpd is a PSIS-smoothed estimate of "
        "log p(x), which must lie within "
        f"{LOG_PX_Z:g} standard errors of our importance-sampled log p(x) (compared on points with k-hat <= "
        f"{KHAT_BAD}, where that standard error can be trusted).",
    ))
    return tables


def _reference_tables(diagnosis: Diagnosis) -> List[Table]:
    """The reference posterior per run, and NUTS against the exact grid where both exist."""
    runs = diagnosis.runs
    tables = []
    rows, check_rows = [], []
    for r in runs:
        ref = r.reference
        if ref.method == "none":
            rows.append([r.name, "none", None, None, None, None, None, None, None, None])
            continue
        if ref.method == "grid":
            rows.append([r.name, f"exact grid ({ref.cells} cells)", None, ref.draws, None, None, None, None,
                         None, ref.seconds])
        elif ref.method == "kalman":
            rows.append([r.name, "exact: Kalman smoother", None, ref.draws, None, None, None, None, None, ref.seconds])
        else:
            n = ref.nuts
            rows.append([r.name, "NUTS", ref.chains, ref.draws, n.rhat_max, _rhat_count(n),
                         n.ess_bulk_min, n.ess_tail_min, n.divergences, ref.seconds])
        if ref.checks_nuts:
            n = ref.nuts
            check_rows.append([r.name, n.chains, n.draws, n.rhat_max, _rhat_count(n), n.ess_bulk_min, n.divergences,
                               n.max_std_mean_error_vs_grid, n.max_sd_ratio_error_vs_grid, n.seconds])
    tables.append(Table(
        "reference", "Reference posterior (decoder fixed)",
        ["run", "method", "chains", "draws per chain", "max R-hat", f"R-hat > {RHAT_MAX}", "min bulk ESS",
         "min tail ESS", "divergences", "seconds"],
        rows,
        f"One R-hat and ESS (ArviZ, rank-normalized) per point and latent dimension. NUTS chains should "
        f"agree (R-hat <= {RHAT_MAX}; among hundreds of pairs a few slightly above are expected by chance, "
        f"a report warns above {RHAT_FAIL} or for more than {RHAT_FRACTION:.0%} of them) and give >= 100 "
        "effective draws. A 2-D latent gets the exact posterior on a grid instead (its draws are only for "
        "the figures).",
    ))
    if check_rows:
        tables.append(Table(
            "nuts_check", "NUTS checked against the exact grid posterior",
            ["run", "chains", "draws per chain", "max R-hat", f"R-hat > {RHAT_MAX}", "min bulk ESS", "divergences",
             "max |mean error| / sd", "max |sd ratio - 1|", "seconds"],
            check_rows,
            "With a 2-D latent both references exist; these columns say how far the sampler is from the "
            "exact answer (Monte Carlo error alone gives about 3 / sqrt(ESS) at most).",
        ))
    return tables


def _comparison_table(diagnosis: Diagnosis) -> List[Table]:
    """q against the reference: moment errors, Gaussian KL, W2, the ELBOs and the amortization gap."""
    runs, u = diagnosis.runs, unit(diagnosis)
    tables = []
    rows = []
    for r in runs:
        s = r.summary
        rows.append([r.name, s.mean_abs_error, s.std_mean_error, s.sd_ratio, s.kl_gauss, s.w2, s.elbo_q,
                     s.elbo_local, s.gap, s.gap_se])
    tables.append(Table(
        "comparison", f"q(z|x) versus the reference posterior (means over the diagnosed {u}s)",
        ["run", "|mean error|", "|mean error| / ref. sd", "sd ratio q / ref.", "KL(q || ref.) Gaussian fits",
         "W2 per dim", "ELBO amortized q", f"ELBO per-{u} q", "amortization gap", "gap s.e."],
        rows,
        f"Errors of posterior means are averaged over latent dimensions and {u}s; the sd ratio is a "
        "geometric mean (1 is right, below 1 overconfident). KL between Gaussians fitted to the draws "
        "(a dash: q is a point mass); with d latent dimensions and n draws it reads high by roughly "
        "d(d+1)/(4n) nats, so compare runs diagnosed with the same settings. W2: 1-D Wasserstein-2 "
        "distance per latent dimension, from quantiles, no Gaussian assumption. "
        f"ELBOs in nats per {u}; the per-{u} q is fitted to each {u} alone with the decoder fixed, so "
        "the gap is what amortization costs.",
    ))
    return _unmeasured_gaps(tables, runs)


def _unmeasured_gaps(tables: List[Table], runs) -> List[Table]:
    """The comparison's gap where a run's is not measured (a guide richer than the per-point family): the words
    "not measured" rather than a number, and why in the note."""
    for t in tables:
        for row, r in zip(t.rows, runs):
            why = getattr(r.summary, "gap_note", None)  # a diagnosis saved before the note existed has none
            if why:
                row[-2:] = ["not measured", None]
                t.note += f" {r.name}: {why}."
    return tables


def _nodes_table(diagnosis: Diagnosis) -> List[Table]:
    """The comparison per latent node, for models with several."""
    runs, u = diagnosis.runs, unit(diagnosis)
    tables = []
    rows = [[r.name, node.name, node.dims] + [float(np.nanmean(getattr(node, k))) for k in _NODE_COLUMNS]
            for r in runs if r.comparison is not None for node in r.comparison.nodes]
    if rows:
        tables.append(Table(
            "comparison_nodes", f"q(z|x) versus the reference, per latent node (means over the diagnosed {u}s)",
            ["run", "node", "dims", "|mean error|", "|mean error| / ref. sd", "sd ratio q / ref.",
             "KL(q || ref.) Gaussian fits", "W2 per dim"],
            rows,
            "The comparison above restricted to each latent site's own dimensions (its marginal under q and under "
            "the reference), for models with several: where the guide is wrong, node by node. The per-node KLs "
            "do not add up to the joint one when q or the posterior correlates the nodes.",
        ))
    return tables


def _sbc_table(diagnosis: Diagnosis) -> List[Table]:
    """Simulation-based calibration per run."""
    runs = diagnosis.runs
    tables = []
    rows = []
    for r in runs:
        sbc = r.sbc
        if sbc is None:
            rows.append([r.name, None, None, None, None, "not run"])
        elif sbc.skipped is not None:
            rows.append([r.name, None, None, None, None, "skipped: " + sbc.skipped])
        else:
            verdict = "calibrated" if not sbc.flagged else "NOT calibrated: " + ", ".join(sbc.flagged[:6])
            if sbc.tested is not None and sbc.pvalues is not None and sbc.tested < len(sbc.pvalues):
                verdict += (f" ({sbc.tested} of {len(sbc.pvalues)} dims tested: the rest are padded steps "
                            "in every simulation)")
            rows.append([r.name, sbc.sims, sbc.draws, r.summary.sbc_min_p, len(sbc.flagged), verdict])
    tables.append(Table(
        "sbc", "Simulation-based calibration of q(z|x)",
        ["run", "simulations", "draws per simulation", "min p-value", "dims flagged", "verdict"],
        rows,
        "z* ~ p(z), x ~ p(x | z*) from the model itself; the rank of z* among draws from q(z|x) is uniform "
        "when q is calibrated. Chi-square test per latent dimension (10 bins); a dimension is flagged "
        "below 0.01 / (number of dimensions).",
    ))
    return tables


#: the sampled documents the report lists per run
SAMPLED_DOCUMENTS = 10


def _sampled_documents_table(diagnosis: Diagnosis) -> List[Table]:
    """A run whose columns are words: its first samples as words, each sample's most frequent first."""
    rows = []
    for r in diagnosis.runs:
        words = np.asarray(r.generated.sample_words if r.generated is not None else [], dtype=str)
        if words.ndim != 2:
            continue
        for j, row in enumerate(words[:SAMPLED_DOCUMENTS]):
            rows.append([r.name, j, " ".join(str(w) for w in row if w)])
    if not rows:
        return []
    return [Table(
        "sampled_documents", "Sampled documents, in words",
        ["run", "sample", "most frequent words (most first)"],
        rows,
        "Decoder means of draws z ~ p(z) (the same seed for every run), each document's words by their expected "
        "count, most first; its length is a diagnosed test document's, in turn. 'pyro-vae sample' writes more, "
        "with their counts.",
    )]


def _matched_true_topics(recovery) -> dict:
    """Learned topic -> (the true topic the one-to-one matching gives it, their cosine), from a run's saved
    recovery (evaluation/recovery.py); empty without one."""
    found = (recovery or {}).get("topics") if isinstance(recovery, dict) else None
    if not isinstance(found, dict):
        return {}
    cosine, matched = found.get("cosine") or [], found.get("matched") or []
    pairs = {}
    for true, learned in enumerate(matched):
        if isinstance(learned, int) and 0 <= learned and true < len(cosine) and learned < len(cosine[true]):
            pairs[learned] = (true, cosine[true][learned])
    return pairs


def _topics_table(diagnosis: Diagnosis) -> List[Table]:
    """A topic model's topics, from the run's metrics.json: the run's held-out perplexity once (its own table),
    then per topic only what is per topic: its NPMI, top words and, on a synthetic corpus, the true topic it was
    matched to (evaluation/topics.py, recovery.py).  The words come from a vocabulary file: data, shown as text."""
    runs, rows = [], []
    for r in diagnosis.runs:
        t = r.info.get("topics")
        if not isinstance(t, dict) or not t.get("top_words"):
            continue
        runs.append([r.name, len(t["top_words"]), t.get("num_documents"), t.get("num_words"), t.get("perplexity"),
                     t.get("perplexity_se"), t.get("perplexity_elbo"), t.get("npmi_mean")])
        matched = _matched_true_topics(r.info.get("recovery"))
        for k, (words, score) in enumerate(zip(t["top_words"], t.get("npmi") or [])):
            true, cosine = matched.get(k, (None, None))
            rows.append([r.name, k, score, " ".join(str(w) for w in words)]
                        + ([true, cosine] if matched else []))
    if not runs:
        return []
    truth = any(len(row) > 4 for row in rows)
    rows = [row + [None, None] if truth and len(row) == 4 else row for row in rows]
    return [Table(
        "topic_runs", "Topic models: held-out perplexity and coherence",
        ["run", "topics", "held-out documents", "words", "perplexity per word", "perplexity s.e.",
         "perplexity bound from the ELBO", "mean NPMI"],
        runs,
        "From each run's metrics.json (its final evaluation on the held-out documents). Perplexity per word: "
        "exp(-sum of the documents' importance-sampled log p(x), less their multinomial coefficients, / their "
        "words), with its Monte Carlo s.e.; the bound puts each document's ELBO in place of its log p(x). Mean "
        "NPMI: the topics' NPMI (next table) averaged.",
    ), Table(
        "topics", "Topics: top words and NPMI coherence" + (", matched to the true topics" if truth else ""),
        ["run", "topic", "NPMI", "top words (most probable first)"]
        + (["matched true topic", "cosine with it"] if truth else []),
        rows,
        "A topic's words are the decoder's word distribution at theta = that topic alone, in eval mode. NPMI: the "
        "mean over pairs of the topic's top words of log(P(wi, wj) / (P(wi) P(wj))) / -log P(wi, wj), P the share "
        "of held-out documents holding the word(s), in [-1, 1]."
        + (" Matched true topic: on a synthetic corpus, the true topic a one-to-one (Hungarian) matching of the "
           "word distributions gives this topic, and the cosine of the two (1: the same distribution)."
           if truth else ""),
    )]


def _recovery_table(diagnosis: Diagnosis) -> List[Table]:
    """What each run on a synthetic source recovered of its truth, from its metrics.json (evaluation/recovery.py)."""
    rows = []
    for r in diagnosis.runs:
        found = r.info.get("recovery")
        if not isinstance(found, dict):
            continue
        theta, dropout, topics = (found.get(k) or {} for k in ("theta", "dropout", "topics"))
        rows.append([r.name, theta.get("median_relative_error"), dropout.get("median_relative_error"),
                     dropout.get("median_absolute_error"), topics.get("matched_mean"),
                     min(topics["best_match"]) if topics.get("best_match") else None])
    if not rows:
        return []
    return [Table(
        "recovery", "Recovery of the synthetic source's truth",
        ["run", "theta: median relative error", "dropout: median relative error", "dropout: median absolute error",
         "topics: matched mean cosine", "topics: worst best-match cosine"],
        rows,
        "From each run's metrics.json (its final evaluation on the held-out rows), against the truth its synthetic "
        "source drew the data with (the run's truth.npz). Per feature, |learned - true| / true, the median over the "
        "features; theta and dropout are read off p(x | z) at draws z ~ q(z | x). Topics: the cosine of each true "
        "topic's word distribution with the learned topic a one-to-one (Hungarian) matching gives it, and with its "
        "best match.",
    )]
