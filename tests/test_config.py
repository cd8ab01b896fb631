import tomllib

import pytest

import pyro_vae as pv
from pyro_vae.config import apply_overrides, dump_toml


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = pv.Config()
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert pv.load_config(p) == cfg


def test_full_config_round_trip(tmp_path):
    values = {
        "data": {"source": "synthetic", "num_points": 300, "test_fraction": 0.2, "binarize": "none"},
        "model": {"latent_dim": 3, "prior": "laplace", "likelihood": "normal", "scale": 0.25,
                  "guide": "delta", "encoder": {"hidden": [], "activation": "tanh"},
                  "decoder": {"hidden": [7, 5], "activation": "elu"}},
        "train": {"elbo": "iwae", "num_particles": 4, "epochs": 2, "batch_size": 32, "lr": 0.01,
                  "seed": 3, "device": "cpu", "beta": 0.5, "kl_warmup_epochs": 1},
    }
    cfg = pv.config_from_dict(values)
    assert cfg.model.short.encoder.hidden == () and cfg.model.nodes["z"].encoder.hidden == ()
    assert cfg.model.short.decoder.hidden == (7, 5) and cfg.model.nodes["x"].net.hidden == (7, 5)
    assert cfg.model.short.scale == 0.25 and cfg.model.nodes["x"].scale == 0.25
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    again = pv.load_config(p)
    assert again == cfg
    assert tomllib.loads(cfg.to_toml())["train"]["elbo"] == "iwae"


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"model": {"latent_dims": 4}}, "did you mean 'latent_dim'"),
        ({"trian": {}}, "did you mean 'train'"),
        ({"model": {"likelihood": "bernouli"}}, "did you mean 'bernoulli'"),
        ({"model": {"prior": "gauss"}}, "valid: normal, laplace"),
        ({"train": {"elbo": "tracee"}}, "did you mean 'trace'"),
        ({"train": {"device": "gpu"}}, "valid: auto, cpu, cuda"),
        ({"data": {"source": "fashion_mnist"}}, "did you mean 'fashion-mnist'"),
        ({"model": {"encoder": {"hiden": [3]}}}, "did you mean 'hidden'"),
        ({"model": {"encoder": {"activation": "rellu"}}}, "did you mean 'relu'"),
    ],
)
def test_unknown_keys_and_names_suggest_the_fix(values, fragment):
    # keys and types are the schema's, checked as the config is read; names are the registries', checked with the
    # model (pv.check_config, which pv.train and the CLI run before reading any data)
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.check_config(pv.config_from_dict(values))


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"model": {"latent_dim": 0}}, r"model.latent_dim: must be >= 1 \(got 0\)"),
        ({"train": {"lr": 0}}, r"train.lr: must be > 0"),
        ({"train": {"lr": -1e-3}}, r"train.lr: must be > 0"),
        ({"train": {"beta": -0.1}}, r"train.beta: must be >= 0"),
        ({"train": {"num_particles": 0}}, r"train.num_particles: must be >= 1"),
        ({"train": {"epochs": "ten"}}, r"train.epochs: expected an integer"),
        ({"train": {"batch_size": 12.5}}, r"train.batch_size: expected an integer"),
        ({"model": {"scale": -1.0}}, r"model.scale: must be a positive number"),
        ({"model": {"scale": "fixed"}}, r"model.scale: expected"),
        ({"model": {"encoder": {"hidden": [4, 0]}}}, r"model.encoder.hidden: must be a list of positive sizes"),
        ({"data": {"test_fraction": 1.0}}, r"data.test_fraction: must be in \[0, 1\)"),
        ({"data": {"drop_nonfinite": "yes"}}, r"data.drop_nonfinite: expected true or false"),
        ({"train": {"lr": float("nan")}}, r"train.lr: expected a finite number"),
    ],
)
def test_bad_values_name_the_key_path(values, fragment):
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.config_from_dict(values)


