"""The model's graph, read off the program itself: nodes, kinds and edges exactly, saved, reported and drawn for a run.

Each program below is small and hand-written, so its true graph is known
by reading it: what each distribution's arguments are computed from.  The
graph must be exactly that, whatever the code in between does (networks,
one-hot encodings, indexing by a discrete value, ``x.new_zeros`` for a
prior's size, which reads no value of x).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.diagnostics.results import ModelStructure
from pyro_vae.diagnostics.structure import model_structure
from pyro_vae.models import build_model
from pyro_vae.report import write_report

D, C, H = 6, 3, 8


def _kinds(s: ModelStructure):
    return [(n.name, n.kind) for n in s.nodes]


def _edges(edges):
    return {(e.parent, e.child) for e in edges}


# -- the programs --------------------------------------------------------------------------------------------------


class Hierarchy(nn.Module):
    """z2 -> z1 -> x; the guide goes the other way, q(z1 | x) q(z2 | z1)."""

    latent_sites = ("z1", "z2")
    obs_site = "x"

    def __init__(self, data_dim=D):
        super().__init__()
        self.up = nn.Linear(2, 3)
        self.dec = nn.Linear(3, data_dim)
        self.enc1 = nn.Linear(data_dim, 6)
        self.enc2 = nn.Linear(3, 4)

    def model(self, x):
        pyro.module("hierarchy", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.up(z2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z1)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("hierarchy", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc1(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))
            loc2, s2 = self.enc2(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc2, F.softplus(s2) + 1e-3).to_event(1))


class CVAE(nn.Module):
    """x ~ p(x | y, z) with the label y an input; the prior reads y too when ``prior_reads_y``."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, prior_reads_y=True):
        super().__init__()
        self.prior_reads_y = prior_reads_y
        self.prior_loc = nn.Embedding(C, 2)
        self.dec = nn.Linear(2 + C, D)
        self.enc = nn.Linear(D + C, 4)

    def model(self, x, y):
        pyro.module("cvae", self)
        y1 = F.one_hot(y, C).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            # x.new_zeros reads x's shape and dtype only: no edge from x
            loc = self.prior_loc(y) if self.prior_reads_y else x.new_zeros(x.shape[0], 2)
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(x[..., :2])).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(torch.cat([z, y1], -1)), 1.0).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(torch.cat([x, F.one_hot(y, C).to(x.dtype)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


class M2(nn.Module):
    """y -> x <- z with y observed where labelled (-1 elsewhere) and enumerated by the guide where not."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(2 + C, D)
        self.enc_y = nn.Linear(D, C)
        self.enc_z = nn.Linear(D + C, 4)

    def model(self, x, y=None):
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(torch.full((C,), 1.0 / C)), obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            h = torch.cat([z, F.one_hot(y, C).to(z.dtype).expand(z.shape[:-1] + (C,))], -1)
            pyro.sample("x", dist.Normal(self.dec(h), 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.enc_y(x)), infer={"enumerate": "parallel"})
            h = torch.cat([x.expand(y.shape + x.shape[-1:]), F.one_hot(y, C).to(x.dtype)], -1)
            loc, s = self.enc_z(h).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


class Mixture(nn.Module):
    """A mixture prior whose component c is in the model alone: c -> z -> x, and q(z | x)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.randn(C, 2, generator=torch.Generator().manual_seed(0)))
        self.dec = nn.Linear(2, D)
        self.enc = nn.Linear(D, 4)

    def model(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.full((C,), 1.0 / C)), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.mu[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


def _x(n=8, seed=0):
    return torch.rand(n, D, generator=torch.Generator().manual_seed(seed)).round()


def _labels(n=8):
    y = torch.arange(n) % C
    y[::3] = -1  # unlabelled rows
    return y


# -- the graphs ------------------------------------------------------------------------------------------------------


def test_the_builtin_vae_is_z_to_x():
    cfg = pv.config_from_dict({"model": {"latent_dim": 2, "encoder": {"hidden": [H]}, "decoder": {"hidden": [H]}}})
    s = model_structure(build_model(cfg.model, D), _x())
    assert _kinds(s) == [("z", "latent"), ("x", "observed")]
    z, x = s.nodes
    assert (z.distribution, z.event_shape, z.size, z.in_guide) == ("Normal", (2,), 2, True)
    assert (x.distribution, x.event_shape, x.plates, x.in_guide) == ("Bernoulli", (D,), ("data",), False)
    assert _edges(s.edges) == {("z", "x")} and _edges(s.guide_edges) == {("x", "z")}
    assert s.traced == ("the data",) and s.data_plate == "data" and s.note is None


def test_a_two_level_hierarchy_and_its_inverted_guide():
    s = model_structure(Hierarchy(), _x())
    assert _kinds(s) == [("z2", "latent"), ("z1", "latent"), ("x", "observed")]
    assert _edges(s.edges) == {("z2", "z1"), ("z1", "x")}  # z2's prior is sized by x.new_zeros: no x -> z2
    assert _edges(s.guide_edges) == {("x", "z1"), ("z1", "z2")}
    assert [n.size for n in s.nodes] == [2, 3, D]


@pytest.mark.parametrize("prior_reads_y", [True, False])
def test_a_cvae_label_is_an_input_read_by_what_reads_it(prior_reads_y):
    s = model_structure(CVAE(prior_reads_y), {"x": _x(), "y": torch.arange(8) % C})
    assert _kinds(s) == [("y", "input"), ("z", "latent"), ("x", "observed")]
    y = s.node("y")
    assert (y.array, y.discrete, y.distribution, y.plates) == ("y", True, None, ("data",))
    assert s.node("x").array == "x"
    assert _edges(s.edges) == {("y", "x"), ("z", "x")} | ({("y", "z")} if prior_reads_y else set())
    assert _edges(s.guide_edges) == {("x", "z"), ("y", "z")}
    assert s.traced == ("every array given",)


def test_m2_label_is_partly_observed_and_enumerated_by_the_guide_where_missing():
    s = model_structure(M2(), {"x": _x(), "y": _labels()})
    assert _kinds(s) == [("y", "partly observed"), ("z", "latent"), ("x", "observed")]
    y = s.node("y")
    assert (y.distribution, y.discrete, y.categories, y.in_guide, y.array) == ("Categorical", True, C, True, "y")
    assert _edges(s.edges) == {("y", "x"), ("z", "x")}
    # labelled rows: q(z | x, y) reads the given label; unlabelled: q(y | x), then q(z | x, y) reads the drawn one
    assert _edges(s.guide_edges) == {("x", "y"), ("x", "z"), ("y", "z")}
    assert s.traced == ("every array given", "without y")
    # every row labelled: y is observed, and the guide never samples it
    full = model_structure(M2(), {"x": _x(), "y": torch.arange(8) % C})
    assert _kinds(full) == [("y", "observed"), ("z", "latent"), ("x", "observed")]
    assert _edges(full.guide_edges) == {("x", "z"), ("y", "z")}


def test_a_mixture_component_in_the_model_alone_is_enumerated():
    s = model_structure(Mixture(), _x())
    assert _kinds(s) == [("c", "enumerated"), ("z", "latent"), ("x", "observed")]
    c = s.node("c")
    assert (c.distribution, c.categories, c.in_guide, c.discrete) == ("Categorical", C, False, True)
    assert _edges(s.edges) == {("c", "z"), ("z", "x")}  # self.mu[c]: indexing by c reads c
    assert _edges(s.guide_edges) == {("x", "z")}


def test_the_structure_round_trips_through_json():
    s = model_structure(M2(), {"x": _x(), "y": _labels()})
    back = ModelStructure.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s and isinstance(back.nodes, tuple) and isinstance(back.nodes[0].event_shape, tuple)


def test_a_program_provenance_cannot_follow_keeps_its_sites_and_says_so():
    class Unwraps(Hierarchy):
        def guide(self, x):
            if type(x) is not torch.Tensor:  # refuses any tensor subclass, as some compiled code does
                raise TypeError("plain tensors only")
            return super().guide(x)

    s = model_structure(Unwraps(), _x())
    assert _kinds(s) == [("z2", "latent"), ("z1", "latent"), ("x", "observed")]
    assert _edges(s.edges) == {("z2", "z1"), ("z1", "x")} and s.guide_edges == ()
    assert "guide's dependencies could not be traced" in s.note and "plain tensors only" in s.note


def test_bad_data_is_one_line():
    with pytest.raises(pv.PyroVAEError, match="different numbers of rows") as e:
        model_structure(CVAE(), {"x": _x(), "y": torch.arange(5) % C})
    assert "\n" not in str(e.value)


# -- saved with a diagnosis, and reported -----------------------------------------------------------------------------

FAST = pv.DiagnoseSettings(points=3, reference="none", draws=40, local_steps=0, sbc_sims=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A diagnosis of the hierarchy and of M2 (its training arrays have unlabelled rows), saved to a folder."""
    pyro.set_rng_seed(0)
    x = _x(12)
    labelled = {"x": x[:3], "y": torch.arange(3) % C}
    m2_data = pv.Dataset(train={"x": x, "y": _labels(12)}, test=labelled)
    subjects = [pv.Subject("hierarchy", Hierarchy(), x[:3], [0, 1, 2]),
                pv.Subject("m2", M2(), labelled, [0, 1, 2], data=m2_data)]
    d = pv.diagnose(subjects, FAST, progress=False)
    out = tmp_path_factory.mktemp("diagnosis")
    d.save(out)
    return d, out


def test_the_diagnosis_keeps_each_models_graph(saved):
    d, out = saved
    loaded = pv.load_diagnosis(out)
    for r, back in zip(d.runs, loaded.runs):
        assert back.structure == r.structure and "structure" in r.timings
    assert _kinds(loaded.runs[1].structure) == [("y", "partly observed"), ("z", "latent"), ("x", "observed")]
    assert _edges(loaded.runs[0].structure.edges) == {("z2", "z1"), ("z1", "x")}


def test_the_report_draws_each_graph_from_the_saved_diagnosis(saved, tmp_path):
    _, out = saved
    paths = write_report(pv.load_diagnosis(out), tmp_path)
    md = paths["md"].read_text()
    page = paths["html"].read_text()
    assert "## The models' graphs" in md and 'id="structure"' in page
    for r in pv.load_diagnosis(out).runs:
        png = tmp_path / "figures" / f"graph_{r.folder}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{png.name})" in md and f'data-file="figures/{png.name}"' in page
    assert "<svg" not in page  # the graphs are the PNGs this report drew, not a drawing kept in the diagnosis
    figures = json.loads(paths["json"].read_text())["figures"]
    assert {f["file"] for f in figures if f["section"] == "structure"} == {
        "figures/graph_hierarchy.png", "figures/graph_m2.png"}


def test_an_older_diagnosis_without_graphs_still_loads_and_reports(saved, tmp_path):
    _, out = saved
    raw = json.loads((out / "diagnostics.json").read_text())
    for r in raw["runs"]:
        del r["structure"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "diagnostics.json").write_text(json.dumps(raw))
    d = pv.load_diagnosis(old)
    assert all(r.structure is None for r in d.runs)
    paths = write_report(d, tmp_path / "report")
    assert "graph_" not in paths["md"].read_text() and not list((tmp_path / "report" / "figures").glob("graph_*"))


def test_the_report_package_imports_neither_torch_nor_pyro():
    """The report renders a saved diagnosis: its own modules import no model machinery."""
    root = Path(pv.__file__).parent / "report"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] in ("torch", "pyro") for n in names), (path.name, names)


def test_a_graph_is_kept_as_data_not_as_a_drawing():
    """What a diagnosis keeps of a graph is its nodes and edges; the report draws it, so no markup is saved."""
    s = model_structure(M2(), {"x": _x(), "y": _labels()})
    assert set(s.to_json()) == {"nodes", "edges", "guide_edges", "traced", "data_plate", "note"}


# -- a run's own plots -------------------------------------------------------------------------------------------------

TINY = ["--quiet", "--iw-samples", "5", "--set", "train.epochs=1", "--set", "train.batch_size=512"]


def test_a_trained_builtin_run_has_its_graph_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "--set", "model.latent_dim=2", "--set", "model.encoder.hidden=[8]",
            "--set", "model.decoder.hidden=[8]"]
    assert main(args) == 0
    graph = out / "plots" / "graph.png"
    assert graph.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    graph.write_bytes(b"stale")
    # graph.png is one of the run's own files: overwriting the run replaces it instead of refusing the folder
    pv.train(pv.load_config(out / "config.toml"), out, overwrite=True, progress=False, iw_samples=5)
    assert graph.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trained_program_run_has_its_graph(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--set", 'model.program="test_structure:Hierarchy"',
                 "--set", 'train.elbo="trace"', "--set", 'data.binarize="static"']) == 0
    assert (out / "plots" / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["graph.png", "loss.png"]


def test_an_input_named_like_a_site_keeps_its_own_node():
    class Shadow(CVAE):
        """The CVAE whose label array is called z, like its latent."""

        def model(self, x, z):
            return super().model(x, z)

        def guide(self, x, z):
            return super().guide(x, z)

    s = model_structure(Shadow(), {"x": _x(), "z": torch.arange(8) % C})
    assert _kinds(s) == [("z (data)", "input"), ("z", "latent"), ("x", "observed")]
    assert s.node("z (data)").array == "z"
    assert _edges(s.edges) == {("z (data)", "z"), ("z (data)", "x"), ("z", "x")}
