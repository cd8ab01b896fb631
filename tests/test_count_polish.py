"""Count and topic runs as a user sees them: the report's topic tables, sampled documents in words, named
synthetic features, and the samples figure of a run scaled by observed library sizes."""

from types import SimpleNamespace

import numpy as np



def _topics(k=3):
    return {"node": "theta", "observed": "x", "top_words": [[f"t{j}w{i}" for i in range(4)] for j in range(k)],
            "npmi": [0.1 * j for j in range(k)], "npmi_mean": 0.1, "npmi_words": 4, "num_documents": 50,
            "num_words": 900, "perplexity": 123.25, "perplexity_se": 1.5, "perplexity_elbo": 150.5,
            "top_probabilities": [[0.1] * 4] * k}


def _topic_tables(runs):
    from pyro_vae.report.tables import _topics_table

    return {t.id: t for t in _topics_table(SimpleNamespace(runs=runs))}


def test_the_topics_table_shows_perplexity_once_per_run_and_the_matched_true_topic_per_topic():
    recovery = {"topics": {"cosine": [[0.2, 0.9, 0.1], [0.8, 0.3, 0.2], [0.1, 0.2, 0.7]], "matched": [1, 0, 2],
                           "best_match": [0.9, 0.8, 0.7], "matched_mean": 0.8}}
    runs = [SimpleNamespace(name="lda", info={"topics": _topics(), "recovery": recovery}),
            SimpleNamespace(name="own", info={"topics": _topics(2)})]
    tables = _topic_tables(runs)
    summary, topics = tables["topic_runs"], tables["topics"]
    assert [row[0] for row in summary.rows] == ["lda", "own"]
    assert summary.rows[0][summary.columns.index("perplexity per word")] == 123.25
    # per topic: no run-level number repeated on every row
    assert not any("perplexity" in c for c in topics.columns)
    assert all(123.25 not in row for row in topics.rows)
    true, cos = topics.columns.index("matched true topic"), topics.columns.index("cosine with it")
    lda = [row for row in topics.rows if row[0] == "lda"]
    # learned topic 0 was matched to true topic 1 (matched[1] == 0), cosine[1][0]
    assert [(row[true], row[cos]) for row in lda] == [(1, 0.8), (0, 0.9), (2, 0.7)]
    assert all(row[true] is None for row in topics.rows if row[0] == "own")


def test_a_topics_table_without_a_truth_has_no_matching_columns():
    topics = _topic_tables([SimpleNamespace(name="own", info={"topics": _topics()})])["topics"]
    assert topics.columns == ["run", "topic", "NPMI", "top words (most probable first)"]
    assert len(topics.rows) == 3 and all(len(r) == 4 for r in topics.rows)


# -- figures as a user reads them --------------------------------------------------------------------------


def _visible_labels(monkeypatch, module, draw):
    """The tick labels a figure shows (x axis, y axis), read off it before ``module.save_figure`` saves it."""
    seen = {}

    def keep(fig, path, **kwargs):
        fig.canvas.draw()
        ax = fig.axes[0]
        seen["x"], seen["y"] = [], []
        for key, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if lo <= tick.get_loc() <= hi and tick.label1.get_text():
                    seen[key].append(tick.label1.get_text())
        return path

    monkeypatch.setattr(module, "save_figure", keep)
    draw()
    return seen


def test_a_log_axis_with_one_decade_in_view_labels_its_2s_and_5s(monkeypatch, tmp_path):
    """Feature means from 1.4 to 45 (the ZINB example's): the decade 10 alone would leave the axis unreadable."""
    from pyro_vae.figures import counts

    rng = np.random.default_rng(0)
    x = rng.poisson(np.geomspace(1.4, 45, 30), size=(400, 30)).astype(float)
    seen = _visible_labels(monkeypatch, counts, lambda: counts.mean_variance(x, x, tmp_path / "mv.png"))
    assert {"2", "5", "10", "20"} <= set(seen["x"]), seen["x"]


def test_a_short_runs_loss_curve_has_whole_epochs(monkeypatch, tmp_path):
    from pyro_vae.figures import run

    history = [{"epoch": e, "train_loss": 300.0 - 10 * e, "test_elbo": -290.0 + 10 * e} for e in (1, 2, 3)]
    seen = _visible_labels(monkeypatch, run, lambda: run.loss_curve(history, tmp_path / "loss.png"))
    assert seen["x"] and all(t.lstrip("−-").isdigit() for t in seen["x"]), seen["x"]


# -- every column named ------------------------------------------------------------------------------------


def test_synthetic_counts_and_digits_name_their_columns():
    from pyro_vae.config.schema import DataConfig
    from pyro_vae.data import load_data

    ds = load_data(DataConfig(source="synthetic_counts", num_points=40, synthetic_dim=12, synthetic_latent_dim=2),
                   "zinb")
    assert ds.feature_names == tuple(f"gene_{j:04d}" for j in range(12))
    digits = load_data(DataConfig(source="digits"), "poisson")
    assert len(digits.feature_names) == 64 and digits.feature_names[:2] == ("r0c0", "r0c1")
    assert digits.feature_names[-1] == "r7c7"


