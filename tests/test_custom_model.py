"""examples/custom_model.py: a hand-written Pyro model trains and evaluates through fit/evaluate."""

import importlib.util
import math
from pathlib import Path

import torch
import pyro

import pyro_vae as pv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("custom_model", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_runs_and_learns():
    mod = _load()
    trainer, metrics = mod.main(["--epochs", "8"])
    h = trainer.state.history
    assert h[-1]["test_elbo"] > h[0]["test_elbo"] + 1.0  # it learns
    # the importance-sampled log-likelihood is at least the ELBO, up to its MC error
    assert metrics["log_likelihood"] >= metrics["elbo"] - 4 * metrics["log_likelihood_se"]
    # the global params of the hand-written model were trained (they live in the param store)
    assert "param_store:df" in trainer.param_names and "param_store:sigma" in trainer.param_names
    assert not math.isclose(pyro.param("df").item(), 5.0)


def test_user_model_is_not_a_builtin_and_checkpoints(tmp_path):
    mod = _load()
    pyro.set_rng_seed(0)
    data = pv.load_data(pv.DataConfig(source="synthetic", num_points=300))
    model = mod.StudentTFactorModel(data.dim)
    assert not isinstance(model, torch.nn.Module)
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="trace", epochs=1, batch_size=50, device="cpu"), run_dir=tmp_path)
    trainer.fit(data.train, data.test)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.equal(payload["params"]["param_store:df"], pyro.get_param_store().get_state()["params"]["df"].detach())
