"""Class metrics and figures of graph models: a semi-supervised classifier, clusterings, a conditional model."""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import pyro_vae as pv
from pyro_vae.figures.run import graph_plots
from pyro_vae.cli import main
from pyro_vae.evaluation.classes import MAJORITY, ONE_TO_ONE, class_metrics
from pyro_vae.infer.rng import isolated_rng
from pyro_vae.models.sampling import prior_predictive

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits, binarized at 0.5: (x float32, labels int64), a fixed split of 1500 training points."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x / 16.0 > 0.5).astype(np.float32))
    y = torch.tensor(y.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1500]], y[perm[:1500]], x[perm[1500:]], y[perm[1500:]]


def _keep_fraction(y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Labels with all but ``fraction`` of each class set to -1 (missing)."""
    out = torch.full_like(y, -1)
    for k in torch.unique(y):
        idx = torch.nonzero(y == k).flatten()
        keep = idx[: max(1, int(round(fraction * len(idx))))]
        out[keep] = y[keep]
    return out


M2_NODES = {
    "y": {"role": "partial", "family": "categorical", "dim": 10, "classifier_weight": 50.0, "encoder": {"hidden": [64]}},
    "z": {"dim": 8, "encoder": {"hidden": [64]}},
    "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["y", "z"], "net": {"hidden": [64]}},
}

CVAE_NODES = {
    "y": {"role": "input", "family": "categorical", "dim": 10},
    "z": {"dim": 4, "encoder": {"hidden": [32]}},
    "x": {"role": "observed", "parents": ["y", "z"], "net": {"hidden": [32]}},
}


@pytest.fixture(scope="module")
def m2_run(digits, tmp_path_factory):
    """Kingma's M2 (y partial with 10% of the training labels, z, x) trained from a config of named .npy files."""
    xtr, ytr, xte, yte = digits
    d = tmp_path_factory.mktemp("m2")
    files = {}
    for part, arrays in (("train", {"x": xtr, "y": _keep_fraction(ytr, 0.1)}), ("test", {"x": xte, "y": yte})):
        files[part] = {}
        for name, t in arrays.items():
            np.save(d / f"{part}-{name}.npy", t.numpy())
            files[part][name] = str(d / f"{part}-{name}.npy")
    cfg = pv.config_from_dict({
        "data": {"train": files["train"], "test": files["test"]},
        "model": {"guide_structure": "mean-field", "nodes": M2_NODES},
        "train": {"elbo": "enum", "epochs": 6, "batch_size": 250, "lr": 1e-2, "seed": 0},
    })
    return pv.train(cfg, d / "run", iw_samples=2), xte, yte


def test_semi_supervised_accuracy_is_argmax_q_against_the_labels(m2_run):
    run, xte, yte = m2_run
    c = run.classes
    assert c.kind == "classifier" and c.node == "y"
    probs = run.model.class_probabilities({"x": xte})
    acc = float((probs.argmax(1) == yte).double().mean())
    n = len(yte)
    assert c.num_points == n
    assert c.accuracy == pytest.approx(acc, abs=1e-12)
    assert c.accuracy_se == pytest.approx((acc * (1 - acc) / n) ** 0.5, rel=1e-12)
    # a fixed-seed run reaches about 0.8 after 6 epochs on 150 labels; chance is 0.1.  Three binomial s.e.
    # above 0.5 fails only for a classifier that has learnt little
    assert c.accuracy > 0.5 + 3 * c.accuracy_se
    # rows: true class, columns: predicted; every test point counted once
    assert c.table.shape == (10, 10)
    assert c.table.sum(1).tolist() == torch.bincount(yte, minlength=10).tolist()
    assert c.table.sum(0).tolist() == torch.bincount(probs.argmax(1), minlength=10).tolist()
    assert int(np.trace(c.table)) == round(acc * n)
    # metrics.json holds the same numbers, and the confusion matrix is drawn
    saved = json.loads((run.run_dir / "metrics.json").read_text())["classes"]
    assert saved["accuracy"] == pytest.approx(c.accuracy) and saved["table"] == c.table.tolist()
    assert (run.run_dir / "plots" / "confusion.png").read_bytes().startswith(PNG)


def test_evaluate_prints_the_accuracy_of_the_run(m2_run, capsys):
    run, _, _ = m2_run
    assert main(["evaluate", str(run.run_dir), "--iw-samples", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"]["accuracy"] == pytest.approx(run.classes.accuracy)
    assert out["classes"]["table"] == run.classes.table.tolist()
    assert main(["evaluate", str(run.run_dir), "--iw-samples", "2"]) == 0
    text = capsys.readouterr().out
    assert f"{run.classes.accuracy:.3f} ± {run.classes.accuracy_se:.3f}" in text
    assert "confusion matrix (rows: true class, columns: predicted)" in text


class _Clusters:
    """A model with classes that assigns row i to cluster ``clusters[i]`` with certainty (no graph: clusters)."""

    class_node = "c"

    def __init__(self, clusters, k):
        self.clusters, self.k = torch.as_tensor(clusters), k

    def class_probabilities(self, data):
        return torch.nn.functional.one_hot(self.clusters[data["x"][:, 0].long()], self.k).double()


def _rows(n):
    return {"x": torch.arange(n, dtype=torch.float32)[:, None]}  # column 0: the row's index, so the fake reads its cluster


def test_clusters_matched_one_to_one_recover_a_permutation():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1, -1, 2, 0])
    perm = torch.tensor([3, 0, 2])  # class k lies in cluster perm[k]; cluster 1 is never used
    clusters = torch.where(labels >= 0, perm[labels.clamp(min=0)], 1)
    c = class_metrics(_Clusters(clusters, 4), _rows(10), labels)
    assert (c.kind, c.matching, c.accuracy, c.accuracy_se) == ("clustering", ONE_TO_ONE, 1.0, None)
    assert c.num_points == 9  # the row without a label is left out
    assert (c.clusters_used, c.num_clusters) == (3, 4)
    assert c.cluster_class == (1, -1, 2, 0)
    assert c.table.tolist() == [[0, 0, 0, 3], [3, 0, 0, 0], [0, 0, 3, 0]]


def test_one_to_one_matching_is_not_the_majority_rule():
    # class 0: 10 in cluster 0, 3 in cluster 1; class 1: 6 in cluster 0, 1 in cluster 1.  One to one, the best
    # matching is 0->0, 1->1 (10 + 1 = 11 of 20); by majority both clusters would be class 0 (13 of 20)
    labels = torch.tensor([0] * 13 + [1] * 7)
    clusters = torch.tensor([0] * 10 + [1] * 3 + [0] * 6 + [1] * 1)
    c = class_metrics(_Clusters(clusters, 2), _rows(20), labels)
    assert c.matching == ONE_TO_ONE and c.accuracy == pytest.approx(11 / 20) and c.cluster_class == (0, 1)


def test_more_clusters_than_classes_take_their_majority_class():
    # class 0: 5 in cluster 0, 3 in cluster 1; class 1: 1 in cluster 0, 1 in cluster 1, 6 in cluster 2
    labels = torch.tensor([0] * 8 + [1] * 8)
    clusters = torch.tensor([0] * 5 + [1] * 3 + [0, 1] + [2] * 6)
    c = class_metrics(_Clusters(clusters, 3), _rows(16), labels, class_names=["zero", "one"])
    assert c.matching == MAJORITY and c.cluster_class == (0, 0, 1)
    assert c.accuracy == pytest.approx((5 + 3 + 6) / 16)
    assert c.class_names == ("zero", "one")
    assert class_metrics(_Clusters(clusters, 3), _rows(16)) is None  # no labels: nothing to score


def test_mixture_run_reports_its_clusters_and_draws_them(tmp_path, capsys):
    """A Gaussian-mixture prior on the digits source (whose test labels the Dataset holds), through train."""
    cfg = pv.config_from_dict({
        "data": {"source": "digits"},
        "model": {"nodes": {"z": {"family": "mixture", "components": 12, "dim": 4, "encoder": {"hidden": [32]}},
                            "x": {"role": "observed", "parents": ["z"], "net": {"hidden": [32]}}}},
        "train": {"elbo": "enum", "epochs": 1, "batch_size": 200, "seed": 0},
    })
    out = tmp_path / "run"
    run = pv.train(cfg, out, iw_samples=2)
    c = run.classes
    assert c.kind == "clustering" and c.num_clusters == 12 and c.num_classes == 10
    assert c.num_points == len(run.data.test_labels)
    assert c.table.sum(1).tolist() == torch.bincount(run.data.test_labels, minlength=10).tolist()
    assert c.matching == (ONE_TO_ONE if c.clusters_used <= 10 else MAJORITY)
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == ["contingency.png", "graph.png", "loss.png", "samples.png"]
    # the library's own figures: a second run replaces them all
    pv.train(cfg, out, iw_samples=2, overwrite=True)
    assert main(["evaluate", str(out), "--iw-samples", "2"]) == 0
    assert f"clusters used                         {c.clusters_used:10d} of 12" in capsys.readouterr().out


def test_conditional_model_draws_one_row_per_class(digits, tmp_path):
    """A CVAE (y an input label): nothing to classify, but its samples per class and its ancestral samples."""
    xtr, ytr, xte, yte = digits
    cfg = pv.config_from_dict({
        "model": {"nodes": CVAE_NODES},
        "train": {"epochs": 1, "batch_size": 250, "lr": 1e-2, "seed": 0},
    })
    model = pv.build_model(cfg.model, 64, image_shape=(8, 8))
    trainer = pv.fit(model, {"x": xtr, "y": ytr}, None, cfg.train)
    data = pv.Dataset({"x": xtr, "y": ytr}, {"x": xte, "y": yte}, image_shape=(8, 8), test_labels=yte, observed="x")
    assert class_metrics(model, data.test, data.test_labels) is None
    files = graph_plots(model, data, trainer.state.history, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["class_samples.png", "graph.png", "loss.png", "samples.png"]
    assert all(p.read_bytes().startswith(PNG) for p in files)


@pytest.mark.parametrize("nodes", [M2_NODES, CVAE_NODES], ids=["partial", "input"])
def test_samples_given_a_class_are_the_decoder_mean_at_that_class(nodes):
    """What a class's row shows: the mean of p(x | y, z) with y held at the class given (a partial label too,
    not drawn from its prior) and z drawn from its prior."""
    from pyro import poutine

    cfg = pv.config_from_dict({"model": {"guide_structure": "mean-field", "nodes": nodes}, "train": {"elbo": "enum"}})
    model = pv.build_model(cfg.model, 64, image_shape=(8, 8))
    y = torch.full((6,), 4)
    got = prior_predictive(model, 6, 64, 7, observed="x", given={"y": y}, mean=True)
    # the program itself on the same random numbers, y and a placeholder x observed: z is drawn from its prior
    # (before x, as there), and the x site's law is the decoder's at that z and y
    with isolated_rng(7, torch.device("cpu")):
        tr = poutine.trace(model.model).get_trace(x=torch.zeros(6, 64), y=y)
    torch.testing.assert_close(got, tr.nodes["x"]["fn"].mean)
    other = prior_predictive(model, 6, 64, 7, observed="x", given={"y": torch.full((6,), 5)}, mean=True)
    assert not torch.equal(got, other)  # the class reaches the decoder


def test_classes_a_guide_cannot_give_are_noted_and_left_out(tmp_path):
    """q(c | x, z) of a structured guide needs z's draws: training succeeds and says why it reports no classes."""
    cfg = pv.config_from_dict({
        "data": {"source": "digits"},
        "model": {"guide_structure": "structured", "nodes": {
            "c": {"family": "categorical", "dim": 10},
            "z": {"dim": 2, "parents": ["c"], "encoder": {"hidden": [16]}},
            "x": {"role": "observed", "parents": ["z"], "net": {"hidden": [16]}}}},
        "train": {"elbo": "enum", "epochs": 1, "batch_size": 400, "seed": 0},
    })
    lines = []
    run = pv.train(cfg, tmp_path / "run", iw_samples=2, log=lines.append)
    assert run.classes is None and "classes" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(line.startswith("note: no class metrics: q(c | ...) also reads z") for line in lines)
    assert not (tmp_path / "run" / "plots" / "contingency.png").exists()
