"""A count matrix's column names: one Dataset field, one reader, for data.feature_names and data.vocabulary alike."""

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from pyro_vae.cli import main
from pyro_vae.config.schema import DataConfig
from pyro_vae.data.names import names_text, read_column_names
from pyro_vae.data.sources import load_data
from pyro_vae.errors import PyroVAEError


@pytest.fixture
def counts(tmp_path):
    m = sp.csr_matrix(np.random.default_rng(0).poisson(2.0, size=(40, 3)).astype(float) + 1)
    scipy.io.mmwrite(str(tmp_path / "x.mtx"), m)
    (tmp_path / "genes.tsv").write_text("".join(f"ENSG{i}\tGene{i}\tGene Expression\n" for i in range(3)))
    (tmp_path / "words.txt").write_text("apple\nbanana\ncherry\n")
    return tmp_path


@pytest.mark.parametrize("key, file, names", [("feature_names", "genes.tsv", ("Gene0", "Gene1", "Gene2")),
                                              ("vocabulary", "words.txt", ("apple", "banana", "cherry")),
                                              ("feature_names", "words.txt", ("apple", "banana", "cherry")),
                                              ("vocabulary", "genes.tsv", ("Gene0", "Gene1", "Gene2"))])
def test_either_key_names_the_one_field(counts, key, file, names):
    ds = load_data(DataConfig(train=str(counts / "x.mtx"), **{key: str(counts / file)}), "multinomial")
    assert ds.feature_names == names and ds.vocabulary == names


def test_both_keys_at_once_are_refused_in_one_line(counts, capsys):
    with pytest.raises(PyroVAEError, match="both name the data's columns: keep one"):
        DataConfig(train=str(counts / "x.mtx"), feature_names=str(counts / "genes.tsv"),
                   vocabulary=str(counts / "words.txt"))
    out = counts / "run"
    assert main(["train", "examples/topics_prodlda.toml", "--quiet", "--out", str(out),
                 "--set", f'data.feature_names="{counts / "genes.tsv"}"',
                 "--set", f'data.vocabulary="{counts / "words.txt"}"']) == 2
    err = capsys.readouterr().err
    assert "both name the data's columns" in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("text, message", [
    ("a\nb\n", "has 2 names but the data has 3 columns"),
    ("a\n\nb\n", "line 2 is empty"),
    ("a\nb\na\n", "line 3 repeats 'a' (line 1)"),
    ("ID1\tA\nID2\tA\nID3\tB\n", "line 2 repeats 'A' (line 1): each column needs its own name (a 10x file's first"),
    ("a\nb\x1b[31m\nc\n", "line 2 holds the control character"),
    ("a\nb\n" + "c" * 201 + "\n", "line 3 is 201 characters long"),
])
def test_a_bad_names_file_is_one_line_naming_its_line(tmp_path, text, message):
    f = tmp_path / "names.txt"
    f.write_text(text)
    with pytest.raises(PyroVAEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_column_names(str(f), 3, "data.feature_names")


def test_names_round_trip_through_their_text(tmp_path):
    names = ("a b", "x$y", "Gene-1")
    (tmp_path / "n.txt").write_text(names_text(names))
    assert read_column_names(str(tmp_path / "n.txt"), 3) == names
