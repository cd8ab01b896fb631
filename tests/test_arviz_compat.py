"""The ArviZ adapter (pyro_vae/arviz_compat.py): the one module that imports ArviZ, the same numbers and figures on 0.x and 1.x.

What ArviZ computes for us (R-hat, bulk and tail ESS, HDIs, PSIS k-hat and smoothed
weights) is a deterministic function of its input, so the two majors must agree to
float rounding on the same input. ``fixtures/arviz_0x/values.json`` holds ArviZ 0.x's
values (and the forest plot's drawn intervals) on seeded inputs, ``fixtures/arviz_0x/q.nc``
a small file 0.x wrote; both legs compare with them. To record them again, under
ArviZ 0.x (Python 3.11): ``python tests/test_arviz_compat.py --record``.

Tolerances: float64 rounding over sums and FFTs of about 10^3 terms stays below 1e-12
relative; RTOL = 1e-9 leaves three orders of margin and is far below any change of
definition (the 1.x default tail ESS, at the 11%/89% quantiles, differs by tens of
percent; a one-draw change of the PSIS tail moves k-hat by about 1e-2).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vae import arviz_compat as ac
from pyro_vae.infer.psis import pareto_khat

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "arviz_0x"
RTOL = 1e-9
ARVIZ_MODULES = ("arviz", "arviz_base", "arviz_stats", "arviz_plots")
# 3 sqrt(900) = 90 exactly: both majors' rules (0.x ceil, 1.x floor) fit M = 90 tail draws
EQUAL_TAIL_DRAWS = 900


def _inputs():
    """Seeded inputs: autocorrelated chains (chain, draw, point, dim), and heavy-tailed log-ratios (rows, draws)."""
    g = np.random.default_rng(20240601)
    noise = g.normal(size=(2, 500, 3, 2))
    chains = 0.3 * np.cumsum(noise, axis=1) / np.sqrt(np.arange(1, 501))[None, :, None, None] + noise
    chains[1] += 0.05  # a small between-chain shift: R-hat above 1
    log_ratios = g.standard_t(4, size=(4, EQUAL_TAIL_DRAWS))
    return chains, log_ratios


def _data(chains):
    return ac.from_dict({"z": chains}, None, coords={"point": [2, 5, 7], "z_dim": [0, 1]},
                        dims={"z": ["point", "z_dim"]}, attrs={"source": "test"})


def _values() -> dict:
    """What ArviZ computes on the inputs, through the adapter."""
    chains, log_ratios = _inputs()
    data = _data(chains)
    lw, k = ac.psislw(log_ratios)
    v = {"inputs_sum": [float(chains.sum()), float(log_ratios.sum())],
         "rhat": ac.rhat(data)["z"].values, "ess_bulk": ac.ess(data, "bulk")["z"].values,
         "ess_tail": ac.ess(data, "tail")["z"].values,
         "hdi": [ac.hdi(chains[:, :, p, d], 0.9) for p in range(3) for d in range(2)],
         "khat": k, "smoothed_log_weights_top": np.sort(lw, axis=1)[:, -95:],
         "forest": _forest_segments(data)}
    return json.loads(json.dumps(v, default=lambda a: np.asarray(a).tolist()))


def _forest_segments(data):
    """The forest plot's drawn numbers: every line's ends and width, every marker, the y ticks and their labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ac.plot_forest(ax, [data, data], ["a", "b"], "z", {"point": [7, 2]}, ["C0", "k"], prob=0.9, textsize=9)
    out = _artists(ax)
    plt.close(fig)
    return out