def test_per_feature_csv_of_a_synthetic_counts_run_names_every_gene_with_or_without_data(tmp_path, capsys):
    import csv

    import pyro_vae as pv
    from pyro_vae.cli import main

    cfg = pv.load_config("examples/counts_zinb.toml", (
        "data.num_points=120", "data.synthetic_dim=10", "train.epochs=1", "train.batch_size=60",
        "model.encoder.hidden=[8]", "model.decoder.hidden=[8]", "train.capture=off",
        "evaluate.iw_samples=2"))
    run = pv.train(cfg, tmp_path / "run", iw_samples=None, plots=False).run_dir
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).poisson(3.0, size=(5, 10)).astype(np.float32))
    for extra in ([], ["--data", str(tmp_path / "rows.npy")]):
        out = tmp_path / f"f{len(extra)}.csv"
        assert main(["evaluate", str(run), "--iw-samples", "2", "--quiet", "--per-feature", str(out), *extra]) == 0
        names = [row["name"] for row in csv.DictReader(out.open())]
        assert names == [f"gene_{j:04d}" for j in range(10)], (extra, names)
    capsys.readouterr()


# -- what a count or topic model generates, for the report -------------------------------------------------


def _generated(likelihood, words=None, **keys):
    import torch

    import pyro_vae as pv
    from pyro_vae.diagnostics.generated import generate
    from pyro_vae.infer.data_name import named_data
    from pyro_vae.infer.layout import build_layout

    torch.manual_seed(0)
    model = pv.GraphModel(pv.ModelConfig(latent_dim=2, likelihood=likelihood, encoder={"hidden": [8]},
                                         decoder={"hidden": [8]}, **keys), data_dim=6)
    row = torch.tensor([[3.0, 0.0, 5.0, 1.0, 2.0, 9.0]])
    x = named_data(model, torch.cat([row, 2 * row]))
    layout = build_layout(model, x, continuous=True)
    q_mean = np.zeros((2, 2))  # both rows decoded at the same z
    return generate(model, x, layout, q_mean, np.ones(2), np.zeros(2), seed=0, words=words)


def test_a_count_model_with_observed_library_decodes_each_row_with_its_own_total():
    """Reconstructions at the same z of a row and of twice the row: the second is twice the first (its library is
    twice as large), and each sample records the total it was scaled by."""
    g = _generated("zinb", library="observed")
    np.testing.assert_allclose(g.reconstructions[1], 2 * g.reconstructions[0], rtol=1e-5)
    assert g.sample_library.shape == (64,) and set(g.sample_library.tolist()) == {20.0, 40.0}
    assert g.sample_words.size == 0


def test_a_model_without_observed_library_records_none():
    assert _generated("poisson").sample_library.size == 0


def test_a_multinomial_runs_samples_are_its_words_most_frequent_first():
    words = [f"w{j}" for j in range(6)]
    g = _generated("multinomial", words=words)
    assert g.sample_words.shape == (64, 6)
    for sample, top in zip(g.samples, g.sample_words):
        assert list(top) == [words[j] for j in np.argsort(-sample, kind="stable")]


def test_the_report_says_which_library_sizes_the_samples_used_and_shows_words_as_words(tmp_path):
    from pyro_vae.diagnostics.results import Generated
    from pyro_vae.report.figures import Figures, fig_generated

    def run(name, **extra):
        gen = Generated(data=np.ones((2, 6)), reconstructions=np.ones((2, 6)), samples=np.ones((64, 6)),
                        traversal=np.ones((9, 6)), traversal_dims=np.array([0]),
                        traversal_steps=np.linspace(-2, 2, 9), **extra)
        return SimpleNamespace(name=name, folder=name, generated=gen, sequences=None, step_profile=None,
                               image_shape=None, points=[0, 1], latent_labels=["z[0]", "z[1]"], info={})

    zinb = run("zinb", sample_library=np.array([600.0, 800.0, 1000.0] * 21 + [700.0]))
    lda = run("lda", sample_words=np.array([["apple", "pear", ""]] * 64))
    figs = Figures(tmp_path)
    fig_generated(figs, SimpleNamespace(runs=[zinb, lda]))
    samples = next(f for f in figs.items if f.file == "figures/samples.png")
    assert "zinb: library sizes: the diagnosed test rows' totals, median 800" in samples.caption
    # the words run has no curves over its word columns: no traversal, not in the samples figure
    assert [f.file for f in figs.items if "traversal" in f.file] == ["figures/traversal_zinb.png"]
    diagnosis = SimpleNamespace(runs=[zinb, lda])
    from pyro_vae.report.tables import _sampled_documents_table

    (table,) = _sampled_documents_table(diagnosis)
    assert table.rows[0] == ["lda", 0, "apple pear"] and len(table.rows) == 10


# -- sample: a topic run's documents in words ---------------------------------------------------------------


