"""A user's files read everywhere the way training reads them: ``evaluate --data`` through data.train's reader
(sequences with their lengths, sparse matrices), and the config keys a file source refuses."""

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from pyro_vae.cli import main

SEQ_TOML = """[data]
train = "walk.npz"
[model.nodes.z]
dim = 2
over = "time"
transition = { type = "linear" }
rnn = { type = "gru", hidden = 4 }
encoder = { hidden = [4] }
[model.nodes.x]
role = "observed"
over = "time"
likelihood = "normal"
parents = ["z"]
net = { hidden = [] }
[train]
epochs = 1
batch_size = 16
"""


def _walks(n, steps, seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=(n, steps, 2)), axis=1).astype(np.float32) * 0.3
    lengths = rng.integers(3, steps + 1, size=n)
    return x, lengths


def _evaluate(run, path, capsys):
    rc = main(["evaluate", str(run), "--data", str(path), "--iw-samples", "5", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    x, lengths = _walks(40, 6, 0)
    np.savez(d / "walk.npz", x=x, lengths=lengths)
    (d / "walk.toml").write_text(SEQ_TOML)
    assert main(["train", str(d / "walk.toml"), "--out", str(d / "run"), "--quiet", "--no-plots",
                 "--iw-samples", "5"]) == 0
    return d


def test_evaluate_data_reads_sequences_with_their_lengths_as_training_does(seq_run, tmp_path, capsys):
    """Zero and NaN padding beyond each length give the very same numbers (the padding is read as data.train reads
    it, then masked); a full-length .npy is read as (N, T, D), not flattened."""
    x, lengths = _walks(7, 5, 1)
    real = np.arange(5)[None, :] < lengths[:, None]
    zero, nan = np.where(real[..., None], x, 0.0), np.where(real[..., None], x, np.nan)
    np.savez(tmp_path / "zero.npz", x=zero, lengths=lengths)
    np.savez(tmp_path / "nan.npz", x=nan, lengths=lengths)
    a = _evaluate(seq_run / "run", tmp_path / "zero.npz", capsys)
    b = _evaluate(seq_run / "run", tmp_path / "nan.npz", capsys)
    assert a["num_points"] == 7 and a["elbo"] == b["elbo"] and a["log_likelihood"] == b["log_likelihood"]
    np.save(tmp_path / "full.npy", x)
    full = _evaluate(seq_run / "run", tmp_path / "full.npy", capsys)
    assert full["num_points"] == 7 and full["elbo"] < a["elbo"]  # more real steps: more to explain
    # NaN inside a real step is named by its sequence and step, in one line
    bad = zero.copy()
    bad[3, 1, 0] = np.nan
    np.savez(tmp_path / "bad.npz", x=bad, lengths=lengths)
    rc = main(["evaluate", str(seq_run / "run"), "--data", str(tmp_path / "bad.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "sequence 3, step 1" in err, err


def _counts(rows=60, cols=6, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.5, size=(rows, cols)).astype(np.float32)
    dense[:, 0] += 1
    return dense


@pytest.fixture(scope="module")
def count_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("counts")
    scipy.io.mmwrite(str(d / "counts.mtx"), sp.csr_matrix(_counts()))
    (d / "c.toml").write_text('[data]\ntrain = "counts.mtx"\n[model]\nlatent_dim = 2\nlikelihood = "poisson"\n'
                              'encoder = { hidden = [8] }\ndecoder = { hidden = [8] }\n[train]\nepochs = 1\nbatch_size = 16\n')
    assert main(["train", str(d / "c.toml"), "--out", str(d / "run"), "--quiet", "--no-plots",
                 "--iw-samples", "5"]) == 0
    return d


def test_evaluate_data_reads_the_sparse_formats_training_reads(count_run, tmp_path, capsys):
    """The same counts as .mtx, SciPy sparse .npz and dense .npy evaluate to the same numbers."""
    m = _counts(20, 6, seed=3)
    scipy.io.mmwrite(str(tmp_path / "t.mtx"), sp.csr_matrix(m))
    sp.save_npz(tmp_path / "t.npz", sp.csc_matrix(m))
    np.save(tmp_path / "t.npy", m)
    found = [_evaluate(count_run / "run", tmp_path / f"t.{s}", capsys) for s in ("mtx", "npz", "npy")]
    assert all(f["num_points"] == 20 for f in found)
    assert found[0]["elbo"] == found[1]["elbo"] == found[2]["elbo"]
    m[4, 2] = 0.5  # not a count: named by the file's row and column, as data.train names it
    scipy.io.mmwrite(str(tmp_path / "bad.mtx"), sp.csr_matrix(m))
    rc = main(["evaluate", str(count_run / "run"), "--data", str(tmp_path / "bad.mtx"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "row 4, column 2" in err, err


def test_sample_means_and_draws_go_to_different_default_files(count_run, capsys):
    """``sample`` (means) and ``sample --draws`` (counts) never overwrite each other's default file."""
    run = count_run / "run"
    assert main(["sample", str(run), "-n", "3"]) == 0
    assert main(["sample", str(run), "-n", "3", "--draws"]) == 0
    capsys.readouterr()
    means, draws = np.load(run / "samples-seed0.npy"), np.load(run / "draws-seed0.npy")
    assert means.shape == draws.shape == (3, 6)
    assert np.all(draws == np.round(draws)) and not np.all(means == np.round(means))  # counts vs Poisson means


@pytest.mark.parametrize("key, value", [("num_points", 50), ("synthetic_dropout", 0.3), ("sequence_length", 10),
                                        ("num_points", 2000)])  # the default, written: refused as well
def test_a_synthetic_only_key_with_a_file_is_refused_and_nothing_is_written(tmp_path, capsys, key, value):
    np.save(tmp_path / "x.npy", np.zeros((40, 3), dtype=np.float32))
    (tmp_path / "c.toml").write_text('[data]\ntrain = "x.npy"\n[model]\nlatent_dim = 2\n[train]\nepochs = 1\n')
    rc = main(["train", str(tmp_path / "c.toml"), "--set", f"data.{key}={value}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "run").exists() and err.count("\n") == 1, err
    assert f"data.{key} is read only by data.source = " in err and f"remove data.{key}" in err


def test_a_file_runs_config_records_no_synthetic_keys_and_old_ones_still_load(count_run, tmp_path):
    from pyro_vae.app.runs import load_run
    from pyro_vae.config import load_config

    text = (count_run / "run" / "config.toml").read_text()
    assert "num_points" not in text and "corpus_alpha" not in text and "synthetic_library" not in text
    # an older version recorded every synthetic default, and a key set by mistake: the run still loads
    old = tmp_path / "old"
    old.mkdir()
    for f in ("checkpoint.pt", "metrics.json"):
        (old / f).write_bytes((count_run / "run" / f).read_bytes())
    (old / "config.toml").write_text(text.replace("[data]\n", "[data]\nnum_points = 2000\nsequence_length = 10\n"
                                                  "synthetic_dropout = 0.3\n", 1))
    assert load_run(old).config.data.num_points == 2000  # its default: the file's value was dropped
    with pytest.raises(Exception, match="data.sequence_length is read only"):  # but not a --set on resume
        load_config(old / "config.toml", ("data.sequence_length=12",), run=True)


@pytest.mark.parametrize("sets, key", [
    (["model.likelihood=poisson", "model.dispersion=feature"], "model.dispersion"),  # the default, written
    (["model.likelihood=normal", "model.library=none"], "model.library"),
    (["model.likelihood=multinomial", "model.library=none"], "model.library"),
    (["model.likelihood=negative_binomial", "model.nodes.x.dispersion_by=y"], None),  # the graph form below
])
def test_a_count_key_written_where_it_does_not_apply_is_refused(tmp_path, capsys, sets, key):
    from pyro_vae.config import config_from_dict
    from pyro_vae.errors import PyroVAEError

    if key is None:
        nodes = {"z": {"dim": 2}, "x": {"role": "observed", "likelihood": "negative_binomial", "parents": ["z"],
                                        "dispersion_by": "y"}}
        with pytest.raises(PyroVAEError, match=r"model.nodes.x.dispersion_by names the label of dispersion = "
                                               r"'feature-label', but dispersion = 'feature'"):
            config_from_dict({"model": {"nodes": nodes}})
        return
    np.save(tmp_path / "x.npy", _counts(40, 3))
    (tmp_path / "c.toml").write_text('[data]\ntrain = "x.npy"\n[train]\nepochs = 1\n')
    rc = main(["train", str(tmp_path / "c.toml"), *[a for s in sets for a in ("--set", s)],
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "run").exists() and err.count("\n") == 1, err
    assert err.startswith(f"pyro-vae: error: {key} ") and "remove it" in err


def test_a_count_runs_config_records_only_the_count_keys_its_likelihood_reads(count_run):
    from pyro_vae.config import load_config

    text = (count_run / "run" / "config.toml").read_text()
    assert 'library = "none"' in text and "dispersion" not in text  # poisson: a library, no dispersion
    assert load_config(count_run / "c.toml").model == load_config(count_run / "run" / "config.toml", run=True).model


def test_an_old_runs_config_toml_used_to_train_again_still_loads(count_run):
    """A run's config.toml written by an older version (every synthetic default, dispersion under poisson) still
    reads as a config; a --set of an inapplicable key on it is refused."""
    from pyro_vae.config import load_config
    from pyro_vae.errors import PyroVAEError

    text = (count_run / "run" / "config.toml").read_text()
    old = count_run / "old.toml"
    old.write_text(text.replace("[data]\n", "[data]\nnum_points = 2000\ncorpus_alpha = 0.1\n", 1)
                   .replace('library = "none"\n', 'library = "none"\ndispersion = "feature"\n', 1))
    assert load_config(old).model == load_config(count_run / "c.toml").model
    with pytest.raises(PyroVAEError, match="model.dispersion is the negative binomial's"):
        load_config(old, ("model.dispersion=feature",))


def test_a_features_by_cells_file_is_named_and_data_transpose_reads_it(tmp_path, capsys):
    """A 10x-style genes x cells matrix: the names' hint says to transpose; with data.transpose the .mtx stays
    sparse and its rows are the cells, and the dense .npy of the same matrix reads the same."""
    from pyro_vae.config.schema import DataConfig
    from pyro_vae.data.sources import load_data
    from pyro_vae.data.sparse import SparseRows

    cells = _counts(50, 6, seed=5)  # 50 cells x 6 genes
    scipy.io.mmwrite(str(tmp_path / "matrix.mtx"), sp.csr_matrix(cells.T))  # as 10x writes it: genes x cells
    np.save(tmp_path / "genes_by_cells.npy", cells.T)
    (tmp_path / "genes.tsv").write_text("".join(f"ENSG{i}\tG{i}\n" for i in range(6)))
    (tmp_path / "c.toml").write_text('[data]\ntrain = "matrix.mtx"\nfeature_names = "genes.tsv"\n[model]\n'
                                     'latent_dim = 2\nlikelihood = "poisson"\n[train]\nepochs = 1\n')
    rc = main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "run").exists() and err.count("\n") == 1, err
    assert "its 6 rows match the 6 names" in err and "set data.transpose = true" in err
    names = str(tmp_path / "genes.tsv")
    sparse = load_data(DataConfig(train=str(tmp_path / "matrix.mtx"), transpose=True, test_fraction=0.0,
                                  feature_names=names), "poisson")
    dense = load_data(DataConfig(train=str(tmp_path / "genes_by_cells.npy"), transpose=True, test_fraction=0.0),
                      "poisson")
    assert isinstance(sparse.train, SparseRows) and tuple(sparse.train.shape) == (50, 6)
    assert np.array_equal(sparse.train[:].numpy(), cells) and np.array_equal(dense.train.numpy(), cells)
    assert sparse.feature_names == tuple(f"G{i}" for i in range(6))
    from pyro_vae.errors import PyroVAEError
    with pytest.raises(PyroVAEError, match="data.transpose = true swaps the rows and columns of one data.train"):
        DataConfig(source="synthetic_counts", transpose=True)


def test_a_given_prefix_npz_is_read_with_its_lengths(seq_run, tmp_path, capsys):
    """Padding beyond one shared length is cut (NaN there is fine); prefixes of different lengths are refused,
    since a forecast after the padding would silently start from zeros."""
    x, _ = _walks(3, 6, 2)
    x[:, 4:] = np.nan
    np.savez(tmp_path / "p.npz", x=x, lengths=np.array([4, 4, 4]))
    out = tmp_path / "f.npz"
    assert main(["sample", str(seq_run / "run"), "--steps", "3", "-n", "2", "--given-prefix", str(tmp_path / "p.npz"),
                 "--out", str(out)]) == 0
    assert "after a prefix of 4" in capsys.readouterr().out
    np.savez(tmp_path / "q.npz", x=np.nan_to_num(x), lengths=np.array([4, 2, 4]))
    rc = main(["sample", str(seq_run / "run"), "--steps", "3", "--given-prefix", str(tmp_path / "q.npz"),
               "--out", str(tmp_path / "g.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "lengths run from 2 to 4" in err and not (tmp_path / "g.npz").exists()
