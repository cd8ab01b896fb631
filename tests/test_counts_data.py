"""Count data in: SciPy sparse .npz (CSR, CSC) and Matrix Market .mtx files, read a batch of rows at a time, and
their bad values named by the file's row and column, nothing written."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import torch

from pyro_vae.cli import main
from pyro_vae.config.schema import DataConfig
from pyro_vae.data.sources import load_data
from pyro_vae.data.sparse import SparseRows


def _matrix(rows=120, cols=9, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.0, size=(rows, cols)) * (rng.random((rows, cols)) < 0.3)
    dense[:, 0] += 1  # no empty rows
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.mark.parametrize("kind", ["csr", "csc", "mtx"])
def test_sparse_files_load_as_rows_read_a_batch_at_a_time(tmp_path, kind):
    m = _matrix()
    path = tmp_path / ("x.mtx" if kind == "mtx" else "x.npz")
    if kind == "mtx":
        scipy.io.mmwrite(str(path), m)
    else:
        sp.save_npz(path, m.tocsc() if kind == "csc" else m)
    ds = load_data(DataConfig(train=str(path), test_fraction=0.25), "poisson")
    assert isinstance(ds.train, SparseRows) and tuple(ds.train.shape) == (90, 9)
    # the split's rows, densified, are the file's rows: every test and training row is one of them, once
    dense = torch.from_numpy(m.toarray())
    rows = torch.cat([ds.train[:], ds.test])
    assert rows.shape == dense.shape
    assert torch.equal(rows.sum(0), dense.sum(0)) and torch.equal(rows.sort(0).values, dense.sort(0).values)


@pytest.mark.parametrize("value, shown", [(0.5, "0.5"), (-1.0, "-1"), (np.nan, None)])
def test_a_bad_count_is_named_by_its_row_and_column_and_nothing_is_written(tmp_path, capsys, value, shown):
    m = _matrix().tolil()
    m[57, 4] = value
    sp.save_npz(tmp_path / "x.npz", m.tocsr())
    (tmp_path / "c.toml").write_text('[data]\ntrain = "x.npz"\n[model]\nlatent_dim = 2\nlikelihood = "poisson"\n'
                                     '[train]\nepochs = 1\n')
    rc = main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "run").exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "row 57, column 4" in err and (shown is None or f": {shown})" in err), err


def test_a_dense_count_file_names_the_files_row_before_the_split(tmp_path):
    x = _matrix().toarray()
    x[101, 3] = 2.5
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(Exception, match=r"row 101, column 3: 2\.5"):
        load_data(DataConfig(train=str(tmp_path / "x.npy")), "negative_binomial")


@pytest.mark.parametrize("form", ["npy", "npz"])
def test_a_multinomial_row_of_zeros_and_a_total_float32_cannot_hold_are_named_by_the_files_row(tmp_path, form):
    x = _matrix().toarray()
    x[83] = 0
    y = _matrix().toarray()
    y[77, 2] = 2.0 ** 24
    for data, likelihood, message in ((x, "multinomial", r"row 83 of data.train .* is all zeros"),
                                      (y, "poisson", r"row 77 of data.train .* totals 1677721\d counts")):
        path = tmp_path / f"x.{form}"
        if form == "npy":
            np.save(path, data)
        else:
            sp.save_npz(path, sp.csr_matrix(data))
        # named before the rows are split and shuffled: the row the file has
        with pytest.raises(Exception, match=message):
            load_data(DataConfig(train=str(path)), likelihood)


@pytest.mark.slow
def test_a_sparse_matrix_larger_than_the_memory_allowed_trains(tmp_path):
    """A 40,000 x 2,000 count matrix (320 MB dense) trains in a process whose address space has 256 MB to spare:
    densifying it there fails (checked), reading it a batch of rows at a time does not."""
    rows, cols = 40_000, 2_000
    rng = np.random.default_rng(0)
    nnz = rows * 4
    m = sp.csr_matrix((rng.integers(1, 5, nnz).astype(np.float32),
                       (np.repeat(np.arange(rows), 4), rng.integers(0, cols, nnz))), shape=(rows, cols))
    sp.save_npz(tmp_path / "big.npz", m)
    (tmp_path / "c.toml").write_text(
        '[data]\ntrain = "big.npz"\ntest_fraction = 0.01\n[model]\nlatent_dim = 2\nlikelihood = "poisson"\n'
        'encoder = {hidden = [8]}\ndecoder = {hidden = []}\n[train]\nepochs = 1\nbatch_size = 1000\n'
        '[evaluate]\niw_samples = 2\n')
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        import torch, scipy.sparse, scipy.io
        from pyro_vae.cli import main
        # the same run on a few rows first: every module a run imports lazily is imported before the limit
        small = scipy.sparse.load_npz({str(tmp_path / 'big.npz')!r})[:2500]
        scipy.sparse.save_npz({str(tmp_path / 'small.npz')!r}, small)
        assert main(["train", {str(tmp_path / 'c.toml')!r}, "--set", "data.train=small.npz", "--set",
                     "data.test_fraction=0.1", "--out", {str(tmp_path / 'warm')!r}, "--no-plots", "--quiet"]) == 0
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        spare = 256 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (vm + spare, vm + spare))
        try:
            np.ones(({rows}, {cols}), dtype=np.float32)
            sys.exit("densifying the matrix did not fail under the limit")
        except MemoryError:
            pass
        sys.exit(main(["train", {str(tmp_path / 'c.toml')!r}, "--out", {str(tmp_path / 'run')!r}, "--no-plots",
                       "--quiet"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_feature_names_come_from_a_names_file_one_a_column(tmp_path):
    m = _matrix(cols=4)
    scipy.io.mmwrite(str(tmp_path / "x.mtx"), m)
    (tmp_path / "features.tsv").write_text("".join(f"ENSG{i}\tGene{i}\tGene Expression\n" for i in range(4)))
    ds = load_data(DataConfig(train=str(tmp_path / "x.mtx"), feature_names=str(tmp_path / "features.tsv")), "zinb")
    assert ds.feature_names == ("Gene0", "Gene1", "Gene2", "Gene3")
    (tmp_path / "words.txt").write_text("a\nb\nc\n")
    with pytest.raises(Exception, match=r"has 3 names but the data has 4 columns"):
        load_data(DataConfig(train=str(tmp_path / "x.mtx"), feature_names=str(tmp_path / "words.txt")), "zinb")
