"""Data-parallel training and evaluation: 2 CPU processes on gloo, started the way torchrun starts them."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import cli, evaluate_points
from pyro_vae.runtime import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
# every test here starts two or three Python processes (about 2.5 s of CPU each to import torch and Pyro): CI runs
# them with the slow tests, the README's quick test command leaves them out
pytestmark = pytest.mark.slow
# seconds after which a process counts as hung: a loaded 2-core machine takes minutes to start and run these
HANG = 600


def _worker_module():
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), **extra}
    return env


def _spawn(args, world: int = 2, envs=None, timeout: float = HANG, **extra):
    """Start ``world`` processes with torchrun's environment; returns their CompletedProcess-like results."""
    port = _free_port()
    procs = []
    for rank in range(world):
        cmd = args(rank) if callable(args) else args
        procs.append(subprocess.Popen([sys.executable, *cmd], env=_env(rank, world, port, **(envs or [{}] * world)[rank],
                                                                   **extra),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def _error_lines(stderr: str):
    return [l for l in stderr.splitlines() if l.startswith("pyro-vae: error:")]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The 'fit' worker on 2 processes (each run twice), and the same code in this process as the 1-process reference.

    Returns ([[rank 0, rank 1] of the first run, ... of the second], reference).
    """
    out = tmp_path_factory.mktemp("fit")
    results = _spawn([str(WORKER), "fit", str(out)])
    assert [r[0] for r in results] == [0, 0], results
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    runs = [[ranks[0][i], ranks[1][i]] for i in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run (OMP_NUM_THREADS=1): the same float summation order
    try:
        reference = _worker_module().fit_both()
    finally:
        torch.set_num_threads(threads)
    return runs, reference


def test_two_processes_equal_one_process_with_the_same_global_batch(two_runs):
    (run, _), ref = two_runs
    for rank in run:
        assert rank["delta"]["engine"] == "captured" and rank["normal"]["engine"] == "captured"
    # the point-mass model's objective draws nothing: the loss history and the parameters are
    # those of one process on the same global batches, up to float32 summation order (the
    # reference sums 32 rows at once, the ranks 16 each, then the all-reduce adds the halves)
    got, want = run[0]["delta"], ref["delta"]
    assert len(got["loss"]) == 2
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for name, value in want["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=1e-4, atol=1e-5)
    # the ranks hold the same parameters, bit for bit (one averaged gradient, one update)
    for name, value in run[0]["normal"]["params"].items():
        assert torch.equal(run[1]["normal"]["params"][name], value)


def test_a_two_process_run_repeats_bit_for_bit(two_runs):
    (a, _), (b, _) = two_runs[0]
    for guide in ("delta", "normal"):
        assert a[guide]["loss"] == b[guide]["loss"]
        for name, value in a[guide]["params"].items():
            assert torch.equal(b[guide]["params"][name], value)
    assert torch.equal(a["normal_eval"].log_likelihood, b["normal_eval"].log_likelihood)


def test_sharded_evaluation_is_each_blocks_evaluation_with_its_rank_seed(two_runs):
    (run, _), ref = two_runs
    sharded = run[0]["normal_eval"]
    assert torch.equal(sharded.log_likelihood, run[1]["normal_eval"].log_likelihood)  # every rank gets all points
    # rebuild the trained model from rank 0's parameters and evaluate each rank's block in one process
    worker = _worker_module()
    model = worker.model("normal")
    model.load_state_dict(run[0]["normal"]["params"])
    _, test = worker.data()
    blocks = [evaluate_points(model, test[:15], iw_samples=20, seed=distributed.rank_seed(3, 0)),
              evaluate_points(model, test[15:], iw_samples=20, seed=distributed.rank_seed(3, 1))]
    want = torch.cat([b.log_likelihood for b in blocks])
    assert sharded.num_points == 30
    torch.testing.assert_close(sharded.log_likelihood, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sharded.elbo, torch.cat([b.elbo for b in blocks]), rtol=1e-6, atol=1e-6)
    # a point-mass guide draws nothing: its sharded numbers are the one-process ones
    torch.testing.assert_close(run[0]["delta_eval"].elbo, ref["delta_eval"].elbo, rtol=1e-5, atol=1e-5)


def _config(tmp_path: Path, batch_size: int = 64) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[data]
source = "digits"
binarize = "none"
[model]
latent_dim = 2
likelihood = "normal"
encoder = {{ hidden = [16] }}
decoder = {{ hidden = [16] }}
[train]
epochs = 1
batch_size = {batch_size}
device = "cpu"
""")
    return cfg


def _torchrun(*args, timeout=HANG, **env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "pyro_vae", *args],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_torchrun_writes_one_run_directory_from_rank_0_that_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    r = _torchrun("train", str(_config(tmp_path)), "--out", str(out), "--iw-samples", "5", "--no-plots", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("run directory:") == 1  # rank 0 reports for both
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.toml", "history.csv", "metrics.json"]
    # a 2-process checkpoint continues in one process
    r1 = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", str(out), "--set", "train.epochs=2",
                         "--iw-samples", "5", "--no-plots", "--quiet"],
                        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        capture_output=True, text=True, timeout=HANG, cwd=ROOT)
    assert r1.returncode == 0, r1.stderr[-2000:]
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,")
    # pyro-vae evaluate shards the test points over the ranks; rank 0 alone prints, and the estimate is the
    # one-process one up to Monte Carlo error (the ranks draw from their own streams)
    r2 = _torchrun("evaluate", str(out), "--iw-samples", "50", "--json")
    assert r2.returncode == 0, r2.stderr[-2000:]
    lines = [l for l in r2.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1
    two = json.loads(lines[0])
    r3 = subprocess.run([sys.executable, "-m", "pyro_vae", "evaluate", str(out), "--iw-samples", "50", "--json"],
                        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        capture_output=True, text=True, timeout=HANG, cwd=ROOT)
    one = json.loads(r3.stdout)
    assert two["num_points"] == one["num_points"]
    se = math.hypot(two["log_likelihood_se"], one["log_likelihood_se"])
    assert abs(two["log_likelihood"] - one["log_likelihood"]) < 5 * se


def test_a_batch_size_the_processes_cannot_split_is_one_line_under_torchrun(tmp_path):
    out = tmp_path / "run"
    r = _torchrun("train", str(_config(tmp_path, batch_size=63)), "--out", str(out))
    # both ranks fail the check: the first to fail prints it, on a line of its own; the other stays quiet
    lines = _error_lines(r.stderr)
    glued = [l for l in r.stderr.splitlines() if l.count("pyro-vae: error:") > 1]
    assert not glued, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].endswith("use a multiple of 2"), r.stderr[-2000:]
    # torchrun's own summary names the line (the worker wrote torchrun's error file), not "<N/A>"
    assert "traceback : pyro-vae: error: train.batch_size = 63" in r.stderr, r.stderr[-2000:]
    # torchrun itself prints a traceback of its ChildFailedError; the processes print none
    assert str(ROOT / "pyro_vae") not in r.stderr and not out.exists()


