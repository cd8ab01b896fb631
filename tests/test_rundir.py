"""Run directories keep what is not theirs: no deletion of user files, one writer at a time, honest resumes."""

import json
import multiprocessing
import os
import shutil
import signal
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyro_vae as pv
from pyro_vae import cli as cli_module
from pyro_vae.app import pipeline
from pyro_vae.cli import main

TINY = ["--set", "data.source=synthetic", "--set", "data.num_points=80", "--set", "data.synthetic_dim=5",
        "--set", "model.likelihood=normal", "--set", "model.latent_dim=2", "--set", "model.encoder.hidden=[8]",
        "--set", "model.decoder.hidden=[8]", "--set", "train.batch_size=16", "--set", "train.epochs=1",
        "--quiet", "--no-plots", "--iw-samples", "4"]


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(capsys, *args) -> str:
    rc, out, err = cli(capsys, *args)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), err
    return lines[0]


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


# -- never delete what the library did not create -------------------------------------------------


def test_demo_never_empties_a_folder_with_user_files(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "mine" / "plots").mkdir()
    (tmp_path / "mine" / "plots" / "figure1.png").write_bytes(b"mine too")
    before = tree(tmp_path)
    line = one_error_line(capsys, "demo", "--out", tmp_path / "mine", "--epochs", "1")
    assert "did not write" in line and "thesis.tex" in line
    assert tree(tmp_path) == before


def test_demo_into_the_working_directory_leaves_it_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    line = one_error_line(capsys, "demo", "--out", ".", "--epochs", "1")
    assert "notes.txt" in line
    assert tree(tmp_path) == {"notes.txt": b"keep me"}


def test_demo_replaces_only_its_own_previous_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    first = tree(out)
    assert {"config.toml", "checkpoint.pt", "history.csv", "metrics.json"} <= set(first)
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--epochs", "2"]) == 0
    again = tree(out)
    assert set(again) == set(first)
    assert "epochs = 2" in again["config.toml"].decode()


