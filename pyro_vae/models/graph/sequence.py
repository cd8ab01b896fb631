"""A graph with a time axis compiled to one Pyro program: a latent Markov chain, per-step emissions, a backward-RNN guide.

A latent node declared ``over = "time"`` is a chain z_1 .. z_T: z_t ~ p(z_t |
z_{t-1}, u_t) from its ``transition`` (the deep Markov model's gated network
or a linear-Gaussian map), from a learned initial state z_0.  Observed nodes
over time are emitted per step from their parents' values at that step
(x_t | z_t, u_t) by any likelihood the graph knows; input nodes over time are
controls u_t, read by the transition, the emissions and the guide.

The model draws ``z_1 .. z_T`` as one sample site per step, named
``{node}_{t}`` (t from 1, as Pyro's examples/dmm.py names them), under
``pyro.markov`` inside the data plate: each row of the plate is one sequence.
The emissions of all steps are one observed site per observed node, named
after the node (its data array), whose steps are independent given the
chain: a (rows, T, D) law of event dim 2.  Sequences of different lengths are
padded to T; the ``lengths`` array (all T when absent) masks every site's
padded steps with ``.mask()``, so they add nothing to the ELBO or log p(x).

The guide reads the whole sequence, as the DMM's combiner does: a backward
RNN over (x_{t:T}, u_{t:T}) of each sequence, reversed within its own length
so that padding never reaches a real step, gives h_t; the "structured" guide
(``model.guide_structure``) is q(z_t | z_{t-1}, h_t), "mean-field" is
q(z_t | h_t).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule

from ...config.short import key_path
from ...data.sequences import LENGTHS, check_sequence_arrays
from ...errors import PyroVAEError
from ..likelihoods import LIKELIHOODS, MIN_SCALE as LIKELIHOOD_MIN_SCALE
from ..nets import mlp
from ..plate import DataPlate
from .compile import NodeNet, broadcast_cat
from .guides import MIN_SCALE
from .spec import Graph, build_graph

#: the one value an ``over`` key takes
TIME = "time"


def is_sequence(spec) -> bool:
    """Whether a declared model has a time axis (a node ``over = "time"``)."""
    nodes = getattr(spec, "nodes", None) or {}
    return any(getattr(n, "over", None) == TIME for n in nodes.values())


def sequence_arrays(spec) -> tuple:
    """The arrays a model over time reads, its main observed node first: observed, then input nodes."""
    nodes = spec.nodes
    observed = [n for n, node in nodes.items() if node.role == "observed"]
    return tuple(observed + [n for n, node in nodes.items() if node.role == "input"])


def step_site(node: str, t: int) -> str:
    """The sample site of a chain's step ``t`` (1-based): ``z_1``, ``z_2``, ..."""
    return f"{node}_{t}"


def step_index(site: str, node: str) -> Optional[int]:
    """The step of a chain's site (``z_7`` -> 7), None if ``site`` is not one of ``node``'s steps."""
    m = re.fullmatch(re.escape(node) + r"_([1-9]\d*)", site)
    return int(m.group(1)) if m else None


def _fail(name: str, what: str) -> None:
    raise PyroVAEError(f"model.nodes.{name}: {what}")


def check_time_keys(spec) -> None:
    """A graph without a time axis has no use for a chain's keys: one line instead of ignoring them."""
    for name, node in spec.nodes.items():
        if node.over != TIME and (node.transition != type(node.transition)() or node.rnn != type(node.rnn)()):
            key = "transition" if node.transition != type(node.transition)() else "rnn"
            _fail(name, f"{key} is for a latent chain (over = \"time\"): set over = \"time\" or remove {key}")


