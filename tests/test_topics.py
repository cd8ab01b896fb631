"""The topic model: the logistic-normal node, batch norm, the synthetic LDA corpus, vocabularies, perplexity, NPMI."""

import json
import re
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config.schema import DataConfig, GraphSpec, NetConfig, NodeConfig
from pyro_vae.data import load_data
from pyro_vae.data.names import read_column_names
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluation.topics import npmi, perplexity, topic_metrics, topic_word_probabilities
from pyro_vae.models.graph.compile import GraphModel
from pyro_vae.models.graph.families import dirichlet_laplace
from pyro_vae.models.nets import FlatBatchNorm


def prodlda(k=3, v=6, batchnorm=False, concentration=None):
    spec = GraphSpec(nodes={
        "theta": NodeConfig(family="logistic_normal", dim=k, concentration=concentration,
                            encoder=NetConfig(hidden=(8,), batchnorm=batchnorm)),
        "x": NodeConfig(role="observed", likelihood="multinomial", parents=("theta",),
                        net=NetConfig(hidden=(), batchnorm=batchnorm))})
    return GraphModel(spec, v)


def small_corpus(**kw):
    args = dict(source="synthetic_corpus", num_points=200, synthetic_dim=30, synthetic_latent_dim=3,
                corpus_length=20, test_fraction=0.25)
    args.update(kw)
    return load_data(DataConfig(**args), "multinomial")


# -- NPMI and perplexity against hand-computed values ------------------------------------------------------


def test_npmi_matches_a_hand_computed_value():
    # 4 documents over 3 words: w0 in docs 0,1,2; w1 in docs 0,1; w2 in doc 3 only
    present = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    # pairs: (w0, w1): P = 2/4, P0 = 3/4, P1 = 2/4 -> log((1/2) / (3/8)) / -log(1/2) = log(4/3) / log 2
    #        (w0, w2), (w1, w2): never together -> -1
    expected = (math.log(4 / 3) / math.log(2) - 1 - 1) / 3
    assert npmi([0, 1, 2], present) == pytest.approx(expected, abs=1e-12)
    assert npmi([0, 1], present) == pytest.approx(0.41503749927884376, abs=1e-12)  # log2(4/3)
    assert npmi([0], present) is None


def test_npmi_is_one_for_words_that_always_occur_together():
    present = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    # P(w0, w1) = P(w0) = P(w1) = 2/3: log(1 / (2/3)) / -log(2/3) = 1
    assert npmi([0, 1], present) == pytest.approx(1.0, abs=1e-12)


def test_perplexity_of_uniform_word_probabilities_is_the_vocabulary_size():
    counts = torch.tensor([[3., 0., 1., 0., 2.], [0., 1., 0., 0., 0.], [4., 4., 4., 4., 4.]], dtype=torch.float64)
    log_px = torch.stack([dist.Multinomial(int(r.sum()), probs=torch.full((5,), 0.2, dtype=torch.float64)).log_prob(r)
                          for r in counts])
    value, se = perplexity(log_px, counts, torch.full((3,), 0.01, dtype=torch.float64))
    assert value == pytest.approx(5.0, rel=1e-9)
    # the delta method: 5 * sqrt(3 * 0.01) / 27 words
    assert se == pytest.approx(5 * math.sqrt(0.03) / 27, rel=1e-9)


def test_perplexity_of_known_word_probabilities():
    # one-word documents from p = (0.5, 0.25, 0.25): per-word perplexity exp(-mean log p) over the tokens
    probs = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    counts = torch.tensor([[2., 1., 1.]], dtype=torch.float64)
    log_px = dist.Multinomial(4, probs=probs).log_prob(counts[0]).unsqueeze(0)
    tokens = 2 * math.log(0.5) + 2 * math.log(0.25)
    assert perplexity(log_px, counts)[0] == pytest.approx(math.exp(-tokens / 4), rel=1e-9)


# -- the logistic-normal node and batch norm ------------------------------------------------------------------


