"""ArviZ, one API over 0.x (Python 3.11) and 1.x (Python >= 3.12): every ArviZ call of the package goes through here.

ArviZ 1.x split into arviz-base / arviz-stats / arviz-plots and changed, where
this package touches it: ``from_dict`` takes one ``{group: {var: array}}``
mapping and per-group attributes; ``InferenceData`` became ``xarray.DataTree``
(a group is a tree node, not a Dataset); ``psislw`` lives in arviz-stats and
takes the *log-likelihood*, i.e. the negated log-ratios (0.x took the
log-ratios): passing the same array silently fits the other tail; the tail ESS
is taken at the ``stats.ci_prob`` quantiles (0.11 / 0.89 by default) instead of
0.05 / 0.95; ``plot_forest`` returns a PlotCollection in a figure of its own,
with 89% equal-tailed intervals. Each function below pins the 0.x definition on
both, so a diagnosis gives the same numbers for the same draws on either (a
test checks this); the one difference left is the PSIS tail length, see
:func:`psis_tail_draws`. ArviZ is imported on first use: it is slow to import
and most commands never need it.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

# the tail ESS of Vehtari et al. (2021): the ESS of the 5% and 95% quantiles, the smaller
ESS_TAIL_PROB = (0.05, 0.95)


@functools.lru_cache(maxsize=None)
def _az():
    with warnings.catch_warnings():
        # 0.x warns at import about the 1.0 refactor; nothing to act on here
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


@functools.lru_cache(maxsize=None)
def _array_stats():
    """arviz-stats' array interface (1.x only): its functions on plain NumPy arrays."""
    from arviz_stats.base import array_stats

    return array_stats


def version() -> str:
    """The installed ArviZ's version."""
    return str(_az().__version__)


def is_v1() -> bool:
    """Whether the installed ArviZ is the 1.x refactor (arviz-base / arviz-stats / arviz-plots)."""
    return int(version().split(".")[0]) >= 1