def check_sequence_graph(spec) -> Graph:
    """The graph of a model with a time axis, checked: one latent chain, observed and input nodes over time."""
    if LENGTHS in spec.nodes:
        _fail(LENGTHS, f"{LENGTHS!r} is the array of each sequence's length: rename the node")
    g = build_graph(spec)
    chains = [n for n in g.order if g.nodes[n].role == "latent" and g.nodes[n].over == TIME]
    for name in g.order:
        node = g.nodes[name]
        if node.over != TIME:
            _fail(name, "a graph with a time axis takes nodes over time only (a per-sequence node is not supported "
                        "yet): set over = \"time\" on it, or remove it")
        if node.role == "partial":
            _fail(name, "a partial node over time is not supported: make it role = \"input\" (a control) or remove it")
        if node.role == "input" and node.family != "real":
            _fail(name, f"an input over time is a real vector per step (family = \"real\"), not {node.family!r}: "
                        "give classes one-hot, as dim real values a step")
        if node.role != "latent" and (node.transition != type(node.transition)() or node.rnn != type(node.rnn)()):
            _fail(name, "transition and rnn belong to a latent chain: remove them from this node")
    if len(chains) != 1:
        raise PyroVAEError(f"model.nodes: a graph over time needs exactly one latent chain (role = \"latent\", "
                           f"over = \"time\"), but it has {len(chains)}"
                           + (f" ({', '.join(chains)}): merge them into one node of their summed dim" if chains else
                              ": declare one"))
    z = chains[0]
    node = g.nodes[z]
    if node.family != "normal":
        _fail(z, f"a chain's steps are Gaussian: family = \"normal\" (got {node.family!r})")
    if node.guide != "normal":
        _fail(z, f"a chain's guide law is \"normal\" (got {node.guide!r})")
    if node.prior != "fixed":
        _fail(z, f"a chain starts from a learned z_0 through its transition, so prior = {node.prior!r} has nothing to "
                 "set: remove prior")
    for p in node.parents:
        if g.nodes[p].role != "input":
            _fail(z, f"a chain's parents are its controls (input nodes over time); {p} is {g.nodes[p].role}")
    if any(h < 1 for h in node.transition.hidden) or node.rnn.hidden < 1 or node.rnn.layers < 1:
        _fail(z, "transition.hidden, rnn.hidden and rnn.layers must be >= 1")
    if max(node.transition.hidden + (node.rnn.hidden,)) > 1 << 16 or node.rnn.layers > 64:
        _fail(z, "transition.hidden and rnn.hidden must be <= 65536 and rnn.layers <= 64")
    for name in g.order:
        if g.nodes[name].role == "observed" and z not in g.nodes[name].parents:
            _fail(name, f"an observed node over time is emitted from the chain at each step: list {z!r} in its parents")
    for other in g.nodes:
        if other != z and step_index(other, z) is not None:
            _fail(other, f"the name {other!r} is a step site of the chain {z!r} ({z}_1, {z}_2, ...): rename the node")
    return g


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's first ``length`` steps in reverse order, its padding left where it is: (B, T, F) -> same.

    Its own inverse.  A recurrent network run over the result reads each sequence from its last real step,
    so that its outputs at the real steps never depend on the padding."""
    t = torch.arange(x.shape[-2], device=x.device)
    lengths = lengths.to(t.device).unsqueeze(-1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(-2, idx.unsqueeze(-1).expand(x.shape))


class GatedTransition(nn.Module):
    """The deep Markov model's transition: a gate mixes a linear map of z_{t-1} and an MLP's proposal; the scale
    is read off the proposal.  The linear map starts as the identity, so that a chain starts as a random walk."""

    def __init__(self, z_dim: int, u_dim: int, cfg):
        super().__init__()
        width = z_dim + u_dim
        self.gate = mlp(width, cfg.hidden, z_dim, cfg.activation)
        self.proposal = mlp(width, cfg.hidden, z_dim, cfg.activation)
        self.loc = nn.Linear(width, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.loc.weight.zero_()
            self.loc.weight[:, :z_dim].copy_(torch.eye(z_dim))
            self.loc.bias.zero_()

    def forward(self, inp: torch.Tensor):
        gate = torch.sigmoid(self.gate(inp))
        proposal = self.proposal(inp)
        loc = (1 - gate) * self.loc(inp) + gate * proposal
        return loc, F.softplus(self.scale(F.relu(proposal))) + MIN_SCALE


class LinearTransition(nn.Module):
    """z_t = A z_{t-1} + B u_t + b + N(0, diag(s^2)): the linear-Gaussian state space's transition (s learned)."""

    def __init__(self, z_dim: int, u_dim: int, cfg=None):
        super().__init__()
        self.z_dim = z_dim
        self.loc = nn.Linear(z_dim + u_dim, z_dim)
        with torch.no_grad():
            self.loc.weight.zero_()
            self.loc.weight[:, :z_dim].copy_(0.9 * torch.eye(z_dim))
            self.loc.bias.zero_()
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, inp: torch.Tensor):
        loc = self.loc(inp)
        return loc, (F.softplus(self.raw_scale) + MIN_SCALE).expand(loc.shape)


