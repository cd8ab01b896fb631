"""A chain's evaluation said in its own terms: numbers per sequence, active units of real steps only.

- the log p(x) warning and k-hat note of a chain count sequences, not points, and a model without steps still
  counts points;
- active units of a chain count each (step, dim) over the sequences that reach the step: padding the same
  sequences to 2T changes neither the count nor what it is counted among, and each step's variance is the one
  over the sequences whose length reaches it (read off the lengths, not off the evaluation's masks).
"""

from __future__ import annotations

import dataclasses
import math

import torch

import pyro_vae as pv
from pyro_vae.cli import _format_metrics
from pyro_vae.config import config_from_dict


def _chain(seed=0):
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": "gated", "hidden": [8]},
                   "rnn": {"type": "gru", "hidden": 8}, "encoder": {"hidden": [8]}},
             "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                   "net": {"hidden": [8]}}}
    spec = config_from_dict({"model": {"nodes": nodes}, "train": {"seed": seed}}).model
    torch.manual_seed(seed)
    return pv.build_model(spec, 3)


def _sequences(n=12, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 2, 3, 5, 6, 1, 4, 2, 6, 3, 5, 4])[:n]
    x = 2 * torch.randn(n, t, 3, generator=g) * (torch.arange(t) < lengths[:, None]).unsqueeze(-1)
    return {"x": x, "lengths": lengths}


def _padded(data):
    return {k: (torch.cat([v, torch.full_like(v, 5.0)], dim=1) if v.dim() == 3 else v) for k, v in data.items()}


def test_a_chains_warnings_count_sequences():
    model = _chain()
    ev = pv.evaluate_points(model, _sequences(), iw_samples=30, seed=0, prior_samples=0)
    assert ev.quantities is not None and ev.quantities.unit == "sequence"
    warning = ev.log_likelihood_warning()
    assert warning is not None  # an untrained guide over 6 steps: its weights are heavy-tailed
    assert "of 12 sequences" in warning and "points" not in warning
    text = _format_metrics(ev.summary())
    assert "12 sequences above 0.7" in text and " points" not in text
    few = dataclasses.replace(ev, iw_samples=3)  # the note of too few draws for PSIS, in the same words
    assert "draws a sequence" in few.khat_note()


def test_a_model_without_steps_still_counts_points():
    torch.manual_seed(0)
    model = pv.build_model(config_from_dict({"model": {"latent_dim": 2, "likelihood": "normal"}}).model, 3)
    ev = pv.evaluate_points(model, torch.randn(10, 3) * 3, iw_samples=3, seed=0, prior_samples=0)
    assert ev.quantities.unit == "point" and "draws a point" in ev.khat_note()
    assert ev.summary()["active_units_of"] == 2


def test_active_units_count_only_the_steps_a_sequence_reaches():
    model = _chain()
    data = _sequences()
    a = pv.evaluate_points(model, data, iw_samples=None, elbo_samples=4, seed=0, prior_samples=0)
    b = pv.evaluate_points(model, _padded(data), iw_samples=None, elbo_samples=4, seed=0, prior_samples=0)
    lengths = data["lengths"]
    # steps reached by 2+ sequences: 1..6 here (step 6 by three), each with 2 dims
    reached = sum(int((lengths >= t).sum()) >= 2 for t in range(1, 7))
    for ev, steps in ((a, 6), (b, 12)):
        s = ev.summary()
        assert s["latent_dims"] == 2 * steps
        assert s["active_units_of"] == 2 * reached  # the padded steps T+1..2T are counted among nothing
        assert "sequences reaching step t" in s["active_units_rule"]
        var = ev.posterior_mean_variance()
        for t in range(1, steps + 1):
            rows = lengths >= t
            for j in range(2):
                col = ev.latent_names.index(f"z_{t}[{j}]")
                if int(rows.sum()) < 2:
                    assert math.isnan(float(var[col]))
                else:
                    expect = ev.posterior_mean[rows, col].var(unbiased=True)
                    assert torch.allclose(var[col], expect, rtol=1e-9, atol=1e-12)
    # the old count, over every padded step of every sequence, would have counted the padding's dims too
    naive = int((b.posterior_mean.var(0) > 0.01).sum())
    assert naive > b.summary()["active_units"]
    nodes = {n.name: n for n in b.nodes()}
    assert nodes["z_1"].active_of == 2 and nodes["z_7"].active_of == 0 and nodes["z_7"].active_units == 0
    text = _format_metrics(b.summary())
    assert f"of {2 * reached} (per step and dim" in text


