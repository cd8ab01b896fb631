"""Data sources: arrays in three formats, IDX files, digits, synthetic, splits and binarization."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.data.sources import FASHION_MNIST_DIR, read_idx, synthetic_mean, synthetic_truth


def write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), gz=False)
    return tmp_path


def test_idx_source_reads_gz_and_plain(idx_dir):
    ds = pv.load_data(pv.DataConfig(source="mnist", path=str(idx_dir), binarize="none"), "continuous_bernoulli")
    assert ds.train.shape == (50, 784) and ds.test.shape == (20, 784)
    assert ds.image_shape == (28, 28)
    assert 0.0 <= float(ds.train.min()) and float(ds.train.max()) <= 1.0
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    assert np.allclose(ds.train.numpy(), raw.reshape(50, -1) / 255.0)
    # categorical keeps the integer levels
    ds = pv.load_data(pv.DataConfig(source="mnist", path=str(idx_dir)), "categorical")
    assert float(ds.train.max()) == raw.max()


def test_corrupt_idx_is_one_clear_error(idx_dir):
    p = idx_dir / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 10))
    with pytest.raises(pv.PyroVAEError, match="t10k-images.*corrupt"):
        pv.load_data(pv.DataConfig(source="mnist", path=str(idx_dir)), "bernoulli")


def test_missing_idx_files_name_the_folder(tmp_path):
    with pytest.raises(pv.PyroVAEError, match="no train-images-idx3-ubyte"):
        pv.load_data(pv.DataConfig(source="mnist", path=str(tmp_path)), "bernoulli")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_default_path():
    ds = pv.load_data(pv.DataConfig(source="fashion-mnist"), "bernoulli")
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert ds.binarize == "dynamic"
    assert set(torch.unique(ds.test).tolist()) == {0.0, 1.0}  # test set binarized once


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "csv-header"])
def test_array_formats(tmp_path, fmt):
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    path = tmp_path / f"x.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "npz":
        np.savez(path, x=x, labels=np.arange(40))
    else:
        header = "a,b,c\n" if fmt == "csv-header" else ""
        path.write_text(header + "\n".join(",".join(f"{v:.9g}" for v in row) for row in x))
    ds = pv.load_data(pv.DataConfig(source="arrays", train=str(path), test_fraction=0.25), "normal")
    assert ds.train.shape == (30, 3) and ds.test.shape == (10, 3)
    both = torch.cat([ds.train, ds.test])
    assert torch.allclose(both.sort(0).values, torch.from_numpy(x).sort(0).values, atol=1e-6)


def test_explicit_test_file_and_width_mismatch(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "c.npy", np.zeros((4, 5), np.float32))
    ds = pv.load_data(pv.DataConfig(source="arrays", train=str(tmp_path / "a.npy"), test=str(tmp_path / "b.npy")))
    assert ds.train.shape == (10, 3) and ds.test.shape == (4, 3)
    with pytest.raises(pv.PyroVAEError, match="5 columns but data.train has 3"):
        pv.load_data(pv.DataConfig(source="arrays", train=str(tmp_path / "a.npy"), test=str(tmp_path / "c.npy")))


def test_npz_with_several_unnamed_arrays(tmp_path):
    np.savez(tmp_path / "m.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(pv.PyroVAEError, match="none is named 'x'"):
        pv.load_data(pv.DataConfig(source="arrays", train=str(tmp_path / "m.npz")))


def test_split_is_seeded_and_independent_of_train_seed():
    a = pv.load_data(pv.DataConfig(source="digits"), "continuous_bernoulli")
    b = pv.load_data(pv.DataConfig(source="digits"), "continuous_bernoulli")
    c = pv.load_data(pv.DataConfig(source="digits", split_seed=1), "continuous_bernoulli")
    assert torch.equal(a.test, b.test) and not torch.equal(a.test, c.test)
    assert a.train.shape[0] + a.test.shape[0] == 1797 and a.test.shape[0] == 180


def test_binarization_modes():
    auto = pv.load_data(pv.DataConfig(source="digits"), "bernoulli")
    assert auto.binarize == "dynamic"
    assert set(torch.unique(auto.test).tolist()) == {0.0, 1.0}
    assert len(torch.unique(auto.train)) > 2  # train batches are binarized as drawn
    static = pv.load_data(pv.DataConfig(source="digits", binarize="static"), "bernoulli")
    assert set(torch.unique(static.train).tolist()) == {0.0, 1.0}
    assert torch.equal(static.test, auto.test)  # the same bits for every run
    none = pv.load_data(pv.DataConfig(source="digits"), "continuous_bernoulli")
    assert none.binarize == "none"
    # binarized pixels are Bernoulli(p): their mean matches the grey levels within 5 SE
    p = none.test
    se = float((p * (1 - p)).sum().sqrt() / p.numel())
    assert abs(float(auto.test.mean() - p.mean())) < 5 * se


def test_synthetic_source_is_seed_controlled_and_follows_its_model():
    cfg = pv.DataConfig(source="synthetic", num_points=4000, test_fraction=0.0)
    a = pv.load_data(cfg, "normal")
    b = pv.load_data(cfg, "normal")
    assert torch.equal(a.train, b.train)
    c = pv.load_data(pv.DataConfig(source="synthetic", num_points=4000, split_seed=7, test_fraction=0.0), "normal")
    assert not torch.equal(a.train, c.train)
    truth = synthetic_truth(cfg)
    # the data's mean over z matches E_z[W tanh(Az+b)] within a few standard errors
    z = torch.randn(200000, cfg.synthetic_latent_dim, generator=torch.Generator().manual_seed(5))
    expected = synthetic_mean(truth, z).mean(0)
    se = a.train.std(0) / a.train.shape[0] ** 0.5
    assert ((a.train.mean(0) - expected).abs() < 5 * se + 1e-3).all()
