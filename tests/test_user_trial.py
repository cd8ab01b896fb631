"""What a new user's trial found wrong or missing: per-row numbers of sequences count only real steps, the
amortization gap is never a clipped 0, sequences can be sampled with noise, ``--help`` and ``pyro-vae keys``
lead to a model, and long site lists and labels stay readable.
"""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

import torch

import pyro_vae as pv
from pyro_vae.config import config_from_dict


def _chain(x_dim=3):
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"},
                   "rnn": {"type": "gru", "hidden": 8}, "encoder": {"hidden": [8]}},
             "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                   "net": {"hidden": [8]}}}
    torch.manual_seed(0)
    return pv.build_model(config_from_dict({"model": {"nodes": nodes}, "train": {"seed": 0}}).model, x_dim)


def _padded_pair(n=6, t=7, d=3):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 3, 1, 5, 7, 2])[:n]
    x = torch.randn(n, t, d, generator=g) * (torch.arange(t) < lengths[:, None]).unsqueeze(-1)
    data = {"x": x, "lengths": lengths}
    # padding far from the model's means: an average that counted padded steps would move a lot
    padded = {"x": torch.cat([x, torch.full_like(x, 9.0)], dim=1), "lengths": lengths}
    return data, padded


def test_reconstruction_mse_counts_only_real_steps():
    model = _chain()
    data, padded = _padded_pair()
    a = pv.evaluate_points(model, data, iw_samples=None, elbo_samples=2, seed=0, prior_samples=0)
    b = pv.evaluate_points(model, padded, iw_samples=None, elbo_samples=2, seed=0, prior_samples=0)
    assert a.reconstruction_mse is not None
    assert torch.allclose(torch.as_tensor(a.reconstruction_mse), torch.as_tensor(b.reconstruction_mse),
                          rtol=1e-5, atol=1e-6)
    # and it is the mean over the real steps: the one-step sequence's error is over its 3 numbers only
    assert torch.isfinite(torch.as_tensor(a.reconstruction_mse)).all()


def test_sequence_draws_scatter_around_the_means_by_the_likelihoods_scale():
    from pyro_vae.app.sequences import emit

    model = _chain(x_dim=2)
    torch.manual_seed(3)
    with torch.no_grad():
        z = torch.randn(1, 4, 2).expand(4000, 4, 2)
        mean = emit(model, z)
        x = emit(model, z, draws=True)
        scale = model.likelihood(model.emitters[model.obs_site]({model.chain: z[:1]})).base_dist.scale[0]
    assert x.shape == mean.shape == (4000, 4, 2)
    n = x.shape[0]
    # the sample mean within 4 s.e. of the law's mean, the sample sd within 4 s.e. (sd / sqrt(2n)) of its sd
    assert bool(((x.mean(0) - mean[0]).abs() < 4 * scale / n ** 0.5).all())
    assert bool(((x.std(0) - scale).abs() < 4 * scale / (2 * n) ** 0.5).all())


# -- pyro-vae keys and --help ---------------------------------------------------------------------


def test_every_config_key_has_a_meaning_and_is_a_key_the_config_takes():
    from pyro_vae.config.keys import SECTIONS, config_keys
    from pyro_vae.config.schema import SYNTHETIC_KEYS

    keys = config_keys()
    assert len(keys) > 80
    assert not [k.key for k in keys if not k.meaning.strip()]
    by_key = {k.key: k for k in keys}
    assert by_key["train.epochs"].default == "20" and by_key["train.on_nonfinite"].choices == ("raise", "skip",
                                                                                                "rollback")
    # the keys of the plain sections are keys a config accepts (at their listed defaults), not made-up paths
    for section in ("data", "train", "evaluate"):
        for k in config_keys(section):
            if k.default in ("(none)", "(required)") or k.key in ("data.source",):
                continue
            value = tomllib.loads(f"v = {k.default}")["v"]  # the listing writes defaults as TOML values
            key = k.key.split(".", 1)[1]
            given = {key: value}
            if section == "data" and key in SYNTHETIC_KEYS:  # read only by the sources that generate data
                given["source"] = SYNTHETIC_KEYS[key][0]
            config_from_dict({SECTIONS[section][0]: given})


def test_examples_named_in_help_exist_and_registries_are_listed():
    from pathlib import Path

    from pyro_vae.app.keys import EXAMPLES, keys_text

    root = Path(__file__).resolve().parents[1]
    missing = [f for files in EXAMPLES.values() for f in files if not (root / f).is_file()]
    assert not missing
    names = keys_text("names")
    for name in ("zinb", "multinomial", "lowrank", "iaf", "vamp", "synthetic_sequences", "meanfield"):
        assert name in names