@contextmanager
def _quiet():
    """ArviZ warns about what this package reports itself (k-hat > 0.7, too few chains for R-hat)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dataset(node):
    """A 1.x DataTree node as an xarray Dataset (a 0.x group already is one)."""
    return node.to_dataset() if hasattr(node, "children") else node


# -- data ---------------------------------------------------------------------------


def from_dict(posterior: dict, sample_stats: Optional[dict] = None, *, coords=None, dims=None, attrs=None):
    """ArviZ data (0.x ``InferenceData``, 1.x ``DataTree``) from (chain, draw, ...) arrays, ``attrs`` on every group."""
    az = _az()
    groups = {"posterior": posterior}
    if sample_stats:
        groups["sample_stats"] = sample_stats
    if not is_v1():  # 0.x: a keyword per group, and <group>_attrs for each group's attributes
        return az.from_dict(**groups, coords=coords, dims=dims, **{f"{g}_attrs": dict(attrs or {}) for g in groups})
    # 1.x: attrs is {group: {name: value}}; a flat mapping is dropped with a warning (its keys name no group)
    return az.from_dict(groups, coords=coords, dims=dims, attrs={g: dict(attrs or {}) for g in groups})


def group(data, name: str):
    """One group of ArviZ data as an xarray Dataset; None where the data has no such group."""
    try:
        node = data[name]
    except (KeyError, AttributeError, TypeError):
        node = getattr(data, name, None)
    return None if node is None else _dataset(node)


def to_netcdf(data, path) -> None:
    """Write ArviZ data to one netCDF-4 file (h5netcdf, the engine both majors read)."""
    data.to_netcdf(str(path), engine="h5netcdf")


def from_netcdf(path):
    """Read ArviZ data written by :func:`to_netcdf`, by either major (the groups are netCDF-4 groups on both)."""
    return _az().from_netcdf(str(Path(path)), engine="h5netcdf")


# -- statistics ---------------------------------------------------------------------


def psis_tail_draws(num_draws: int) -> int:
    """M, the number of largest weights PSIS fits (r_eff = 1) on this ArviZ.

    0.x takes ceil(min(S/5, 3 sqrt S)); 1.x floor(3 sqrt S), or floor(S/5) for
    S <= 225. They differ by at most one draw, which moves k-hat by far less than
    its standard error (about (1 + k) / sqrt(M)); k-hat is otherwise the same
    computation on both (the same GPD fit: a test checks it to float rounding at equal M).
    """
    s = int(num_draws)
    if is_v1():
        return int(np.floor(3 * np.sqrt(s))) if s > 225 else s // 5
    return int(np.ceil(min(s / 5.0, 3 * np.sqrt(s))))


def _no_tail_to_fit(log_ratios: np.ndarray) -> np.ndarray:
    """Rows whose M largest draws are all equal, or with at most 4 draws strictly above PSIS's cutoff.

    Equal weights (q proportional to the posterior), or very few draws. 0.x
    fits no tail there and returns k-hat = inf with the weights unsmoothed;
    1.x raises ("All tail values are the same", or too few tail draws). Such
    rows get 0.x's answer on both.
    """
    s = log_ratios.shape[-1]
    m = min(psis_tail_draws(s), s - 1)
    if m < 1:  # 1.x fits floor(S/5) draws: fewer than 5 draws a row leave it none
        return np.ones(log_ratios.shape[:-1], dtype=bool)
    srt = np.sort(log_ratios, axis=-1)
    cutoff = srt[..., s - m - 1]
    return ((log_ratios > cutoff[..., None]).sum(-1) <= 4) | (srt[..., -1] == srt[..., s - m])


def psislw(log_ratios) -> Tuple[np.ndarray, np.ndarray]:
    """PSIS on each row of ``log_ratios`` (rows x draws; the log importance ratios, r_eff = 1).

    Returns the smoothed log-weights, normalized per row, and the Pareto k-hat of
    each row (inf where the tail has no spread to fit, as 0.x says).
    """
    lr = np.atleast_2d(np.asarray(log_ratios, dtype=np.float64))
    if lr.shape[-1] < 5:  # no tail on either major (0.x's answer from 2 to 4 draws; it cannot index one draw)
        return lr - _logsumexp(lr)[:, None], np.full(lr.shape[0], np.inf)
    with _quiet():
        if not is_v1():
            lw, k = _az().psislw(lr, reff=1.0)
            return np.asarray(lw, dtype=np.float64), np.atleast_1d(np.asarray(k, dtype=np.float64))
        lw = lr - _logsumexp(lr)[:, None]
        k = np.full(lr.shape[0], np.inf)
        fit = ~_no_tail_to_fit(lr)
        if fit.any():
            # arviz-stats' psislw takes the log-likelihood: the log-ratios are its negation
            lw[fit], k[fit] = _array_stats().psislw(-lr[fit], r_eff=1.0, axis=-1)
    return lw, k


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(-1)
    return top + np.log(np.exp(a - top[..., None]).sum(-1))


def rhat(data):
    """Rank-normalized split R-hat of every posterior variable (a Dataset without chain and draw)."""
    with _quiet():
        return _dataset(_az().rhat(data, method="rank"))


def ess(data, method: str):
    """Bulk (``method="bulk"``) or tail (``"tail"``: 5% and 95% quantiles) ESS of every posterior variable."""
    with _quiet():
        if method == "tail" and is_v1():
            return _dataset(_az().ess(data, method="tail", prob=ESS_TAIL_PROB))
        return _dataset(_az().ess(data, method=method))


def hdi(values: np.ndarray, prob: float) -> Tuple[float, float]:
    """The unimodal highest-density interval of a 1-D sample, as ArviZ computes it."""
    v = np.asarray(values, dtype=np.float64).ravel()
    with _quiet():
        if is_v1():
            lo, hi = _array_stats().hdi(v, prob, axis=-1)
        else:
            lo, hi = _az().hdi(v, hdi_prob=prob, multimodal=False)
    return float(lo), float(hi)


def has_loo_approximate_posterior() -> bool:
    """Whether this ArviZ offers PSIS-LOO for variational posteriors (1.x does, 0.x does not)."""
    return hasattr(_az(), "loo_approximate_posterior")


def loo_approximate_posterior(log_ratios) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """ArviZ's ``loo_approximate_posterior`` on per-row importance log-ratios (rows x draws): (pareto_k, elpd_i).

    Each row is one observation whose log-likelihood is the negated log-ratio,
    with log_p = log_q = 0: ArviZ's LOO ratio for it, exp(-log_lik + log_p - log_q),
    is then exactly exp(log_ratio), its pareto_k the k-hat of those ratios and
    elpd_i = log sum_s w~_s / w_s (w~ the smoothed, normalized weights) minus the log
    of a PSIS estimate of mean(w). NaN for rows ArviZ cannot fit (see :func:`psislw`);
    None where this ArviZ has no such function.
    """
    if not has_loo_approximate_posterior():
        return None
    lr = np.atleast_2d(np.asarray(log_ratios, dtype=np.float64))
    k, elpd = np.full(lr.shape[0], np.nan), np.full(lr.shape[0], np.nan)
    fit = ~_no_tail_to_fit(lr)
    if fit.any():
        s = lr.shape[1]
        data = _az().from_dict({"log_likelihood": {"neg_log_ratio": -lr[fit].T[None]}}, dims={"neg_log_ratio": ["row"]})
        with _quiet():
            res = _az().loo_approximate_posterior(data, log_p=np.zeros(s), log_q=np.zeros(s), pointwise=True)
        k[fit], elpd[fit] = res.pareto_k.values, res.elpd_i.values
    return k, elpd


# -- the forest plot ----------------------------------------------------------------


def plot_forest(ax, datasets: Sequence, model_names: Sequence[str], var_name: str, coords: dict,
                colors: Sequence[str], prob: float, textsize: float) -> None:
    """ArviZ 0.x's combined forest plot of one variable, drawn into ``ax`` on either major.

    1.x's plot_forest draws a PlotCollection in a figure of its own, so it
    cannot share the report's grid of axes, and its look differs; this draws
    what 0.x's ``plot_forest(datasets, model_names=..., var_names=[var_name],
    combined=True, hdi_prob=prob, coords=coords, colors=colors, textsize=..., ax=ax)``
    draws (a test compares the two artist by artist on 0.x): per selection of
    ``coords`` one row per model, the ``prob`` HDI as a thin line, the quartiles
    as a thick one, the median as an open dot, alternate selections shaded, a legend.
    """
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    def rc(key, named):  # 0.x reads a named font size ("medium") as this many points
        v = mpl.rcParams[key]
        return named if isinstance(v, str) else float(v)

    scale = textsize / rc("xtick.labelsize", 14.0)  # 0.x scales line, marker and title sizes with the text
    lw, ms = mpl.rcParams["lines.linewidth"] * scale, mpl.rcParams["lines.markersize"] * scale
    # 0.x lays rows out bottom-up: models and selections reversed, the first ones on top. Only the
    # first len(datasets) colours (0.x paired them from the end: one model got the second colour)
    names, cols = list(reversed(model_names)), list(reversed(list(colors)[: len(datasets)]))
    arrays = [group(d, "posterior")[var_name] for d in reversed(list(datasets))]
    dims = [d for d in arrays[0].dims if d not in ("chain", "draw")]
    values = [list(coords[d]) if d in coords else list(arrays[0][d].values) for d in dims]
    selections = list(itertools.product(*values))[::-1]
    chain_offset = len(arrays) * 0.45 / max(1, max(int(a["chain"].max()) for a in arrays))
    var_offset, group_offset = 1.5 * chain_offset, 3 * chain_offset
    step = chain_offset + var_offset  # from one model's row to the next
    y, ticks, labels, edges = 0.0, [], [], [0.0]
    for i, sel in enumerate(selections):
        rows = []
        for a, color in zip(arrays, cols):
            v = np.asarray(a.sel(dict(zip(dims, sel))).values, dtype=np.float64).ravel()
            q = np.percentile(v, [50 * (1 - prob), 25, 50, 75, 50 * (1 + prob)])
            q[0], q[-1] = hdi(v, prob)
            ax.hlines(y, q[0], q[4], linewidth=lw, color=color)
            ax.hlines(y, q[1], q[3], linewidth=2 * lw, color=color)
            ax.plot(q[2], y, "o", mfc=ax.get_facecolor(), markersize=ms * 0.75, color=color)
            rows.append(y)
            y += step
        ticks.append(float(np.mean(rows)))
        labels.append((var_name if i == len(selections) - 1 else "") + "[" + ", ".join(map(str, sel)) + "]")
        edges.append(rows[-1] + (step + group_offset) / 2 if i < len(selections) - 1 else rows[-1] + group_offset)
        y += group_offset
    ax.set_title(f"{prob:.1%} HDI", fontsize=rc("axes.titlesize", 16.0) * scale)
    ax.grid(False, axis="y")
    ax.tick_params(axis="y", left=False, right=False)
    ax.tick_params(labelsize=textsize)
    for loc in ("left", "right"):
        ax.spines[loc].set_visible(False)
    if len(arrays) > 1:
        for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            ax.axhspan(lo, hi, color="k", alpha=0.1 * (j % 2))
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.set_ylim(-group_offset, edges[-1] + group_offset)
    ax.legend(handles=[Line2D([], [], color=c) for c in cols], labels=names)
