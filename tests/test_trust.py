"""A run folder from someone else is data: no program it names runs unless the user names it or opts in.

Each attack is a run folder crafted from a real one, as a sender could make it: a checkpoint and config.toml
naming ``os:system`` (or ``subprocess:getoutput``, ``builtins:eval``) with a shell command as its argument, a
module carried inside the run folder, a module in the current directory, a source edited after training, a
checkpoint without its config.toml. Every command that reads a run folder (evaluate, sample, diagnose, report,
train --resume, pv.load_run) must refuse in one line that names the opt-in, leave no marker file (no code ran) and
write nothing; with the opt-in, or the program given with --program-path or installed, the same commands work.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.store import trust

MODULE = "trusted_user_models"

SOURCE = textwrap.dedent('''
    import os

    import torch
    import torch.nn as nn
    import pyro
    import pyro.distributions as dist

    # a module's top-level code runs when it is imported: the marker says whether it was
    if os.environ.get("PYRO_VAE_TEST_MARKER"):
        with open(os.environ["PYRO_VAE_TEST_MARKER"], "a") as f:
            f.write("imported " + __name__ + "\\n")


    class TinyVAE:
        latent_sites = ("z",)
        obs_site = "x"

        def __init__(self, data_dim, latent_dim=2, hidden=8):
            self.data_dim, self.latent_dim = data_dim, latent_dim
            self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
            self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.encoder(x).split(self.latent_dim, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


    def make_tiny(data_dim, hidden=8) -> TinyVAE:
        return TinyVAE(data_dim, hidden=hidden)


    def unannotated_factory(data_dim, hidden=8):
        return TinyVAE(data_dim, hidden=hidden)
''')

TOML = textwrap.dedent('''
    [data]
    source = "synthetic"
    num_points = 120
    synthetic_dim = 4

    [model]
    program = "{program}"

    [model.args]
    hidden = 8

    [train]
    elbo = "trace"
    epochs = 1
    batch_size = 40
    device = "cpu"
''')

FAST = ["--quiet", "--iw-samples", "5", "--no-plots"]
DIAGNOSE = ["--points", "2", "--reference", "none", "--draws", "40", "--local-steps", "0", "--sbc-sims", "0", "--quiet"]


@pytest.fixture(autouse=True)
def _forget_imported_test_modules():
    """Python keeps one module per name: each test's modules are imported afresh from its own folders."""
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("carried", "cwd_models", "edited_models", "installedpkg")]:
        del sys.modules[name]


def _marker_env(monkeypatch, tmp_path):
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("PYRO_VAE_TEST_MARKER", str(marker))
    return marker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    (folder / "cfg.toml").write_text(TOML.format(program=f"{MODULE}:TinyVAE"))
    return folder


@pytest.fixture(scope="module")
def trained(project):
    out = project / "run"
    assert main(["train", str(project / "cfg.toml"), "--out", str(out), *FAST]) == 0
    return out


