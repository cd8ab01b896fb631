"""Odd names and sizes: node names that clash with the compiled program, sizes beyond memory, labels that are
never given, signals during the final evaluation, and the residual bad inputs (long --out names, IDX test images
of another size, a diagnostics.json that is not a table, a full disk while plotting).

Each CLI case ends with exit status 2 (or 128 + N for signal N), one line on stderr, no traceback, and nothing
written where the input was bad.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyro_vae as pv
from pyro_vae.data import sizes
import pyro_vae.figures.style as style
from pyro_vae.cli import main
from pyro_vae.config import config_from_dict
from pyro_vae.evaluation.streaming import Pace
from pyro_vae.models import check_size
from pyro_vae.report.figures import Figures, fig_khat
from pyro_vae.store.files import write_error
from pyro_vae.training.signals import StopSignals

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "--no-plots", "--iw-samples", "2"]


def _spec(latent: str = "z", **extra) -> dict:
    """A tiny graph on the digits: a latent ``latent`` -> x."""
    nodes = {latent: {"dim": 2, "encoder": {"hidden": [8]}, **extra},
             "x": {"role": "observed", "likelihood": "bernoulli", "parents": [latent], "net": {"hidden": [8]}}}
    return {"data": {"source": "digits"}, "model": {"nodes": nodes}, "train": {"epochs": 1, "batch_size": 100}}


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(u) for u in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(u)}" for k, u in v.items()) + " }"
    return repr(v)


def _toml(spec: dict) -> str:
    lines = []
    for section, body in spec.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if k != "nodes"]
        for node, fields in body.get("nodes", {}).items():
            lines.append(f"[{section}.nodes.{node}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def _refused(capsys, *args) -> str:
    """The one error line of a CLI call that must fail with exit status 2."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), err
    return lines[0]


