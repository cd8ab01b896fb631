"""examples/custom_model.py: a hand-written Pyro model trains and evaluates through fit/evaluate."""

import importlib.util
import math
from pathlib import Path

import numpy as np
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


def test_diagnose_runs_the_model_at_its_trained_globals():
    mod = _load()

    class Recording(mod.StudentTFactorModel):
        """The example's model, noting the degrees of freedom each run of its program sees."""

        def model(self, x):
            super().model(x)
            self.seen.add(round(pyro.param("df").item(), 4))

    pyro.set_rng_seed(0)
    data = pv.load_data(pv.DataConfig(source="synthetic", num_points=600))
    model = Recording(data.dim)
    model.seen = set()
    pv.fit(model, data.train, data.test, pv.TrainConfig(elbo="trace", epochs=5, batch_size=50, lr=1e-2, device="cpu"),
           progress=False)
    trained_df = round(pyro.param("df").item(), 4)
    assert trained_df != 5.0
    x = data.test[:6]
    points = pv.evaluate_points(model, x, iw_samples=None, elbo_samples=500, prior_samples=0, seed=1)
    pyro.clear_param_store()  # the model's parameters live in its own scope, not only in the global store
    model.seen = set()
    d = pv.diagnose([pv.Subject("student-t", model, x, list(range(6)))],
                    pv.DiagnoseSettings(points=6, reference="none", draws=500, local_steps=0, sbc_sims=0))
    assert model.seen == {trained_df}
    q = d.runs[0].q
    # two independent Monte Carlo estimates of the same per-point ELBO (evaluate's uses the analytic KL)
    se = np.sqrt(points.elbo_var.numpy() + q.elbo_se ** 2)
    assert np.all(np.abs(points.elbo.numpy() - q.elbo) < 4 * se), (points.elbo, q.elbo, se)


def test_two_instances_train_independently_and_resume_from_their_own_checkpoints(tmp_path):
    mod = _load()
    pyro.set_rng_seed(0)
    data = pv.load_data(pv.DataConfig(source="synthetic", num_points=300))
    cfg = pv.TrainConfig(elbo="trace", epochs=1, batch_size=50, lr=1e-2, device="cpu")

    def weights(model):
        return [p.detach().clone() for p in (*model.decoder.parameters(), *model.encoder.parameters())]

    models, trained = {}, {}
    for name in ("a", "b"):
        models[name] = mod.StudentTFactorModel(data.dim)
        initial = weights(models[name])
        trainer = pv.Trainer(models[name], cfg, run_dir=tmp_path / name, progress=False)
        trainer.setup(data.train[:64], len(data.train))
        # the trainer optimizes this instance's own tensors, starting from the weights it was built with
        own = {id(p) for p in (*models[name].decoder.parameters(), *models[name].encoder.parameters())}
        assert own <= {id(p) for p in trainer.params}
        assert all(torch.equal(p, q) for p, q in zip(weights(models[name]), initial))
        trainer.fit(data.train, data.test)
        trained[name] = weights(models[name])
        assert not any(torch.equal(p, q) for p, q in zip(trained[name], initial))  # its own weights trained
    assert all(torch.equal(p, q) for p, q in zip(weights(models["a"]), trained["a"]))  # b's training left a alone

    for name in ("a", "b"):
        path = tmp_path / name / "checkpoint.pt"
        payload = torch.load(path, weights_only=True)
        fresh = mod.StudentTFactorModel(data.dim)
        trainer = pv.Trainer(fresh, cfg.__class__(**{**cfg.__dict__, "epochs": 2}), progress=False)
        trainer.setup(data.train[:64], len(data.train))
        trainer.load_state_dict(payload, path)
        assert all(torch.equal(p, q) for p, q in zip(weights(fresh), trained[name]))
        trainer.fit(data.train, data.test)
        assert trainer.state.epoch == 2
        df = dict(zip(trainer.param_names, trainer.params))["param_store:df"]
        assert not torch.equal(df.detach(), payload["params"]["param_store:df"])  # its own df trained on
