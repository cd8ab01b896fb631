"""Named data: programs written as model(x, y=None) get their arrays by keyword, from Python and from files."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist

import pyro_vae as pv


class Recorder(nn.Module):
    """A Gaussian latent model with an optional label input; records which rows each call saw (by a row id)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, d=3):
        super().__init__()
        self.dec = nn.Linear(2 + 4, d)
        self.enc = nn.Linear(d + 4, 4)
        self.seen = []

    def _onehot(self, y, like):
        if y is None:
            return like.new_zeros(like.shape[:-1] + (4,))
        return nn.functional.one_hot(y, 4).to(like.dtype).expand(like.shape[:-1] + (4,))

    def model(self, x, rid, y=None):
        pyro.module("rec", self)
        if torch.is_grad_enabled():
            self.seen.append((rid.tolist(), y is None))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            h = torch.cat([z, self._onehot(y, z)], -1)
            pyro.sample("x", dist.Normal(self.dec(h), 1.0).to_event(1), obs=x)

    def guide(self, x, rid, y=None):
        pyro.module("rec", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(torch.cat([x, self._onehot(y, x)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(s) + 1e-3).to_event(1))


def _data(n=100, missing_every=3):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    y[::missing_every] = -1
    return {"x": torch.randn(n, 3, generator=g), "rid": torch.arange(n), "y": y}


def test_labelled_and_unlabelled_rows_are_batched_apart_and_each_row_is_seen_once_an_epoch():
    data = _data()
    pyro.set_rng_seed(0)
    m = Recorder()
    pv.fit(m, data, None, pv.TrainConfig(elbo="trace", epochs=2, batch_size=16, device="cpu"), progress=False)
    unlabelled = set(torch.nonzero(data["y"] == -1).flatten().tolist())
    # each group is cut into batches of its own: ceil(34/16) + ceil(66/16) steps an epoch
    per_epoch = -(-len(unlabelled) // 16) + -(-(100 - len(unlabelled)) // 16)
    steps = m.seen[-2 * per_epoch:]  # the calls before are the setup's checks on a few rows
    for epoch in range(2):
        rows_seen = []
        for rows, y_absent in steps[epoch * per_epoch:(epoch + 1) * per_epoch]:
            # a batch is all labelled (y passed) or all unlabelled (y left at its default, None)
            assert all((r in unlabelled) == y_absent for r in rows)
            rows_seen += rows
        assert sorted(rows_seen) == list(range(100))


def test_named_data_from_npz_csv_and_one_file_per_array_load_the_same(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    y = np.arange(50) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    with open(tmp_path / "d.csv", "w") as f:
        f.write("a,b,c,y\n" + "".join(f"{r[0]!r},{r[1]!r},{r[2]!r},{v}\n" for r, v in zip(x.tolist(), y)))
    loaded = []
    for spec in ({"train": "d.npz", "arrays": ["x", "y"]}, {"train": {"x": "x.npy", "y": "y.npy"}},
                 {"train": "d.csv", "arrays": ["x", "y"]}):
        ds = pv.load_data(pv.config_from_dict({"data": {**spec, "test_fraction": 0.2}}, base_dir=tmp_path).data)
        assert ds.observed == "x" and ds.dim == 3 and ds.train["y"].dtype == torch.int64
        loaded.append(ds)
    for ds in loaded[1:]:
        for split in ("train", "test"):
            for k in ("x", "y"):
                assert torch.allclose(getattr(ds, split)[k].double(), getattr(loaded[0], split)[k].double(), atol=1e-6)
    # the held-out split took the same rows of both arrays: the pairs are the file's pairs
    ds = loaded[0]
    rows = {tuple(np.round(r, 5)): v for r, v in zip(x.tolist(), y)}
    for r, v in zip(ds.test["x"].tolist(), ds.test["y"].tolist()):
        assert rows[tuple(np.round(r, 5))] == v


@pytest.mark.parametrize("spec, words", [
    ({"train": "x.npy", "arrays": ["x", "y"]}, "holds one array"),
    ({"train": "d.npz", "arrays": ["x", "z"]}, "no array named 'z'"),
    ({"train": "d.npz", "arrays": ["x", "x"]}, "names an array twice"),
    ({"train": "d.npz", "arrays": ["x", "not-a-name"]}, "not a Python identifier"),
    ({"train": {"x": "x.npy", "y": "short.npy"}}, "different numbers of rows"),
])
def test_bad_named_data_is_one_line(tmp_path, spec, words):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2), np.float32), y=np.zeros(10, np.int64))
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    np.save(tmp_path / "short.npy", np.zeros(9, np.int64))
    with pytest.raises(pv.PyroVAEError, match=words) as e:
        pv.load_data(pv.config_from_dict({"data": spec}, base_dir=tmp_path).data)
    assert "\n" not in str(e.value)


def test_named_data_for_a_builtin_model_is_refused_by_the_cli_before_anything_is_written(tmp_path, capsys):
    from pyro_vae.cli import main

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((60, 4)).astype(np.float32), y=np.zeros(60, np.int64))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\ntrain = "d.npz"\narrays = ["x", "y"]\n[model]\nlikelihood = "normal"\n')
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the one-latent model (model.latent_dim, ...) takes one array" in err[0] and "[model.nodes.NAME]" in err[0]
    assert not out.exists()


