"""Data sources: arrays in three formats, IDX files, digits, synthetic, splits, binarization, and bad files."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.data.arrays import read_idx
from pyro_vae.data.sources import FASHION_MNIST_DIR, synthetic_mean, synthetic_truth


def write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:  # closed here: Python 3.12 writes gzip's trailer only on close
        f.write(raw)


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


def test_small_npy_is_read_into_memory_so_rewriting_it_changes_nothing(tmp_path):
    x = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", x[:5])
    ds = pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy"), test=str(tmp_path / "t.npy")), "normal")
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))  # shorter: a map of the old file would SIGBUS
    np.save(tmp_path / "t.npy", np.zeros((2, 3), np.float32))
    assert torch.equal(ds.train, torch.from_numpy(x)) and torch.equal(ds.test, torch.from_numpy(x[:5]))


@pytest.mark.parametrize("change", ["rewrite", "resize", "replace"])
def test_a_mapped_file_changed_under_a_job_is_one_line(tmp_path, monkeypatch, change):
    monkeypatch.setenv("PYRO_VAE_MEMMAP_BYTES", "100")  # the file is about 1 kB: it is mapped
    path = tmp_path / "x.npy"
    x = np.random.default_rng(3).normal(size=(60, 4)).astype(np.float32)
    np.save(path, x)
    ds = pv.load_data(pv.DataConfig(train=str(path), test_fraction=0.2), "normal")
    assert type(ds.train).__name__ == "MappedRows"
    ds.train.check_unchanged()
    first = ds.train[:3]
    assert torch.equal(first, torch.from_numpy(x)[ds.train.rows[:3]])
    if change == "rewrite":  # same size, new values
        before = path.stat().st_mtime_ns
        np.save(path, -x)
        os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse file-system clocks: a visible change
    elif change == "resize":
        np.save(path, np.concatenate([x, x]))
    else:
        np.save(tmp_path / "new.npy", -x)
        os.replace(tmp_path / "new.npy", path)
    with pytest.raises(pv.PyroVAEError, match=r"^data\.train \(x\.npy\) changed on disk") as e:
        ds.train[:3]
    assert "\n" not in str(e.value) and "restart" in str(e.value)
    with pytest.raises(pv.PyroVAEError, match="changed on disk"):
        ds.train.check_unchanged()


def test_csv_with_a_byte_order_mark_keeps_every_row(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n3,4\n5,6\n", encoding="utf-8-sig")
    ds = pv.load_data(pv.DataConfig(train=str(tmp_path / "x.csv"), test_fraction=0.0), "normal")
    assert ds.train.tolist() == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize("arr, fragment", [
    (np.ones((4, 2), np.complex128), r"dtype complex128, complex numbers"),
    (np.array(["2020-01-01"] * 4, "datetime64[D]").reshape(2, 2), r"dtype datetime64\[D\], dates/times"),
    (np.array([["a", "b"]]), r"dtype <U1, text"),
])
def test_non_real_dtypes_are_refused_by_name(tmp_path, arr, fragment):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy")))


@pytest.mark.parametrize("mapped", [False, True])
def test_float32_overflow_is_not_called_nan(tmp_path, monkeypatch, mapped):
    if mapped:
        monkeypatch.setenv("PYRO_VAE_MEMMAP_BYTES", "100")
    x = np.ones((20, 3))
    x[4, 1] = -3e40
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(pv.PyroVAEError, match=r"1 values too large for float32 \(max \|x\| = 3e\+40; "
                                              r"first at row 4, column 1\)") as e:
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy")))
    assert "NaN" not in str(e.value)
    x[4, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(pv.PyroVAEError, match="NaN/Inf values"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy")))


def test_damaged_archives_and_idx_headers_are_one_line(tmp_path, idx_dir):
    np.save(tmp_path / "x.npy", np.ones((50, 4)))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-8])
    with pytest.raises(pv.PyroVAEError, match=r"is truncated: its header says \(50, 4\) float64"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy")))
    (tmp_path / "x.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(pv.PyroVAEError, match="cannot be read.*valid .npz"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npz")))
    labels = idx_dir / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    for bad, fragment in ((b"\x00\x01" + good[2:], "bad magic"), (good[:6], "header is truncated"),
                          (good[:-1], "expected 50 values, found 49"), (good + b"\x00", "expected 50 values, found 51")):
        labels.write_bytes(bad)
        with pytest.raises(pv.PyroVAEError, match=f"train-labels.*corrupt.*{fragment}"):
            pv.load_data(pv.DataConfig(source="mnist", path=str(idx_dir)))
    labels.write_bytes(struct.pack(">HBBI", 0, 8, 1, 49) + bytes(49))  # a valid file, one label short
    with pytest.raises(pv.PyroVAEError, match="50 train images but 49 labels"):
        pv.load_data(pv.DataConfig(source="mnist", path=str(idx_dir)))


def test_special_files_are_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "x.npy")  # opening it would block until a writer came
    with pytest.raises(pv.PyroVAEError, match="is a FIFO"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "x.npy")))
    (tmp_path / "z.csv").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(pv.PyroVAEError, match="is a character device, not a regular file"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / "z.csv")))
    with pytest.raises(pv.PyroVAEError, match="too long for the file system"):
        pv.load_data(pv.DataConfig(train=str(tmp_path / ("x" * 300 + ".npy"))))


def test_synthetic_sizes_that_cannot_fit_fail_before_allocating():
    with pytest.raises(pv.PyroVAEError, match=r"the synthetic data \(data.num_points = 1099511627776 .*GiB, "
                                              r"more than this machine's"):
        pv.load_data(pv.DataConfig(source="synthetic", num_points=2**40, synthetic_dim=4096))


def test_model_size_and_inferred_levels_are_checked_against_memory():
    from pyro_vae.data.sizes import inferred_levels
    from pyro_vae.models import check_size

    cfg = pv.ModelConfig(latent_dim=4, encoder=pv.NetConfig(hidden=(8,)), decoder=pv.NetConfig(hidden=(8,)))
    # encoder 10 -> 8 -> 2*4, decoder 4 -> 8 -> 10, weights and biases, and the likelihood's learned scale: the
    # count the error reports is the built model's, counted on the meta device
    expected = (10 * 8 + 8) + (8 * 8 + 8) + (4 * 8 + 8) + (8 * 10 + 10)
    assert sum(p.numel() for p in pv.build_model(cfg, 10).parameters()) == expected
    check_size(cfg, 10)
    with pytest.raises(pv.PyroVAEError, match=f"the model \\({expected:,} parameters.*more than this machine's"):
        check_size(cfg, 10, memory=16 * expected - 1)
    huge = pv.ModelConfig(latent_dim=2**24)
    with pytest.raises(pv.PyroVAEError, match=r"mostly from model.encoder \(a 33,554,432 x 400 weight\).*GiB, more "
                                              r"than this machine's 1 GiB available: use smaller sizes"):
        check_size(huge, 784, memory=2**30)
    assert inferred_levels(torch.tensor([[0.0, 3.0]]), torch.tensor([[16.0]])) == 17
    with pytest.raises(pv.PyroVAEError, match="would infer 1e\\+09 \\+ 1 levels.*set model.levels"):
        inferred_levels(torch.tensor([[1e9]]), torch.tensor([[0.0]]))
