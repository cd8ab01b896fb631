"""torch's thread count per run: the auto policy's decisions, who wins over it, bad settings, and what a run says."""

import json
import subprocess
import sys
import time

import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.diagnostics.sizing import few_threads
from pyro_vae.errors import PyroVAEError
from pyro_vae.runtime import threads as th
from pyro_vae.runtime.threads import (WORK_PER_THREAD, MachineLoad, ThreadChoice, check_setting, choose_threads,
                                      fixed_by_user, machine_load, use_threads)

BIG = 100 * WORK_PER_THREAD  # a step large enough that only the cores bound the count


@pytest.fixture
def four_cores(monkeypatch):
    """torch's start-up default is 4 threads, so a current count of 4 means nobody changed it."""
    monkeypatch.setattr(th, "_physical_cores", lambda: 4)
    return 4


def never_measured():
    raise AssertionError("the load was measured for a choice that does not depend on it")


def auto(work=BIG, load=never_measured, env=None, current=4, **kw):
    return choose_threads("auto", work=work, load=load, env=env or {}, current=current, **kw)


def test_a_busy_machine_gets_one_thread(four_cores):
    choice = auto(load=MachineLoad(cores=2, busy=1.0, load=1.3))
    assert (choice.threads, choice.source) == (1, "auto")
    assert choice.line() == "threads: 1 (auto: 1 of 2 cores busy, load 1.3)"


def test_an_idle_machine_gets_its_free_cores_for_a_large_step(four_cores):
    assert auto(load=MachineLoad(cores=2, busy=0.05, load=0.1)).line() == "threads: 2 (auto: 2 of 2 cores free, load 0.1)"
    assert auto(load=MachineLoad(cores=8, busy=2.6, load=3.0)).threads == 5  # 3 of 8 busy
    # a core counts as busy from BUSY_SHARE of it on: a thread sharing it would stall every barrier
    assert auto(load=MachineLoad(cores=2, busy=th.BUSY_SHARE - 0.01, load=0.2)).threads == 2
    assert auto(load=MachineLoad(cores=2, busy=th.BUSY_SHARE + 0.01, load=0.3)).threads == 1


def test_the_step_size_bounds_the_count(four_cores):
    idle16 = MachineLoad(cores=16, busy=0.0, load=0.0)
    assert auto(work=3 * WORK_PER_THREAD, load=idle16).threads == 3
    assert auto(work=None, load=idle16).threads == 16  # batched work (evaluation): the cores alone
    small = auto(work=2 * WORK_PER_THREAD - 1)  # never measures the load
    assert small.threads == 1 and "small step" in small.reason


def test_the_processes_of_one_job_share_the_free_cores(four_cores):
    idle8 = MachineLoad(cores=8, busy=0.0, load=0.0)
    assert auto(load=idle8, env={"LOCAL_WORLD_SIZE": "4"}).threads == 2
    assert auto(load=MachineLoad(cores=2, busy=0.0, load=0.0), env={"LOCAL_WORLD_SIZE": "4"}).threads == 1


def test_cuda_runs_keep_torchs_count(four_cores):
    choice = auto(device="cuda")
    assert (choice.threads, choice.source) == (4, "auto") and "cuda" in choice.reason


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_the_users_environment_wins_over_auto(four_cores, name):
    choice = auto(env={name: "3"}, current=3)
    assert (choice.threads, choice.source) == (3, "env") and f"{name}=3" in choice.reason
    # a value torch ignores is ignored here too
    assert auto(env={name: "many"}, load=MachineLoad(2, 1.0, 1.0)).source == "auto"


def test_an_explicit_count_wins_over_everything(four_cores):
    choice = choose_threads(2, work=10, env={"OMP_NUM_THREADS": "3"}, current=3, load=never_measured)
    assert (choice.threads, choice.source, choice.reason) == (2, "config", "train.threads = 2")


def test_a_callers_own_set_num_threads_wins_over_auto(four_cores):
    choice = auto(current=3)
    assert (choice.threads, choice.source) == (3, "caller")


@pytest.mark.parametrize("bad", [0, -1, "many", 2.5, True, 5000, None])
def test_bad_settings_are_refused_in_one_line(bad):
    with pytest.raises(PyroVAEError, match=r"^train\.threads: must be 'auto' or an integer in \[1, 1024\]"):
        check_setting(bad)
    with pytest.raises(PyroVAEError, match=r"^train\.threads: ") as e:
        pv.config_from_dict({"train": {"threads": bad}})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_cli_refuses_bad_thread_counts_with_status_2_writing_nothing(tmp_path, capsys, bad):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--threads", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pyro-vae: error: argument --threads: must be 'auto' or an integer in [1, 1024] (a thread count "
                   f"such as 1), got '{bad}': see 'pyro-vae train --help'"]
    assert main(["train", "--out", str(out), "--set", f"train.threads={bad}"]) == 2
    assert capsys.readouterr().err.startswith("pyro-vae: error: train.threads: ")
    for command in (["demo", "--out", str(out)], ["evaluate", str(out)], ["diagnose", str(out), "--out", str(out)]):
        assert main([*command, "--threads", bad]) == 2
    assert not out.exists()