def test_keys_command_and_help_epilog(capsys):
    from pyro_vae.cli import main

    assert main(["keys", "train"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs = 20" in out and "data.source" not in out
    assert main(["keys", "trian"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'train'" in err and err.count("\n") == 1
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "pyro-vae keys" in out and "examples/sequence_dmm.toml" in out and "examples/counts_zinb.toml" in out
    assert main(["train", "--help"]) == 0
    assert "examples/own_program/cvae.toml" in capsys.readouterr().out


# -- the amortization gap where the per-point family is poorer than the guide ---------------------------------


def test_a_chains_structured_guide_is_outside_the_per_point_family_a_mean_field_vae_is_not():
    from pyro_vae.diagnostics.within_family import guide_outside_family
    from pyro_vae.infer.layout import build_layout

    data, _ = _padded_pair()
    chain = _chain()
    why = guide_outside_family(chain, data, build_layout(chain, data))
    assert why is not None and "reads z_" in why
    torch.manual_seed(0)
    vae = pv.build_model(config_from_dict({"model": {"latent_dim": 2, "likelihood": "normal",
                                                     "encoder": {"hidden": [4]}, "decoder": {"hidden": [4]}}}).model, 3)
    x = {"x": torch.randn(4, 3)}
    assert guide_outside_family(vae, x, build_layout(vae, x)) is None
    torch.manual_seed(0)
    full = pv.build_model(config_from_dict({"model": {"latent_dim": 2, "likelihood": "normal", "guide": "fullrank",
                                                      "encoder": {"hidden": [4]}, "decoder": {"hidden": [4]}}}).model, 3)
    assert "not a diagonal Gaussian" in guide_outside_family(full, x, build_layout(full, x))


@pytest.mark.slow  # a whole diagnosis of two sequences: its q draws include 2000 prior draws of the chain
def test_a_chains_amortization_gap_is_not_measured_rather_than_zero():
    data, _ = _padded_pair(n=2)
    s = pv.diagnose([pv.Subject("chain", _chain(), data, [0, 1])],
                    pv.DiagnoseSettings(points=2, draws=40, sbc_sims=0, reference="none", local_steps=4,
                                        local_particles=2))
    r = s.runs[0]
    assert r.local.poorer_family and "gap not measured" in r.local.poorer_family
    lost = ~np.asarray(r.local.local_better)
    # where the poorer fit does not beat the guide there is no number; where it does, a positive lower bound
    assert np.isnan(r.local.gap[lost]).all() and (r.local.gap[~lost] > 0).all()
    assert lost.any() and r.summary.gap_note and any("gap not measured" in w for w in s.warnings)
    from pyro_vae.report.render import render_text

    assert "not measured" in render_text(s)


# -- readable tables and messages in user words ----------------------------------------------------------------


def test_long_density_labels_and_many_latent_dims_keep_the_metrics_narrow():
    from pyro_vae.cli import _format_metrics

    obs, zs = "obs_x_1..obs_x_32|mini_batch_mask", "z_1..z_32"
    q = {"elbo": "...", "reconstruction": "E_q[sum_t=1..32 log p(obs_x_t|mini_batch_mask,z_t)]",
         "kl": f"KL(q({zs}|mini_batch_reversed,mini_batch_mask,mini_batch_seq_lengths) || p({zs}|mini_batch_mask))",
         "log_likelihood": f"log p({obs})", "log_likelihood_prior": f"log p({obs}), with the latents from the prior"}
    m = {"num_points": 7, "elbo": -1249.5, "elbo_se": 0.1, "elbo_samples": 10, "reconstruction": -1214.0,
         "kl": 35.5, "kl_method": "monte_carlo", "log_likelihood": -1237.7, "log_likelihood_se": 0.1,
         "iw_samples": 10, "log_likelihood_prior": -1208.7, "log_likelihood_prior_se": 0.08, "prior_samples": 10,
         "kl_per_dim": [0.01 * (i % 17) for i in range(512)], "latent_names": [f"z_{i // 16 + 1}[{i % 16}]"
                                                                               for i in range(512)],
         "quantities": q}
    text = _format_metrics(m)
    # the labels that would widen every row sit on lines of their own; every number starts in one narrow column
    for number in ("-1249.500", "-1214.000", "35.500", "-1237.700", "-1208.700"):
        line = next(line for line in text.splitlines() if number in line)
        assert line.index(number) < 60 and len(line) < 120
    assert any(line.strip().startswith("KL(q(z_1..z_32|") and len(line.split()) == 3 for line in text.splitlines())
    assert "and 507 more" in text and text.count("z_") < 20


def test_two_errors_in_user_words():
    from pyro_vae.data.checks import row_total_problem
    from pyro_vae.evaluation.features import feature_log_likelihood

    line = row_total_problem([3.0, 0.0, 0.0, 5.0], 10, "data.train", True)
    assert "row 11 of data.train is all zeros" in line and "rows 10..13" in line and "block" not in line
    torch.manual_seed(0)
    cfg = {"model": {"latent_dim": 2, "likelihood": "multinomial", "encoder": {"hidden": [4]},
                     "decoder": {"hidden": [4]}}}
    model = pv.build_model(config_from_dict(cfg).model, 5)
    with pytest.raises(pv.PyroVAEError, match="a multinomial likelihood scores a row's counts together") as e:
        feature_log_likelihood(model, torch.tensor([[1.0, 2, 0, 3, 1], [0, 0, 4, 1, 1]]), draws=2)
    assert "RowMultinomial" not in str(e.value) and "--per-feature" in str(e.value)


def test_a_chains_objective_note_names_its_steps_first_to_last():
    from pyro_vae.infer.auto import choose_objective

    data, _ = _padded_pair(n=2)
    choice = choose_objective(_chain(), [data])
    assert "'z_1' .. 'z_7', 7 sites" in choice.reason and "'z_4'" not in choice.reason


# -- a program of one's own: sampled with the test rows' totals, or by its sample(n) ----------------------------


class _LibraryVAE(torch.nn.Module):
    """scVI's observed library size as a user writes it: the counts' scale is each row's total (or, with
    ``first_column``, its first count, which reads more of a row than its total)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, d=6, first_column=False):
        super().__init__()
        torch.manual_seed(0)
        self.dec, self.enc, self.first_column = torch.nn.Linear(2, d), torch.nn.Linear(d, 4), first_column

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("lib", self)
        lib = x[:, :1] + 1.0 if self.first_column else x.sum(-1, keepdim=True)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(lib * self.dec(z).softmax(-1)).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("lib", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(torch.log1p(x)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, raw.exp()).to_event(1))


def test_a_program_reading_only_row_totals_is_sampled_on_the_test_rows_and_one_reading_more_is_refused():
    from pyro_vae.models.sampling import prior_draws

    rows = torch.poisson(torch.full((4, 6), 5.0), generator=torch.Generator().manual_seed(0))
    got = prior_draws(_LibraryVAE(), 8, 6, seed=1, template=rows, mean=True)
    assert got.row_totals and got.x.shape == (8, 6)
    # the means hold each test row's total in turn: the library is the row's total
    torch.testing.assert_close(got.x.sum(-1), rows.sum(-1).repeat(2))
    with pytest.raises(pv.PyroVAEError, match="not only its number of rows or each row's total count"):
        prior_draws(_LibraryVAE(first_column=True), 8, 6, seed=1, template=rows)


def test_a_programs_own_sample_method_is_used_and_held_to_its_contract():
    from pyro_vae.app.sample import own_samples

    class Own(_LibraryVAE):
        def sample(self, n):
            z = torch.randn(n, 2)
            return z, self.dec(z).softmax(-1) * 10

    x = own_samples(Own(), 5, 6, seed=0)
    assert x.shape == (5, 6) and torch.equal(x, own_samples(Own(), 5, 6, seed=0))

    class Wrong(_LibraryVAE):
        def sample(self, n):
            return torch.zeros(n, 6)

    with pytest.raises(pv.PyroVAEError, match=r"sample\(n\) must return \(z, x\)"):
        own_samples(Wrong(), 5, 6, seed=0)


def test_per_feature_log_likelihood_of_sequences_counts_only_real_steps():
    from pyro_vae.evaluation.features import feature_log_likelihood

    model = _chain()
    data, padded = _padded_pair()
    a = feature_log_likelihood(model, data, draws=1, seed=0)
    b = feature_log_likelihood(model, padded, draws=1, seed=0)
    # one number per feature d: a sequence's log p(x_td | z_t) summed over the steps it has (padding far from the
    # means would add hugely negative terms were it counted)
    assert a.mean.shape == (3,)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-4)