def test_mismatched_configs_across_ranks_are_one_line_from_rank_0(tmp_path):
    cfg, out = _config(tmp_path), tmp_path / "run"
    results = _spawn(lambda rank: ["-m", "pyro_vae", "train", str(cfg), "--out", str(out), "--quiet",
                                   "--set", f"train.lr={1e-3 * (rank + 1)}"])
    (code0, _, err0), (code1, _, err1) = results
    assert code0 == code1 == 2 and "Traceback" not in err0 + err1
    lines = _error_lines(err0)
    assert len(lines) == 1 and "another config or data than rank 0" in lines[0], err0[-2000:]
    assert not _error_lines(err1), err1[-2000:]
    assert not out.exists()


def _pyro_vae(*args, timeout=120, **env):
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}, cwd=ROOT)


def test_nproc_per_node_trains_one_run_on_cpu_processes(tmp_path):
    out = tmp_path / "run"
    r = _pyro_vae("train", str(_config(tmp_path)), "--out", str(out), "--nproc-per-node", "2", "--iw-samples", "5",
                  "--no-plots", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("run directory:") == 1 and "on cpu (2 processes)" in r.stdout, r.stdout
    assert "ChildFailedError" not in r.stderr and "closing signal" not in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.toml", "history.csv", "metrics.json"]
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["rng"]["ranks"]) == 2


def test_nproc_per_node_reports_bad_data_that_only_the_workers_read_in_one_line(tmp_path):
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    x[7, 2] = float("nan")
    np.save(tmp_path / "x.npy", x.numpy())
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[data]\ntrain = "x.npy"\n[model]\nlatent_dim = 2\nlikelihood = "normal"\n'
                   '[train]\nepochs = 1\nbatch_size = 16\ndevice = "cpu"\n')
    out = tmp_path / "run"
    r = _pyro_vae("train", str(cfg), "--out", str(out), "--nproc-per-node", "2")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == ["pyro-vae: error: data.train (x.npy) has 1 NaN/Inf values in 1 rows (first at "
                                     "row 7, column 2): clean the data or set data.drop_nonfinite = true to drop "
                                     "those rows"], r.stderr[-2000:]
    assert r.stdout == "" and not out.exists()