def test_config_round_trip_of_the_key(tmp_path):
    for value in ("auto", 3):
        cfg = pv.config_from_dict({"train": {"threads": value}})
        path = tmp_path / f"{value}.toml"
        path.write_text(cfg.to_toml())
        assert load_config(path).train.threads == value
    assert pv.Config().train.threads == "auto"


def test_use_threads_sets_the_count_for_the_block_and_restores_it():
    old = torch.get_num_threads()
    other = 1 if old != 1 else 2
    with use_threads(ThreadChoice(other, "auto", "test")):
        assert torch.get_num_threads() == other
        assert not fixed_by_user()  # auto's own count: the tiny-step helpers may lower it
        with use_threads(ThreadChoice(other, "config", "test")):
            assert fixed_by_user()
        assert not fixed_by_user()
    assert torch.get_num_threads() == old


def test_tiny_diagnostic_steps_keep_a_count_the_user_set():
    model = torch.nn.Linear(4, 4)
    x = {"x": torch.zeros(8, 4)}  # diagnostics' points: named arrays
    with use_threads(ThreadChoice(2, "auto", "test")):
        with few_threads(model, x):
            assert torch.get_num_threads() == 1
    with use_threads(ThreadChoice(2, "config", "test")):
        with few_threads(model, x):
            assert torch.get_num_threads() == 2


def test_machine_load_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        probe = machine_load(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert probe.measured and probe.cores >= 1
    # the spinner holds a core unless others already fill every core: either way at least half of one is busy
    assert 0.5 <= probe.busy <= probe.cores + 0.1
    assert probe.busy_cores >= 1


def test_a_run_prints_its_choice_once_and_records_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--quiet", "--no-plots", "--out", str(out), "--iw-samples", "5", "--set", "train.epochs=1",
                 "--set", "model.latent_dim=2", "--set", "model.encoder.hidden=[8]",
                 "--set", "model.decoder.hidden=[8]"]) == 0
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if line.startswith("threads: ")]
    assert len(said) == 1, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert said[0] == f"threads: {metrics['threads']} ({metrics['threads_reason']})"
    assert 'threads = "auto"' in (out / "config.toml").read_text()  # the setting, not the count it resolved to
    assert main(["evaluate", str(out), "--iw-samples", "5", "--threads", "1"]) == 0
    assert [l for l in capsys.readouterr().err.splitlines() if l.startswith("threads: ")] == ["threads: 1 (threads = 1)"]


def test_pv_fit_honours_the_config_key():
    cfg = pv.config_from_dict({"data": {"source": "synthetic", "num_points": 64, "synthetic_dim": 4},
                               "model": {"latent_dim": 2, "likelihood": "normal", "encoder": {"hidden": [8]},
                                         "decoder": {"hidden": [8]}},
                               "train": {"epochs": 1, "batch_size": 32, "threads": 1}})
    data = pv.load_data(cfg.data, "normal")
    model = pv.build_model(cfg.model, data.dim)
    old = torch.get_num_threads()
    trainer = pv.fit(model, data.train, None, cfg.train, progress=False)
    assert (trainer.threads.threads, trainer.threads.source) == (1, "config")
    assert torch.get_num_threads() == old


def test_a_resume_under_auto_keeps_the_count_the_run_trained_with(tmp_path, capsys, monkeypatch):
    for name in th.ENV_VARS:  # the environment would win over auto
        monkeypatch.delenv(name, raising=False)
    # the count now as auto's own, so that it does not read as the caller's choice either
    with use_threads(ThreadChoice(torch.get_num_threads(), "auto", "this test")):
        resume_keeps_the_count(tmp_path / "r", capsys)


def resume_keeps_the_count(out, capsys):
    tiny = ["--quiet", "--no-plots", "--iw-samples", "5", "--set", "model.latent_dim=2",
            "--set", "model.encoder.hidden=[8]", "--set", "model.decoder.hidden=[8]"]
    assert main(["train", "--out", str(out), "--threads", "2", "--set", "train.epochs=1", *tiny]) == 0
    assert "threads: 2 (train.threads = 2)" in capsys.readouterr().err.splitlines()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["threads"] == 2
    # auto alone would take one thread for this small step; the resume keeps 2 so that it continues bit for bit
    assert main(["train", "--resume", str(out), "--threads", "auto", "--set", "train.epochs=2", *tiny[:4]]) == 0
    said = [l for l in capsys.readouterr().err.splitlines() if l.startswith("threads: ")]
    assert said == ["threads: 2 (auto: 2, the count this run trained with, so that it resumes bit for bit)"]
    assert json.loads((out / "metrics.json").read_text())["threads"] == 2
    assert 'threads = "auto"' in (out / "config.toml").read_text()
