"""Reliability, row by row: bad input fails in one line and writes nothing; faults cost at most
the last step; resume is exact.

User-facing rows go through the CLI (``pyro_vae.cli.main``, or a subprocess where a new
process or a real kill is the point).  A user error must give exit status 2, exactly one
``pyro-vae: error:`` line (``note:`` lines may precede it), no traceback, and no new files.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae
import pyro_vae.app.prepare as prepare_mod
import pyro_vae.app.pipeline as train_mod
import pyro_vae.evaluation.memory as memory
import pyro_vae.runtime.memory as runtime_memory
import pyro_vae.store.checkpoint as ckpt
from pyro_vae.cli import main
from pyro_vae.config import ModelConfig, NetConfig, TrainConfig, config_from_dict
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluation.estimators import evaluate
from pyro_vae.models import build_model
from pyro_vae.training.nonfinite import MAX_CONSECUTIVE_NONFINITE
from pyro_vae.training.trainer import Trainer
from pyro_vae.errors import NonFiniteError, TrainingInterrupted

REPO = Path(pyro_vae.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# a model small enough that a CLI run takes about a second
TINY = ["--set", "model.latent_dim=2", "--set", "model.encoder.hidden=[8]", "--set", "model.decoder.hidden=[8]",
        "--set", "train.batch_size=16", "--set", "train.epochs=1", "--quiet", "--no-plots", "--iw-samples", "4"]


# -- helpers ---------------------------------------------------------------------------------------


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(capsys, *args) -> str:
    """Run the CLI expecting a user error; return its one error line."""
    rc, out, err = cli(capsys, *args)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("pyro-vae: error:")]
    assert len(errors) == 1, err
    assert all(l.startswith(("pyro-vae: error:", "note:")) for l in lines), err
    return errors[0]


def files_under(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder that is also the cwd, so a default runs/ folder would show up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def save(path: Path, array) -> Path:
    np.save(path, array)
    return path


def rng():
    return np.random.default_rng(0)


# -- bad data: one line, exit 2, nothing written ------------------------------------------------------


def _nan(tmp):
    x = rng().normal(size=(50, 4)).astype(np.float32)
    x[7, 2] = np.nan
    return save(tmp / "nan.npy", x), ["--set", "model.likelihood=normal"]


def _inf(tmp):
    x = rng().normal(size=(50, 4))
    x[3, 1] = np.inf
    return save(tmp / "inf.npy", x), ["--set", "model.likelihood=normal"]


def _half_under_bernoulli(tmp):
    return save(tmp / "half.npy", np.full((50, 4), 0.5)), ["--set", "model.likelihood=bernoulli"]


def _negative_categorical(tmp):
    x = rng().integers(0, 3, size=(50, 4))
    x[5, 0] = -1
    return save(tmp / "neg.npy", x), ["--set", "model.likelihood=categorical"]


def _fraction_categorical(tmp):
    x = rng().integers(0, 3, size=(50, 4)).astype(np.float64)
    x[9, 3] = 1.5
    return save(tmp / "frac.npy", x), ["--set", "model.likelihood=categorical", "--set", "model.levels=3"]


def _empty(tmp):
    return save(tmp / "empty.npy", np.zeros((0, 4), np.float32)), []


def _empty_csv(tmp):
    (tmp / "empty.csv").write_text("a,b,c\n")
    return tmp / "empty.csv", []


def _few_rows(tmp):
    # 12 rows, 10% held out: 11 training rows, fewer than one batch of 16
    return save(tmp / "few.npy", rng().normal(size=(12, 4)).astype(np.float32)), ["--set", "model.likelihood=normal"]


def _string_column(tmp):
    (tmp / "text.csv").write_text("a,b\n1,2\n3,four\n5,6\n")
    return tmp / "text.csv", []


def _missing(tmp):
    return tmp / "missing.npy", []


def _test_width(tmp):
    train = save(tmp / "train.npy", rng().normal(size=(50, 4)).astype(np.float32))
    test = save(tmp / "test.npy", rng().normal(size=(20, 5)).astype(np.float32))
    return train, ["--set", f"data.test={test}", "--set", "model.likelihood=normal"]


BAD_DATA = {
    # case: (make file, words the error line must contain)
    "nan": (_nan, ["nan.npy", "1 NaN/Inf", "row 7", "column 2", "data.drop_nonfinite = true"]),
    "inf": (_inf, ["inf.npy", "1 NaN/Inf", "row 3", "column 1", "data.drop_nonfinite"]),
    "0.5 under bernoulli": (_half_under_bernoulli, ["'bernoulli'", "0/1", "0.5", "data.binarize"]),
    "negative under categorical": (_negative_categorical, ["'categorical'", "-1", "integers"]),
    "non-integer under categorical": (_fraction_categorical, ["'categorical'", "1.5", "integers 0..2"]),
    "empty array": (_empty, ["empty.npy", "empty"]),
    "empty csv": (_empty_csv, ["empty.csv", "no data rows"]),
    "fewer rows than a batch": (_few_rows, ["11 rows", "fewer than one batch", "train.batch_size = 16"]),
    "string column in csv": (_string_column, ["text.csv", "line 3, column 2", "'four'", "not a number"]),
    "missing file": (_missing, ["missing.npy", "does not exist"]),
    "test width differs": (_test_width, ["5 columns", "4", "must match"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_in_one_line_and_writes_nothing(case, work, capsys):
    make, words = BAD_DATA[case]
    path, extra = make(work)
    before = files_under(work)
    line = user_error(capsys, "train", "--out", work / "out", *TINY, "--set", f"data.train={path}", *extra)
    for w in words:
        assert w in line, (w, line)
    assert files_under(work) == before


def test_drop_nonfinite_drops_the_rows_and_says_so(work, capsys):
    path, extra = _nan(work)
    rc, out, err = cli(capsys, "train", "--out", work / "out", *TINY, "--set", f"data.train={path}",
                       "--set", "data.drop_nonfinite=true", *extra)
    assert rc == 0, err
    assert "note: data.train (nan.npy): dropped 1 rows with NaN/Inf" in err
    assert (work / "out" / "checkpoint.pt").exists()


@pytest.mark.parametrize("dtype,likelihood", [("int64", "bernoulli"), ("float64", "normal"), ("int32", "categorical")])
def test_integer_and_float64_data_are_cast_and_the_cast_is_reported(dtype, likelihood, work, capsys):
    x = rng().integers(0, 2, size=(60, 4)) if dtype.startswith("int") else rng().normal(size=(60, 4))
    path = save(work / "x.npy", x.astype(dtype))
    rc, out, err = cli(capsys, "train", "--out", work / "out", *TINY, "--set", f"data.train={path}",
                       "--set", f"model.likelihood={likelihood}")
    assert rc == 0, err
    assert f"note: data.train (x.npy): cast from {dtype} to float32" in err


def test_wrong_width_for_the_model_quotes_both_shapes(trained_run, work, capsys):
    # evaluate --data: the model was trained on 5 columns
    path = save(work / "wide.npy", rng().normal(size=(30, 7)).astype(np.float32))
    line = user_error(capsys, "evaluate", trained_run, "--data", path, "--iw-samples", "2")
    assert "(30, 7)" in line and "5 columns" in line


def test_resume_with_data_of_another_width_quotes_both_shapes(trained_run, work, capsys):
    run = copy_run(trained_run, work / "run")
    data = save(work / "wide.npy", rng().normal(size=(40, 7)).astype(np.float32))
    before = (run / "checkpoint.pt").read_bytes()
    line = user_error(capsys, "train", "--resume", run, "--set", f"data.train={data}", "--set", "data.source=arrays",
                      "--quiet", "--no-plots")
    assert "5 columns" in line and "(36, 7)" in line
    assert (run / "checkpoint.pt").read_bytes() == before


def test_trainer_api_rejects_nan_and_wrong_width():
    model = build_model(ModelConfig(latent_dim=2, likelihood="normal", encoder=NetConfig((8,)), decoder=NetConfig((8,))), 4)
    x = torch.randn(32, 4)
    x[3, 1] = float("inf")
    with pytest.raises(PyroVAEError, match=r"1 NaN/Inf values in 1 rows \(first at row 3, column 1\)"):
        Trainer(model, TrainConfig(epochs=1, batch_size=8), progress=False).fit(x)
    with pytest.raises(PyroVAEError, match=r"shape \(32, 6\) but the model expects 4 columns"):
        Trainer(model, TrainConfig(epochs=1, batch_size=8), progress=False).fit(torch.randn(32, 6))


# -- bad config -------------------------------------------------------------------------------------


CONFIG_CASES = {
    "malformed toml": ("[train]\nepochs = 3\nlr = \n", [], ["bad.toml", "invalid TOML", "line 3"]),
    "unknown key": ("[train]\nepoch = 3\n", [], ["'train.epoch'", "did you mean 'epochs'"]),
    "unknown section key": ("[modle]\nlatent_dim = 3\n", [], ["'modle'", "did you mean 'model'"]),
    "unknown name": ("", ["--set", "model.likelihood=bernouli"], ["model.likelihood", "did you mean 'bernoulli'"]),
    "wrong type": ("[train]\nlr = \"fast\"\n", [], ["train.lr", "expected a number", "'fast'"]),
    "wrong type in --set": ("", ["--set", "train.seed=1.5"], ["train.seed", "expected an integer", "1.5"]),
    "latent_dim < 1": ("", ["--set", "model.latent_dim=0"], ["model.latent_dim", ">= 1"]),
    "lr <= 0": ("", ["--set", "train.lr=0"], ["train.lr", "> 0"]),
    "negative lr": ("[train]\nlr = -0.001\n", [], ["train.lr", "> 0"]),
    "beta < 0": ("", ["--set", "train.beta=-0.5"], ["train.beta", ">= 0"]),
    "particles K < 1": ("", ["--set", "train.num_particles=0"], ["train.num_particles", ">= 1"]),
    "iw samples K < 1": ("", ["--iw-samples", "0"], ["--iw-samples", ">= 1"]),
    "bad --set": ("", ["--set", "train.epochs"], ["section.key=value"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_fails_in_one_line_with_the_key_path(case, work, capsys, monkeypatch):
    text, extra, words = CONFIG_CASES[case]
    (work / "bad.toml").write_text('[data]\nsource = "synthetic"\nnum_points = 64\n' if not text else text)
    # must fail before training: a training run here is a bug
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    before = files_under(work)
    line = user_error(capsys, "train", work / "bad.toml", "--out", work / "out", *TINY, *extra)
    for w in words:
        assert w in line, (w, line)
    assert files_under(work) == before


# -- paths ------------------------------------------------------------------------------------------


def _under_a_file(work):
    (work / "afile").write_text("x")
    return work / "afile" / "run"


UNWRITABLE = {"under a regular file": _under_a_file}
if Path("/proc/self").exists():
    UNWRITABLE["read-only file system (/proc)"] = lambda work: Path("/proc/pyro-vae-run")


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_unwritable_output_fails_before_training(case, work, capsys, monkeypatch):
    out = UNWRITABLE[case](work)
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    before = files_under(work)
    line = user_error(capsys, "train", "--out", out, *TINY, *SYNTH)
    assert "cannot write" in line and "--out" in line
    assert files_under(work) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_folder_fails_before_training(work, capsys, monkeypatch):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    try:
        line = user_error(capsys, "train", "--out", ro / "run", *TINY)
    finally:
        ro.chmod(0o700)
    assert "cannot write" in line and not (ro / "run").exists()


def test_resume_of_a_run_that_does_not_exist(work, capsys):
    line = user_error(capsys, "train", "--resume", work / "nope", "--quiet")
    assert "nope" in line and "no run there" in line
    assert files_under(work) == set()


SYNTH = ["--set", "data.source=synthetic", "--set", "data.num_points=80", "--set", "data.synthetic_dim=5",
         "--set", "model.likelihood=normal"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *TINY, *SYNTH]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_a_byte(data: bytes) -> bytes:
    # inside the first stored tensor's bytes: the zip structure stays valid, its CRC does not
    import struct

    z = zipfile.ZipFile(io.BytesIO(data))
    info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 16)
    # the local header's name and extra-field lengths (the extra field holds torch's alignment padding)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    pos = start + info.file_size // 2
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


def _payload(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CORRUPTIONS = {
    # case: (new bytes from the old bytes and the run, words the error must contain)
    "zero bytes": (lambda data, run: b"", ["is empty (0 bytes)"]),
    "truncated": (lambda data, run: data[: len(data) // 2], ["is truncated"]),
    "random bytes": (lambda data, run: np.random.default_rng(1).bytes(4096), ["is not a PyTorch checkpoint"]),
    "flipped byte": (lambda data, run: _flip_a_byte(data), ["is corrupt", "checksum"]),
    "not a pyro_vae file": (lambda data, run: _torch_bytes({"weights": torch.ones(3)}), ["is not a pyro_vae checkpoint"]),
    "newer format version": (lambda data, run: _torch_bytes({**_payload(run), "format_version": 99}),
                             ["format version 99", "newer", "upgrade pyro_vae"]),
}


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_checkpoint_names_the_file_and_the_reason(case, command, trained_run, work, capsys):
    run = copy_run(trained_run, work / "run")
    make, words = CORRUPTIONS[case]
    (run / "checkpoint.pt").write_bytes(make((run / "checkpoint.pt").read_bytes(), run))
    before = {p: (run / p).read_bytes() for p in files_under(run)}
    args = ["evaluate", run, "--iw-samples", "2"] if command == "evaluate" else ["train", "--resume", run, "--quiet"]
    line = user_error(capsys, *args)
    assert str(run / "checkpoint.pt") in line
    for w in words:
        assert w in line, (w, line)
    assert {p: (run / p).read_bytes() for p in files_under(run)} == before


def test_checkpoint_from_a_different_architecture(trained_run, work, capsys):
    run = copy_run(trained_run, work / "run")
    line = user_error(capsys, "train", "--resume", run, "--set", "model.encoder.hidden=[12]", "--quiet")
    assert "different architecture" in line and "encoder" in line and "config.toml" in line
    with pytest.raises(PyroVAEError, match="different architecture"):
        other = build_model(ModelConfig(latent_dim=3, likelihood="normal"), 5)
        ckpt.load_state_dict_checked(other, _payload(run)["model"], run / "checkpoint.pt")


class _Trap:
    """Unpickling this would run code (it creates a file): weights_only must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_code_is_refused_without_running_it(trained_run, work, capsys):
    run = copy_run(trained_run, work / "run")
    marker = work / "code-ran"
    payload = {**_payload(run), "trap": _Trap(marker)}
    (run / "checkpoint.pt").write_bytes(_torch_bytes(payload))
    line = user_error(capsys, "evaluate", run, "--iw-samples", "2")
    assert "not loaded for safety" in line
    assert not marker.exists()