def test_malformed_toml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model]\nlatent_dim = 4\nlikelihood = \n")
    with pytest.raises(pv.PyroVAEError, match=r"bad.toml: invalid TOML: .*line 3"):
        pv.load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(pv.PyroVAEError, match="does not exist"):
        pv.load_config(tmp_path / "nope.toml")


def test_overrides_parse_toml_values_and_bare_words():
    out = apply_overrides({"train": {"epochs": 3}}, [
        "train.epochs=7", "model.encoder.hidden=[8, 4]", "data.source=synthetic", "train.lr=3e-4",
        "model.scale=learned",
    ])
    assert out["train"]["epochs"] == 7
    assert out["model"]["encoder"]["hidden"] == [8, 4]
    assert out["data"]["source"] == "synthetic"
    assert out["train"]["lr"] == pytest.approx(3e-4)
    cfg = pv.config_from_dict(out)
    assert cfg.model.short.encoder.hidden == (8, 4)


@pytest.mark.parametrize("bad", ["epochs=3", "train.=3", "train.epochs"])
def test_bad_override_syntax(bad):
    with pytest.raises(pv.PyroVAEError, match="section.key=value"):
        apply_overrides({}, [bad])


def test_relative_data_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.toml"
    p.write_text('[data]\ntrain = "x.npy"\n')
    cfg = pv.load_config(p)
    assert cfg.data.train == str(tmp_path / "sub" / "x.npy")
    assert cfg.data.source == "arrays"


def test_dump_toml_escapes_strings():
    text = dump_toml({"data": {"train": 'a "quoted" \\ path'}})
    assert tomllib.loads(text)["data"]["train"] == 'a "quoted" \\ path'


@pytest.mark.parametrize(
    "make, fragment",
    [
        # values that compare equal to the field's default but have the wrong type
        (lambda: pv.TrainConfig(beta=True), "train.beta: expected a number, got True"),
        (lambda: pv.TrainConfig(epochs=20.0), "train.epochs: expected an integer, got 20.0"),
        (lambda: pv.TrainConfig(seed=0.0), "train.seed: expected an integer, got 0.0"),
        (lambda: pv.DataConfig(drop_nonfinite=0), "data.drop_nonfinite: expected true or false, got 0"),
        (lambda: pv.ModelConfig(tied=0), "model.tied: expected true or false, got 0"),
        (lambda: pv.ModelConfig(latent_dim=16.0), "model.latent_dim: expected an integer, got 16.0"),
        (lambda: pv.ModelConfig(encoder=pv.NetConfig(hidden=(400.0,))), r"model.encoder.hidden\[0\]: expected an integer"),
    ],
)
def test_python_configs_check_every_field_even_values_equal_to_the_default(make, fragment):
    with pytest.raises(pv.PyroVAEError, match=fragment):
        make()


def test_every_default_name_is_registered():
    # the registry look-up is skipped for a value that is exactly its field's default,
    # so the defaults themselves must be known names
    import dataclasses

    for section in (pv.DataConfig(), pv.ModelConfig(), pv.TrainConfig()):
        for f in dataclasses.fields(section):
            choices = f.metadata.get("choices")
            if choices is not None:
                assert f.default in choices(), (type(section).__name__, f.name, f.default)


def test_python_numbers_are_normalized_like_toml():
    cfg = pv.TrainConfig(lr=1, beta=0)
    assert type(cfg.lr) is float and type(cfg.beta) is float