def _artists(ax) -> dict:
    from matplotlib.collections import LineCollection

    lines = sorted((float(s[0][1]), float(s[0][0]), float(s[1][0]), float(c.get_linewidth()[0]))
                   for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments())
    dots = sorted((float(l.get_ydata()[0]), float(l.get_xdata()[0]), float(l.get_markersize())) for l in ax.get_lines())
    bands = sorted((float(p.get_bbox().y0), float(p.get_bbox().y1), float(p.get_alpha())) for p in ax.patches)
    return {"lines": lines, "dots": dots, "bands": bands, "yticks": [float(t) for t in ax.get_yticks()],
            "labels": [t.get_text() for t in ax.get_yticklabels()], "ylim": [float(v) for v in ax.get_ylim()],
            "legend": [t.get_text() for t in ax.get_legend().get_texts()]}


def _close(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=RTOL)


# ---------------------------------------------------------------------------


def _arviz_imports(source: str, filename: str = "<src>"):
    """(line, module) of every import of an ArviZ package in ``source``: statements, in functions too, and __import__/import_module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
              in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ARVIZ_MODULES]
    return found


def test_only_the_adapter_imports_arviz():
    """Every ArviZ call goes through pyro_vae/arviz_compat.py: no other module of the package imports an ArviZ package."""
    adapter = ROOT / "pyro_vae" / "arviz_compat.py"
    offenders = [f"{p.relative_to(ROOT)}:{line} {name}" for p in sorted((ROOT / "pyro_vae").rglob("*.py")) if p != adapter
                 for line, name in _arviz_imports(p.read_text(), str(p))]
    assert not offenders, offenders
    assert _arviz_imports(adapter.read_text())  # the scan sees the adapter's own imports


def test_the_scan_sees_every_form_of_import():
    src = ("import numpy\nimport arviz as az\nfrom arviz_stats.base import array_stats\n"
           "def f():\n    import arviz_plots\n    return __import__('arviz_base')\n"
           "from . import arviz_compat\nimport importlib\nimportlib.import_module('arviz')\n")
    assert sorted(n for _, n in _arviz_imports(src)) == ["arviz", "arviz", "arviz_base", "arviz_plots", "arviz_stats.base"]


def test_numbers_are_arviz_0x_numbers():
    """R-hat, bulk/tail ESS, HDI and PSIS on the same input: this ArviZ gives what 0.x gave, to float rounding."""
    want = json.loads((FIXTURES / "values.json").read_text())
    got = _values()
    assert np.allclose(got["inputs_sum"], want["inputs_sum"], rtol=1e-12), "NumPy's seeded stream changed: re-record"
    for key in ("rhat", "ess_bulk", "ess_tail", "hdi", "khat", "smoothed_log_weights_top"):
        assert _close(got[key], want[key]), (key, ac.version(), got[key], want[key])


def test_forest_draws_the_same_figure_on_both_majors():
    """The forest plot draws the same lines, dots, bands, ticks and labels as it did under ArviZ 0.x."""
    want = json.loads((FIXTURES / "values.json").read_text())["forest"]
    got = _values()["forest"]
    for key in ("lines", "dots", "bands", "yticks", "ylim"):
        assert _close(got[key], want[key]), (key, got[key], want[key])
    assert got["labels"] == want["labels"] == ["[2, 1]", "[2, 0]", "[7, 1]", "z[7, 0]"]
    assert got["legend"] == want["legend"] == ["b", "a"]


@pytest.mark.skipif(ac.is_v1(), reason="compares with ArviZ 0.x's own plot_forest, which 1.x replaced")
def test_forest_is_arviz_0x_plot_forest_artist_by_artist():
    """Our forest plot is what ``az.plot_forest(..., combined=True, hdi_prob=0.9, ax=ax)`` of ArviZ 0.x draws."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains, _ = _inputs()
    other = chains[:1, :, :, :] * 0.5  # a second model with one chain, as a grid reference has
    coords = {"point": [7, 2], "z_dim": [1, 0]}
    fig, (a1, a2) = plt.subplots(1, 2)
    az.plot_forest([_data(chains), _data(other)], model_names=["q", "ref"], var_names=["z"], combined=True,
                   hdi_prob=0.9, coords=coords, ax=a1, colors=["C0", "k"], textsize=9)
    ac.plot_forest(a2, [_data(chains), _data(other)], ["q", "ref"], "z", coords, ["C0", "k"], prob=0.9, textsize=9)
    theirs, ours = _artists(a1), _artists(a2)
    plt.close(fig)
    for key in ("lines", "dots", "bands", "yticks", "ylim"):
        assert _close(ours[key], theirs[key]), (key, ours[key], theirs[key])
    assert ours["labels"] == theirs["labels"] and ours["legend"] == theirs["legend"]
    assert a2.get_title() == a1.get_title() == "90.0% HDI"