def test_logistic_normal_prior_is_the_laplace_approximation_of_the_dirichlet():
    m = prodlda(k=4, concentration=0.5)
    trace = pyro.poutine.trace(m.model).get_trace(torch.ones(2, 6))
    site = trace.nodes["theta"]["fn"].base_dist
    assert isinstance(site, dist.Normal)
    # symmetric alpha: mu = 0, var = (1 - 2/K)/alpha + K/(alpha K^2) = (1 - 1/K)/alpha
    assert torch.allclose(site.loc, torch.zeros(4))
    assert torch.allclose(site.scale, torch.full((4,), math.sqrt((1 - 1 / 4) / 0.5)))
    loc, scale = dirichlet_laplace(torch.tensor([1.0, 2.0, 4.0]))
    # asymmetric: mu_k = log a_k - mean log a
    assert torch.allclose(loc, torch.log(torch.tensor([1.0, 2.0, 4.0])) - math.log(2.0))
    assert torch.allclose(scale ** 2, torch.tensor([1 / 3 + 1.75 / 9, 1 / 6 + 1.75 / 9, 1 / 12 + 1.75 / 9]))
    # the networks read the proportions: softmax of the Gaussian draw
    h = torch.randn(5, 4)
    assert torch.allclose(m.families["theta"].features(h), h.softmax(-1))


@pytest.mark.parametrize("node, message", [
    (NodeConfig(dim=3, concentration=0.5), "concentration is the Dirichlet prior"),
    (NodeConfig(family="logistic_normal", dim=1), "dim must be >= 2"),
    (NodeConfig(family="logistic_normal", dim=3, prior_scale=2.0), "remove prior_scale"),
    (NodeConfig(family="logistic_normal", dim=3, concentration=-1.0), "concentration must be in (0, 1e6]"),
])
def test_logistic_normal_keys_are_checked(node, message):
    spec = GraphSpec(nodes={"theta": node, "x": NodeConfig(role="observed", likelihood="multinomial",
                                                           parents=("theta",))})
    with pytest.raises(PyroVAEError, match=re.escape(message)):
        GraphModel(spec, 6)


def test_batchnorm_refuses_a_conv_net():
    spec = GraphSpec(nodes={"z": NodeConfig(dim=2, encoder=NetConfig(type="conv", batchnorm=True)),
                            "x": NodeConfig(role="observed", parents=("z",))})
    with pytest.raises(PyroVAEError, match="batchnorm normalizes an MLP's outputs"):
        GraphModel(spec, 64, (8, 8))


def test_batchnorm_in_eval_mode_makes_a_row_independent_of_its_batch():
    torch.manual_seed(0)
    bn = FlatBatchNorm(4)
    for _ in range(5):  # running statistics away from their start
        bn(torch.randn(16, 4) * 3 + 1)
    x = torch.randn(8, 4)
    bn.eval()
    alone = bn(x[:1])
    assert torch.allclose(bn(x)[:1], alone)
    # leading dims (draws) flattened, not read as features
    assert torch.allclose(bn(x.reshape(2, 4, 4)).reshape(8, 4), bn(x))
    bn.train()
    assert not torch.allclose(bn(x)[:1], alone)  # training normalizes by the batch


def test_a_model_with_batchnorm_is_not_captured():
    """A recorded step would not update the running statistics the eager step updates in place."""
    from types import SimpleNamespace

    from pyro_vae.training import _torch_private
    from pyro_vae.training.capture import why_not_capturable

    if not _torch_private.enabled():
        pytest.skip(_torch_private.why_disabled())
    trainer = SimpleNamespace(model=prodlda(batchnorm=True), param_names=[], compile=False,
                              config=SimpleNamespace(elbo="meanfield"))
    assert "batch normalization" in why_not_capturable(trainer, "auto")
    trainer.model = prodlda(batchnorm=False)
    assert why_not_capturable(trainer, "auto") is None


def test_topic_word_probabilities_are_the_decoder_at_a_pure_topic():
    torch.manual_seed(0)
    m = prodlda(k=3, v=6)
    lin = m.nets["x"].mlp[0]
    expected = torch.softmax(lin.weight.T + lin.bias, dim=-1).double()  # row k: W e_k + b
    got = topic_word_probabilities(m, ("theta", "x"))
    assert torch.allclose(got, expected, atol=1e-6)


# -- the synthetic corpus and vocabulary files ---------------------------------------------------------


