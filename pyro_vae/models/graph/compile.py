"""A graph spec compiled to one Pyro program: the model in ancestral order, an amortized guide bottom-up.

``model`` walks the nodes in ancestral order inside the data plate: an input
is read, a root latent is drawn from its prior, every other node from its
conditional network of the parents' values; observed nodes are scored at the
data.  A partial node (a label given for some rows) is observed where its
array is present and latent where it is not (the trainer batches labelled and
unlabelled rows apart, so a batch has the array or leaves it out).  A mixture
node's component is a model-only discrete site, marked for enumeration.

``guide`` walks the latent nodes nearest the data first (graph.guide_order):
each q reads the data (observed and input arrays) and, for the "structured"
guide, the latent values sampled before it that it shares a factor with.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule

from ...config.short import key_path
from ...data import batch
from ...errors import PyroVAEError
from ..corruption import CORRUPTIONS
from ..counts import LIBRARY, LIKELIHOODS, count_options  # the registry with the count laws in it
from ..nets import ConvEncoder, FlatBatchNorm, check_image, decoder_network, mlp
from ..plate import DataPlate
from .families import FAMILIES
from .priors import DEFAULT_PSEUDO_INPUTS, VampPrior
from .penalties import ContractivePenalty, TiedDecoder, check_degenerate, check_one_latent_mlp, check_tied_outputs
from .data import check_graph_data
from .spec import CLASSIFIER, COMPONENT, CONTRACTIVE, Graph, build_graph



def broadcast_cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature vectors whose leading dims broadcast (an enumerated label's (K, 1, K) with x's (B, D))."""
    if len(parts) == 1:
        return parts[0]
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(lead + p.shape[-1:]) for p in parts], dim=-1)


class NodeNet(nn.Module):
    """The named inputs' features -> ``out_features`` numbers: an MLP, after a conv encoder on the image if asked."""

    def __init__(self, inputs: Sequence[Tuple[str, int]], out_features: int, cfg, image: Optional[str],
                 image_shape, what: str):
        super().__init__()
        self.names = [n for n, _ in inputs]
        self.image = None
        width = sum(size for _, size in inputs)
        if cfg.type == "conv":
            if image is None or image not in self.names:
                raise PyroVAEError(f"{what}: type = \"conv\" reads an image, but none of this network's inputs "
                                   f"({', '.join(self.names) or 'none'}) is the image data: use type = \"mlp\"")
            check_image(image_shape, what)
            self.image = image
            self.conv = ConvEncoder(image_shape, cfg.channels, cfg.activation)
            width += self.conv.out_features - dict(inputs)[image]
        self.mlp = mlp(width, cfg.hidden, out_features, cfg.activation)
        if cfg.batchnorm:  # only then: a network without it keeps the state_dict keys it always had
            self.norm = FlatBatchNorm(out_features)

    def forward(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.conv(feats[n]) if n == self.image else feats[n] for n in self.names]
        out = self.mlp(broadcast_cat(parts))
        return self.norm(out) if hasattr(self, "norm") else out