def test_psislw_fits_the_right_tail_of_the_log_ratios():
    """Weights with a Pareto tail of shape 0.6 give k-hat near 0.6 on either major (1.x's psislw reads the
    negated log-ratios: passing them unchanged fits the bounded left tail and gives k-hat far below 0)."""
    g = np.random.default_rng(3)
    k_true, rows, s = 0.6, 40, 4000
    w = (g.uniform(size=(rows, s)) ** -k_true - 1) / k_true  # generalized Pareto, shape 0.6, scale 1
    k = pareto_khat(np.log(w))
    m = ac.psis_tail_draws(s)
    # k-hat's sampling sd from M tail draws is about (1 + k) / sqrt(M); the mean of `rows` of them gets 4 of its s.e.
    assert abs(k.mean() - k_true) < 4 * (1 + k_true) / np.sqrt(m) / np.sqrt(rows), (k.mean(), m)


def test_tail_length_rule_of_each_major():
    """M: ceil(min(S/5, 3 sqrt S)) on 0.x; floor(3 sqrt S) (floor(S/5) up to S = 225) on 1.x; equal at S = 900."""
    for s in (100, 225, 1000, 4000):
        want = (int(np.floor(3 * np.sqrt(s))) if s > 225 else s // 5) if ac.is_v1() else int(np.ceil(min(s / 5, 3 * np.sqrt(s))))
        assert ac.psis_tail_draws(s) == want
    assert ac.psis_tail_draws(EQUAL_TAIL_DRAWS) == 90


def test_groups_are_datasets_with_attrs_and_round_trip(tmp_path):
    chains, _ = _inputs()
    data = ac.from_dict({"z": chains}, {"log_p": chains[..., 0]}, coords={"point": [2, 5, 7]},
                        dims={"z": ["point", "z_dim"], "log_p": ["point"]}, attrs={"source": "q(z|x)", "run": "r"})
    for name in ("posterior", "sample_stats"):
        g = ac.group(data, name)
        assert hasattr(g, "data_vars") and g.attrs["source"] == "q(z|x)" and g.attrs["run"] == "r"
    assert ac.group(data, "log_likelihood") is None
    ac.to_netcdf(data, tmp_path / "q.nc")
    back = ac.from_netcdf(tmp_path / "q.nc")
    assert np.array_equal(ac.group(back, "posterior")["z"].values, chains)
    assert list(ac.group(back, "sample_stats")["log_p"].dims) == ["chain", "draw", "point"]
    assert ac.group(back, "posterior").attrs["source"] == "q(z|x)"


def test_reads_the_netcdf_file_arviz_0x_wrote():
    """A diagnosis folder saved under ArviZ 0.x (Python 3.11) loads under either major."""
    back = ac.from_netcdf(FIXTURES / "q.nc")
    post, ss = ac.group(back, "posterior"), ac.group(back, "sample_stats")
    assert np.array_equal(post["z"].values, np.arange(24.0).reshape(1, 6, 2, 2))
    assert list(post["point"].values) == [4, 7] and post.attrs["source"] == "q(z|x)"
    assert np.array_equal(ss["log_weight"].values, np.full((1, 6, 2), -1.5))


@pytest.mark.skipif(ac.has_loo_approximate_posterior(), reason="ArviZ 1.x has loo_approximate_posterior")
def test_loo_approximate_posterior_is_none_before_arviz_1():
    assert ac.loo_approximate_posterior(np.zeros((2, 10))) is None


@pytest.mark.skipif(not ac.has_loo_approximate_posterior(), reason="needs ArviZ >= 1.0 (Python >= 3.12)")
def test_loo_approximate_posterior_reads_our_weights():
    """ArviZ's LOO of observations whose log-likelihood is -log w: its pareto_k is our k-hat of w, and minus
    its elpd the log of a PSIS-smoothed mean of w (equal weights: exactly log w)."""
    _, log_ratios = _inputs()
    k, elpd = ac.loo_approximate_posterior(log_ratios)
    assert np.max(np.abs(k - pareto_khat(log_ratios))) <= 1e-9
    # a row of equal weights has no tail to fit: ArviZ 1.x refuses it (NaN here), and our k-hat is 0.x's inf
    rows = np.vstack([log_ratios[:1, :200], np.full((1, 200), -7.25)])
    k2, elpd2 = ac.loo_approximate_posterior(rows)
    assert np.isfinite(k2[0]) and np.isnan(k2[1]) and np.isnan(elpd2[1])
    assert np.isinf(pareto_khat(rows)[1])


def test_a_tail_without_spread_is_inf_on_both_majors():
    """Equal weights, at most 4 draws above the cutoff, or a tail of equal draws above a body one ulp lower
    (an exact q's weights after rounding): 0.x's k-hat = inf and unsmoothed weights (1.x would raise)."""
    rows = np.full((4, 200), -7.25)
    rows[1, :3] = -1.0  # three draws above the rest
    rows[2, 60:] = np.nextafter(-7.25, -np.inf)  # 60 equal draws on top, the body one ulp below
    rows[3] = np.linspace(-3, 0, 200)  # a proper tail: fitted
    lw, k = ac.psislw(rows)
    assert np.all(np.isinf(k[:3])) and np.isfinite(k[3]), k
    assert np.allclose(lw[:3], rows[:3] - np.log(np.exp(rows[:3]).sum(1, keepdims=True)), atol=1e-12)
    assert np.allclose(np.exp(lw).sum(1), 1.0)


def test_forest_takes_one_colour_per_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ac.plot_forest(ax, [_data(_inputs()[0])], ["q"], "z", {"point": [2]}, ["C0", "k"], prob=0.9, textsize=9)
    colours = {tuple(np.round(c.get_color()[0], 6)) for c in ax.collections}
    plt.close(fig)
    assert colours == {tuple(np.round(matplotlib.colors.to_rgba("C0"), 6))}


def _record():
    """Write the fixtures from ArviZ 0.x (run on Python 3.11 with arviz 0.23)."""
    assert not ac.is_v1(), "record the fixtures under ArviZ 0.x"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "values.json").write_text(json.dumps({"arviz": ac.version(), **_values()}, indent=1) + "\n")
    small = ac.from_dict({"z": np.arange(24.0).reshape(1, 6, 2, 2)}, {"log_weight": np.full((1, 6, 2), -1.5)},
                         coords={"point": [4, 7]}, dims={"z": ["point", "z_dim"], "log_weight": ["point"]},
                         attrs={"source": "q(z|x)"})
    ac.to_netcdf(small, FIXTURES / "q.nc")


if __name__ == "__main__" and "--record" in sys.argv:
    _record()


@pytest.mark.parametrize("draws", [1, 2, 4])
def test_fewer_than_five_draws_have_no_tail_on_both_majors(draws):
    """1.x fits floor(S/5) draws, none below 5; 0.x fits one at S = 2..4: either way no spread to fit, so k-hat
    is inf and the weights are the normalized ratios (1.x indexed past the row before)."""
    rows = np.log(np.arange(1.0, 1.0 + 3 * draws).reshape(3, draws))
    lw, k = ac.psislw(rows)
    assert np.all(np.isinf(k)), k
    assert np.allclose(lw, rows - np.log(np.exp(rows).sum(1, keepdims=True)), atol=1e-12)