def _as_cuda_checkpoint(data: bytes) -> bytes:
    """Relabel every tensor's storage as saved on cuda:0 (what torch.save records on a GPU)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            blob = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                # the location string is pickled once and memoized for every storage
                assert b"X\x03\x00\x00\x00cpu" in blob
                blob = blob.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info.filename, blob)
    return out.getvalue()


def test_cuda_checkpoint_loads_on_a_cpu_only_machine(trained_run, work, capsys, monkeypatch):
    run = copy_run(trained_run, work / "run")
    payload = _payload(run)
    payload["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # a GPU run saves its CUDA RNG too
    (run / "checkpoint.pt").write_bytes(_as_cuda_checkpoint(_torch_bytes(payload)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # the relabelled file really is a CUDA checkpoint: a plain load fails on this machine
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(run / "checkpoint.pt", weights_only=True)
    rc, out, err = cli(capsys, "evaluate", run, "--iw-samples", "2", "--json")
    assert rc == 0, err
    rc, out, err = cli(capsys, "train", "--resume", run, "--set", "train.epochs=2", "--quiet", "--no-plots",
                       "--iw-samples", "2")
    assert rc == 0, err
    assert _payload(run)["train_state"]["epoch"] == 2


# -- non-finite loss or gradients ------------------------------------------------------------------


class Poison(torch.nn.Module):
    """Wraps a decoder; while ``on()`` is true it returns NaN (or NaN gradients with ``grad=True``)."""

    def __init__(self, inner, on=lambda: False, grad=False):
        super().__init__()
        self.inner = inner
        self.on = on
        self.grad = grad

    def forward(self, z):
        out = self.inner(z)
        if self.on():
            if not self.grad:
                return out * float("nan")
            if out.requires_grad:
                out.register_hook(lambda g: g * float("nan"))
        return out


def _poisoned(likelihood="bernoulli", d=6, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(latent_dim=2, likelihood=likelihood, encoder=NetConfig((8,)),
                                    decoder=NetConfig((8,))), d)
    model.nets["x"].mlp = Poison(model.nets["x"].mlp)
    x = (torch.rand(64, d, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    return model, x


def _snapshot(trainer):
    params = [p.detach().clone() for p in trainer.params]
    opt = {k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
           for k, s in trainer.optimizer.state_dict()["state"].items()}
    return params, opt


def _same(a, b) -> bool:
    pa, oa = a
    pb, ob = b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb)) and oa.keys() == ob.keys()
            and all(torch.equal(oa[k][n], ob[k][n]) for k in oa for n in oa[k]))


class Recorder(Trainer):
    """Keeps (step number, state before, state after, loss) of every step."""

    def step(self, x, beta=1.0):
        before = _snapshot(self) if self.optimizer is not None else None
        loss = super().step(x, beta)
        self.log.append((self.state.step + 1, before, _snapshot(self), float(loss)))
        return loss


def _recorder(model, policy, **kw):
    t = Recorder(model, TrainConfig(epochs=3, batch_size=16, on_nonfinite=policy, **kw), progress=False)
    t.log = []
    return t


def test_raise_saves_the_last_good_state_and_names_step_batch_and_site(tmp_path):
    model, x = _poisoned()
    t = Trainer(model, TrainConfig(epochs=3, batch_size=16), run_dir=tmp_path, progress=False)
    good = {}

    def on():  # the 6th step (epoch 2, batch 2) gets NaN decoder outputs
        if t.state.step == 5 and "state" not in good:
            good["state"] = _snapshot(t)
        return t.state.step == 5

    model.nets["x"].mlp.on = on
    with pytest.raises(NonFiniteError) as e:
        t.fit(x)
    msg = str(e.value)
    assert "step 6, epoch 2, batch 2" in msg
    assert "model:x (Bernoulli logits" in msg
    assert str(tmp_path / "checkpoint.pt") in msg and "on_nonfinite" in msg
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["train_state"]["step"] == 5 and saved["train_state"]["batch"] == 1
    # the saved parameters are exactly those before the bad step
    assert all(torch.equal(saved["model"][n].cpu(), p.detach()) for n, p in model.named_parameters())
    assert _same(_snapshot(t), good["state"])


def test_raise_at_the_first_step_saves_a_state_that_resumes_with_the_same_data_order(tmp_path):
    # the first step runs with Pyro's argument checks on, so the NaN arrives as a ValueError
    model, x = _poisoned()
    t = Trainer(model, TrainConfig(epochs=2, batch_size=16), run_dir=tmp_path, progress=False)
    in_step, real_step = [False], t.step

    def step(xb, beta=1.0):  # poison the first training step, not the checks before it
        in_step[0] = True
        try:
            return real_step(xb, beta)
        finally:
            in_step[0] = False

    t.step = step
    model.nets["x"].mlp.on = lambda: in_step[0] and t.state.step == 0
    with pytest.raises(NonFiniteError, match=r"at step 1, epoch 1, batch 1 .*model:x \(Bernoulli logits"):
        t.fit(x)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["train_state"]["step"] == 0 and saved["train_state"]["perm"] is not None

    straight = Trainer(_poisoned()[0], TrainConfig(epochs=2, batch_size=16), progress=False)
    straight.fit(x)
    resumed = Trainer(_poisoned(seed=1)[0], TrainConfig(epochs=2, batch_size=16), progress=False)
    resumed.setup(x[:16], len(x))
    resumed.load_state_dict(saved)
    resumed.fit(x)
    # the saved epoch-1 order is used, and epoch 2 draws the next order, not epoch 1's again
    assert torch.equal(resumed.state.data_rng.get_state(), straight.state.data_rng.get_state())


def test_raise_from_the_cli_is_one_line_and_keeps_the_checkpoint(work, capsys, monkeypatch):
    state = {}
    real_build, real_step = prepare_mod.build_model, Trainer.step

    def build(spec, dim, image_shape=None):
        m = real_build(spec, dim, image_shape)
        m.nets["x"].mlp = Poison(m.nets["x"].mlp, on=lambda: state.get("step") == 9)
        return m

    def step(self, x, beta=1.0):
        state["step"] = self.state.step
        return real_step(self, x, beta)

    monkeypatch.setattr(prepare_mod, "build_model", build)
    monkeypatch.setattr(Trainer, "step", step)
    line = user_error(capsys, "train", "--out", work / "out", *TINY, *SYNTH, "--set", "train.epochs=3")
    assert "non-finite" in line and "step 10" in line and "model:x" in line and "checkpoint.pt" in line
    assert torch.load(work / "out" / "checkpoint.pt", weights_only=True)["train_state"]["step"] == 9


def test_skip_leaves_parameters_and_optimizer_bit_identical():
    model, x = _poisoned()
    t = _recorder(model, "skip")
    model.nets["x"].mlp.on = lambda: t.state.step == 5
    t.fit(x)
    bad = [r for r in t.log if r[0] == 6]
    assert len(bad) == 1 and np.isnan(bad[0][3])
    assert _same(bad[0][1], bad[0][2])  # nothing moved on the skipped step
    assert not _same(t.log[6][1], t.log[6][2])  # the next step trains again
    assert t.state.skipped == 1 and t.state.step == 12
    assert all(np.isfinite(h["train_loss"]) for h in t.state.history)


def test_rollback_restores_the_state_at_the_start_of_the_epoch():
    model, x = _poisoned()
    t = _recorder(model, "rollback")
    model.nets["x"].mlp.on = lambda: t.state.step == 6  # the 7th step: epoch 2, batch 3
    t.fit(x)
    epoch_start = t.log[3][2]  # after step 4, the last of epoch 1
    before_bad, after_bad = t.log[6][1], t.log[6][2]
    assert t.log[6][0] == 7 and np.isnan(t.log[6][3])
    assert _same(after_bad, epoch_start)  # parameters and Adam moments back to the epoch's start
    assert not _same(before_bad, epoch_start)  # so rollback is not skip: two good steps were undone
    assert t.state.skipped == 1 and t.state.epoch == 3


def test_rollback_after_a_mid_epoch_resume_returns_to_the_resumed_state(tmp_path):
    model, x = _poisoned()
    t = Trainer(model, TrainConfig(epochs=2, batch_size=16, on_nonfinite="rollback"), run_dir=tmp_path, progress=False)
    real_step = t.step

    def stop_after_6(xb, beta=1.0):
        loss = real_step(xb, beta)
        if t.state.step == 5:
            t.request_stop(signal.SIGTERM)  # as the signal handler does
        return loss

    t.step = stop_after_6
    with pytest.raises(TrainingInterrupted):
        t.fit(x)
    model2, _ = _poisoned(seed=1)
    t2 = _recorder(model2, "rollback")
    t2.config = TrainConfig(epochs=2, batch_size=16, on_nonfinite="rollback")
    t2.setup(x[:16], len(x))
    t2.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    resumed = _snapshot(t2)
    model2.nets["x"].mlp.on = lambda: t2.state.step == 7  # one good step after the resume, then a bad one
    t2.fit(x)
    assert t2.log[1][0] == 8 and np.isnan(t2.log[1][3])
    assert not _same(t2.log[1][1], resumed)  # the good step moved the parameters ...
    assert _same(t2.log[1][2], resumed)  # ... and the rollback took them back to the resume point


class DataPoison(Recorder):
    """A Recorder whose steps numbered in ``bad_steps`` get a NaN in their batch.

    The model is a built-in one, so these steps run the default captured engine:
    the replayed recording computes the NaN and its own NaN/Inf flag.
    """

    bad_steps = ()

    def step(self, x, beta=1.0):
        if self.state.step + 1 in self.bad_steps:  # the trainer's batches are named arrays
            x = {k: v.clone() for k, v in x.items()}
            x["x"][0, 0] = float("nan")
        loss = super().step(x, beta)
        self.engines.append(self.engine_name)
        return loss


def _captured(policy, bad_steps, run_dir=None, epochs=3):
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=2, likelihood="bernoulli", encoder=NetConfig((8,)),
                                    decoder=NetConfig((8,))), 6)
    x = (torch.rand(64, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    t = DataPoison(model, TrainConfig(epochs=epochs, batch_size=16, on_nonfinite=policy), run_dir=run_dir,
                   progress=False)
    t.log, t.engines, t.bad_steps = [], [], bad_steps
    return t, x


def test_skip_under_the_captured_step_leaves_parameters_and_optimizer_bit_identical():
    t, x = _captured("skip", {6})
    t.fit(x)
    assert t.engines[5] == "captured" and t.captured_shapes == [(16, 6)]
    assert t.log[5][0] == 6 and np.isnan(t.log[5][3])
    assert _same(t.log[5][1], t.log[5][2])  # nothing moved on the skipped step
    assert not _same(t.log[6][1], t.log[6][2])  # the next step trains again
    assert t.state.skipped == 1 and t.state.step == 12


def test_the_epochs_train_loss_is_the_mean_over_the_steps_that_were_not_skipped():
    t, x = _captured("skip", {5, 6, 7, 8}, epochs=3)  # epoch 2 (steps 5-8): every step skipped
    t.fit(x)
    losses = [row[3] for row in t.log]  # (step, before, after, loss) per step
    first = float(np.mean([v / 64 for v in losses[:4]]))
    assert t.state.history[0]["train_loss"] == pytest.approx(first, rel=1e-12)
    assert t.state.history[1]["train_loss"] is None  # no step had a loss: not 0.0
    assert t.state.skipped == 4 and t.state.epoch == 3


def test_an_epoch_with_some_skipped_steps_averages_only_the_others():
    t, x = _captured("skip", {6}, epochs=2)
    t.fit(x)
    losses = [row[3] for row in t.log[4:8]]
    kept = [v / 64 for v in losses if np.isfinite(v)]
    assert len(kept) == 3
    assert t.state.history[1]["train_loss"] == pytest.approx(float(np.mean(kept)), rel=1e-12)


def test_rollback_under_the_captured_step_restores_the_state_at_the_start_of_the_epoch():
    t, x = _captured("rollback", {7})  # the 7th step: epoch 2, batch 3
    t.fit(x)
    assert t.engines[6] == "captured"
    epoch_start = t.log[3][2]
    assert np.isnan(t.log[6][3]) and _same(t.log[6][2], epoch_start)
    assert not _same(t.log[6][1], epoch_start)  # two good steps were undone
    assert t.state.skipped == 1 and t.state.epoch == 3
    assert all(e == "captured" for e in t.engines[7:])  # the recording replays the restored parameters


def test_raise_under_the_captured_step_saves_the_last_good_state_and_names_the_site(tmp_path):
    t, x = _captured("raise", {6}, run_dir=tmp_path)
    with pytest.raises(NonFiniteError) as e:
        t.fit(x)
    assert t.engines[-1] == "captured"
    msg = str(e.value)
    # the batch's NaN reaches the encoder first: the guide's latent gets NaN arguments
    assert "non-finite loss at step 6, epoch 2, batch 2" in msg and "guide:z (Normal loc" in msg
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["train_state"]["step"] == 5
    assert all(torch.equal(saved["model"][n].cpu(), p.detach()) for n, p in t.model.named_parameters())
    assert _same(_snapshot(t), t.log[4][2])  # the state after the last good step


def test_nonfinite_gradient_with_a_finite_loss_is_caught_before_the_step():
    model, x = _poisoned()
    model.nets["x"].mlp.grad = True
    t = _recorder(model, "raise")
    model.nets["x"].mlp.on = lambda: t.state.step == 2
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 3, epoch 1, batch 3"):
        t.fit(x)
    # the failing step never reached the optimizer
    assert _same(t.log[-1][2], _snapshot(t)) and len(t.log) == 2


def test_persistent_nonfinite_under_skip_stops_with_the_count():
    model, x = _poisoned()
    t = Trainer(model, TrainConfig(epochs=20, batch_size=16, on_nonfinite="skip"), progress=False)
    model.nets["x"].mlp.on = lambda: t.state.step >= 2
    with pytest.raises(NonFiniteError, match=rf"{MAX_CONSECUTIVE_NONFINITE + 1} steps in a row"):
        t.fit(x)


# -- checkpoint writes that fail ------------------------------------------------------------------------

RESUME_TOML = """
[data]
source = "synthetic"
num_points = 240
synthetic_dim = 5
test_fraction = 0.25