# -- a program that masks its padded steps with poutine.mask (examples/own_sequence/dmm_mask.py) -------------------

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pytest  # noqa: E402

from pyro_vae.infer.layout import build_layout, masked_coordinates  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_sequence"


def _load(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _programs():
    """(dmm.py's DMM, dmm_mask.py's DMM with the same weights, the data helpers): .mask() and poutine.mask."""
    sys.path.insert(0, str(EXAMPLE))  # dmm_mask.py imports dmm.py beside it, as a program's folder would
    try:
        masked = _load("dmm_poutine_mask_for_tests", EXAMPLE / "dmm_mask.py")
    finally:
        sys.path.remove(str(EXAMPLE))
    plain = _load("dmm_plain_for_poutine_tests", EXAMPLE / "dmm.py")
    data = _load("dmm_data_for_poutine_tests", EXAMPLE / "make_data.py")
    pyro.clear_param_store()
    torch.manual_seed(0)
    a = plain.DMM(input_dim=10, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8)
    b = masked.DMM(input_dim=10, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8)
    b.load_state_dict(a.state_dict())
    return a, b, data


def _dmm_arrays(data, seqs, pad):
    return {k: torch.as_tensor(v) for k, v in data.dmm_arrays(seqs, pad_to=pad).items()}


def test_poutine_mask_counts_for_nothing_as_mask_does():
    plain, masked, data = _programs()
    seqs = data.stand_in(4, seed=3, notes=10, min_len=3, max_len=6, chords=3)
    lengths = np.array([len(s) for s in seqs])
    for pad in (9,):  # lengths 3 to 6, padded: the slow test below pads the same sequences to T and 2T
        x = _dmm_arrays(data, seqs, pad)
        a = pv.evaluate_points(plain, x, iw_samples=None, elbo_samples=10, seed=0, prior_samples=0)
        b = pv.evaluate_points(masked, x, iw_samples=None, elbo_samples=10, seed=0, prior_samples=0)
        # the same weights and draws: the same ELBO, term by term, however the padding is masked (unmasked, each
        # padded step's Bernoulli and KL terms would add to poutine.mask's)
        assert torch.allclose(a.elbo, b.elbo, atol=1e-4, rtol=0), (pad, a.elbo, b.elbo)
        assert a.quantities.unit == b.quantities.unit == "sequence"
        # and the coordinates diagnostics leave out are the padded steps, for both
        for model in (plain, masked):
            layout = build_layout(model, x)
            m = masked_coordinates(model, x, layout)
            steps = np.repeat(np.arange(1, pad + 1), 3)
            np.testing.assert_array_equal(m, steps[None, :] > lengths[:, None])


@pytest.mark.slow
def test_poutine_mask_padding_changes_no_amortization_gap():
    """diagnose's per-point q mirrors poutine.mask as it mirrors .mask(): every local ELBO of the 0/1 notes is
    negative and the gap is the same padded to T and to 2T (unmirrored, the local q widened each padded
    coordinate for a positive ELBO and a gap growing with the padding: +11 to +22 nats, gaps of 42 to 47)."""
    _, model, data = _programs()
    seqs = data.stand_in(2, seed=3, notes=10, min_len=3, max_len=6, chords=3)
    settings = pv.DiagnoseSettings(points=2, draws=30, reference="none", sbc_sims=0, local_steps=25)
    gaps = []
    for pad in (6, 12):
        d = pv.diagnose([pv.Subject("dmm", model, _dmm_arrays(data, seqs, pad), list(range(2)))], settings)
        local = d.runs[0].local
        assert (local.elbo < 0).all()
        gaps.append((local.gap, local.gap_se))
    (g1, s1), (g2, s2) = gaps
    assert (np.abs(g1 - g2) < 4 * np.sqrt(s1 ** 2 + s2 ** 2) + 0.5).all()


# -- torchrun: sequences sharded by rank, each with its own length (tests/seq_dist_worker.py) ----------------------

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ_WORKER = Path(__file__).with_name("seq_dist_worker.py")


def _torchrun_env(rank: int, world: int, port: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world)}


@pytest.mark.slow
def test_two_processes_see_every_sequence_once_an_epoch_with_its_own_length(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(SEQ_WORKER), str(tmp_path)], env=_torchrun_env(r, 2, port),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    worker = _load("seq_dist_worker_for_tests", SEQ_WORKER)
    lengths = worker.sequences()["lengths"].tolist()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in range(2):
        rows = []
        for r in ranks:
            steps = [(ids, lens) for e, ids, lens in r["seen"] if e == epoch]
            assert len(steps) == 4  # 30 rows in global batches of 8: 8, 8, 8, 6, each split between the ranks
            for ids, lens in steps:
                assert lens == [lengths[i] for i in ids]  # each sequence's length travels with it
                rows += ids
        assert sorted(rows) == list(range(worker.ROWS))  # every sequence once an epoch, on one rank or the other
    # the ranks split each global batch: neither saw a sequence the other saw in the same step
    for (e0, a, _), (e1, b, _) in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert e0 == e1 and not set(a) & set(b)