class Joined(nn.Module):
    """A network on one tensor, fed the named inputs' features side by side."""

    def __init__(self, net: nn.Module, names: Sequence[str]):
        super().__init__()
        self.net, self.names = net, list(names)

    def forward(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(broadcast_cat([feats[n] for n in self.names]))


class GraphModel(PyroModule):
    """A latent-variable graph (``[model.nodes.NAME]`` tables) as one Pyro model and one amortized guide.

    ``data_dim``: the width of the main observed array (the first observed
    node); ``image_shape``: its (height, width) where the data source knows it
    (conv nets need it).  The constructor builds modules only.
    """

    def __init__(self, spec, data_dim: int, image_shape=None):
        super().__init__()
        self.spec = spec
        self.graph: Graph = build_graph(spec)
        g = self.graph
        self.obs_site = next(n for n in g.order if g.nodes[n].role == "observed")
        # the sites latent on every row (a partial node is observed on labelled rows)
        self.latent_sites = tuple(n for n in g.guide_order if g.nodes[n].role == "latent")
        # count nodes with a latent log-library (library = "latent"): each adds the site NAME_library
        self.libraries = tuple(n for n in g.order if g.nodes[n].role == "observed"
                               and getattr(g.nodes[n], "library", "none") == "latent")
        self.latent_sites = tuple(n + LIBRARY for n in self.libraries) + self.latent_sites
        self.data_dim = int(data_dim)
        self.image_shape = tuple(image_shape) if image_shape else None
        image = self.obs_site if self.image_shape and self.image_shape[0] * self.image_shape[1] == data_dim else None
        self.families = nn.ModuleDict()
        self.likelihoods = nn.ModuleDict()
        self.nets = nn.ModuleDict()  # the model's conditional networks, one per node with parents
        self.encoders = nn.ModuleDict()  # the guide's networks, one per latent or partial node
        self.widths: Dict[str, int] = {}  # the feature size of each node's value
        for name in g.order:
            node = g.nodes[name]
            if node.role == "observed":
                width = self._observed_width(name, node)
                self.likelihoods[name] = LIKELIHOODS[node.likelihood](
                    width, "learned" if node.scale is None else node.scale, node.levels,
                    **count_options(spec, name, node, lambda n, f: key_path(spec, n, f)))
                self.widths[name] = width
            else:
                self.families[name] = FAMILIES[node.family](node)
                self.widths[name] = self.families[name].feature_size
        self.one_latent = _one_latent(g)
        if spec.tied or spec.contractive:
            check_one_latent_mlp(spec, *(self.one_latent or (None, None)), lambda n, f: key_path(spec, n, f))
        # the guide's networks are built (so initialised) before the model's, as the one-latent VAE always was;
        # they are registered after them (self.nets first), as graph runs' parameters always were
        self._build_encoders(g, image)
        self._build_nets(g)
        # VampPriors read their node's encoder, so the graph holds them (built last: no other draw moves)
        self.vamp = nn.ModuleDict({
            name: VampPrior([(n, self.widths[n]) for n in self.encoders[name].names],
                            g.nodes[name].pseudo_inputs or DEFAULT_PSEUDO_INPUTS)
            for name in g.order if g.nodes[name].prior == "vamp" and g.nodes[name].role == "latent"})
        self.corruption = CORRUPTIONS[spec.corruption](spec.corruption_level)
        self.contractive = None
        if spec.contractive:
            z = self.one_latent[0]
            self.contractive = ContractivePenalty(spec.contractive, self.encoders[z].mlp, self.families[z].dim)
        check_degenerate(spec, self.one_latent[0] if self.one_latent else None)
        self._data_plate = DataPlate()

    def _build_encoders(self, g: Graph, image: Optional[str]) -> None:
        data_inputs = [(n, self.widths[n]) for n in g.data_nodes()]
        for name in self.libraries:  # q(log library | data): a Gaussian's location and scale
            self.encoders[name + LIBRARY] = NodeNet(data_inputs, 2, g.nodes[name].encoder, image, self.image_shape,
                                                    key_path(self.spec, name, "encoder"))
        for name in g.guide_order:
            node = g.nodes[name]
            inputs = data_inputs + [(n, self.widths[n]) for n in g.guide_inputs(name)]
            self.encoders[name] = NodeNet(inputs, self.families[name].guide_features, node.encoder, image,
                                          self.image_shape, key_path(self.spec, name, "encoder"))
            if node.classifier_weight and g.guide_inputs(name):
                raise PyroVAEError(f"model.nodes.{name}.classifier_weight: the classifier q({name}|data) must read the "
                                   f"data only, but this guide also reads {', '.join(g.guide_inputs(name))}: "
                                   "set model.guide_structure = \"mean-field\" or remove classifier_weight")

    def _build_nets(self, g: Graph) -> None:
        for name in g.order:
            node = g.nodes[name]
            what = key_path(self.spec, name, "net")
            inputs = [(p, self.widths[p]) for p in node.parents]
            if node.role == "observed":
                lik = self.likelihoods[name]
                if self.spec.tied and node.net.batchnorm:
                    raise PyroVAEError(f"{what}.batchnorm: a tied decoder is the encoder mirrored, with no layer of "
                                       "its own: remove batchnorm or model.tied")
                if self.spec.tied:  # the one latent's encoder mirrored (penalties.py)
                    check_tied_outputs(lik, node, self.widths[name], lambda n, f: key_path(self.spec, n, f))
                    z = self.one_latent[0]
                    tied = TiedDecoder(self.encoders[z].mlp, self.families[z].dim, node.net.activation)
                    self.nets[name] = Joined(tied, node.parents)
                elif node.net.type == "conv":  # only the main observed node is the source's image
                    shape = self.image_shape if name == self.obs_site else None
                    self.nets[name] = Joined(decoder_network(sum(s for _, s in inputs), lik, node.net, shape, what),
                                             node.parents)
                else:
                    self.nets[name] = NodeNet(inputs, lik.out_features, node.net, None, None, what)
            elif node.role in ("latent", "partial") and node.parents:  # (a conv net here fails in spec.py)
                self.nets[name] = NodeNet(inputs, self.families[name].out_features, node.net, None, None, what)

    @property
    def likelihood(self):
        """The main observed node's likelihood: what the trainer checks the data's support against.

        A property, not a second attribute: a module registered under two names would have its parameters
        found under one name only, and a step capture would freeze the other path's copy."""
        return self.likelihoods[self.obs_site]

    def _observed_width(self, name: str, node) -> int:
        if name == self.obs_site:
            if node.dim is not None and node.dim != self.data_dim:
                raise PyroVAEError(f"model.nodes.{name}.dim = {node.dim} but the data's rows have {self.data_dim} "
                                   "values: remove dim (it is read off the data) or fix it")
            return self.data_dim
        if node.dim is None:
            raise PyroVAEError(f"model.nodes.{name}: a second observed node needs dim (its array's width)")
        return int(node.dim)

    # -- data ---------------------------------------------------------------
    def _named(self, args, data) -> Dict[str, torch.Tensor]:
        """The program's data as named arrays: ``model(x)``, as a user may call it, is ``model(**{obs_site: x})``
        (the library always passes names)."""
        if len(args) > 1:
            raise TypeError(f"GraphModel takes the data as one tensor (its {self.obs_site!r}) or as named arrays")
        return {self.obs_site: args[0], **data} if args else data

    def _plate(self, data, data_size):
        return self._data_plate(batch.num_rows(data), batch.reference(data).device, data_size)

    def _feature(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if name in self.likelihoods:
            return self.likelihoods[name].encoder_input(value)
        return self.families[name].features(value)

    def _data_features(self, data) -> Dict[str, torch.Tensor]:
        feats = {}
        for name in self.graph.data_nodes():
            if name not in data:
                if self.graph.nodes[name].role == "input":
                    raise PyroVAEError(f"the graph's input node {name!r} is not in the data: every row needs it "
                                       f"(pass it as an array named {name!r}; pyro-vae sample takes --given {name}=...)")
                continue
            feats[name] = self._feature(name, data[name])
        return feats

    # -- the Pyro program ---------------------------------------------------
    def model(self, *args, data_size=None, **data):
        """p(x, z): the nodes drawn in ancestral order inside the data plate (``data_size``: the full data's rows)."""
        data = self._named(args, data)
        g = self.graph
        feats = self._data_features(data)
        with self._plate(data, data_size):
            shape = (batch.num_rows(data),)
            for name in g.order:
                node = g.nodes[name]
                if node.role == "input":
                    continue
                parents = {p: feats[p] for p in node.parents}
                if node.role == "observed":
                    lik = self.likelihoods[name]
                    log_library = None
                    if name in self.libraries:
                        log_library = pyro.sample(name + LIBRARY, lik.library_prior(shape[0]))
                    d = lik.law(self.nets[name](parents), data.get(name), data, **(
                        {"log_library": log_library} if log_library is not None else {}))
                    value = pyro.sample(name, d, obs=data.get(name))
                    if name not in feats:
                        feats[name] = self._feature(name, value)
                    continue
                family = self.families[name]
                if node.family == "mixture":
                    c = pyro.sample(name + COMPONENT, family.component(shape), infer={"enumerate": "parallel"})
                    d = family.given_component(c)
                else:
                    d = family.conditional(self.nets[name](parents)) if node.parents else self.root_prior(name, shape)
                obs = data.get(name) if node.role == "partial" else None
                value = pyro.sample(name, d, obs=obs)
                if obs is not None and node.classifier_weight and all(n in feats for n in self.encoders[name].names):
                    # Kingma et al.'s auxiliary term: the classifier learns from the labelled rows too.  A factor,
                    # not a density: evaluation leaves it out, so the reported ELBO stays the model's.  Only where
                    # the data it reads are given (a prior draw with a given label has no x to classify)
                    q = family.guide(self.encoders[name](feats))
                    pyro.factor(name + CLASSIFIER, node.classifier_weight * q.log_prob(obs))
                feats[name] = family.features(value)
            if self.contractive is not None:
                # a penalty, not a density: it enters the joint as a factor, at the clean x
                pyro.factor(CONTRACTIVE, -self.contractive(feats[self.obs_site]))

    def root_prior(self, name: str, shape) -> "pyro.distributions.Distribution":
        """p(name) of a root latent for a batch of ``shape``: its family's prior, or its VampPrior."""
        if name in self.vamp:
            return self.vamp[name].law(self.families[name], self.encoders[name], shape)
        return self.families[name].prior(shape)

    def encoder_inputs(self, data) -> Dict[str, torch.Tensor]:
        """The data's features as the guide's encoders read them: the observations corrupted in a training step
        of a denoising model, clean otherwise."""
        feats = self._data_features(data)
        # Denoising: corruption belongs to the training objective only, so it is applied in training mode with
        # gradients on (a training step) and never in evaluation, which runs under torch.no_grad (or after
        # model.eval()) and must see the clean x
        if self.corruption.active and self.training and torch.is_grad_enabled() and self.obs_site in feats:
            feats[self.obs_site] = self.corruption(feats[self.obs_site])
        return feats

    def guide(self, *args, data_size=None, **data):
        """q(z | x): the latents drawn nearest the data first, each from its amortized guide law."""
        data = self._named(args, data)
        g = self.graph
        feats = self.encoder_inputs(data)
        with self._plate(data, data_size):
            for name in self.libraries:
                loc, raw = self.encoders[name + LIBRARY](feats).split(1, dim=-1)
                # centred on the prior's mean, so the first steps start where the library sizes are
                loc = loc + self.likelihoods[name].library_loc
                pyro.sample(name + LIBRARY, dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))
            for name in g.guide_order:
                node = g.nodes[name]
                family = self.families[name]
                if node.role == "partial" and name in data:
                    feats[name] = family.features(data[name])  # observed here: the model scores it
                    continue
                q = family.guide(self.encoders[name](feats))
                infer = {"enumerate": "parallel"} if family.discrete else {}
                feats[name] = family.features(pyro.sample(name, q, infer=infer))

    # -- a one-latent graph (z -> x): encode, decode, sample -----------------
    def _single(self) -> Tuple[str, str]:
        if self.one_latent is None:
            raise PyroVAEError("encode, decode and sample(n) need a graph of one latent and one observed node "
                               "(z -> x); this graph has others: use its program (pyro-vae sample draws from it)")
        return self.one_latent

    @torch.no_grad()
    def encode(self, x):
        """The mean of q(z | x) (the code of a point-mass guide)."""
        z, obs = self._single()
        feats = {obs: self._feature(obs, x)}
        return self.families[z].guide_mean(self.encoders[z](feats))

    @torch.no_grad()
    def decode(self, z):
        """The mean of p(x | z)."""
        _, obs = self._single()
        return self.likelihoods[obs].mean(self.nets[obs]({self.one_latent[0]: z}))

    @torch.no_grad()
    def sample(self, n: int):
        """Draw ``z ~ p(z)`` and return (z, the mean of p(x | z))."""
        z, _ = self._single()
        draws = self.root_prior(z, (n,)).sample()
        return draws, self.decode(draws)

    # -- what the library reads off a graph ---------------------------------
    def check_data(self, data, what: str = "the data", origin=None) -> None:
        """One line naming the node and the fix when ``data`` (named arrays, or the observations alone) does not
        fit the graph; ``origin``: (the file's key, each row's row in that file), to name a bad row as the file
        numbers it."""
        check_graph_data(self.graph, self.widths, self.obs_site, batch.named(data, self.obs_site, what), what, origin)

    def density_data(self, data):
        """The arrays a held-out log p(x) and ELBO are computed on: ``data`` less the partial nodes' labels, so
        that those are summed out (log p(x), the model's density of the observations, not log p(x, y)); the
        labels measure the classifier instead (evaluation/classes.py)."""
        return {k: v for k, v in data.items() if not (k in self.graph.nodes and self.graph.nodes[k].role == "partial")}

    @property
    def class_node(self) -> Optional[str]:
        """The node whose classes the run reports: a partial label, else a categorical latent or mixture, else an
        input label (a conditional model's); None when the graph has no classes."""
        g = self.graph
        for roles, families in ((("partial",), ("categorical",)), (("latent",), ("categorical", "mixture")),
                                (("input",), ("categorical",))):
            for n in g.order:
                if g.nodes[n].role in roles and g.nodes[n].family in families:
                    return n
        return None

    @torch.no_grad()
    def class_probabilities(self, data, node: Optional[str] = None) -> torch.Tensor:
        """(rows, classes): q(node | data) of a categorical node whose guide reads the data only, or, for a
        mixture node, its component's posterior p(c | z) at z = E_q[z | data]."""
        data = batch.named(data, self.obs_site)  # the observations alone, as a user may pass them
        data = {k: v for k, v in data.items() if not (k in self.graph.nodes and self.graph.nodes[k].role == "partial")}
        name = node or self.class_node
        spec = self.graph.nodes.get(name)
        if spec is None or spec.role == "input" or spec.family not in ("categorical", "mixture"):
            raise PyroVAEError(f"{name!r} is not a categorical latent, partial or mixture node of this graph")
        if self.graph.guide_inputs(name):
            raise PyroVAEError(f"q({name} | ...) also reads {', '.join(self.graph.guide_inputs(name))}: its classes "
                               "need those draws; use model.guide_structure = \"mean-field\"")
        feats = self._data_features(data)
        family = self.families[name]
        out = self.encoders[name](feats)
        if spec.family == "categorical":
            return family.guide(out).probs
        return family.component_posterior(family.guide_mean(out))


def _one_latent(g: Graph) -> Optional[Tuple[str, str]]:
    """(latent, observed) for a graph z -> x of one continuous root latent and one observed node, else None."""
    latent = [n for n in g.order if g.nodes[n].role != "observed"]
    observed = [n for n in g.order if g.nodes[n].role == "observed"]
    if len(latent) != 1 or len(observed) != 1:
        return None
    z, x = latent[0], observed[0]
    node = g.nodes[z]
    if node.role != "latent" or node.family not in ("normal", "laplace") or node.parents or g.nodes[x].parents != (z,):
        return None
    return z, x
