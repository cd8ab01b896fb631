"""Bad graph specs ([model.nodes.NAME]) fail in one line that names the node and the fix.

Each case is refused in Python (``check_config``, or ``build_model`` / ``check_data`` where the
problem needs the data's shape or arrays) and by ``pyro-vae train`` with exit status 2, one
``pyro-vae: error:`` line, no traceback and nothing written in --out.
"""

from __future__ import annotations

import copy
import os

import pytest

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.config import config_from_dict



def _net() -> dict:
    return {"hidden": [8]}  # a fresh table per use: an edit of one node's net leaves the others alone


def _base() -> dict:
    """A good two-layer hierarchy on the digits (8x8 images): every case below breaks one thing in it."""
    return {"data": {"source": "digits"},
            "model": {"nodes": {
                "z2": {"dim": 2, "encoder": _net()},
                "z1": {"dim": 2, "parents": ["z2"], "net": _net(), "encoder": _net()},
                "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["z1"], "net": _net()}}},
            "train": {"epochs": 1, "batch_size": 100}}


def _nodes(c):
    return c["model"]["nodes"]


def _with_label(role: str, elbo: str = "enum"):
    """Adds a 10-class node y as a parent of x."""
    def edit(c):
        _nodes(c)["y"] = {"role": role, "family": "categorical", "dim": 10}
        _nodes(c)["x"]["parents"] = ["z1", "y"]
        c["train"]["elbo"] = elbo
    return edit


def _synthetic_conv(c):
    c["data"].update(source="synthetic", num_points=200)
    _nodes(c)["x"].update(likelihood="normal", net={"type": "conv", "hidden": [8]})


# (case, edit of the good spec, where Python refuses it, words the one line must hold)
CASES = [
    ("cycle", lambda c: _nodes(c)["z2"].update(parents=["z1"]), "config",
     ["model.nodes", "cycle", "z2 <- z1 <- z2", "remove one of these parent links"]),
    ("unknown parent", lambda c: _nodes(c)["z1"].update(parents=["z_2"]), "config",
     ["model.nodes.z1", "unknown parent 'z_2'", "did you mean 'z2'?", "declared nodes: z2, z1, x"]),
    ("observed without parents", lambda c: _nodes(c)["x"].update(parents=[]), "config",
     ["model.nodes.x", "observed node needs a likelihood given its parents", "list the latents it depends on"]),
    ("input with parents",
     lambda c: _nodes(c).update(y={"role": "input", "family": "categorical", "dim": 3, "parents": ["z2"]}), "config",
     ["model.nodes.y", "an input is always given", "remove its parents"]),
    ("latent without dim", lambda c: _nodes(c)["z1"].pop("dim"), "config",
     ["model.nodes.z1", "needs dim", "set dim = N"]),
    ("categorical without dim", lambda c: (_with_label("latent")(c), _nodes(c)["y"].pop("dim")), "config",
     ["model.nodes.y", "needs dim (the number of classes)"]),
    ("nothing observed depends on it", lambda c: _nodes(c).update(w={"dim": 2}), "config",
     ["model.nodes.w", "no observed node depends on it", "list it among the parents", "or remove it"]),
    ("discrete node under meanfield", _with_label("latent", elbo="meanfield"), "config",
     ["model.nodes.y is categorical", "train.elbo = 'meanfield' cannot sum it", 'set train.elbo = "enum"']),
    ("mixture under meanfield",
     lambda c: (_nodes(c)["z2"].update(family="mixture", components=3), c["train"].update(elbo="meanfield")), "config",
     ["model.nodes.z2 is mixture", "its mixture component", 'set train.elbo = "enum"']),
    ("conv net without an image shape", _synthetic_conv, "build",
     ["model.nodes.x.net", 'type = "conv" needs image data', "no image shape", 'use type = "mlp"']),
    ("conv net on a latent's conditional", lambda c: _nodes(c)["z1"].update(net={"type": "conv"}), "config",
     ["model.nodes.z1", 'net.type = "conv"', "a latent's conditional network", 'use type = "mlp"']),
    ("observed dim that does not fit the data", lambda c: _nodes(c)["x"].update(dim=10), "build",
     ["model.nodes.x.dim = 10", "the data's rows have 64 values", "remove dim"]),
    ("one-latent keys beside nodes", lambda c: c["model"].update(latent_dim=4), "config",
     ["model.latent_dim is given together with model.nodes", "remove model.latent_dim", "[model.nodes.NAME]"]),
    ("one-latent decoder beside nodes", lambda c: c["model"].update(decoder={"hidden": [32]}), "config",
     ["model.decoder is given together with model.nodes", "remove model.decoder"]),
    ("unknown key in a node", lambda c: _nodes(c)["z1"].update(parent=["z2"]), "config",
     ["unknown key 'model.nodes.z1.parent'", "did you mean 'parents'?"]),
    ("unknown key in a node's net", lambda c: _nodes(c)["z1"]["net"].update(hiden=[8]), "config",
     ["model.nodes.z1.net.hiden", "did you mean 'hidden'?"]),
    ("partial node without its array", _with_label("partial"), "data",
     ["model.nodes.y is a partial node", "has no array 'y'", "data.arrays"]),
    ("input node without its array", _with_label("input", elbo="meanfield"), "data",
     ["model.nodes.y is an input node", "has no array 'y'"]),
    ("mixture without components",
     lambda c: (_nodes(c)["z2"].update(family="mixture"), c["train"].update(elbo="enum")), "config",
     ["model.nodes.z2", "a mixture prior needs components >= 2", "set components = K"]),
    ("mixture with one component",
     lambda c: (_nodes(c)["z2"].update(family="mixture", components=1), c["train"].update(elbo="enum")), "config",
     ["model.nodes.z2", "components >= 2", "(got 1)"]),
    ("a family a role cannot have", lambda c: _nodes(c)["z1"].update(family="real"), "config",
     ["model.nodes.z1", "family 'real' is not one a latent node can have", "normal, laplace"]),
    ("a latent with an observed parent",
     lambda c: _nodes(c).update(w={"dim": 2, "parents": ["x"]}, v={"role": "observed", "dim": 2, "likelihood": "normal",
                                                                   "parents": ["w"]}), "config",
     ["model.nodes.w", "a latent with an observed parent (x)", 'make x role = "input"']),
    ("classifier weight off a partial node", lambda c: _nodes(c)["z1"].update(classifier_weight=1.0), "config",
     ["model.nodes.z1", "classifier_weight", 'set role = "partial"']),
    ("not an identifier", lambda c: _nodes(c).update({"z-3": {"dim": 2}}) or _nodes(c)["z1"].update(parents=["z2", "z-3"]),
     "config", ["model.nodes.z-3", "not a Python identifier"]),
]
IDS = [c[0] for c in CASES]


def _spec(edit) -> dict:
    c = copy.deepcopy(_base())
    edit(c)
    return c


def _one_line(message: str, words) -> None:
    assert "\n" not in message, message
    for w in words:
        assert w in message, (w, message)


def test_the_good_spec_builds_trains_and_evaluates():
    """The spec every case breaks is itself good: a failure below is the edit's, not the base's."""
    cfg = config_from_dict(_base())
    data = pv.load_data(cfg.data, "bernoulli")  # binarized for x's likelihood, as pyro-vae train loads it
    model = pv.build_model(cfg.model, data.dim, image_shape=data.image_shape)
    model.check_data(data.train, "the training data")
    pv.fit(model, data.train[:200], None, cfg.train, progress=False, binarize=data.binarize)
    assert pv.evaluate(model, data.test[:20], iw_samples=5)["num_points"] == 20


@pytest.mark.parametrize("name, edit, stage, words", CASES, ids=IDS)
def test_bad_spec_is_one_line_from_python(name, edit, stage, words):
    spec = _spec(edit)
    if stage == "config":  # before any data is read: the config's schema, then its names and graph
        with pytest.raises(pv.PyroVAEError) as e:
            pv.check_config(config_from_dict(spec))
        _one_line(str(e.value), words)
        return
    cfg = config_from_dict(spec)  # the spec alone is fine: the data's shape or arrays are what it contradicts
    data = pv.load_data(cfg.data)
    with pytest.raises(pv.PyroVAEError) as e:
        model = pv.build_model(cfg.model, data.dim, image_shape=data.image_shape)
        if stage == "data":
            model.check_data(data.train, "the training data")
    _one_line(str(e.value), words)


def _toml_value(v) -> str:
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(u) for u in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(u)}" for k, u in v.items()) + " }"
    return repr(v)