# -- 1. node names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("training", ["nn.Module.training", "rename the node", "'training_node'"]),
    ("forward", ["nn.Module.forward"]),
    ("state_dict", ["nn.Module.state_dict"]),
    ("parameters", ["nn.Module.parameters"]),
    ("keys", ["nn.ModuleDict.keys"]),
    ("_modules", ["starting with _", "'modules_node'"]),
    ("__init__", ["starting with _", "'init_node'"]),
    ("data", ["the data plate", "'data_node'"]),
])
def test_a_node_name_that_clashes_is_refused_in_one_line(name, words, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(_toml(_spec(name)))
    line = _refused(capsys, "train", tmp_path / "bad.toml", "--out", tmp_path / "run", *FAST)
    for w in [f"model.nodes.{name}", "clashes"] + words:
        assert w in line, (w, line)
    assert os.listdir(tmp_path) == ["bad.toml"]


def test_a_node_named_after_a_mixture_component_or_a_classifier_term_is_refused():
    spec = _spec("z", family="mixture", components=3)
    spec["model"]["nodes"]["z_component"] = {"dim": 2, "encoder": {"hidden": [8]}}
    spec["model"]["nodes"]["x"]["parents"] = ["z", "z_component"]
    spec["train"]["elbo"] = "enum"
    with pytest.raises(pv.PyroVAEError, match="model.nodes.z_component: .*the component site of the mixture node 'z'"):
        pv.check_config(config_from_dict(spec))
    # the same name beside a normal z generates no such site, and is a node like any other
    spec["model"]["nodes"]["z"] = {"dim": 2, "encoder": {"hidden": [8]}}
    pv.check_config(config_from_dict(spec))


def test_the_suggested_rename_trains(tmp_path, capsys):
    (tmp_path / "good.toml").write_text(_toml(_spec("training_node")))
    assert main(["train", str(tmp_path / "good.toml"), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").exists()


# -- 2. sizes ----------------------------------------------------------------------------------------


def test_a_float_size_says_it_must_be_an_integer():
    spec = _spec("z")
    spec["model"]["nodes"]["z"]["dim"] = 1e9
    with pytest.raises(pv.PyroVAEError, match=r"model.nodes.z.dim: expected an integer, got 1000000000.0 .*write "
                                              r"1000000000\)"):
        config_from_dict(spec)


def test_a_huge_dim_is_refused_for_memory_not_as_below_one(monkeypatch):
    spec = _spec("z")
    spec["model"]["nodes"]["z"]["dim"] = 10**15  # past any machine: refused before anything is built
    with pytest.raises(pv.PyroVAEError, match=r"model.nodes.z: dim must be <= 2\*\*40: .* cannot fit in memory") as e:
        pv.check_config(config_from_dict(spec))
    assert ">= 1" not in str(e.value)
    spec["model"]["nodes"]["z"]["dim"] = 10**9  # may be counted: the count says why it does not fit
    cfg = config_from_dict(spec)
    monkeypatch.setattr(sizes, "available_memory_bytes", lambda: 2**30)
    with pytest.raises(pv.PyroVAEError, match=r"mostly from model.nodes.z.encoder .*GiB, more than this machine's 1 GiB"):
        pv.check_config(cfg)  # before any data is read: even on one data column its parameters cannot fit
    with pytest.raises(pv.PyroVAEError, match=r"mostly from model.nodes.z.encoder .*GiB, more than this "
                                              r"machine's 1 GiB available"):
        check_size(cfg.model, 64, (8, 8), memory=2**30, batch_size=100)


def test_mixture_components_are_counted_with_a_steps_activations():
    spec = _spec("z", family="mixture", components=100_000_000)
    spec["train"]["elbo"] = "enum"
    cfg = config_from_dict(spec)
    pv.check_config(cfg)
    # 4e8 parameters (means and scales) x 16 bytes = 6 GiB fit in 8 GiB; the enumerated step does not:
    # 128 rows x 1e8 components x 2 dims x 2 (means and scales gathered) values x 8 bytes = 381 GiB
    check_size(cfg.model, 64, (8, 8), memory=8 * 2**30)
    with pytest.raises(pv.PyroVAEError, match=r"400,001,\d+ parameters, mostly from model.nodes.z.components .*"
                                              r"a training step's 51,200,\d+,\d+ activations \(a batch of 128 rows, "
                                              r"mostly from model.nodes.z.components\).*8 GiB available: use smaller "
                                              r"sizes or a smaller train.batch_size"):
        check_size(cfg.model, 64, (8, 8), memory=8 * 2**30, batch_size=128)


# -- 5. a label that is never given ------------------------------------------------------------------


def _labelled_graph(tmp_path, labels) -> Path:
    from sklearn.datasets import load_digits

    x = (load_digits().data[:300] / 16 > 0.5).astype(np.float32)
    np.savez(tmp_path / "xy.npz", x=x, y=labels(300))
    spec = {"data": {"train": str(tmp_path / "xy.npz"), "arrays": ["x", "y"]},
            "model": {"nodes": {
                "z": {"dim": 2, "encoder": {"hidden": [8]}},
                "y": {"role": "partial", "family": "categorical", "dim": 10, "parents": ["z"],
                      "net": {"hidden": [8]}, "encoder": {"hidden": [8]}},
                "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z", "y"], "net": {"hidden": [8]}}}},
            "train": {"elbo": "enum", "epochs": 1, "batch_size": 50}}
    (tmp_path / "ss.toml").write_text(_toml(spec))
    return tmp_path / "ss.toml"


def test_a_label_missing_on_every_row_under_a_parent_that_reads_it_is_one_line(tmp_path, capsys):
    toml = _labelled_graph(tmp_path, lambda n: np.full(n, -1, dtype=np.int64))
    line = _refused(capsys, "train", toml, "--out", tmp_path / "run", *FAST)
    for w in ["model.nodes.y", "-1 (missing) on every row", "its parent z is drawn by the guide given y",
              'model.guide_structure = "mean-field"']:
        assert w in line, (w, line)
    assert "Enumeration dim conflict" not in line and not (tmp_path / "run").exists()
    # the fix the line names trains
    rc = main(["train", str(toml), "--out", str(tmp_path / "run"), "--set", 'model.guide_structure="mean-field"',
               *FAST])
    assert rc == 0, capsys.readouterr().err


def test_a_discrete_latent_under_a_parent_that_reads_it_is_refused_at_spec_check():
    spec = _spec("z")
    spec["model"]["nodes"]["c"] = {"family": "categorical", "dim": 3, "parents": ["z"], "net": {"hidden": [8]},
                                   "encoder": {"hidden": [8]}}
    spec["model"]["nodes"]["x"]["parents"] = ["z", "c"]
    spec["train"]["elbo"] = "enum"
    with pytest.raises(pv.PyroVAEError, match=r"model.nodes.c: it is a latent, summed out on every row, but its "
                                              r"parent z is drawn by the guide given c"):
        pv.check_config(config_from_dict(spec))
    spec["model"]["guide_structure"] = "mean-field"
    pv.check_config(config_from_dict(spec))


def test_a_label_given_on_every_row_still_trains_under_such_a_parent(tmp_path, capsys):
    toml = _labelled_graph(tmp_path, lambda n: np.arange(n, dtype=np.int64) % 10)
    rc = main(["train", str(toml), "--out", str(tmp_path / "run"), *FAST])
    assert rc == 0, capsys.readouterr().err


# -- 6. the k-hat figure with too few draws ----------------------------------------------------------


def test_the_khat_figure_draws_points_without_a_finite_khat(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(Figures, "save", lambda self, fig, *a, **k: saved.append(fig))

    class Run:
        def __init__(self, values):
            self.khat = type("K", (), {"values": values})()
            self.points, self.name = list(range(len(values))), "r"
            self.latent_labels = ["z[0]"]

    for values in ([float("inf"), float("nan")], [0.3, float("inf")]):
        fig_khat(Figures(tmp_path), type("D", (), {"runs": [Run(values)]})())
        ax = saved[-1].axes[0]
        assert all(np.isfinite(ax.get_ylim()))
        assert any("without a finite k-hat" in t.get_text() for t in ax.texts)


# -- 3. an evaluation's pace -------------------------------------------------------------------------


def test_a_long_evaluation_says_how_long_and_how_far(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("pyro_vae.evaluation.streaming.time.perf_counter", lambda: clock[0])
    lines = []
    pace = Pace(1000, "evaluating 10 points", lines.append)
    for _ in range(10):
        clock[0] += 20.0  # 10 draws per 20 s: 2000 s in all
        pace.add(10)
    assert lines[0] == "evaluating 10 points: about 33 min in all (1,000 draws)"
    # a line every 40 s (at least 30 s apart): 60, 100, 140 and 180 s
    assert lines[1:] == [f"evaluating 10 points: {p}% done, about {m} min left" for p, m in
                         ((3, 32), (5, 32), (7, 31), (9, 30))]
    quick = []
    pace = Pace(1000, "quick", quick.append)
    for _ in range(100):
        clock[0] += 0.01
        pace.add(10)
    assert quick == []  # a short evaluation says nothing


# -- 4. signals --------------------------------------------------------------------------------------


def test_a_second_signal_during_a_checkpoint_write_waits_for_the_write():
    signals = StopSignals()
    with signals.installed():
        os.kill(os.getpid(), signal.SIGINT)  # the first: stop after the step
        assert signals.signum == signal.SIGINT
        written = []
        with pytest.raises(KeyboardInterrupt):
            with signals.writing():
                os.kill(os.getpid(), signal.SIGINT)  # the second, mid-write: held until the write is whole
                written.append(True)
        assert written == [True]


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_releases_the_lock_and_resumes(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pyro_vae", "train", "--set", "train.epochs=1", "--out", str(out), "--no-plots"]
    proc = subprocess.Popen(cmd + ["--iw-samples", "20000"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = ""
    for line in proc.stderr:  # the final evaluation has begun once it says so
        err += line
        if line.startswith("evaluating on"):
            break
    assert err.splitlines()[-1].startswith("evaluating on"), err  # not the end of a run that was never stopped
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    err += proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pyro-vae:")]
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: interrupted; state saved to"), err
    assert not (out / ".lock").exists() and (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    done = subprocess.run(cmd[:4] + ["--resume", str(out), "--iw-samples", "2", "--no-plots", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").exists()


# -- 7. residual bad inputs --------------------------------------------------------------------------


def test_an_out_name_too_long_for_the_file_system_writes_nothing(tmp_path, capsys):
    line = _refused(capsys, "train", "--out", tmp_path / "run" / ("a" * 300), *FAST)
    assert "is 300 bytes long, more than the file system allows" in line and "choose a shorter --out" in line
    assert os.listdir(tmp_path) == []


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_idx_test_images_of_another_size_write_nothing(tmp_path, capsys):
    idx = tmp_path / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n, side in (("train", 300, 28), ("t10k", 50, 14)):
        _write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, side, side)))
        _write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    line = _refused(capsys, "train", "--set", 'data.source="mnist"', "--set", f'data.path="{idx}"',
                    "--out", tmp_path / "run", *FAST)
    assert "the train images are 28x28 but the test (t10k) images 14x14" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_report_on_a_diagnostics_json_holding_a_list_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--set", "train.epochs=1", "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    out.mkdir()
    (out / "diagnostics.json").write_text("[1, 2]\n")
    line = _refused(capsys, "report", run, "--out", out, "--points", "2", "--reference", "none", "--draws", "20",
                    "--quiet")
    assert "diagnostics.json' holds a JSON list, not a diagnosis" in line
    assert sorted(os.listdir(out)) == ["diagnostics.json"]
    assert (out / "diagnostics.json").read_text() == "[1, 2]\n"
    # and a real one, with too few draws for PSIS's tail fit, reports (the k-hat figure included)
    os.remove(out / "diagnostics.json")
    assert main(["report", str(run), "--out", str(out), "--points", "2", "--reference", "none", "--draws", "20",
                 "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "index.html").exists()


@pytest.mark.parametrize("figure", ["loss.png", "graph.png"])
def test_a_full_disk_while_plotting_is_one_line(figure, tmp_path, capsys, monkeypatch):
    real = style.write_atomic

    def write(path, *args, **kwargs):
        if Path(path).name == figure:
            raise write_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(style, "write_atomic", write)
    rc = main(["train", "--set", "train.epochs=1", "--out", str(tmp_path / "run"), "--quiet", "--iw-samples", "2"])
    _, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pyro-vae:")]
    assert errors == [f"pyro-vae: error: cannot write file '{tmp_path / 'run' / 'plots' / figure}' (No space left "
                      "on device): free disk space"], err