TRANSITIONS = {"gated": GatedTransition, "linear": LinearTransition}


class BackwardRNN(nn.Module):
    """h_t from (x_{t:T}, u_{t:T}) of each sequence: a GRU or LSTM over the sequence reversed within its length,
    from a learned initial state."""

    def __init__(self, in_features: int, cfg):
        super().__init__()
        cls = nn.GRU if cfg.type == "gru" else nn.LSTM
        self.lstm = cfg.type == "lstm"
        self.rnn = cls(in_features, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(cfg.layers, 1, cfg.hidden))
        if self.lstm:
            self.c0 = nn.Parameter(torch.zeros(cfg.layers, 1, cfg.hidden))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        h0 = self.h0.expand(-1, b, -1).contiguous()
        state = (h0, self.c0.expand(-1, b, -1).contiguous()) if self.lstm else h0
        out, _ = self.rnn(reverse_within(feats, lengths), state)
        return reverse_within(out, lengths)


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, h_t)'s location and scale: an MLP of (z_{t-1}, h_t) plus a linear map of both (in a
    linear-Gaussian chain the exact posterior's mean is linear in z_{t-1} and in the backward filter's state;
    the map lets q reach it without the MLP having to learn a linear function)."""

    def __init__(self, z_dim: int, h_dim: int, cfg):
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp(z_dim + h_dim, cfg.hidden, 2 * z_dim, cfg.activation)
        self.skip = nn.Linear(z_dim + h_dim, 2 * z_dim, bias=False)

    def forward(self, z_prev: torch.Tensor, h: torch.Tensor):
        both = broadcast_cat([z_prev, h])
        out = self.net(both) + self.skip(both)
        loc, raw = out.split(self.z_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE


class MeanField(nn.Module):
    """q(z_t | h_t)'s location and scale: an MLP of h_t alone."""

    def __init__(self, z_dim: int, h_dim: int, cfg):
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp(h_dim, cfg.hidden, 2 * z_dim, cfg.activation)

    def forward(self, z_prev: torch.Tensor, h: torch.Tensor):
        loc, raw = self.net(h).split(self.z_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE


class SequenceModel(PyroModule):
    """A graph with a time axis (a latent node ``over = "time"``) as one Pyro model and one guide.

    ``data_dim``: the width D of the main observed node's (N, T, D) array.  The constructor builds modules only.
    """

    def __init__(self, spec, data_dim: int):
        super().__init__()
        self.spec = spec
        self.graph: Graph = check_sequence_graph(spec)
        g = self.graph
        self.chain = next(n for n in g.order if g.nodes[n].role == "latent")
        self.obs_site = next(n for n in g.order if g.nodes[n].role == "observed")
        self.observed = tuple(n for n in g.order if g.nodes[n].role == "observed")
        self.inputs = tuple(n for n in g.order if g.nodes[n].role == "input")
        self.obs_dim = int(data_dim)
        node = g.nodes[self.chain]
        self.z_dim = int(node.dim)
        self.controls = tuple(node.parents)  # the inputs the transition reads
        self.widths: Dict[str, int] = {n: int(g.nodes[n].dim) for n in self.inputs}
        self.widths[self.chain] = self.z_dim
        self.likelihoods = nn.ModuleDict()
        for name in self.observed:
            o = g.nodes[name]
            if name == self.obs_site:
                if o.dim is not None and o.dim != self.obs_dim:
                    _fail(name, f"dim = {o.dim} but the data's steps have {self.obs_dim} values: remove dim or fix it")
                width = self.obs_dim
            elif o.dim is None:
                _fail(name, "a second observed node needs dim (its array's width per step)")
            else:
                width = int(o.dim)
            self.widths[name] = width
            self.likelihoods[name] = LIKELIHOODS[o.likelihood](width, "learned" if o.scale is None else o.scale,
                                                              o.levels)
        u_dim = sum(self.widths[u] for u in self.controls)
        # the guide's networks first, then the model's (as the graph compiler builds them)
        rnn_in = sum(self.widths[n] for n in self.observed) + sum(self.widths[n] for n in self.inputs)
        self.rnn = BackwardRNN(rnn_in, node.rnn)
        head = Combiner if g.structured else MeanField
        self.combiner = head(self.z_dim, node.rnn.hidden, node.encoder)
        self.q_z0 = nn.Parameter(torch.zeros(self.z_dim))
        self.z0 = nn.Parameter(torch.zeros(self.z_dim))  # the learned initial state z_0
        self.transition = TRANSITIONS[node.transition.type](self.z_dim, u_dim, node.transition)
        self.emitters = nn.ModuleDict()
        for name in self.observed:
            o = g.nodes[name]
            inputs = [(p, self.widths[p]) for p in o.parents]
            self.emitters[name] = NodeNet(inputs, self.likelihoods[name].out_features, o.net, None, None,
                                          key_path(spec, name, "net"))
        self._data_plate = DataPlate()
        self.steps = 1  # T of the data last seen: how many step sites the chain has

    # -- what the library reads off a model ----------------------------------
    @property
    def latent_sites(self):
        return tuple(step_site(self.chain, t) for t in range(1, self.steps + 1))

    @property
    def likelihood(self):
        """The main observed node's likelihood (the trainer checks the data's support against it)."""
        return self.likelihoods[self.obs_site]

    def check_data(self, data, what: str = "the data", origin=None) -> None:
        """One line naming the array and the fix when ``data`` does not fit the graph (and T is read off it)."""
        check_sequence_arrays(dict(data) if isinstance(data, dict) else {self.obs_site: data}, self.observed,
                              self.inputs, self.widths, what)
        self.steps = int(data[self.obs_site].shape[1]) if isinstance(data, dict) else int(data.shape[1])

    def step_values(self, batch_size: int):
        """A lower bound of the activation values one training step holds (every network's layer outputs, per
        row and step), and the key behind most of them (models/build.py check_size)."""
        steps = max(self.steps, 1)
        parts = []
        for key, net in (("transition", self.transition), ("rnn", self.rnn), ("encoder", self.combiner)):
            width = sum(m.out_features for m in net.modules() if isinstance(m, nn.Linear))
            width += self.graph.nodes[self.chain].rnn.hidden if key == "rnn" else 0
            parts.append((batch_size * steps * width, key_path(self.spec, self.chain, key)))
        for name, net in self.emitters.items():
            width = sum(m.out_features for m in net.modules() if isinstance(m, nn.Linear))
            parts.append((batch_size * steps * width, key_path(self.spec, name, "net")))
        return sum(n for n, _ in parts), max(parts)[1]

    def density_data(self, data):
        return data

    @property
    def class_node(self):
        return None

    def linear_gaussian(self) -> Optional[Dict[str, torch.Tensor]]:
        """The chain's parameters as a linear-Gaussian state space (diagnostics/kalman.py), None if it is not one:
        a linear transition without controls, and a Normal likelihood of a linear map (net.hidden = []) of z."""
        g = self.graph
        x = g.nodes[self.obs_site]
        if (g.nodes[self.chain].transition.type != "linear" or self.controls or len(self.observed) != 1
                or x.likelihood != "normal" or x.net.hidden or tuple(x.parents) != (self.chain,)
                or self.likelihood.out_features != self.obs_dim):
            return None
        lin = self.emitters[self.obs_site].mlp[0]
        with torch.no_grad():
            loc, scale = self.transition(self.z0)
            _, noise = self.likelihood.loc_scale(lin(torch.zeros(self.z_dim, device=loc.device)))
            return {"A": self.transition.loc.weight.clone(), "b": self.transition.loc.bias.clone(),
                    "Q": torch.diag(scale ** 2), "C": lin.weight.clone(), "d": lin.bias.clone(),
                    "R": torch.diag(noise ** 2), "m1": loc.clone(), "P1": torch.diag(scale ** 2)}

    def set_linear_gaussian(self, values: Dict[str, torch.Tensor], freeze: bool = True) -> None:
        """Set the chain to the state space ``values`` (A, b, Q, C, d, R, z0: the form :meth:`linear_gaussian`
        reads, so m1 = A z0 + b and P1 = Q), and with ``freeze`` stop training it: fitting then moves the guide
        alone, which compares a guide with the Kalman smoother at fixed parameters."""
        if self.linear_gaussian() is None:
            raise PyroVAEError("only a linear-Gaussian chain takes state-space parameters: transition.type = "
                               "\"linear\", no controls, a normal likelihood of a linear map (net.hidden = [])")
        missing = [k for k in ("A", "b", "Q", "C", "d", "R", "z0") if k not in values]
        if missing:
            raise PyroVAEError(f"the state space lacks {', '.join(missing)}")
        v = {k: torch.as_tensor(values[k], dtype=self.z0.dtype, device=self.z0.device) for k in values}
        k, d = self.z_dim, self.obs_dim
        shapes = {"A": (k, k), "b": (k,), "Q": (k, k), "C": (d, k), "d": (d,), "R": (d, d), "z0": (k,)}
        for key, shape in shapes.items():
            if tuple(v[key].shape) != shape:
                raise PyroVAEError(f"the state space's {key} has shape {tuple(v[key].shape)}, the chain's {shape}")
        for key, floor in (("Q", MIN_SCALE), ("R", LIKELIHOOD_MIN_SCALE)):
            off = v[key] - torch.diag(v[key].diagonal())
            if bool(off.abs().max() > 0) or bool((v[key].diagonal().sqrt() <= floor).any()):
                raise PyroVAEError(f"the chain's {key} is diagonal with sds above {floor}: the state space's is not")
        if "P1" in v and not torch.allclose(v["P1"], v["Q"]):
            raise PyroVAEError("the chain starts from z_1 ~ N(A z0 + b, Q): the state space's P1 must equal Q")
        if "m1" in v and not torch.allclose(v["m1"], v["A"] @ v["z0"] + v["b"], atol=1e-5):
            raise PyroVAEError("the chain starts from z_1 ~ N(A z0 + b, Q): the state space's m1 must be A z0 + b")
        raw_noise = getattr(self.likelihood, "raw_scale", None)
        noise = v["R"].diagonal().sqrt()
        if raw_noise is None or (raw_noise.dim() == 0 and not torch.allclose(noise, noise[0])):
            raise PyroVAEError(f"model.nodes.{self.obs_site}: the state space's R sets the noise of each value: "
                               "scale = \"learned\" takes it" + ("" if raw_noise is None else " (not isotropic)"))
        lin = self.emitters[self.obs_site].mlp[0]
        with torch.no_grad():
            self.transition.loc.weight.copy_(v["A"])
            self.transition.loc.bias.copy_(v["b"])
            # softplus(raw) + the floor is the sd
            self.transition.raw_scale.copy_(torch.expm1(v["Q"].diagonal().sqrt() - MIN_SCALE).log())
            raw_noise.copy_(torch.expm1(noise - LIKELIHOOD_MIN_SCALE).log()[:raw_noise.numel()].reshape(raw_noise.shape))
            self.z0.copy_(v["z0"])
            lin.weight.copy_(v["C"])
            lin.bias.copy_(v["d"])
        for part in (self.transition, lin, self.likelihood, self.z0):
            part.requires_grad_(not freeze)

    # -- the data ------------------------------------------------------------
    def _named(self, args, data) -> Dict[str, torch.Tensor]:
        if len(args) > 1:
            raise TypeError(f"SequenceModel takes the data as one tensor (its {self.obs_site!r}) or as named arrays")
        return {self.obs_site: args[0], **data} if args else dict(data)

    def _layout(self, data):
        """(rows, T, the (rows, T) mask of real steps, each sequence's length)."""
        x = data[self.obs_site]
        b, t = int(x.shape[0]), int(x.shape[1])
        lengths = data.get(LENGTHS)
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
        lengths = lengths.to(x.device).long()
        mask = torch.arange(t, device=x.device) < lengths.unsqueeze(-1)
        return b, t, mask, lengths

    def _plate(self, b: int, device, data_size):
        return self._data_plate(b, device, data_size)

    def _controls(self, data, t: int) -> List[torch.Tensor]:
        return [data[u][:, t] for u in self.controls]

    # -- the Pyro program ----------------------------------------------------
    def model(self, *args, data_size=None, **data):
        """p(x, z): the chain z_1 .. z_T under pyro.markov, then every step's emissions, inside the data plate."""
        data = self._named(args, data)
        b, steps, mask, _ = self._layout(data)
        self.steps = steps
        ref = data[self.obs_site]
        with self._plate(b, ref.device, data_size):
            z_prev = self.z0.expand(b, self.z_dim)
            zs = []
            for t in pyro.markov(range(steps)):
                loc, scale = self.transition(broadcast_cat([z_prev] + self._controls(data, t)))
                z_prev = pyro.sample(step_site(self.chain, t + 1),
                                     dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))
                zs.append(z_prev)
            feats = {self.chain: torch.stack(zs, dim=-2)}
            feats.update({u: data[u] for u in self.inputs})
            for name in self.observed:
                law = self.likelihoods[name](self.emitters[name](feats))  # (..., rows, T) of event dim 1
                pyro.sample(name, law.mask(mask).to_event(1), obs=data.get(name))

    def guide(self, *args, data_size=None, **data):
        """q(z | x): h_t from the backward RNN, then z_1 .. z_T in order, each from q(z_t | z_{t-1}, h_t)
        ("structured") or q(z_t | h_t) ("mean-field")."""
        data = self._named(args, data)
        b, steps, mask, lengths = self._layout(data)
        ref = data[self.obs_site]
        feats = [self.likelihoods[n].encoder_input(data[n]) for n in self.observed] + [data[u] for u in self.inputs]
        h = self.rnn(torch.cat([f.to(self.q_z0.dtype) for f in feats], dim=-1), lengths)
        with self._plate(b, ref.device, data_size):
            z_prev = self.q_z0.expand(b, self.z_dim)
            for t in pyro.markov(range(steps)):
                loc, scale = self.combiner(z_prev, h[:, t])
                z_prev = pyro.sample(step_site(self.chain, t + 1),
                                     dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))

    @torch.no_grad()
    def sample_sequences(self, n: int, steps: int, inputs: Optional[Dict[str, torch.Tensor]] = None):
        """(z, the mean of p(x_t | z_t)) for ``n`` sequences of ``steps`` steps drawn from the prior:
        (n, steps, z_dim) and (n, steps, D); ``inputs``: the controls, (n, steps, width) each."""
        inputs = inputs or {}
        missing = [u for u in self.inputs if u not in inputs]
        if missing:
            raise PyroVAEError(f"the chain reads the input {missing[0]!r} at every step: give its (n, steps, "
                               f"{self.widths[missing[0]]}) values")
        z_prev = self.z0.expand(n, self.z_dim)
        zs = []
        for t in range(steps):
            loc, scale = self.transition(broadcast_cat([z_prev] + [inputs[u][:, t] for u in self.controls]))
            z_prev = dist.Normal(loc, scale).sample()
            zs.append(z_prev)
        z = torch.stack(zs, dim=-2)
        feats = {self.chain: z, **{u: inputs[u] for u in self.inputs}}
        return z, self.likelihood.mean(self.emitters[self.obs_site](feats))