def test_train_into_a_folder_with_a_run_needs_resume(trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    before = tree(copy)
    line = one_error_line(capsys, "train", "--out", copy, *TINY)
    assert "already holds a run" in line and "--resume" in line
    assert tree(copy) == before


# -- one writer per run directory -------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from pyro_vae.store.lock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(folder: Path, seconds: float):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_run(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree(run)
    proc = _holder(run, 30)
    try:
        line = one_error_line(capsys, "train", "--resume", run, "--set", "train.epochs=2", "--quiet", "--no-plots",
                              "--iw-samples", "4")
        assert "in use by another pyro-vae process" in line and f"pid {proc.pid}" in line
        assert {k: v for k, v in tree(run).items() if k != ".lock"} == before
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_recovered(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    proc = _holder(run, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").exists()  # stale: its holder is gone, the kernel dropped the flock
    rc, out, err = cli(capsys, "train", "--resume", run, "--set", "train.epochs=2", "--quiet", "--no-plots",
                       "--iw-samples", "4")
    assert rc == 0, err
    assert not (run / ".lock").exists()
    assert len(pv.load_run(run).history) == 2


def _train_into(out: str, queue):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--out", out, *TINY, "--set", "train.epochs=3"])
    queue.put((rc, err.getvalue()))


@pytest.mark.slow
def test_two_concurrent_trainings_into_one_folder_never_mix(tmp_path):
    out = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_train_into, args=(out, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "in use by another pyro-vae process" in loser or "already holds a run" in loser, loser
    run = pv.load_run(out)
    assert len(run.history) == 3 and not Path(out, ".lock").exists()


# -- honest resumes -------------------------------------------------------------------------------


def test_resume_with_another_out_is_refused(trained, tmp_path, capsys):
    line = one_error_line(capsys, "train", "--resume", trained, "--out", tmp_path / "other", "--quiet")
    assert "in place" in line and "--out" in line
    assert not (tmp_path / "other").exists()


def test_resume_with_fewer_epochs_than_trained_is_refused_and_keeps_the_config(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", "--quiet", "--no-plots",
                 "--iw-samples", "4"]) == 0
    capsys.readouterr()
    before = tree(run)
    line = one_error_line(capsys, "train", "--resume", run, "--set", "train.epochs=2", "--quiet")
    assert "train.epochs = 2" in line and "already trained 3 epochs" in line
    assert tree(run) == before


def test_a_run_without_a_checkpoint_restarts_in_place(tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    cfg = pv.config_from_dict({"data": {"source": "synthetic", "num_points": 80, "synthetic_dim": 5},
                               "model": {"likelihood": "normal", "latent_dim": 2, "encoder": {"hidden": [8]},
                                         "decoder": {"hidden": [8]}},
                               "train": {"epochs": 1, "batch_size": 16}})
    (half / "config.toml").write_text(cfg.to_toml())
    rc, out, err = cli(capsys, "train", "--resume", half, "--quiet", "--no-plots", "--iw-samples", "4")
    assert rc == 0, err
    assert "no checkpoint.pt" in err and "afresh in place" in err
    assert len(pv.load_run(half).history) == 1


def test_a_run_without_a_checkpoint_but_with_user_files_is_not_restarted(tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.toml").write_text('[data]\nsource = "synthetic"\n')
    (half / "notes.md").write_text("mine")
    before = tree(tmp_path)
    line = one_error_line(capsys, "train", "--resume", half, "--quiet")
    assert "no checkpoint.pt" in line and "notes.md" in line
    assert tree(tmp_path) == before


def test_resume_prints_what_this_process_trained(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    rc, out, err = cli(capsys, "train", "--resume", run, "--set", "train.epochs=3", "--quiet", "--no-plots",
                       "--iw-samples", "4")
    assert rc == 0, err
    line = next(l for l in out.splitlines() if l.startswith("trained"))
    assert line.startswith("trained epochs 2-3 (2 this time, 3 in all) in ")
    history = pv.load_run(run).history
    shown = float(line.split(") in ")[1].split(" s of training")[0])
    assert shown == pytest.approx(sum(h["seconds"] for h in history[1:]), abs=0.051)


def test_a_resume_after_a_stop_in_the_final_evaluation_says_every_epoch_was_trained(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def stopped(*args, **kwargs):  # Ctrl-C in the final evaluation, after the last epoch's checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_final_evaluation", stopped)
    rc, _, err = cli(capsys, "train", "--out", out, *TINY, "--set", "train.epochs=2")
    assert rc == 130 and not (out / "metrics.json").exists(), err
    monkeypatch.undo()
    rc, text, err = cli(capsys, "train", "--resume", out, "--quiet", "--no-plots", "--iw-samples", "4")
    assert rc == 0, err
    assert "note: all 2 epochs already trained; running the final evaluation" in err.splitlines()
    line = next(l for l in text.splitlines() if "already trained" in l)
    assert line.startswith("all 2 epochs already trained, none this time; ") and "epochs 3-2" not in text
    assert (out / "metrics.json").exists() and len(pv.load_run(out).history) == 2


@pytest.mark.parametrize("start_epoch, start_batch, last, said", [
    (0, 0, 1, "trained 1 epoch"),
    (0, 0, 3, "trained 3 epochs"),
    (2, 0, 3, "trained epoch 3 (1 this time, 3 in all)"),
    (1, 0, 3, "trained epochs 2-3 (2 this time, 3 in all)"),
    (2, 4, 3, "trained the rest of epoch 3 (3 in all)"),
    (1, 4, 3, "trained the rest of epoch 2 and epoch 3 (3 in all)"),
    (0, 4, 4, "trained the rest of epoch 1 and epochs 2-4 (4 in all)"),
])
def test_the_timing_line_names_the_epochs_this_process_trained(start_epoch, start_batch, last, said):
    assert cli_module._what_trained(start_epoch, start_batch, last) == said


@pytest.mark.parametrize("epoch, batch, epochs, said", [
    (3, 0, 3, "note: all 3 epochs already trained; running the final evaluation"),
    (1, 0, 1, "note: its one epoch already trained; running the final evaluation"),
    (1, 0, 3, "resuming after epoch 1 of 3"),
    (1, 5, 3, "resuming in epoch 2 of 3, after its batch 5"),
    (0, 0, 3, "resuming at the start of epoch 1 of 3 (the run stopped before its first step)"),
])
def test_a_resume_says_where_it_picks_up(epoch, batch, epochs, said):
    assert pipeline._resume_note(epoch, batch, epochs) == said


def test_a_checkpoint_from_another_run_is_not_evaluated_under_this_config(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    text = (run / "config.toml").read_text().replace("latent_dim = 2", "latent_dim = 3")
    (run / "config.toml").write_text(text)
    line = one_error_line(capsys, "evaluate", run, "--iw-samples", "2")
    assert "model.latent_dim = 2" in line and "different runs" in line


def test_a_damaged_metrics_json_does_not_break_commands_that_do_not_need_it(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "metrics.json").write_bytes(b"\x00{not json")
    assert pv.load_run(run).metrics is None
    rc, out, err = cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "s.npy")
    assert rc == 0, err
    rc, out, err = cli(capsys, "evaluate", run, "--iw-samples", "2", "--json")
    assert rc == 0, err and json.loads(out)["num_points"] > 0


@pytest.mark.parametrize("drop", ["config", "data_dim", "model", "train_state"])
def test_a_hand_made_checkpoint_without_a_key_is_one_line(trained, tmp_path, capsys, drop):
    from pyro_vae.store.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    payload = load_checkpoint(run / "checkpoint.pt")
    del payload[drop]
    for k in ("format", "format_version"):
        payload.pop(k)
    save_checkpoint(payload, run / "checkpoint.pt")
    line = one_error_line(capsys, "evaluate", run, "--iw-samples", "2")
    assert repr(drop) in line and "not written by pyro_vae train" in line


def test_a_path_with_odd_characters_keeps_the_runs_config_valid(tmp_path, capsys):
    import numpy as np

    folder = tmp_path / 'we"ird\\ name\tx'
    folder.mkdir()
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(80, 5)).astype("float32"))
    out = tmp_path / "run"
    rest = [a for i, a in enumerate(TINY) if not a.startswith("data.") and not (a == "--set" and TINY[i + 1].startswith("data."))]
    rc, _, err = cli(capsys, "train", "--out", out, "--set", f"data.train={folder / 'x.npy'}", *rest)
    assert rc == 0, err
    assert pv.load_config(out / "config.toml").data.train == str(folder / "x.npy")


# -- sample ---------------------------------------------------------------------------------------


def test_sample_writes_into_the_run_by_default(trained, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "sample", run, "-n", "3")
    assert rc == 0, err
    assert (run / "samples-seed0.npy").exists() and sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.parametrize("target", ["folder", "readonly"])
def test_sample_into_a_bad_output_path_is_one_line(trained, tmp_path, capsys, target):
    if target == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o500)
        out = tmp_path / "ro" / "s.npy"
    else:
        out = tmp_path
    one_error_line(capsys, "sample", trained, "-n", "2", "--out", out)


# -- faults while writing ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs: the full-disk tests need a disk that really fills (root and mount rights)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_disk_that_fills_during_training_ends_in_one_line(small_disk, capsys):
    out = small_disk / "run"
    # wide layers make a checkpoint (~2 MiB) larger than the whole disk
    line = one_error_line(capsys, "train", "--out", out, *TINY, "--set", "model.encoder.hidden=[500, 500]")
    assert "No space left on device" in line and "free disk space" in line
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def test_a_disk_that_fills_during_plots_ends_in_one_line(small_disk, capsys):
    pytest.importorskip("matplotlib")
    out = small_disk / "run"
    # the run itself fits; filling the rest of the disk first leaves no room for the plots
    filler = small_disk / "filler"
    args = [a for a in TINY if a != "--no-plots"]
    with open(filler, "wb") as f:
        f.write(b"\0" * (1536 * 1024 - 80 * 1024))
    rc, out_text, err = cli(capsys, "train", "--out", out, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("pyro-vae: error: ") and "No space left on device" in lines[-1], err


SECOND_CTRL_C = textwrap.dedent("""
    import os, signal, sys
    import pyro_vae.store.checkpoint as C
    from pyro_vae.cli import main

    calls, real_write = [0], C.write_payload
    def write(payload, f):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint: Ctrl-C twice as it is being written
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real_write(payload, f)
    C.write_payload = write
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_second_ctrl_c_during_a_checkpoint_write_is_one_line_and_the_checkpoint_is_whole(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, "train", "--out", str(out), *TINY,
                        "--set", "train.epochs=3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == ["pyro-vae: interrupted"], r.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert len(pv.load_run(out).history) == 2  # the second signal waited: the checkpoint being written, whole
    rc = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", str(out), "--quiet", "--no-plots",
                         "--iw-samples", "4"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert len(pv.load_run(out).history) == 3


def test_the_final_evaluation_fits_its_cost_to_the_test_set(tmp_path, capsys):
    from pyro_vae.app.evaluate import default_iw_samples

    args = [a for a in TINY]
    i = args.index("--iw-samples")
    del args[i:i + 2]
    rc, out, err = cli(capsys, "train", "--out", tmp_path / "run", *args)
    assert rc == 0, err
    assert "evaluating on 8 test points (1000 importance samples each)" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iw_samples"] == 1000
    # a Fashion-MNIST-sized test set gets 200 a point: 2 million draws, not 10 million
    assert [default_iw_samples(n) for n in (180, 2000, 2001, 10000, 10**6)] == [1000, 1000, 999, 200, 100]


def test_a_point_mass_guide_is_not_reported_as_an_elbo(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", "--out", tmp_path / "ae", *TINY, "--set", "model.guide=delta")
    assert rc == 0, err
    assert "test objective (not a bound)" in out and "test ELBO" not in out


def test_a_long_evaluation_shows_progress_and_the_bar_changes_no_number(trained, capsys):
    run = pv.load_run(trained)
    x = pv.load_run_data(run).test
    capsys.readouterr()
    shown = pv.evaluate(run.model, x, iw_samples=20, progress=True)
    err = capsys.readouterr().err
    # a bar over the draws, every point's K of them at least (it moves with a large K), cleared when done
    total = re.search(r"evaluating: .*?/(\d+) \[", err)
    assert total is not None and int(total.group(1)) % len(x) == 0 and int(total.group(1)) >= 20 * len(x), err
    assert shown == {**pv.evaluate(run.model, x, iw_samples=20), "seconds_evaluate": shown["seconds_evaluate"]}


@pytest.mark.parametrize("change", [["--set", "model.latent_dim=3"], ["--set", "data.synthetic_dim=6"],
                                    ["--set", "train.batch_size=1000"]])
def test_a_resume_that_does_not_fit_the_run_fails_before_config_toml_is_rewritten(trained, tmp_path, capsys, change):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree(run)
    one_error_line(capsys, "train", "--resume", run, "--set", "train.epochs=2", *change, "--quiet", "--no-plots")
    assert tree(run) == before