# -- figures of sequences: rolls for many dimensions, whole steps -------------------------------------------------

from pyro_vae.figures import sequences as sequence_figures  # noqa: E402


def _drawn(monkeypatch):
    figs = []
    monkeypatch.setattr(sequence_figures, "save_figure", lambda fig, path: figs.append(fig) or path)
    return figs


def _whole_step_ticks(ax) -> bool:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def test_a_chorale_is_drawn_as_rolls_and_steps_are_whole(monkeypatch, tmp_path):
    figs = _drawn(monkeypatch)
    g = np.random.default_rng(0)
    x = np.zeros((3, 12, 88))
    x[:, :, [40, 44, 47]] = 1.0  # three notes of 88 held: lines of the first four notes would be flat zeros
    recon = np.clip(x[None] * 0.8 + 0.05 * g.random((8, 3, 12, 88)), 0, 1)
    z = g.normal(size=(8, 3, 12, 2))
    sequence_figures.save_sequence_fit(x, np.array([12, 7, 5]), recon, z, tmp_path / "fit.png")
    fig = figs[-1]
    rolls = [ax for ax in fig.axes if ax.images]
    assert len(rolls) == 6  # observed and E[x_t | z_t] for each of the 3 sequences
    # the rolls show the notes in use, by their own numbers, and each sequence only to its length
    assert [t.get_text() for t in rolls[0].get_yticklabels()] == ["40", "44", "47"]
    assert rolls[1].images[0].get_array().shape == (3, 7)  # axes row by row: sequence 1, observed
    steps = [ax for ax in fig.axes if ax.get_xlabel() == "step t"]
    assert steps and all(_whole_step_ticks(ax) for ax in steps)
    sequence_figures.save_forecast(x[0, :5], recon[:, 0, :5], recon[:, 0, 5:], tmp_path / "forecast.png", "forecast")
    assert sum(bool(ax.images) for ax in figs[-1].axes) == 2  # the prefix and forecast as rolls, too
    # a few dimensions stay lines, on whole steps too
    sequence_figures.save_sequence_fit(x[:, :, :3] + g.normal(size=(3, 12, 3)), np.array([12, 7, 5]),
                                       recon[..., :3], z, tmp_path / "lines.png")
    assert not any(ax.images for ax in figs[-1].axes)
    assert all(_whole_step_ticks(ax) for ax in figs[-1].axes if ax.get_xlabel() == "step t")


def test_diagnose_and_report_words_follow_the_rows():
    from pyro_vae.evaluation.steps import row_unit
    assert row_unit([f"z_{t}[{j}]" for t in range(1, 5) for j in range(2)]) == "sequence"
    assert row_unit(["z_1", "z_2", "z_3"]) == "sequence"
    assert row_unit(["z[0]", "z[1]", "z1[0]", "z2[0]"]) == "point"  # two numbered layers are no chain


# -- step capture of a chain under train.capture = "auto" -----------------------------------------------------------

from pyro_vae.errors import CaptureWarning  # noqa: E402
from pyro_vae.training.capture import CHAIN_CAPTURE_MIN_STEPS, why_not_capturable  # noqa: E402


def test_auto_capture_of_a_chain_follows_the_planned_steps():
    model = _chain()
    data = _sequences()
    # a short run (2 epochs of 3 batches): eager, and said once, with the rule and the way to override it
    with pytest.warns(CaptureWarning, match=r"plans 6 steps, fewer than the 400 .*train.capture = 'on'"):
        trainer = pv.fit(model, data, config=pv.TrainConfig(epochs=2, batch_size=4, seed=0, eval_every=10 ** 6),
                         progress=False)
    assert trainer.engine_name == "eager" and not trainer.captured_shapes
    # the same trainer planning a long run passes the rule (what is left is the generic checks: none fails here)
    assert "short run" in why_not_capturable(trainer, "auto")
    trainer.config = dataclasses.replace(trainer.config, epochs=2 + -(-CHAIN_CAPTURE_MIN_STEPS // 3))
    assert why_not_capturable(trainer, "auto") is None
    assert why_not_capturable(trainer, "on") is None