FLAKY = '''
import os

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import PyroVAEError


class Flaky(nn.Module):
    """A VAE whose rank 1 gives up in the middle of training, while rank 0 waits for its gradients."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, data_dim):
        super().__init__()
        self.enc, self.dec, self.calls = nn.Linear(data_dim, 4), nn.Linear(2, data_dim), 0

    def model(self, x):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls > 12:
            raise PyroVAEError("rank 1 gives up here")
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x).split(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
'''


def test_nproc_per_node_one_rank_failing_in_training_is_its_line_alone(tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    cfg = tmp_path / "flaky.toml"
    cfg.write_text('[data]\nsource = "synthetic"\nnum_points = 400\nsynthetic_dim = 6\n[model]\n'
                   'program = "flaky:Flaky"\n[train]\nelbo = "trace"\nepochs = 3\nbatch_size = 32\n'
                   'device = "cpu"\n')
    out = tmp_path / "run"
    r = _pyro_vae("train", str(cfg), "--out", str(out), "--nproc-per-node", "2", "--quiet", "--no-plots",
                  PYRO_VAE_TRUST_FILE=str(tmp_path / "trusted.json"))
    assert r.returncode == 2, r.stderr[-2000:]
    # rank 0's all-reduce breaks when rank 1 leaves; rank 1 claimed the failure first, so rank 0 says nothing
    lines = _error_lines(r.stderr)  # (Pyro appends the trace's shapes to an error raised inside a model)
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: rank 1 gives up here"), r.stderr[-2000:]
    assert "another process of the run stopped" not in r.stderr and "Traceback" not in r.stderr


def test_a_rank_that_cannot_reach_the_rendezvous_is_one_line(tmp_path):
    # rank 1 of 2 whose rank 0 never starts: it gives up after the timeout
    cfg = _config(tmp_path)
    env = _env(1, 2, _free_port(), PYRO_VAE_DIST_TIMEOUT="3")
    r = subprocess.run([sys.executable, "-m", "pyro_vae", "train", str(cfg), "--out", str(tmp_path / "run")],
                       env=env, capture_output=True, text=True, timeout=HANG, cwd=ROOT)
    lines = _error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "cannot join the process group" in lines[0], r.stderr[-2000:]


def test_a_rank_that_dies_stops_the_other_with_one_line(tmp_path):
    results = _spawn([str(WORKER), "die", str(tmp_path)], PYRO_VAE_DIST_TIMEOUT="20")
    (code0, _, err0), (code1, _, _) = results
    assert code1 == 3
    assert code0 == 2 and len(_error_lines(err0)) == 1, err0[-2000:]
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert "another process of the run stopped" in message
    assert float(seconds) < 20  # within the collectives' timeout, not a hang


def test_sigterm_on_one_rank_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    results = _spawn([str(WORKER), "term", str(tmp_path)])
    assert [r[0] for r in results] == [0, 0], results
    (step0, sig0, ckpt0), (step1, sig1, _) = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert step0 == step1 and int(step0) > 0 and int(sig0) == int(sig1) == 15
    saved = torch.load(ckpt0, weights_only=True)
    assert saved["train_state"]["step"] == int(step0)
    assert len(saved["rng"]["ranks"]) == 2  # every rank's stream, for an exact resume
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_an_error_line_is_one_write_with_its_newline(monkeypatch):
    # the ranks share stderr: a line written in two parts lets another rank's line land before its newline
    writes = []

    class Stream:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stream())
    assert cli.main(["train", "--nproc-per-node", "0"]) == 2
    assert len(writes) == 1 and writes[0].startswith("pyro-vae: error: argument --nproc-per-node: expected a "
                                                     "positive integer, got 0") and writes[0].endswith("\n"), writes


def test_nproc_per_node_checks_what_it_can_before_starting_a_process(tmp_path, capsys, monkeypatch):
    cfg, out = _config(tmp_path, batch_size=63), tmp_path / "run"
    assert cli.main(["train", str(cfg), "--out", str(out), "--nproc-per-node", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "train.batch_size = 63 is not divisible by the 2 processes" in err[0], err
    monkeypatch.setenv("WORLD_SIZE", "2")  # already one of torchrun's processes
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", str(_config(tmp_path)), "--out", str(out), "--nproc-per-node", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "already one of torchrun's" in err[0], err
    assert not out.exists()