def _toml(spec: dict) -> str:
    """The spec as a user writes it: [data], [model], one [model.nodes.NAME] table per node, [train]."""
    lines = []
    for section, body in spec.items():
        lines.append(f"[{section}]")
        for k, v in body.items():
            if k != "nodes":
                lines.append(f"{k} = {_toml_value(v)}")
        for node, fields in body.get("nodes", {}).items():
            key = node if node.isidentifier() else f'"{node}"'
            lines.append(f"[{section}.nodes.{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name, edit, stage, words", CASES, ids=IDS)
def test_bad_spec_is_one_line_from_the_cli_and_writes_nothing(name, edit, stage, words, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(_toml(_spec(edit)))
    out = tmp_path / "run"
    rc = main(["train", str(tmp_path / "bad.toml"), "--out", str(out), "--quiet", "--no-plots", "--iw-samples", "2"])
    stdout, err = capsys.readouterr()
    assert rc == 2, (rc, stdout, err)
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), err
    _one_line(lines[0], words)
    assert not out.exists() and os.listdir(tmp_path) == ["bad.toml"]


def test_the_good_spec_as_toml_is_the_same_config_and_trains_from_the_cli(tmp_path, capsys):
    """The CLI cases read what the Python cases build, and the unbroken file trains (and writes its run)."""
    (tmp_path / "good.toml").write_text(_toml(_base()))
    assert pv.load_config(tmp_path / "good.toml") == config_from_dict(_base(), base_dir=tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "good.toml"), "--out", str(out), "--quiet", "--no-plots", "--iw-samples", "2"]) == 0
    assert (out / "checkpoint.pt").exists() and (out / "config.toml").exists()
