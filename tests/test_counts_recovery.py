"""Recovery on the synthetic count source: a negative-binomial VAE's inverse dispersion and a ZINB VAE's dropout
probability against the truth they were drawn with (data/synthetic_counts.py), per feature."""

import pytest
import torch

import pyro_vae as pv
from pyro_vae.config.schema import DataConfig
from pyro_vae.data.sources import load_data

pytestmark = pytest.mark.slow


def _fit(likelihood: str, dropout: float, epochs: int):
    cfg = DataConfig(source="synthetic_counts", num_points=5000, synthetic_dim=50, synthetic_latent_dim=2,
                     synthetic_dropout=dropout, test_fraction=0.0)
    ds = load_data(cfg, likelihood)
    # the true model's own family: a linear map of z, softmax, times the row's library size
    model = pv.GraphModel(pv.ModelConfig(latent_dim=2, likelihood=likelihood, library="observed",
                                         encoder={"hidden": [64]}, decoder={"hidden": []}), data_dim=50)
    pv.fit(model, ds.train, None, pv.TrainConfig(epochs=epochs, batch_size=256, lr=0.02, seed=0), progress=False)
    return model, ds


def test_negative_binomial_recovers_each_features_inverse_dispersion():
    model, ds = _fit("negative_binomial", 0.0, 60)
    theta = model.likelihood.theta().detach()
    rel = (theta - ds.truth["theta"]).abs() / ds.truth["theta"]
    # the brief's bar; a theta per feature from 5,000 rows of ~20 counts has a few per cent of sampling error
    assert float(rel.median()) <= 0.10, rel


def test_zinb_dropout_tracks_each_features_true_dropout():
    model, ds = _fit("zinb", 0.2, 40)
    with torch.no_grad():
        out = model.nets["x"]({"z": model.encode(ds.train)})
        pi = model.likelihood.dropout(out).mean(0)
    rel = (pi - ds.truth["dropout"]).abs() / ds.truth["dropout"]
    assert float(rel.median()) <= 0.10, rel