[model]
latent_dim = 2
likelihood = "normal"
encoder = { hidden = [16] }
decoder = { hidden = [16] }

[train]
epochs = 3
batch_size = 32
lr = 0.01
seed = 3
"""
# 180 training rows in batches of 32: 6 steps per epoch (the last one of 20 rows), 18 in all
RUN_FLAGS = ["--quiet", "--no-plots", "--iw-samples", "8"]

# Runs the CLI in a fresh interpreter with one seam patched.  argv: MODE N CLI-ARGS...
#   signal MODE (SIGTERM/SIGINT): the process signals itself during step N (a real signal,
#     through the real handler, at a known step)
#   kill: the N-th checkpoint write stops half way and the process is SIGKILLed
DRIVER = textwrap.dedent("""
    import io, os, signal, sys
    import pyro_vae.store.checkpoint as C
    import pyro_vae.training.trainer as T
    from pyro_vae.cli import main

    mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if mode == "kill":
        calls, real_write = [0], C.write_payload
        def write(payload, f):
            calls[0] += 1
            if calls[0] == n:
                buf = io.BytesIO()
                real_write(payload, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(payload, f)
        C.write_payload = write
    elif mode != "none":
        real_step = T.Trainer.step
        def step(self, x, beta=1.0):
            loss = real_step(self, x, beta)
            if self.state.step == n - 1:
                os.kill(os.getpid(), getattr(signal, mode))
            return loss
        T.Trainer.step = step
    sys.exit(main(args))
""")


def drive(tmp: Path, mode: str, n: int, *args, timeout=300) -> subprocess.CompletedProcess:
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    return subprocess.run([sys.executable, str(script), mode, str(n), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=tmp)


@pytest.fixture(scope="module")
def resume_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    (folder / "run.toml").write_text(RESUME_TOML)
    return folder / "run.toml"


@pytest.fixture(scope="module")
def straight_run(resume_config):
    """N = 18 steps straight through, in a process of its own."""
    out = resume_config.parent / "straight"
    r = drive(resume_config.parent, "none", 0, "train", resume_config, "--out", out, *RUN_FLAGS)
    assert r.returncode == 0, r.stderr
    return out


def assert_same_run(a: Path, b: Path):
    """Bit-identical parameters, optimizer moments, RNG states, loss history and final metrics."""
    pa, pb = _payload(a), _payload(b)
    assert pa["model"].keys() == pb["model"].keys()
    for k in pa["model"]:
        assert torch.equal(pa["model"][k], pb["model"][k]), k
    sa, sb = pa["optimizer"]["state"], pb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for n in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][n]), torch.as_tensor(sb[k][n])), (k, n)
    for k in ("torch", "data"):
        assert torch.equal(pa["rng"][k], pb["rng"][k]), k

    def curve(p):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in p["train_state"]["history"]]

    assert curve(pa) == curve(pb) and len(curve(pa)) == 3
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    drop = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert drop(ma) == drop(mb)


def test_sigterm_saves_after_the_current_step_and_resume_is_bit_identical(straight_run, resume_config, tmp_path,
                                                                           capsys):
    out = tmp_path / "stopped"
    # stop during step 8 (epoch 2, batch 2) in one process, resume in another (this one) for the other 10
    r = drive(tmp_path, "SIGTERM", 8, "train", resume_config, "--out", out, *RUN_FLAGS)
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr
    assert f"interrupted; state saved to {out / 'checkpoint.pt'} (continue with --resume {out})" in r.stderr
    st = _payload(out)["train_state"]
    assert (st["step"], st["epoch"], st["batch"]) == (8, 1, 2)
    rc, _, err = cli(capsys, "train", "--resume", out, *RUN_FLAGS)
    assert rc == 0, err
    assert_same_run(straight_run, out)


def test_sigint_saves_after_the_current_step_and_exits_130(resume_config, work, capsys, monkeypatch):
    real_step = Trainer.step

    def step(self, x, beta=1.0):
        loss = real_step(self, x, beta)
        if self.state.step == 2:
            # without the trainer's handler this SIGINT would stop the whole test session
            assert signal.getsignal(signal.SIGINT) is not handler, "no SIGINT handler during training"
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step 3, handled after it
        return loss

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(Trainer, "step", step)
    rc, out, err = cli(capsys, "train", resume_config, "--out", work / "out", *RUN_FLAGS)
    assert rc == 130, err
    assert "interrupted; state saved" in err and "Traceback" not in err
    assert _payload(work / "out")["train_state"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back


@pytest.mark.slow
def test_sigterm_from_outside_at_an_arbitrary_moment_then_resume_is_bit_identical(tmp_path, capsys):
    """As a user (or a scheduler) does it: a signal from another process, whenever it arrives."""
    import time

    cfg = tmp_path / "run.toml"
    cfg.write_text(RESUME_TOML.replace("num_points = 240", "num_points = 4000").replace("epochs = 3", "epochs = 6"))
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert drive(tmp_path, "none", 0, "train", cfg, "--out", straight, *RUN_FLAGS).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", str(cfg), "--out", str(stopped), *RUN_FLAGS],
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    deadline = time.time() + 240
    while not (stopped / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1)  # somewhere inside epoch 2 or later
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    st = _payload(stopped)["train_state"]
    assert 0 < st["step"] < 6 * 94
    rc, _, err = cli(capsys, "train", "--resume", stopped, *RUN_FLAGS)
    assert rc == 0, err
    pa, pb = _payload(straight), _payload(stopped)
    assert all(torch.equal(pa["model"][k], pb["model"][k]) for k in pa["model"])
    drop = lambda p: [{k: v for k, v in h.items() if k != "seconds"} for h in p["train_state"]["history"]]  # noqa
    assert drop(pa) == drop(pb)


def test_stop_after_k_epochs_then_raise_epochs_on_resume_is_bit_identical(straight_run, resume_config, work, capsys):
    out = work / "short"
    rc, _, err = cli(capsys, "train", resume_config, "--out", out, "--set", "train.epochs=1", *RUN_FLAGS)
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--resume", out, "--set", "train.epochs=3", *RUN_FLAGS)
    assert rc == 0, err
    assert_same_run(straight_run, out)


@pytest.mark.slow
def test_killed_during_a_checkpoint_write_keeps_the_previous_one(straight_run, resume_config, tmp_path, capsys):
    out = tmp_path / "killed"
    # checkpoints are written after epochs 1, 2, 3: the second write is cut short by SIGKILL
    r = drive(tmp_path, "kill", 2, "train", resume_config, "--out", out, *RUN_FLAGS)
    assert r.returncode == -signal.SIGKILL, r.stderr
    stale = [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert stale and all(p.stat().st_size > 0 for p in stale)  # the half-written file is still there
    assert _payload(out)["train_state"]["epoch"] == 1  # the previous checkpoint, whole
    # the next start cleans up the temporary file and, from the intact checkpoint, ends where a
    # run that was never killed ends
    rc, _, err = cli(capsys, "train", "--resume", out, *RUN_FLAGS)
    assert rc == 0, err
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert_same_run(straight_run, out)


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(resume_config, work, capsys, monkeypatch):
    calls = [0]
    real_write = ckpt.write_payload

    def write(payload, f):
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"PK\x03\x04" + b"\0" * 1000)  # some bytes land, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(payload, f)

    monkeypatch.setattr(ckpt, "write_payload", write)
    out = work / "out"
    line = user_error(capsys, "train", resume_config, "--out", out, *RUN_FLAGS)
    assert "No space left on device" in line and "previous checkpoint is intact" in line
    assert "free disk space" in line and str(out / "checkpoint.pt") in line
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert _payload(out)["train_state"]["epoch"] == 1


def test_disk_full_while_writing_history_or_metrics_is_one_line(tmp_path, monkeypatch):
    from pyro_vae.store.files import write_text_atomic

    (tmp_path / "history.csv").write_text("old\n")

    def full(fd):  # a full disk shows when the data is flushed to it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PyroVAEError, match="cannot write .*history.csv.*No space left on device.*free disk space"):
        write_text_atomic(tmp_path / "history.csv", "new\n")
    monkeypatch.undo()
    assert (tmp_path / "history.csv").read_text() == "old\n"
    assert files_under(tmp_path) == {"history.csv"}


def test_stale_temporary_files_are_removed_on_the_next_start(trained_run, work, capsys):
    run = copy_run(trained_run, work / "run")
    (run / ".tmp-checkpoint.pt.abc123").write_bytes(b"half a checkpoint")
    rc, _, err = cli(capsys, "train", "--resume", run, "--set", "train.epochs=2", "--quiet", "--no-plots",
                     "--iw-samples", "2")
    assert rc == 0, err
    assert not (run / ".tmp-checkpoint.pt.abc123").exists()


# -- determinism ------------------------------------------------------------------------------------


def _history(seed):
    cfg = config_from_dict({"data": {"source": "synthetic", "num_points": 96, "synthetic_dim": 4},
                            "model": {"latent_dim": 2, "likelihood": "normal", "encoder": {"hidden": [8]},
                                      "decoder": {"hidden": [8]}},
                            "train": {"epochs": 2, "batch_size": 16, "seed": seed}})
    r = train_mod.train(cfg, None, iw_samples=4, plots=False)
    curve = [(h["train_loss"], h["test_elbo"]) for h in r.history]
    return curve, {k: v.clone() for k, v in r.model.state_dict().items()}, r.metrics["log_likelihood"]


def test_same_seed_same_history_other_seed_another():
    c0, p0, m0 = _history(0)
    c0b, p0b, m0b = _history(0)
    c1, p1, m1 = _history(1)
    assert c0 == c0b and m0 == m0b
    assert all(torch.equal(p0[k], p0b[k]) for k in p0)
    assert c0 != c1 and m0 != m1
    assert not all(torch.equal(p0[k], p1[k]) for k in p0)


# -- out of memory ------------------------------------------------------------------------------------


class OOMAbove(torch.nn.Module):
    """A decoder that raises the CUDA allocator's error when asked for more than ``limit`` rows at once
    (after ``spare`` calls that always pass)."""

    def __init__(self, inner, limit, only_no_grad=True, spare=0):
        super().__init__()
        self.inner, self.limit, self.only_no_grad, self.spare, self.calls = inner, limit, only_no_grad, spare, 0

    def forward(self, z):
        rows = z.numel() // z.shape[-1]
        self.calls += 1
        if self.calls > self.spare and rows > self.limit and (not torch.is_grad_enabled() or not self.only_no_grad):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total)")
        return self.inner(z)


def _vae(d=5):
    torch.manual_seed(0)
    return build_model(ModelConfig(latent_dim=2, likelihood="normal", encoder=NetConfig((8,)), decoder=NetConfig((8,))), d)


def test_evaluation_out_of_memory_halves_the_chunk_and_retries():
    model, x = _vae(), torch.randn(50, 5)
    model.nets["x"].mlp = OOMAbove(model.nets["x"].mlp, limit=300)
    notes = []
    got = memory.evaluate_with_retry(model, x, iw_samples=64, budget=2**16, log=notes.append)
    assert len(notes) == 1 and "ran out of memory on cpu in chunks of 65536 elements" in notes[0]
    final_budget = int(notes[0].split()[-1])
    assert final_budget < 2**16 and (2**16 // final_budget) & (2**16 // final_budget - 1) == 0  # halved
    # the result is the evaluation at the budget that fit: nothing is lost or double counted
    inner = model.nets["x"].mlp.inner
    model.nets["x"].mlp = inner
    want = evaluate(model, x, iw_samples=64, budget=final_budget)
    drop = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert drop(got) == drop(want)


def test_evaluation_that_never_fits_gives_up_in_one_line():
    budgets = []

    def never_fits(budget):
        budgets.append(budget)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(PyroVAEError, match="ran out of memory on cpu even one point and one draw at a time"):
        runtime_memory.with_halving_budget(never_fits, 64, device=torch.device("cpu"))
    assert budgets == [64, 32, 16, 8, 4, 2, 1]
    # other errors are not retried
    with pytest.raises(RuntimeError, match="shape mismatch"):
        runtime_memory.with_halving_budget(lambda b: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 64)


def test_out_of_memory_in_the_cli_evaluation_after_training_is_retried(work, capsys, monkeypatch):
    real_build = prepare_mod.build_model

    def build(spec, dim, image_shape=None):
        m = real_build(spec, dim, image_shape)
        m.nets["x"].mlp = OOMAbove(m.nets["x"].mlp, limit=100)  # training batches (16 rows) fit; the IW chunks do not
        return m

    monkeypatch.setattr(prepare_mod, "build_model", build)
    rc, out, err = cli(capsys, "train", "--out", work / "out", *TINY, *SYNTH, "--iw-samples", "64")
    assert rc == 0, err
    assert "note: evaluation ran out of memory on cpu in chunks of" in err
    assert json.loads((work / "out" / "metrics.json").read_text())["log_likelihood"] is not None


def test_out_of_memory_in_pyro_vae_evaluate_is_retried(trained_run, capsys, monkeypatch):
    import pyro_vae.evaluation.estimators as ev
    real, budgets = ev.evaluate_points, []

    def evaluate_points(*args, budget=ev.DEFAULT_BUDGET, **kw):
        budgets.append(budget)
        if budget > 2**12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(*args, budget=budget, **kw)

    monkeypatch.setattr(ev, "evaluate_points", evaluate_points)
    rc, out, err = cli(capsys, "evaluate", trained_run, "--iw-samples", "4", "--budget", str(2**14), "--json")
    assert rc == 0, err
    assert budgets == [2**14, 2**13, 2**12]
    assert "in chunks of 16384 elements; it ran in chunks of 4096" in err
    assert json.loads(out)["num_points"] == 8


def test_out_of_memory_in_training_names_batch_size_and_device_memory(work, capsys, monkeypatch):
    real_build = prepare_mod.build_model

    def build(spec, dim, image_shape=None):
        m = real_build(spec, dim, image_shape)
        m.nets["x"].mlp = OOMAbove(m.nets["x"].mlp, limit=8, only_no_grad=False)  # a batch of 16 does not fit
        return m

    monkeypatch.setattr(prepare_mod, "build_model", build)
    line = user_error(capsys, "train", "--out", work / "out", *TINY, *SYNTH)
    assert "out of memory while training on cpu with train.batch_size = 16" in line
    assert "GiB" in line and "lower train.batch_size" in line


def test_cuda_device_memory_is_described(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 70 * 2**30)
    err = runtime_memory.training_oom_error(torch.OutOfMemoryError("CUDA out of memory."), torch.device("cuda", 0), 512, 4)
    msg = str(err)
    assert "cuda:0" in msg and "train.batch_size = 512 x 4 particles" in msg
    assert "80.0 GiB total, 2.0 GiB free, 70.0 GiB held by PyTorch" in msg
    assert "train.num_particles" in msg


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_checkpoint_round_trips_to_cpu(tmp_path):  # pragma: no cover - GPU only
    model = _vae().cuda()
    t = Trainer(model, TrainConfig(epochs=1, batch_size=16, device="cuda"), run_dir=tmp_path, progress=False)
    t.fit(torch.randn(64, 5))
    payload = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(v.device.type == "cpu" for v in payload["model"].values())
