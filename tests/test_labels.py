"""Labelled built-in sources: data.labels passes {"x": images, NAME: labels}; data.label_fraction keeps a balanced share."""

import gzip
import struct

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.data import batch


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # every digits image is distinct, so an image finds its row (and its label) in sklearn's order
    return {img.tobytes(): int(t) for img, t in zip((d.data / 16.0).astype(np.float32), d.target)}


def _targets_of(images: torch.Tensor, by_image: dict) -> np.ndarray:
    return np.array([by_image[row.tobytes()] for row in images.numpy()])


def test_labels_are_sklearns_targets_of_the_same_rows_and_the_images_are_unchanged(digits):
    by_image = digits
    plain = pv.load_data(pv.DataConfig(split_seed=3))
    ds = pv.load_data(pv.DataConfig(split_seed=3, labels="y"))
    assert ds.observed == "x" and set(ds.train) == {"x", "y"} and set(ds.test) == {"x", "y"}
    assert ds.image_shape == (8, 8) and ds.dim == 64 and ds.name == "digits"
    # the same held-out split as without labels: the images are those rows, untouched
    assert torch.equal(ds.train_x, plain.train) and torch.equal(ds.test_x, plain.test)
    for part in (ds.train, ds.test):
        y = part["y"]
        assert y.dtype == torch.int64 and y.shape == (part["x"].shape[0],)
        assert np.array_equal(y.numpy(), _targets_of(part["x"], by_image))
    assert batch.describe(ds.train) == "x (1617, 64), y (1617,)" and batch.describe(ds.test) == "x (180, 64), y (180,)"
    assert ds.notes == []  # every label kept: nothing to say


def test_label_fraction_keeps_an_equal_number_per_class_chosen_by_split_seed(digits):
    by_image = digits
    ds = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.1))
    y, truth = ds.train["y"].numpy(), _targets_of(ds.train_x, by_image)
    kept = y != batch.MISSING
    # round(0.1 * 1617 / 10) = 16 per class; the others are -1
    assert np.array_equal(np.bincount(y[kept], minlength=10), np.full(10, 16))
    assert set(np.unique(y[~kept])) == {-1} and kept.sum() == 160
    assert np.array_equal(y[kept], truth[kept])  # the kept labels are the true ones
    assert ds.notes == ["data: 160 of 1617 training labels kept (16 per class); the others are unlabelled (-1)"]
    # test labels are all kept (they measure accuracy)
    assert np.array_equal(ds.test["y"].numpy(), _targets_of(ds.test_x, by_image))
    # the source's own labels stay complete
    assert np.array_equal(ds.train_labels.numpy(), truth)

    again = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.1))
    assert torch.equal(again.train["y"], ds.train["y"]) and torch.equal(again.train_x, ds.train_x)
    # another split_seed: another split and another choice of the kept images
    other = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.1, split_seed=1))
    kept_images = {r.tobytes() for r in ds.train_x[torch.from_numpy(kept)].numpy()}
    other_kept = {r.tobytes() for r in other.train_x[other.train["y"] != -1].numpy()}
    assert len(other_kept) == 160 and other_kept != kept_images


@pytest.mark.parametrize("fraction", [0.001, 0.37, 0.995])
def test_label_fraction_count_is_at_least_one_and_at_most_the_class(fraction, digits):
    by_image = digits
    ds = pv.load_data(pv.DataConfig(labels="y", label_fraction=fraction))
    truth = _targets_of(ds.train_x, by_image)
    sizes = np.bincount(truth, minlength=10)
    per_class = max(1, int(round(fraction * len(truth) / 10)))
    y = ds.train["y"].numpy()
    counts = np.bincount(y[y >= 0], minlength=10)
    assert np.array_equal(counts, np.minimum(sizes, per_class))
    assert f"{counts.sum()} of 1617 training labels kept ({per_class} per class" in ds.notes[-1]
    small = int((sizes < per_class).sum())
    assert ("with fewer rows keep" in ds.notes[-1]) == (small > 0)
    if small > 1:
        assert f"; {small} classes with fewer rows keep all of theirs)" in ds.notes[-1]


