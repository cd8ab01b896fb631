"""One array is named once where it enters: after the program's data parameter (or a graph's observed node)."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn

import pyro_vae as pv
from pyro_vae.data import batch
from pyro_vae.infer.data_name import data_name, named_data


class Program(nn.Module):
    """A VAE whose data parameter is ``images`` and whose observed site is ``obs``: the two names differ."""

    latent_sites = ("z",)
    obs_site = "obs"

    def __init__(self, d: int = 4):
        super().__init__()
        self.enc, self.dec = nn.Linear(d, 4), nn.Linear(2, d)

    def model(self, images):
        pyro.module("program", self)
        with pyro.plate("data", images.shape[0]):
            z = pyro.sample("z", dist.Normal(images.new_zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(self.dec(z), 1.0).to_event(1), obs=images)

    def guide(self, images):
        pyro.module("program", self)
        with pyro.plate("data", images.shape[0]):
            out = self.enc(images)
            pyro.sample("z", dist.Normal(out[..., :2], out[..., 2:].exp()).to_event(1))


class Renamed(Program):
    def guide(self, data):  # Pyro would pass it positionally; by name it cannot be matched
        return super().guide(data)


class PositionalOnly(Program):
    def model(self, images, /):
        return super().model(images)


class StarArgs(Program):
    def model(self, *args):
        return super().model(*args)


def test_the_name_is_the_first_data_parameter_or_the_graphs_observed_node():
    assert data_name(Program()) == "images"
    assert data_name((lambda x: None, lambda x: None)) == "x"  # a (model, guide) pair
    graph = pv.build_model(pv.ModelConfig(latent_dim=2), 5)
    assert graph.obs_site == "x" and data_name(graph) == "x"  # model(*args, **data): its observed node


@pytest.mark.parametrize("program, fix", [(PositionalOnly(), "remove the '/'"), (StarArgs(), "rather than *args"),
                                          (Renamed(), "name the guide's data parameter 'images'")])
def test_a_program_that_cannot_take_its_data_by_name_is_refused_in_one_line(program, fix):
    with pytest.raises(pv.PyroVAEError) as e:
        data_name(program)
    assert fix in str(e.value) and "\n" not in str(e.value)


def test_one_array_is_named_and_named_arrays_stay_as_they_are():
    x = np.ones((3, 4))  # NumPy's float64: float32 tensors, as the networks are
    out = named_data(Program(), x)
    assert list(out) == ["images"] and out["images"].dtype == torch.float32
    arrays = {"a": torch.zeros(3, 2), "b": torch.arange(3)}
    assert named_data(Program(), arrays) == arrays and named_data(Program(), None) is None
    with pytest.raises(pv.PyroVAEError, match=r"the data\['s'\] is a NumPy array of <U1 values"):
        named_data(Program(), {"s": np.array(["a", "b"])})


def test_the_batch_helpers_take_named_arrays_only():
    with pytest.raises(pv.PyroVAEError, match="not named arrays"):
        batch.prepare(torch.zeros(3, 2), "the data")
    assert batch.describe({"x": torch.zeros(3, 2)}) == "x (3, 2)"


def test_a_program_is_trained_and_evaluated_on_one_tensor_under_its_own_parameter_name():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    model = Program()
    trainer = pv.fit(model, x, x[:16], pv.TrainConfig(epochs=1, batch_size=32, elbo="trace"), progress=False)
    assert len(trainer.state.history) == 1
    summary = pv.evaluate(model, x[:16], iw_samples=4)
    assert summary["num_points"] == 16 and np.isfinite(summary["elbo"])
