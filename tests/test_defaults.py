"""Defaults that say what they do: progress where there is no terminal, the end of ``train --no-plots``, ``evaluate``
at one importance draw a point, and which arrays a diagnosis compares to tell whether runs saw the same points."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.config import config_from_dict
from pyro_vae.diagnostics.points import data_difference
from pyro_vae.diagnostics.settings import DiagnoseSettings, Subject
from pyro_vae.progress import ProgressLines, progress_bar


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# -- progress without a terminal -------------------------------------------------------------------------


def _epochs(seconds_each: float, epochs: int = 10, steps: int = 5):
    """Lines an epoch loop writes (steps updated, a summary refreshed at each epoch's end), epochs this long."""
    clock, out = _Clock(), io.StringIO()
    bar = ProgressLines(epochs * steps, desc="training", unit="step", lines_at="refresh", file=out, clock=clock)
    for e in range(epochs):
        for _ in range(steps):
            clock.now += seconds_each / steps
            bar.update(1)
            bar.set_postfix_str(f"epoch {e + 1}/{epochs}", refresh=False)  # per step: never a line
        bar.set_postfix_str(f"epoch {e + 1}/{epochs} loss 1.5", refresh=True)
    bar.close()
    return out.getvalue().splitlines()


def test_training_progress_lines_come_per_epoch_or_every_10_s_whichever_is_rarer():
    short = _epochs(3.0)  # 3 s epochs: a line at the first epoch end 10 s after the last line, then the last
    assert short == ["training: 20/50 steps (40%), 12 s, about 18 s left; epoch 4/10 loss 1.5",
                     "training: 40/50 steps (80%), 24 s, about 6 s left; epoch 8/10 loss 1.5",
                     "training: 50/50 steps (100%) in 30 s; epoch 10/10 loss 1.5"]
    long = _epochs(25.0)  # epochs longer than 10 s: one line per epoch, none in between
    assert len(long) == 10 and [line.split(";")[1] for line in long] == [
        f" epoch {e}/10 loss 1.5" for e in range(1, 11)]
    assert long[-1].startswith("training: 50/50 steps (100%) in 4 min 10 s")


def test_evaluation_progress_lines_come_every_10_s_and_none_for_a_short_evaluation():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressLines(1000, desc="evaluating", unit="point", leave=False, file=out, clock=clock)
    for _ in range(10):
        clock.now += 4.0  # a chunk of 100 points every 4 s
        bar.update(100)
    bar.close()
    assert out.getvalue().splitlines() == ["evaluating: 300/1000 points (30%), 12 s, about 28 s left",
                                           "evaluating: 600/1000 points (60%), 24 s, about 16 s left",
                                           "evaluating: 900/1000 points (90%), 36 s, about 4 s left"]
    quick, out = _Clock(), io.StringIO()
    bar = ProgressLines(1000, desc="evaluating", unit="point", leave=False, file=out, clock=quick)
    bar.update(1000)
    bar.close()
    assert out.getvalue() == ""  # done within 10 s, and an evaluation leaves no last line


def test_progress_is_lines_off_a_terminal_a_bar_on_one_and_nothing_when_quiet(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a log file: not a terminal
    assert isinstance(progress_bar(10, None, unit="step", what="training"), ProgressLines)
    assert progress_bar(10, False) is None and progress_bar(0, None) is None

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress_bar(10, None, unit="step")
    assert not isinstance(bar, ProgressLines) and hasattr(bar, "format_meter")  # the terminal keeps its tqdm bar
    bar.close()


# -- a run from the command line: its note, its progress, its last line, and evaluate at K = 1 ----------------

HIERARCHY = {"data": {"source": "digits", "binarize": "dynamic"},
             "model": {"guide_structure": "structured", "nodes": {
                 "z2": {"dim": 2, "encoder": {"hidden": [8]}},
                 "z1": {"dim": 2, "parents": ["z2"], "net": {"hidden": [8]}, "encoder": {"hidden": [8]}},
                 "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z1"], "net": {"hidden": [8]}}}},
             "train": {"epochs": 1, "batch_size": 256}}


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """A hierarchy trained by ``pyro-vae train --no-plots`` with stderr a pipe; (its folder, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("defaults")
    toml = folder / "hierarchy.toml"
    toml.write_text(_toml(HIERARCHY))
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", out)
        mp.setattr("sys.stderr", err)
        code = main(["train", str(toml), "--out", str(folder / "run"), "--no-plots", "--iw-samples", "1"])
    assert code == 0, err.getvalue()
    return folder / "run", out.getvalue(), err.getvalue()


def _toml(d: dict) -> str:
    return config_from_dict(d).to_toml()


def test_a_piped_train_says_its_estimator_once_shows_progress_and_ends_saying_no_plots(piped_run):
    run, out, err = piped_run
    notes = [line for line in err.splitlines() if "train.elbo = 'auto'" in line]
    assert len(notes) == 1 and "Trace_ELBO" in notes[0] and "'z1' (its prior reads 'z2'" in notes[0], err
    assert "warning" not in err.lower()  # the default mixes no KLs, so it has nothing to warn about
    assert [line for line in err.splitlines() if line.startswith("training: ")][-1].startswith(
        "training: 7/7 steps (100%) in ")  # 1617 training digits in batches of 256
    assert 'elbo = "trace"' in (run / "config.toml").read_text()  # the run names the estimator it trained with
    last = out.strip().splitlines()[-2]
    assert last.endswith("(training and evaluation; --no-plots: no plots written)"), last
    assert "plots" not in last.split("(")[0] and not (run / "plots").exists()


def test_quiet_silences_the_progress_lines(piped_run, capsys):
    run, _, _ = piped_run
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--quiet", "--no-plots",
                 "--iw-samples", "1"]) == 0
    err = capsys.readouterr().err
    assert "training: " not in err and "evaluating: " not in err, err


def test_evaluate_at_one_draw_a_point_gives_a_between_point_se_and_no_khat(piped_run, capsys):
    run, _, _ = piped_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "1", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["log_likelihood_se"] is None  # one draw a point cannot estimate its own Monte Carlo error
    assert {m[k] for k in ("iw_khat_max", "iw_khat_median", "iw_khat_above_0_7")} == {None}
    assert m["iw_khat_note"] == "no PSIS k-hat at K = 1: one importance draw a point has no tail to fit"
    assert "one-draw estimate of the ELBO" in m["log_likelihood_warning"]
    # the between-point s.e., by hand from the per-point values
    assert main(["evaluate", str(run), "--iw-samples", "1", "--per-point", str(run.parent / "points.csv")]) == 0
    text = capsys.readouterr().out
    rows = (run.parent / "points.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = torch.tensor([float(r.split(",")[header.index("log_likelihood")]) for r in rows[1:]], dtype=torch.float64)
    se = float(values.std() / math.sqrt(len(values)))
    assert m["log_likelihood_between_point_se"] == pytest.approx(se, rel=1e-9)
    line = next(line for line in text.splitlines() if line.strip().startswith("log p(x) (importance sampled)"))
    assert f"± {se:.3f} (between-point s.e., K = 1)" in line and "ESS" not in line, line
    assert "PSIS k-hat" not in text and "(MC s.e., K = 1" not in text


# -- whether runs were diagnosed on the same points: the arrays they share ------------------------------------


def _model(nodes: dict):
    return pv.build_model(config_from_dict({"model": {"nodes": nodes}}).model, 64, image_shape=(8, 8))


ONE = {"z": {"dim": 2, "encoder": {"hidden": [4]}},
       "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z"], "net": {"hidden": [4]}}}
CONDITIONAL = {"z": {"dim": 2, "encoder": {"hidden": [4]}}, "y": {"role": "input", "family": "categorical", "dim": 10},
               "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z", "y"], "net": {"hidden": [4]}}}


def _points(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 64, generator=g).round(), torch.arange(n) % 10


def test_runs_given_the_same_rows_as_different_arrays_were_diagnosed_on_the_same_points():
    x, y = _points()
    subjects = [Subject("vae", _model(ONE), x, list(range(4))),
                Subject("conditional", _model(CONDITIONAL), {"x": x, "y": y}, list(range(4))),
                Subject("other-labels", _model(CONDITIONAL), {"x": x.clone(), "y": y.clone()}, list(range(4)))]
    assert data_difference(subjects) is None


def test_a_difference_in_a_shared_array_is_said_precisely():
    x, y = _points()
    x2, y2 = x.clone(), y.clone()
    x2[2] = 1 - x2[2]
    y2[[1, 3]] = 9 - y2[[1, 3]]
    subjects = [Subject("a", _model(CONDITIONAL), {"x": x, "y": y}, list(range(4))),
                Subject("b", _model(ONE), x2, list(range(4))),
                Subject("c", _model(CONDITIONAL), {"x": x, "y": y2}, list(range(4))),
                Subject("d", _model(ONE), x[:3], list(range(3)))]
    assert data_difference(subjects) == (
        "run 'b' against 'a': the observations differ in 1 of 4 points (first: point 2); "
        "run 'c' against 'a': y differs in 2 of 4 points (first: point 1); "
        "run 'd' against 'a': 3 points against 4")


def test_a_diagnosis_notes_different_points_only_when_a_shared_array_differs():
    x, y = _points()
    x2 = x.clone()
    x2[0] = 1 - x2[0]
    settings = DiagnoseSettings(points=4, reference="none", draws=20, local_steps=0, sbc_sims=0)
    same = pv.diagnose([Subject("vae", _model(ONE), x, list(range(4))),
                        Subject("conditional", _model(CONDITIONAL), {"x": x, "y": y}, list(range(4)))],
                       settings, progress=False)
    assert not [w for w in same.warnings if "different data points" in w], same.warnings
    other = pv.diagnose([Subject("vae", _model(ONE), x, list(range(4))),
                         Subject("conditional", _model(CONDITIONAL), {"x": x2, "y": y}, list(range(4)))],
                        settings, progress=False)
    assert ("the runs were diagnosed on different data points (run 'conditional' against 'vae': the observations "
            "differ in 1 of 4 points (first: point 0)): compare each run with its own reference only") in other.warnings


def test_a_graph_with_a_discrete_node_is_accepted_under_the_default_and_summed_exactly():
    cfg = config_from_dict({"data": {"source": "digits", "binarize": "dynamic"}, "model": {"nodes": {
        "z": {"family": "mixture", "components": 3, "dim": 2, "encoder": {"hidden": [4]}},
        "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z"], "net": {"hidden": [4]}}}}})
    pv.check_config(cfg)  # the default "auto" sums the component: no "set train.elbo = enum" refusal
    with pytest.raises(pv.PyroVAEError, match="train.elbo = 'meanfield' cannot sum its mixture component"):
        pv.check_config(cfg.replace(train=pv.TrainConfig(elbo="meanfield")))
    said = []
    trainer = pv.Trainer(pv.build_model(cfg.model, 64, (8, 8)), cfg.train, log=said.append)
    x, _ = _points(8)
    trainer.setup(x, 8)
    assert trainer.config.elbo == "enum" and "'z_component' (discrete, in the model alone)" in said[0], said
