"""The graph and conv example configs: each parses, builds the model its header describes, and the two
Fashion-MNIST ones train from the CLI (one epoch, on the digits, so that the test needs no download)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

import pyro_vae as pv
from pyro_vae.cli import main as cli_main
from pyro_vae.errors import CaptureWarning, MonteCarloKLWarning
from pyro_vae.models.graph import GraphModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GRAPH_EXAMPLES = ["graph_hierarchical", "graph_conditional", "graph_semisupervised", "graph_mixture_prior"]
SHAPES = {"digits": (64, (8, 8)), "fashion-mnist": (784, (28, 28))}


@pytest.mark.parametrize("name", GRAPH_EXAMPLES + ["vae_conv_fashion_mnist"])
def test_example_parses_builds_and_names_its_command(name):
    path = EXAMPLES / f"{name}.toml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"pyro-vae train examples/{name}.toml" in line for line in header), "the header names its command"
    cfg = pv.load_config(path)
    dim, image = SHAPES[cfg.data.source]
    model = pv.build_model(cfg.model, dim, image_shape=image)
    assert isinstance(model, GraphModel) and model.obs_site == "x"
    if name == "vae_conv_fashion_mnist":  # the one-latent form: a graph z -> x whose nets are convolutional
        assert cfg.model.short is not None and model.one_latent == ("z", "x")
        assert cfg.model.nodes["z"].encoder.type == "conv" and cfg.model.nodes["x"].net.type == "conv"
        return
    nodes = model.graph.nodes
    if name == "graph_hierarchical":
        assert model.graph.order == ("z2", "z1", "x") and model.latent_sites == ("z1", "z2")
        assert nodes["z1"].parents == ("z2",) and nodes["x"].parents == ("z1",)
    elif name == "graph_conditional":
        assert nodes["y"].role == "input" and set(nodes["x"].parents) == {"z", "y"}
        assert cfg.data.labels == "y"
    elif name == "graph_semisupervised":
        assert nodes["y"].role == "partial" and nodes["y"].classifier_weight > 0
        assert cfg.train.elbo == "enum" and cfg.data.label_fraction == 0.1
    elif name == "graph_mixture_prior":
        assert nodes["z"].family == "mixture" and nodes["z"].components == 10 and cfg.train.elbo == "enum"


@pytest.mark.parametrize("name", ["graph_hierarchical", "vae_conv_fashion_mnist"])
def test_fashion_mnist_example_trains_from_the_cli_on_the_digits(name, tmp_path, capsys):
    out = tmp_path / name
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        code = cli_main(["train", str(EXAMPLES / f"{name}.toml"), "--set", "train.epochs=1", "--set",
                         "data.source=digits", "--out", str(out), "--quiet", "--iw-samples", "5", "--no-plots"])
    kinds = {w.category for w in said}
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = pv.load_run(out)
    assert run.config.data.source == "digits" and len(run.history) == 1
    metrics = run.metrics
    assert math.isfinite(metrics["elbo"]) and math.isfinite(metrics["log_likelihood"])
    if name == "graph_hierarchical":
        # both layers are reported, and z1's KL is the Monte Carlo one (its prior reads z2)
        assert metrics["latent_dims"] == 32 + 16 and metrics["kl_method"] == "monte_carlo"
        assert MonteCarloKLWarning in kinds
    else:
        assert metrics["latent_dims"] == 16 and metrics["kl_method"] == "analytic"
    assert CaptureWarning not in kinds  # the step of either model is captured (train.capture = "auto")


@pytest.mark.parametrize("name,kind", [("graph_semisupervised", "classifier"), ("graph_mixture_prior", "clustering"),
                                       ("graph_conditional", None)])
def test_labelled_example_trains_and_reports_its_classes(name, kind, tmp_path, capsys):
    out = tmp_path / name
    code = cli_main(["train", str(EXAMPLES / f"{name}.toml"), "--set", "train.epochs=1", "--out", str(out),
                     "--quiet", "--iw-samples", "5", "--no-plots"])
    assert code == 0, capsys.readouterr().err
    classes = pv.load_run(out).metrics.get("classes")
    if kind is None:  # a conditional model infers no class: nothing to score
        assert classes is None
        # the header's command: samples given a label, under a name that says which
        assert cli_main(["sample", str(out), "-n", "8", "--given", "y=3"]) == 0, capsys.readouterr().err
        assert (out / "samples-y3-seed0.png").stat().st_size > 0
        return
    assert classes["kind"] == kind and classes["num_points"] == 180 and 0.0 <= classes["accuracy"] <= 1.0
    if kind == "clustering":
        assert classes["clusters_used"] <= 10
    else:
        assert classes["accuracy_se"] > 0