def test_evaluate_refuses_rows_with_and_without_a_label_mixed():
    pyro.set_rng_seed(0)
    m = Recorder()
    with pytest.raises(pv.PyroVAEError, match="given for some rows and missing") as e:
        pv.evaluate(m, _data(), iw_samples=5)
    assert "\n" not in str(e.value)
    full = _data()
    full["y"] = full["y"].clamp(min=0)  # every label given
    r = pv.evaluate(m, full, iw_samples=5)
    assert np.isfinite(r["log_likelihood"])


def test_observations_with_nan_and_missing_observations_are_one_line():
    pyro.set_rng_seed(0)
    data = _data(missing_every=1000)
    data["x"][3, 1] = float("nan")
    with pytest.raises(pv.PyroVAEError, match=r"training data\['x'\] has 1 NaN") as e:
        pv.fit(Recorder(), data, None, pv.TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)
    assert "\n" not in str(e.value)
    data["x"][3] = float("nan")  # a whole row of NaN in the observations is not a "missing label"
    with pytest.raises(pv.PyroVAEError, match="holds the observations but has missing rows"):
        pv.fit(Recorder(), data, None, pv.TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)


# a program module that defines its model on top of the conditional VAE of tests/test_external_programs.py (pytest
# puts tests/ on sys.path), as a user's own module would; the class is defined here (a class merely imported into the
# named module is refused: store/trust.py)
CVAE_PROGRAM = "import test_external_programs\n\n\nclass CVAE(test_external_programs.CVAE):\n    pass\n"


def test_a_conditional_program_from_toml_trains_on_named_files_and_samples_a_requested_digit(tmp_path, capsys):
    from sklearn.datasets import load_digits
    from pyro_vae.cli import main

    x, y = load_digits(return_X_y=True)
    xb = (x / 16.0 > 0.5).astype(np.float32)
    np.savez(tmp_path / "digits.npz", x=xb, y=y)
    (tmp_path / "cvae_models.py").write_text(CVAE_PROGRAM)
    (tmp_path / "cvae.toml").write_text(
        '[data]\ntrain = "digits.npz"\narrays = ["x", "y"]\n[model]\nprogram = "cvae_models:CVAE"\n'
        '[train]\nelbo = "trace"\nepochs = 15\nbatch_size = 100\nlr = 3e-3\n')
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cvae.toml"), "--out", str(run), "--quiet", "--iw-samples", "20"]) == 0
    means = np.stack([xb[y == c].mean(0) for c in range(10)])
    for c in (0, 1, 3, 7):
        out = tmp_path / f"s{c}.npy"
        assert main(["sample", str(run), "-n", "200", "--given", f"y={c}", "--out", str(out)]) == 0
        s = np.load(out).mean(0)
        # the samples' mean image is nearest to the requested digit's mean image
        assert int(np.argmin(((means - s) ** 2).sum(1))) == c
    capsys.readouterr()
    # the program needs y: without --given it is one line naming the fix
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "none.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--given" in err[0] and not (tmp_path / "none.npy").exists()
    assert main(["sample", str(run), "--given", "y=[1, 2]", "--out", str(tmp_path / "bad.npy")]) == 2
    assert main(["evaluate", str(run), "--iw-samples", "20", "--json"]) == 0
    assert np.isfinite(__import__("json").loads(capsys.readouterr().out)["log_likelihood"])