def test_synthetic_corpus_follows_its_lda():
    ds = small_corpus(num_points=4000, corpus_length=50, test_fraction=0.0)
    x, truth = ds.train, ds.truth
    assert x.shape == (4000, 30) and bool((x.sum(1) >= 1).all())
    assert torch.equal(x, x.round())
    vocab = ds.vocabulary
    assert len(set(vocab)) == 30
    # each word is named after the true topic it is likeliest under
    owner = truth["topics"].argmax(0)
    assert all(w.startswith(f"t{int(k)}w") for w, k in zip(vocab, owner))
    # word totals against their expectation sum_d N_d theta_d beta, within 4 s.e. (multinomial variance), for
    # the words expected often enough for the normal approximation (a word expected 0.001 times may occur once)
    n = x.sum(1, keepdim=True).double()
    p = truth["proportions"].double() @ truth["topics"].double()
    expected = (n * p).sum(0)
    se = (n * p * (1 - p)).sum(0).sqrt()
    common = expected > 20
    assert int(common.sum()) >= 15
    assert bool(((x.double().sum(0) - expected).abs() < 4 * se)[common].all())
    # the same seed, the same corpus
    assert torch.equal(small_corpus().train, small_corpus().train)


def test_vocabulary_file_is_read_and_checked(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("apple\nbanana\ncherry\n")
    assert read_column_names(str(f), 3, "data.vocabulary") == ("apple", "banana", "cherry")
    for text, message in (("a\nb\n", "has 2 words but the data has 3 columns"),
                          ("a\n\nb\n", "line 2 is empty"),
                          ("a\nb\na\n", "line 3 repeats 'a' (line 1)"),
                          ("a\nb\x1b[31m\nc\n", "line 2 holds the control character")):
        f.write_text(text)
        with pytest.raises(PyroVAEError, match=re.escape(message)):
            read_column_names(str(f), 3, "data.vocabulary")


def test_topic_metrics_name_the_vocabulary_and_score_held_out_documents():
    ds = small_corpus()
    m = prodlda(k=3, v=30)
    found = topic_metrics(m, ds.test, ds.vocabulary, log_px=None)
    assert len(found.top_words) == 3 and len(found.top_words[0]) == 10
    assert set(found.top_words[0]) <= set(ds.vocabulary)
    assert found.perplexity is None and found.num_words == int(ds.test.sum())
    assert all(-1 <= s <= 1 for s in found.npmi)


# -- end to end ----------------------------------------------------------------------------------------


SMALL = ["--set", "data.num_points=200", "--set", "data.synthetic_dim=40", "--set", "data.synthetic_latent_dim=3",
         "--set", "model.nodes.theta.dim=3", "--set", "model.nodes.theta.encoder.hidden=[16]",
         "--set", "train.batch_size=32", "--iw-samples", "20"]


def test_prodlda_example_trains_evaluates_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "examples/topics_prodlda.toml", "--quiet", "--no-plots", "--out", str(out),
                 "--set", "train.epochs=1", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "perplexity per word" in printed and "NPMI coherence" in printed
    topics = json.loads((out / "metrics.json").read_text())["topics"]
    assert len(topics["top_words"]) == 3 and topics["perplexity"] > 1
    # the ELBO's bound is above the importance-sampled perplexity: IS log p(x) is above the ELBO in expectation,
    # here by far more than their Monte Carlo errors (fixed seeds)
    assert topics["perplexity_elbo"] >= topics["perplexity"]
    assert main(["evaluate", str(out), "--iw-samples", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"]["perplexity"] > 1
    # draws of whole documents, each as long as a held-out document (the multinomial's number of trials)
    assert main(["sample", str(out), "-n", "4", "--draws", "--out", str(tmp_path / "docs.npy")]) == 0
    docs = np.load(tmp_path / "docs.npy")
    assert docs.shape == (4, 40) and np.array_equal(docs, np.round(docs)) and bool((docs.sum(1) >= 1).all())


@pytest.mark.slow
def test_prodlda_example_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "examples/topics_prodlda.toml", "--quiet", "--out", str(out), "--set", "train.epochs=1",
                 *SMALL]) == 0
    for name in ("topics.png", "mean_variance.png", "zero_fraction.png"):
        assert (out / "plots" / name).exists()
    assert main(["train", "--resume", str(out), "--quiet", "--set", "train.epochs=2", "--iw-samples", "20"]) == 0
    capsys.readouterr()
    assert len(json.loads((out / "metrics.json").read_text())["topics"]["top_words"]) == 3


@pytest.mark.slow
def test_prodlda_is_diagnosed_and_its_report_shows_its_topics(tmp_path, capsys):
    run, diag = tmp_path / "run", tmp_path / "diag"
    assert main(["train", "examples/topics_prodlda.toml", "--quiet", "--no-plots", "--out", str(run),
                 "--set", "train.epochs=1", *SMALL]) == 0
    assert main(["diagnose", str(run), "--out", str(diag), "--points", "2", "--draws", "50", "--nuts-warmup", "20",
                 "--nuts-samples", "20", "--nuts-chains", "2", "--sbc-sims", "3", "--local-steps", "10",
                 "--quiet"]) == 0
    assert main(["report", str(run), "--out", str(diag)]) == 0
    capsys.readouterr()
    page = (diag / "index.html").read_text()
    assert 'id="topics"' in page and (diag / "figures" / "topics_run.png").exists()
    words = json.loads((run / "metrics.json").read_text())["topics"]["top_words"][0]
    assert " ".join(words) in page


def test_a_bad_vocabulary_fails_before_anything_is_written(tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("a\nb\n")
    out = tmp_path / "run"
    assert main(["train", "examples/topics_prodlda.toml", "--quiet", "--out", str(out),
                 "--set", f"data.vocabulary={json.dumps(str(words))}"]) == 2
    err = capsys.readouterr().err
    assert "has 2 words but the data has 300 columns" in err and "Traceback" not in err
    assert not out.exists()


# -- recovery -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prodlda_recovers_the_topics_of_a_known_lda():
    """Each true topic is matched (one to one, Hungarian, on cosine similarity) to a learned p(word | topic).  A
    matched pair must share at least 6 of their 10 most probable words: two unrelated 10-word sets out of 100
    words share 1 on average and 6 or more with probability about 1e-5 (hypergeometric); an untrained model's
    topics are checked to be at chance."""
    from scipy.optimize import linear_sum_assignment

    from pyro_vae.app.pipeline import train
    from pyro_vae.config.toml import load_config

    cfg = load_config("examples/topics_prodlda.toml", ("data.num_points=2000", "data.synthetic_dim=100",
                                                       "data.synthetic_latent_dim=5", "model.nodes.theta.dim=5",
                                                       "train.epochs=25"))
    run = train(cfg, None, iw_samples=None, plots=False)
    truth = run.data.truth["topics"].double()

    def matched(model):
        learned = topic_word_probabilities(model, ("theta", "x"))
        cos = (truth / truth.norm(dim=1, keepdim=True)) @ (learned / learned.norm(dim=1, keepdim=True)).T
        rows, cols = linear_sum_assignment(-cos.numpy())
        top_true, top_learned = truth.topk(10, dim=1).indices, learned.topk(10, dim=1).indices
        shared = [len(set(top_true[i].tolist()) & set(top_learned[j].tolist())) for i, j in zip(rows, cols)]
        return cos[rows, cols], shared

    cos, shared = matched(run.model)
    assert min(shared) >= 6, shared
    assert float(cos.mean()) > 0.8, cos
    torch.manual_seed(0)
    cos0, shared0 = matched(prodlda(k=5, v=100, batchnorm=True))
    assert max(shared0) <= 3 and float(cos0.mean()) < 0.5, (cos0, shared0)


def test_report_draws_a_runs_topics_whatever_its_words_hold(tmp_path):
    """The report's topic figure comes from the run's saved topics (JSON); a word is data: markup and "$" are text."""
    from types import SimpleNamespace

    from pyro_vae.report.figures import Figures, fig_topics

    ds = small_corpus()
    words = list(ds.vocabulary)
    words[0], words[1] = "<script>alert(1)</script>", "a$b$"
    found = topic_metrics(prodlda(k=3, v=30), ds.test, words)
    run = SimpleNamespace(name="r", folder="r", info={"topics": json.loads(json.dumps(found.to_json()))})
    figs = Figures(tmp_path)
    fig_topics(figs, SimpleNamespace(runs=[run]))
    assert [f.file for f in figs.items] == ["figures/topics_r.png"] and (tmp_path / "topics_r.png").exists()
    assert figs.items[0].section == "topics"