def test_sample_writes_a_topic_runs_documents_as_words_and_prints_a_few(tmp_path, capsys):
    import pyro_vae as pv
    from pyro_vae.cli import main
    from pyro_vae.data.corpus import corpus_truth

    cfg = pv.load_config("examples/topics_prodlda.toml", (
        "data.num_points=100", "data.synthetic_dim=20", "data.synthetic_latent_dim=3", "model.nodes.theta.dim=3",
        "model.nodes.theta.encoder.hidden=[8]", "train.batch_size=50", "train.epochs=1", "evaluate.iw_samples=2"))
    run = pv.train(cfg, tmp_path / "run", iw_samples=None, plots=False).run_dir
    vocabulary = set(corpus_truth(cfg.data)["vocabulary"])
    capsys.readouterr()
    for extra in ([], ["--draws"]):
        out = tmp_path / f"docs{len(extra)}.npy"
        assert main(["sample", str(run), "-n", "5", "--out", str(out), *extra]) == 0
        printed = capsys.readouterr().out
        words = tmp_path / f"docs{len(extra)}.words.txt"
        lines = [line for line in words.read_text().splitlines() if not line.startswith("#")][1:]
        counts = np.load(out)
        assert len(lines) == 5 and str(words) in printed and lines[0] in printed
        for row, line in zip(counts, lines):
            found = [w.rsplit(" (", 1) for w in line.split("\t")[1].split(") ") if w]
            names, values = [n for n, _ in found], [float(v.rstrip(")")) for _, v in found]
            assert set(names) <= vocabulary and values == sorted(values, reverse=True)
            # the most frequent word's count is the row's largest
            assert abs(values[0] - row.max()) <= 1e-3 * max(1.0, row.max()), (values[0], row.max())


def test_sample_of_a_run_whose_columns_are_not_words_writes_no_words_file(tmp_path, capsys):
    import pyro_vae as pv
    from pyro_vae.cli import main

    cfg = pv.load_config("examples/counts_zinb.toml", (
        "data.num_points=100", "data.synthetic_dim=8", "train.epochs=1", "train.batch_size=50",
        "model.encoder.hidden=[8]", "model.decoder.hidden=[8]", "train.capture=off", "evaluate.iw_samples=2"))
    run = pv.train(cfg, tmp_path / "run", iw_samples=None, plots=False).run_dir
    assert main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert "words" not in capsys.readouterr().out and not list(tmp_path.glob("*.words.txt"))


def test_the_topic_bars_name_their_axis_and_keep_few_ticks(monkeypatch, tmp_path):
    from pyro_vae.evaluation.topics import TopicMetrics
    from pyro_vae.figures import topics

    k = 8
    found = TopicMetrics(node="theta", observed="x", top_words=[[f"t{t}w{i}" for i in range(10)] for t in range(k)],
                         top_probabilities=[[0.26 / (i + 1) for i in range(10)] for _ in range(k)],
                         npmi=[0.1] * k, npmi_mean=0.1, npmi_words=10, num_documents=10, num_words=100)
    fig = topics.draw_topic_words(found)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(panels) == k
    # every column's bottom panel says what its bars are; none shows more than 4 tick labels
    assert sum(ax.get_xlabel() == "p(word | topic)" for ax in panels) == 5
    for ax in panels:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(shown) <= 4, shown


def test_a_log_axis_spanning_under_two_decades_keeps_its_2s_and_5s(monkeypatch, tmp_path):
    """The recovery figure's theta axes, 1 to 20: 1 and 10 alone say little."""
    from pyro_vae.evaluation.recovery import FeatureRecovery, Recovery
    from pyro_vae.figures import counts

    true = np.geomspace(1.0, 20.0, 30)
    found = Recovery(theta=FeatureRecovery.of(true * 1.1, true))
    seen = _visible_labels(monkeypatch, counts, lambda: counts.recovery_figure(found, tmp_path / "r.png"))
    assert {"1", "2", "5", "10", "20"} <= set(seen["x"]), seen["x"]


def test_generated_arrays_round_trip_and_an_older_file_without_the_new_ones_still_loads(tmp_path):
    from pyro_vae.diagnostics.results import Generated, _read_npz, _write_npz

    old = {k: np.ones((2, 3)) for k in ("data", "reconstructions", "samples", "traversal")}
    old |= {"traversal_dims": np.array([0]), "traversal_steps": np.array([0.0])}
    np.savez(tmp_path / "old.npz", **old)
    g = _read_npz(tmp_path / "old.npz", Generated)
    assert g.sample_library.size == 0 and g.sample_words.size == 0
    new = Generated(**old, sample_library=np.array([5.0, 7.0]), sample_words=np.array([["a", "b"], ["c", ""]]))
    _write_npz(tmp_path / "new.npz", new)
    back = _read_npz(tmp_path / "new.npz", Generated)
    assert back.sample_words.tolist() == [["a", "b"], ["c", ""]] and back.sample_library.tolist() == [5.0, 7.0]