def test_binarization_applies_to_the_images_only():
    base = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.5))
    static = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.5, binarize="static"))
    assert static.binarize == "static"
    for part, ref in ((static.train, base.train), (static.test, base.test)):
        assert set(part["x"].unique().tolist()) == {0.0, 1.0}
        assert torch.equal(part["y"], ref["y"])
    dynamic = pv.load_data(pv.DataConfig(labels="y", binarize="dynamic"))
    # dynamic: the test set is binarized once; training batches are binarized as they are drawn
    assert set(dynamic.test["x"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(dynamic.train_x, base.train_x) and torch.equal(dynamic.test["y"], base.test["y"])
    # auto under a Bernoulli likelihood: dynamic for the images, as without labels
    assert pv.load_data(pv.DataConfig(labels="y"), "bernoulli").binarize == "dynamic"


def test_toml_python_no_held_out_data_and_drop_nonfinite(tmp_path):
    cfg = pv.config_from_dict({"data": {"labels": "label", "label_fraction": 0.2, "split_seed": 5}})
    assert cfg.data == pv.DataConfig(labels="label", label_fraction=0.2, split_seed=5)
    toml = tmp_path / "c.toml"
    toml.write_text(cfg.to_toml())  # a run's config.toml reads back the same
    assert pv.load_config(toml).data == cfg.data
    ds = pv.load_data(cfg.data)
    assert set(ds.train) == {"x", "label"}
    assert torch.equal(pv.load_data(pv.DataConfig(labels="label", label_fraction=0.2, split_seed=5,
                                                  drop_nonfinite=True)).train["label"], ds.train["label"])
    whole = pv.load_data(pv.DataConfig(labels="y", label_fraction=0.1, test_fraction=0.0))
    assert batch.num_rows(whole.train) == batch.num_rows(whole.test) == 1797
    assert int((whole.train["y"] >= 0).sum()) == 180 and bool((whole.test["y"] >= 0).all())
    # named data with a partly missing name: the trainer batches the two groups apart
    assert sorted(g["absent"] for g in batch.groups(whole.train)) == [(), ("y",)]


def _idx(path, arr: np.ndarray):
    head = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_an_idx_folder_passes_its_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = {p: rng.integers(0, 256, (n, 4, 4)) for p, n in (("train", 40), ("t10k", 20))}
    labels = {p: np.arange(len(images[p])) % 4 for p in images}
    for p in images:
        _idx(tmp_path / f"{p}-images-idx3-ubyte.gz", images[p])
        _idx(tmp_path / f"{p}-labels-idx1-ubyte.gz", labels[p])
    ds = pv.load_data(pv.DataConfig(source="mnist", path=str(tmp_path), labels="y", label_fraction=0.5))
    assert ds.image_shape == (4, 4) and ds.observed == "x"
    assert np.allclose(ds.train_x.numpy(), images["train"].reshape(40, -1) / 255.0)
    y = ds.train["y"].numpy()
    assert np.array_equal(np.bincount(y[y >= 0], minlength=4), np.full(4, 5))  # round(0.5 * 40 / 4)
    assert np.array_equal(y[y >= 0], labels["train"][y >= 0])
    assert np.array_equal(ds.test["y"].numpy(), labels["t10k"])


@pytest.mark.parametrize("data, words", [
    ({"labels": "y", "label_fraction": 0.0}, r"data.label_fraction: must be in \(0, 1\]"),
    ({"labels": "y", "label_fraction": 1.5}, r"data.label_fraction: must be in \(0, 1\]"),
    ({"labels": "y", "label_fraction": float("nan")}, "data.label_fraction: expected a finite number"),
    ({"label_fraction": 0.5}, "data.labels is not set: set data.labels"),
    ({"train": "x.npy", "label_fraction": 0.5}, "mark the unlabelled rows -1"),
    ({"labels": "x"}, "is the images' name"),
    ({"labels": "1y"}, "is not a Python identifier"),
    ({"labels": "class"}, "is not a Python identifier"),
    ({"labels": 3}, "data.labels: expected a string"),
    ({"train": "x.npy", "labels": "y"}, "name the label array in data.arrays"),
    ({"labells": "y"}, "did you mean 'labels'"),
])
def test_bad_label_keys_are_one_line(data, words):
    with pytest.raises(pv.PyroVAEError, match=words) as e:
        pv.config_from_dict({"data": data})
    assert "\n" not in str(e.value)


def test_a_source_without_labels_refuses_them_in_one_line():
    cfg = pv.DataConfig(source="synthetic", labels="y", num_points=50)
    with pytest.raises(pv.PyroVAEError, match="data.source = 'synthetic' has no labels to pass: use a labelled "
                                              "source .*or remove data.labels") as e:
        pv.load_data(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(pv.PyroVAEError, match="data.labels: expected a string"):
        pv.DataConfig(labels=["y"])


# a conditional VAE that takes the label when a batch has it and a blank label when it does not (y=None)
PROGRAM = '''
import pyro, pyro.distributions as dist, torch, torch.nn as nn, torch.nn.functional as F


class CVAE(nn.Module):
    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, data_dim, z_dim=2, hidden=32):
        super().__init__()
        self.z_dim = z_dim
        self.dec = nn.Sequential(nn.Linear(z_dim + 10, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))
        self.enc = nn.Sequential(nn.Linear(data_dim + 10, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))

    def _onehot(self, y, like):
        if y is None:
            return like.new_zeros(like.shape[:-1] + (10,))
        return F.one_hot(y, 10).to(like.dtype).expand(like.shape[:-1] + (10,))

    def model(self, x, y=None):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, self._onehot(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(torch.cat([x, self._onehot(y, x)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))
'''


def test_cli_trains_a_program_on_a_tenth_of_the_digits_labels(tmp_path, capsys):
    from pyro_vae.cli import main

    (tmp_path / "labelled_cvae.py").write_text(PROGRAM)
    (tmp_path / "c.toml").write_text(
        '[data]\nlabels = "y"\nlabel_fraction = 0.1\nbinarize = "dynamic"\n'
        '[model]\nprogram = "labelled_cvae:CVAE"\n[train]\nelbo = "trace"\nepochs = 1\nbatch_size = 100\n')
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(run), "--quiet", "--iw-samples", "5"]) == 0
    assert "note: data: 160 of 1617 training labels kept (16 per class)" in capsys.readouterr().err
    loaded = pv.load_run(run)
    assert loaded.config.data.labels == "y" and loaded.config.data.label_fraction == 0.1
    assert np.isfinite(loaded.metrics["log_likelihood"])
    # a digit asked for by its label
    assert main(["sample", str(run), "-n", "3", "--given", "y=3", "--draws", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (3, 64) and set(np.unique(s)) <= {0.0, 1.0}  # draws of a Bernoulli


def test_cli_refuses_labels_for_a_builtin_model_before_anything_is_written(tmp_path, capsys):
    from pyro_vae.cli import main

    (tmp_path / "c.toml").write_text('[data]\nlabels = "y"\n')
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.labels = 'y' passes x, y" in err[0] and "remove data.labels" in err[0]
    assert not out.exists()