def _copy(run, tmp_path, name="received"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _rewrite_model(run_dir, **model):
    """Edit both copies of the model section, as a sender crafting a folder would (they agree, so the run loads;
    a relative program_dir in config.toml is read relative to the run folder)."""
    text = (run_dir / "config.toml").read_text()
    head, _, rest = text.partition("[model]\n")
    body, sep, tail = rest.partition("\n[train]")
    lines = [f"{k} = {json.dumps(v)}" for k, v in model.items() if not isinstance(v, dict)]
    for k, v in model.items():
        if isinstance(v, dict):
            lines.append(f"{k} = {{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }")
    (run_dir / "config.toml").write_text(head + "[model]\n" + "\n".join(lines) + "\n" + sep + tail)
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["config"]["model"] = dict(model)
    if model.get("program_dir") == ".":
        payload["config"]["model"]["program_dir"] = str(run_dir.absolute())
    torch.save(payload, run_dir / "checkpoint.pt")


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


COMMANDS = {
    "evaluate": lambda run, tmp: ["evaluate", str(run), "--iw-samples", "5"],
    "sample": lambda run, tmp: ["sample", str(run), "-n", "3", "--out", str(tmp / "s.npy")],
    "diagnose": lambda run, tmp: ["diagnose", str(run), "--out", str(tmp / "diag"), *DIAGNOSE],
    "report": lambda run, tmp: ["report", str(run), "--out", str(tmp / "rep"), *DIAGNOSE],
    "resume": lambda run, tmp: ["train", "--resume", str(run), "--set", "train.epochs=2", *FAST],
}


def _refused(argv, run, tmp_path, capsys, marker, words):
    before = _listing(run)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pyro-vae: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not marker.exists(), "code from the run folder ran"
    assert _listing(run) == before, "the run folder changed"
    for out in ("s.npy", "diag", "rep"):
        assert not (tmp_path / out).exists(), out
    return err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("callable_, args", [
    ("os:system", {"command": "echo ran >> {marker}"}),
    ("subprocess:getoutput", {"cmd": "echo ran >> {marker}"}),
    ("builtins:eval", {"source": "open({marker!r}, 'a').write('ran')"}),
])
def test_a_crafted_run_naming_a_callable_runs_nothing(trained, tmp_path, capsys, monkeypatch, command, callable_, args):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _copy(trained, tmp_path)
    _rewrite_model(run, program=callable_, args={k: v.format(marker=str(marker)) for k, v in args.items()})
    err = _refused(COMMANDS[command](run, tmp_path), run, tmp_path, capsys, marker, [f"model.program = {callable_!r}"])
    assert "not defined in" in err or "not a class" in err or "names no model class" in err


def test_pv_load_run_of_a_crafted_run_naming_os_system_runs_nothing(trained, tmp_path, monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _copy(trained, tmp_path)
    _rewrite_model(run, program="os:system", args={"command": f"echo ran >> {marker}"})
    with pytest.raises(pv.PyroVAEError, match="'system' is not defined in 'os'"):
        pv.load_run(run)
    with pytest.raises(pv.PyroVAEError, match="not defined in 'os'"):
        pv.load_run(run, trust_code=True)  # trusting a run's code does not make os.system a model
    assert not marker.exists()


def _carrying_run(trained, tmp_path, program_dir):
    """A run folder that carries its own module (a copy of the program, with a marker at import)."""
    run = _copy(trained, tmp_path)
    (run / "carried.py").write_text(SOURCE)
    _rewrite_model(run, program="carried:TinyVAE", args={"hidden": 8}, program_dir=str(program_dir(run)))
    return run


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["the run folder, absolute", "the run folder, relative"])
def test_a_module_inside_a_received_run_folder_is_not_imported(trained, tmp_path, capsys, monkeypatch, command, where):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _carrying_run(trained, tmp_path, (lambda r: r) if "absolute" in where else (lambda r: "."))
    err = _refused(COMMANDS[command](run, tmp_path), run, tmp_path, capsys, marker,
                   ["model.program = 'carried:TinyVAE'", "carried.py", "--trust-run-code", "--program-path"])
    assert "has not trained from" in err


def test_the_opt_in_runs_the_carried_module_and_every_command_works(trained, tmp_path, capsys, monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _carrying_run(trained, tmp_path, lambda r: r)
    with pytest.raises(pv.PyroVAEError, match="trust_code=True"):
        pv.load_run(run)
    assert not marker.exists()
    loaded = pv.load_run(run, trust_code=True)
    assert type(loaded.model).__name__ == "TinyVAE" and marker.read_text() == "imported carried\n"
    for command, argv in COMMANDS.items():
        assert main(argv(run, tmp_path) + ["--trust-run-code"]) == 0, command


def test_the_program_given_with_program_path_works_without_trusting_the_run(trained, project, tmp_path, capsys,
                                                                          monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _carrying_run(trained, tmp_path, lambda r: r)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "carried.py").write_text(SOURCE)  # the same code, in a folder of the user's choosing
    for command, argv in COMMANDS.items():
        assert main(argv(run, tmp_path) + ["--program-path", str(mine)]) == 0, command
    assert pv.load_run(run, program_path=mine).model.data_dim == 4
    # imported from the user's folder, never from the one the run carries
    assert marker.read_text() == "imported carried\n"


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_module_in_the_current_directory_is_not_imported(trained, tmp_path, capsys, monkeypatch, command):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _copy(trained, tmp_path)
    _rewrite_model(run, program="cwd_models:TinyVAE", args={"hidden": 8}, program_dir=str(tmp_path / "gone"))
    here = tmp_path / "here"
    here.mkdir()
    (here / "cwd_models.py").write_text(SOURCE)
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # as `python -m` puts the working directory first on sys.path
    _refused(COMMANDS[command](run, tmp_path), run, tmp_path, capsys, marker,
             ["no module named 'cwd_models'", "installed packages"])
    assert "cwd_models" not in sys.modules
    # the user names the folder: the same command works
    assert main(COMMANDS[command](run, tmp_path) + ["--program-path", "."]) == 0
    assert marker.read_text() == "imported cwd_models\n"


def test_the_users_own_run_works_without_a_flag_until_its_source_is_edited(project, tmp_path, capsys, monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    own = tmp_path / "own"
    own.mkdir()
    (own / "edited_models.py").write_text(SOURCE)
    (own / "cfg.toml").write_text(TOML.format(program="edited_models:TinyVAE"))
    run = tmp_path / "run"
    assert main(["train", str(own / "cfg.toml"), "--out", str(run), *FAST]) == 0
    recorded = (run / "config.toml").read_text()
    assert f'program_file = "{own / "edited_models.py"}"' in recorded and "program_sha256 = " in recorded
    assert main(["evaluate", str(run), "--iw-samples", "5"]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", *FAST]) == 0
    marker.unlink()
    (own / "edited_models.py").write_text(SOURCE + "\n# edited after training\n")
    err = _refused(COMMANDS["evaluate"](run, tmp_path), run, tmp_path, capsys, marker,
                   ["changed since", "--trust-run-code"])
    assert "has not trained from" not in err  # the user did train from this file: the edit is the problem
    for command in ("sample", "diagnose", "report", "resume"):
        _refused(COMMANDS[command](run, tmp_path), run, tmp_path, capsys, marker, ["changed since"])
    with pytest.raises(pv.PyroVAEError, match="changed since"):
        pv.load_run(run)
    assert main(["evaluate", str(run), "--iw-samples", "5", "--trust-run-code"]) == 0


def test_a_program_installed_as_a_package_works_without_a_flag(trained, tmp_path, capsys, monkeypatch):
    run = _copy(trained, tmp_path)
    site = tmp_path / "site-packages"
    (site / "installedpkg").mkdir(parents=True)
    (site / "installedpkg" / "__init__.py").write_text("")
    (site / "installedpkg" / "models.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(site))
    _rewrite_model(run, program="installedpkg.models:TinyVAE", args={"hidden": 8})
    assert main(["evaluate", str(run), "--iw-samples", "5"]) == 0
    assert type(pv.load_run(run).model).__name__ == "TinyVAE"


def test_a_checkpoint_without_its_config_toml_is_refused(trained, tmp_path, capsys, monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _copy(trained, tmp_path)
    _rewrite_model(run, program="os:system", args={"command": f"echo ran >> {marker}"})
    (run / "config.toml").unlink()
    for command in ("evaluate", "sample", "diagnose", "report"):
        _refused(COMMANDS[command](run, tmp_path), run, tmp_path, capsys, marker, ["no config.toml"])
    with pytest.raises(pv.PyroVAEError, match="no config.toml"):
        pv.load_run(run)


def test_a_checkpoint_that_disagrees_with_config_toml_is_refused(trained, tmp_path, capsys, monkeypatch):
    marker = _marker_env(monkeypatch, tmp_path)
    run = _copy(trained, tmp_path)
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["config"]["model"]["program"] = "os:system"
    torch.save(payload, run / "checkpoint.pt")
    _refused(COMMANDS["evaluate"](run, tmp_path), run, tmp_path, capsys, marker,
             ["checkpoint.pt was trained with model.program = 'os:system'", "config.toml says"])


@pytest.mark.parametrize("attr, words", [
    ("make_tiny", None),
    ("unannotated_factory", "names no model class"),
    ("torch", "is not defined in"),
])
def test_only_a_model_class_or_an_annotated_factory_defined_in_the_module_is_called(project, tmp_path, capsys,
                                                                                     attr, words):
    cfg = project / f"cfg-{attr}.toml"  # beside the module, which this session has imported from there already
    cfg.write_text(TOML.format(program=f"{MODULE}:{attr}"))
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", str(cfg), "--out", str(out), *FAST])
    if words is None:
        assert code == 0
    else:
        assert code == 2 and words in capsys.readouterr().err and not out.exists()


def test_the_trust_record_lives_outside_every_run_folder(trained):
    record = trust.trust_file()
    assert record.is_file() and trained.resolve() not in record.resolve().parents
    saved = json.loads(record.read_text())
    assert saved["format"] == trust.TRUST_FORMAT
    assert any(e["file"].endswith(f"{MODULE}.py") for e in saved["sources"])