@pytest.mark.parametrize("values, fragment", [
    ({"train": {"seed": -1}}, r"train.seed: must be in \[0, 2\*\*63\)"),
    ({"train": {"seed": 2**64}}, r"train.seed: must be in \[0, 2\*\*63\)"),
    ({"data": {"split_seed": -5}}, r"data.split_seed: must be in \[0, 2\*\*63\).*non-negative integer"),
    ({"model": {"latent_dim": 2**41}}, r"model.latent_dim: must be <= 2\*\*40: .* cannot fit in memory .*use a smaller one"),
    ({"model": {"decoder": {"hidden": [2**41]}}}, r"model.decoder.hidden: must be a list of sizes each <= 2\*\*40: "),
    ({"model": {"levels": 2**41}}, r"model.levels: must be <= 16777216"),
    ({"data": {"synthetic_dim": 10**12}}, r"data.synthetic_dim: must be <= 16777216"),
    ({"data": {"num_points": 10**15}}, r"data.num_points: must be <= 2\*\*40"),
    ({"train": {"batch_size": 2**40}}, r"train.batch_size: must be < 2\*\*31"),
    ({"train": {"num_particles": 10**9}}, r"train.num_particles: must be <= 16777216"),
])
def test_seeds_and_sizes_have_upper_and_lower_bounds(values, fragment):
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.config_from_dict(values)


def test_the_largest_seeds_and_sizes_are_accepted():
    cfg = pv.config_from_dict({"train": {"seed": 2**63 - 1, "num_particles": 2**24},
                               "data": {"split_seed": 2**63 - 1}, "model": {"latent_dim": 2**24}})
    assert cfg.train.seed == 2**63 - 1 and cfg.model.nodes["z"].dim == 2**24


@pytest.mark.parametrize("values, fragment", [
    ({"source": "synthetic", "train": "x.npy"}, r"data.train is given but data.source = 'synthetic'.*remove"),
    ({"source": "fashion-mnist", "train": "x.npy"}, r"data.train is given but data.source = 'fashion-mnist'"),
    ({"test": "t.npy"}, r"data.test is given without data.train"),
    ({"source": "synthetic", "test": "t.npy"}, r"data.test is given without data.train"),
    ({"path": "/data/idx"}, r"data.path is given but data.source = 'digits'.*remove data.path"),
    ({"source": "synthetic", "path": "/data/idx"}, r"data.path is given but data.source = 'synthetic'"),
    ({"train": "x.npy", "test": "t.npy", "test_fraction": 0.3}, r"data.test_fraction is given together with data.test"),
])
def test_contradicting_data_keys_name_both(values, fragment):
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.config_from_dict({"data": values})
    with pytest.raises(pv.PyroVAEError, match=fragment):
        pv.DataConfig(**values)


def test_a_train_file_alone_means_arrays_but_digits_said_outright_contradicts_it(tmp_path):
    assert pv.DataConfig(train="x.npy").source == "arrays"  # from Python as from TOML
    assert pv.config_from_dict({"data": {"train": "x.npy"}}).data.source == "arrays"
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsource = "digits"\ntrain = "x.npy"\n')
    with pytest.raises(pv.PyroVAEError, match=r"data.train is given but data.source = 'digits'"):
        pv.load_config(p)
    p.write_text('[data]\ntrain = "x.npy"\n')
    assert pv.load_config(p).data.source == "arrays"


def test_config_files_that_are_not_utf8_text_or_not_files(tmp_path):
    p = tmp_path / "c.toml"
    p.write_bytes(b"[train]\nepochs = 3  # caf\xe9\n")
    with pytest.raises(pv.PyroVAEError, match=r"is not UTF-8 text \(byte 0xe9 at line 2\): save it as UTF-8"):
        pv.load_config(p)
    p.write_bytes("[train]\nepochs = 3\n".encode("utf-8-sig"))  # a byte-order mark, as some editors write
    assert pv.load_config(p).train.epochs == 3
    with pytest.raises(pv.PyroVAEError, match="is a folder"):
        pv.load_config(tmp_path)
    with pytest.raises(pv.PyroVAEError, match="too long for the file system.*use a shorter name"):
        pv.load_config(tmp_path / ("c" * 300 + ".toml"))
    import os

    os.mkfifo(tmp_path / "f.toml")
    with pytest.raises(pv.PyroVAEError, match="is a FIFO"):
        pv.load_config(tmp_path / "f.toml")
