"""The inference gap split as a table: log p(x), ELBO(q) and the gap, then each family's ELBO(q*) and its two parts.

One table, read from the split's plain (JSON) form, so that ``evaluate --gaps``
(metrics.json), a saved diagnosis (diagnostics.json) and the side-by-side report
show the same numbers the same way.
"""

from __future__ import annotations

from typing import List, Optional

__all__ = ["gap_rows", "gaps_text", "pm"]


def pm(value: Optional[float], se: Optional[float], digits: int = 3) -> str:
    """``value ± se`` ("-" for a value not there)."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def gap_rows(gaps: dict) -> List[dict]:
    """One row per family of q*: its name, ELBO(q*), approximation and amortization gaps (totals, with s.e.)."""
    rows = []
    for split in [gaps["own"]] + list(gaps.get("richer") or []):
        elbo = split["elbo"]
        mean_elbo = sum(elbo) / len(elbo)
        rows.append({"family": split["family"], "own": split is gaps["own"], "elbo": mean_elbo,
                     "approximation": split["total_approximation"],
                     "approximation_se": split["total_approximation_se"],
                     "amortization": split["total_amortization"], "amortization_se": split["total_amortization_se"],
                     "converged": split.get("converged"), "steps": split.get("steps")})
    return rows


def gaps_text(gaps: dict) -> str:
    """The split as text lines, in nats per point (means over the points, ± their standard errors)."""
    n = len(gaps["points"])
    lines = [f"  inference gap split on {n} point{'s' * (n != 1)} (nats per point, mean ± s.e.; "
             f"{gaps['draws']} draws each):",
             f"    log p(x) (importance-sampled from the {gaps['log_px_proposal']} q*)  "
             f"{pm(gaps['total_log_px'], gaps['total_log_px_se'])}",
             f"    ELBO of the encoder's q                     {pm(gaps['total_elbo_q'], gaps['total_elbo_q_se'])}",
             f"    inference gap  log p(x) - ELBO(q)           {pm(gaps['total_inference'], gaps['total_inference_se'])}",
             f"    {'q* family':<14}{'ELBO(q*)':>12}{'approximation gap':>22}{'amortization gap':>22}"]
    for r in gap_rows(gaps):
        name = r["family"] + (" (own)" if r["own"] else "")
        # a fit stopped short leaves q* below its family's best: the approximation gap reads high, amortization low
        note = "" if r["converged"] else "   (fit not converged: approximation gap overstated, amortization understated)"
        lines.append(f"    {name:<14}{r['elbo']:>12.3f}{pm(r['approximation'], r['approximation_se']):>22}"
                     f"{pm(r['amortization'], r['amortization_se']):>22}{note}")
    khat = gaps.get("log_px_khat") or []
    bad = sum(1 for k in khat if k is not None and k > 0.7)
    if bad:
        lines.append(f"    note: PSIS k-hat > 0.7 for {bad} of {n} points: their log p(x) (and so the gaps) is unreliable")
    return "\n".join(lines)
