"""The README's commands give the same numbers on Python 3.11 with ArviZ 0.x and on Python >= 3.12 with ArviZ 1.x.

``fixtures/cross_version.json`` holds what the recording leg (Python 3.11, ArviZ 0.23)
printed and saved for ``pyro-vae demo --epochs 1``, then ``pyro-vae diagnose`` and
``pyro-vae report`` of that run with small settings. Every leg runs the same
commands and compares each number at its own Monte Carlo error: an estimate with a
standard error within 4 combined s.e., sqrt(se_a^2 + se_b^2); a k-hat within
4 (1 + k) / sqrt(M), the sampling sd of a Pareto shape fitted to M tail draws
(Smith 1987), M taken on each leg's own ArviZ rule; a reference mean within 4 of
its NUTS s.e., sd / sqrt(bulk ESS), combined over the two legs. A different torch
trains a different model (the numbers then differ by more than Monte Carlo error),
so the comparison needs the recorded torch release.

Re-record, under Python 3.11 with ArviZ 0.x: ``python tests/test_cross_version.py --record``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import arviz_compat
from pyro_vae.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "cross_version.json"
DIAGNOSE = ["--points", "3", "--draws", "1000", "--nuts-warmup", "40", "--nuts-samples", "40", "--local-steps", "20",
            "--sbc-sims", "10", "--quiet"]
Z = 4.0


def _torch_release() -> str:
    return torch.__version__.split("+")[0]  # 2.13.0+cpu and 2.13.0+cu130 are one release


def measure(folder: Path) -> dict:
    """Run the commands into ``folder`` and collect their numbers (with their standard errors)."""
    run, out = folder / "demo", folder / "report"
    assert main(["demo", "--out", str(run), "--epochs", "1"]) == 0
    assert main(["diagnose", str(run), "--out", str(out)] + DIAGNOSE) == 0
    assert main(["report", str(run), "--out", str(out)] + DIAGNOSE) == 0
    m = json.loads((run / "metrics.json").read_text())
    d = json.loads((out / "diagnostics.json").read_text())
    results = json.loads((out / "results.json").read_text())
    r = d["runs"][0]
    return {
        "python": ".".join(map(str, sys.version_info[:2])), "arviz": arviz_compat.version(), "torch": _torch_release(),
        "demo": {k: m[k] for k in ("elbo", "elbo_se", "log_likelihood", "log_likelihood_se", "iw_khat_max",
                                   "iw_khat_median")},
        "iw_tail_draws": arviz_compat.psis_tail_draws(m["iw_samples"]),
        "q_elbo": r["q"]["elbo"], "q_elbo_se": r["q"]["elbo_se"], "khat": r["khat"]["values"],
        "tail_draws": arviz_compat.psis_tail_draws(d["settings"]["draws"]),
        "gap": r["local"]["gap"], "gap_se": r["local"]["gap_se"],
        "ref_mean": r["reference"]["mean"], "ref_sd": r["reference"]["sd"], "ref_ess": r["reference"]["nuts"]["ess_bulk"],
        "figures": sorted(Path(f["file"]).name for f in results["figures"]),
        "tables": sorted(t["id"] for t in results["tables"]),
        "page": (out / "index.html").exists() and (out / "report.md").exists(),
    }


def _khat_tol(k, tail_draws_a: int, tail_draws_b: int) -> np.ndarray:
    """Z sampling sds of a k-hat from the fewer of the two legs' tail draws (their ArviZ rules may differ by one)."""
    return Z * (1 + np.abs(np.asarray(k, dtype=float))) / np.sqrt(min(tail_draws_a, tail_draws_b))


def _within(a, b, se_a, se_b) -> bool:
    a, b, se_a, se_b = (np.asarray(v, dtype=float) for v in (a, b, se_a, se_b))
    return bool(np.all(np.abs(a - b) <= Z * np.sqrt(se_a**2 + se_b**2)))


@pytest.fixture(scope="module")
def legs(tmp_path_factory):
    want = json.loads(FIXTURE.read_text())
    if _torch_release() != want["torch"]:
        pytest.skip(f"recorded with torch {want['torch']}, this is {_torch_release()}: a different model is trained")
    return want, measure(tmp_path_factory.mktemp("cross"))


def test_demo_numbers_match_the_recorded_leg(legs):
    want, got = legs
    a, b = got["demo"], want["demo"]
    assert _within(a["elbo"], b["elbo"], a["elbo_se"], b["elbo_se"]), (a, b)
    assert _within(a["log_likelihood"], b["log_likelihood"], a["log_likelihood_se"], b["log_likelihood_se"]), (a, b)
    for key in ("iw_khat_max", "iw_khat_median"):
        assert abs(a[key] - b[key]) <= _khat_tol(b[key], got["iw_tail_draws"], want["iw_tail_draws"]), (key, a[key], b[key])


def test_diagnose_numbers_match_the_recorded_leg(legs):
    want, got = legs
    assert _within(got["q_elbo"], want["q_elbo"], got["q_elbo_se"], want["q_elbo_se"])
    assert _within(got["gap"], want["gap"], got["gap_se"], want["gap_se"])
    k_got, k_want = np.asarray(got["khat"]), np.asarray(want["khat"])
    assert np.all(np.abs(k_got - k_want) <= _khat_tol(k_want, got["tail_draws"], want["tail_draws"])), (k_got, k_want)
    se = lambda leg: np.asarray(leg["ref_sd"]) / np.sqrt(np.asarray(leg["ref_ess"]))
    assert _within(got["ref_mean"], want["ref_mean"], se(got), se(want))


def test_report_has_the_same_figures_and_tables(legs):
    want, got = legs
    assert got["page"] and want["page"]
    assert got["figures"] == want["figures"] and "forest.png" in got["figures"]
    assert got["tables"] == want["tables"] and "loo" in got["tables"]


def _record():
    assert not arviz_compat.is_v1(), "record under ArviZ 0.x (Python 3.11)"
    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.write_text(json.dumps(measure(Path(tmp)), indent=1) + "\n")


if __name__ == "__main__" and "--record" in sys.argv:
    _record()
