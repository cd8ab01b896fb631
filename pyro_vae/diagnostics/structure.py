"""A model's graph from its program: its sample sites, the data arrays it is given, and what each site reads.

The program is traced on a couple of data rows, as Pyro's ``render_model``
does, under provenance tracking (``pyro.ops.provenance``): every sample
site's value, and every data array handed to the program, is tagged with its
name, and a site's parents are the tags its log-density carries, so an edge
means "this distribution reads that value", whatever the code in between
(networks, indexing, concatenation).  Tags on the data arrays tell what
``render_model`` cannot: which array an observed site scores (the one its
``obs=`` is made from) and which arrays are inputs no site observes (a
conditional VAE's label), with edges to the sites that read them.  The guide
is traced the same way for its edges (what q reads).

Named data with missing entries (unlabelled rows, ``batch.groups``) is traced
once per pattern of rows, each without its missing arrays, as the program
sees them in training: a site observed on some rows and latent on others is
"partly observed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

import pyro
import torch
from pyro import poutine
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode

from ..data import batch
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.rng import forked_rng
from ..infer.probe import TRACE_ERRORS, first_line, program_error
from ..infer.sites import DATA_PLATE, elementwise_base, is_enumerable, is_factor
from ..models.params import runs_model
from ..models.protocol import eval_mode, model_device, model_dtype
from .results import (DETERMINISTIC, ENUMERATED, FACTOR, INPUT, LATENT, OBSERVED, PARTLY_OBSERVED, GraphEdge,
                      GraphNode, ModelStructure)

# rows traced per pattern: two, so that a program cannot mistake its one row for a squeezed batch dim
ROWS = 2


@dataclass(frozen=True)
class _Array:
    """The provenance tag of a data array (``name`` None: the data is one array, the observations)."""

    name: Optional[str]


# Ops that read only a tensor's shape, dtype and device, and the positions of those arguments: x.new_zeros(d) or
# torch.zeros_like(x) builds a prior's location of the right size, and reads no value of x.
_SHAPE_ONLY = {f: (0,) for f in (
    torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty, torch.Tensor.new_full,
    torch.Tensor.new_tensor, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
    torch.rand_like, torch.randn_like, torch.randint_like)}
_SHAPE_ONLY.update({torch.Tensor.type_as: (1,), torch.Tensor.to: (1,)})  # t.type_as(x), t.to(x): x's dtype and device


class _ShapeOnly(TorchFunctionMode):
    """Provenance does not flow through the arguments of ops that read only their shape (see ``_SHAPE_ONLY``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        positions = _SHAPE_ONLY.get(func)
        if positions:
            args = tuple(detach_provenance(a) if i in positions and torch.is_tensor(a) else a for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


class _Tag(Messenger):
    """Tags each sample site's value with its name (so only direct dependants see it), and records what an
    observed value was made from (the arrays it scores)."""

    def __init__(self):
        super().__init__()
        self.observed_from: Dict[str, FrozenSet] = {}

    def _pyro_post_sample(self, msg):
        if site_is_subsample(msg):
            return
        if msg["is_observed"]:
            self.observed_from[msg["name"]] = get_provenance(msg["value"])
        msg["value"] = ProvenanceTensor(detach_provenance(msg["value"]), frozenset({msg["name"]}))


@dataclass
class _Site:
    """One sample site of one trace: what it is and the tags its density reads."""

    name: str
    kind: str
    distribution: str
    event_shape: Tuple[int, ...]
    size: int
    plates: Tuple[str, ...]
    discrete: bool
    categories: Optional[int]
    reads: FrozenSet  # sample-site names and _Array tags
    observes: FrozenSet = frozenset()  # the _Array tags an observed value was made from


def _kind(site) -> str:
    if site["infer"].get("_deterministic", False):
        return DETERMINISTIC
    if is_factor(site):
        return FACTOR
    if site["is_observed"]:
        return OBSERVED
    return ENUMERATED if is_enumerable(site) else LATENT


def _reads(fn, value) -> FrozenSet:
    """The provenance of a distribution's density at ``value`` (without the value's own): what it reads."""
    out, f = frozenset(), fn
    while hasattr(f, "base_dist"):  # a mask made from data reads that data too
        mask = getattr(f, "_mask", None)
        if torch.is_tensor(mask):
            out |= get_provenance(mask)
        f = f.base_dist
    # through masks: a site masked out entirely (pyro.deterministic) has a constant density
    return out | get_provenance(elementwise_base(fn, through_masks=True).log_prob(detach_provenance(value)))


def _categories(fn) -> Optional[int]:
    """How many values a site takes, where its distribution can list them (one Categorical, not a vector of bits)."""
    if not getattr(fn, "has_enumerate_support", False):
        return None
    try:
        return int(fn.enumerate_support(expand=False).shape[0])
    except (NotImplementedError, RuntimeError, ValueError):
        return None


def _site(site, observes: FrozenSet, tracked: bool) -> _Site:
    fn, value = site["fn"], site["value"]
    base = elementwise_base(fn, through_masks=True)
    frames = sorted((f for f in site["cond_indep_stack"] if f.vectorized), key=lambda f: f.dim)
    event = tuple(int(d) for d in fn.event_shape)
    size = math.prod(event) * math.prod(int(f.size) for f in frames if f.name != DATA_PLATE)
    support = getattr(fn, "support", None)
    return _Site(site["name"], _kind(site), type(base).__name__, event, int(size), tuple(f.name for f in frames),
                 bool(getattr(support, "is_discrete", False)), _categories(fn),
                 _reads(fn, value) - {site["name"]} if tracked else frozenset(), observes)


def _tagged(part):
    """Every data array tagged with its name (one array, the observations, with None: the data as a whole)."""
    return {k: ProvenanceTensor(v, frozenset({_Array(k if len(part) > 1 else None)})) for k, v in part.items()}


def _trace(fn, part, tracked: bool) -> List[_Site]:
    """The sample sites of ``fn`` on ``part`` in trace order, with what each reads when ``tracked``."""
    tag = _Tag()
    with torch.no_grad(), pyro.validation_enabled(False), forked_rng(batch.reference(part).device):
        if tracked:
            with _ShapeOnly(), tag:
                tr = poutine.trace(fn).get_trace(**_tagged(part))
        else:
            tr = poutine.trace(fn).get_trace(**part)
        # densities outside the shape-only rule: it is for the program's code, not for a distribution's log_prob
        return [_site(s, tag.observed_from.get(n, frozenset()), tracked) for n, s in tr.nodes.items()
                if s["type"] == "sample" and not site_is_subsample(s)]


WHAT = "the data of the model's graph"


def _pattern(data, absent) -> str:
    if len(data) == 1:
        return "the data"
    return "without " + ", ".join(absent) if absent else "every array given"


def _parts(model, data) -> List[Tuple[str, object]]:
    """(what the rows lack, a few of them, checked and on the model's device): one per pattern of missing arrays,
    the fullest first.  Rows are picked before they are moved: the data may be a whole training set."""
    try:
        data = batch.apply(named_data(model, data, WHAT), torch.as_tensor)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PyroVAEError(f"{WHAT} is not numeric ({e}): give a tensor, or a mapping of named tensors") from None
    data = batch.check_rows(data, WHAT)
    device = model_device(model)
    out = []
    for g in sorted(batch.groups(data), key=lambda g: len(g["absent"])):
        part = batch.prepare(batch.without(batch.rows(data, g["rows"][:ROWS]), g["absent"]), WHAT)
        out.append((_pattern(data, g["absent"]), batch.to(part, device, model_dtype(model, batch.reference(part)))))
    return out


def graph_data(dataset):
    """The rows a run's graph is traced on: its training arrays when they are named (their unlabelled rows show
    which sites are partly observed), else its test data (training data may be a memory map)."""
    return dataset.train if isinstance(dataset.train, Mapping) else dataset.test  # a source's one array: a matrix


@dataclass
class _Traces:
    model: List[List[_Site]] = field(default_factory=list)  # one list per pattern of rows
    guide: List[List[_Site]] = field(default_factory=list)
    note: Optional[str] = None


def _traces(model, parts) -> _Traces:
    """Model and guide traced on every pattern of rows; without provenance (no edges) if it cannot be followed."""
    out = _Traces()
    for role in ("model", "guide"):
        fn = getattr(model, role)
        try:
            getattr(out, role).extend(_trace(fn, p, True) for _, p in parts)
        except TRACE_ERRORS as e:
            # a program that provenance cannot follow (it unwraps its tensors): its sites without edges
            getattr(out, role).clear()
            try:
                getattr(out, role).extend(_trace(fn, p, False) for _, p in parts)
            except TRACE_ERRORS as plain:
                raise program_error(model, WHAT, plain) from None
            why = f"the {role}'s dependencies could not be traced ({first_line(e)[:200]}): its edges are not shown"
            out.note = why if out.note is None else f"{out.note}; {why}"
    return out


def _merged_kind(kinds: List[str]) -> str:
    """A site's kind over the patterns of rows: observed on some and latent on others is partly observed."""
    if len(set(kinds)) == 1:
        return kinds[0]
    if OBSERVED in kinds and (LATENT in kinds or ENUMERATED in kinds):
        return PARTLY_OBSERVED
    return kinds[0]


def _graph(traces: _Traces, arrays: List[Optional[str]], parts) -> ModelStructure:
    model_sites: Dict[str, List[_Site]] = {}
    for tr in traces.model:
        for s in tr:
            model_sites.setdefault(s.name, []).append(s)
    guide_sites: Dict[str, List[_Site]] = {}
    for tr in traces.guide:
        for s in tr:
            guide_sites.setdefault(s.name, []).append(s)
    # which site scores each array: the first whose observed value is made from it
    node_of: Dict[_Array, str] = {}
    for name, seen in model_sites.items():
        for s in seen:
            if s.kind == OBSERVED:
                for tag in s.observes:
                    if isinstance(tag, _Array):
                        node_of.setdefault(tag, name)
    observed_array = {site: tag.name for tag, site in node_of.items()}
    inputs = [a for a in arrays if a is not None and _Array(a) not in node_of]
    sites = set(model_sites) | set(guide_sites)
    for a in inputs:  # an input named like a site keeps a node of its own
        node_of[_Array(a)] = a if a not in sites else f"{a} (data)"
    nodes = [_input_node(node_of[_Array(a)], a, parts) for a in inputs]
    for name, seen in model_sites.items():
        nodes.append(_node(name, seen, guide_sites.get(name), observed_array.get(name)))
    for name, seen in guide_sites.items():
        if name not in model_sites:  # an auxiliary site of the guide alone
            nodes.append(_node(name, seen, seen, None, in_model=False))
    known = [n.name for n in nodes]
    plates = {p for n in nodes for p in n.plates}
    return ModelStructure(
        nodes=tuple(nodes), edges=_edges(model_sites, node_of, known), guide_edges=_edges(guide_sites, node_of, known),
        traced=tuple(what for what, _ in parts), data_plate=DATA_PLATE if DATA_PLATE in plates else None,
        note=traces.note)


def _node(name: str, seen: List[_Site], in_guide: Optional[List[_Site]], array: Optional[str],
          in_model: bool = True) -> GraphNode:
    s = seen[0]
    return GraphNode(name=name, kind=_merged_kind([t.kind for t in seen]) if in_model else s.kind,
                     distribution=s.distribution, event_shape=s.event_shape, size=s.size, plates=s.plates,
                     discrete=s.discrete, categories=s.categories, in_model=in_model, in_guide=bool(in_guide),
                     array=array)


def _input_node(name: str, array: str, parts) -> GraphNode:
    t = next(p[array] for _, p in parts if array in p)
    shape = tuple(int(d) for d in t.shape[1:])
    return GraphNode(name=name, kind=INPUT, distribution=None, event_shape=shape, size=math.prod(shape),
                     plates=(DATA_PLATE,), discrete=not (t.is_floating_point() or t.is_complex()), array=array)


def _edges(sites: Dict[str, List[_Site]], node_of: Dict[_Array, str], known: List[str]) -> Tuple[GraphEdge, ...]:
    """parent -> child for every tag a site's density reads, arrays as the node that stands for them, in node order."""
    pairs = set()
    for child, seen in sites.items():
        for s in seen:
            for tag in s.reads:
                parent = node_of.get(tag) if isinstance(tag, _Array) else tag
                if parent is not None and parent != child and parent in known and child in known:
                    pairs.add((parent, child))
    order = {n: i for i, n in enumerate(known)}
    return tuple(GraphEdge(p, c) for p, c in sorted(pairs, key=lambda e: (order[e[1]], order[e[0]])))


@runs_model()
def model_structure(model, data) -> ModelStructure:
    """The graph of ``model`` (a built-in or any program the library accepts) on ``data``; see the module docstring.

    ``data`` is named arrays (or the one tensor), as the model is trained on; a
    couple of rows of each pattern of missing arrays are traced.
    """
    parts = _parts(model, data)
    arrays = list(dict.fromkeys(k for _, p in parts for k in p)) if len(parts[0][1]) > 1 else [None]
    with eval_mode(model):  # a look at the program: batch-norm statistics stay as they are
        return _graph(_traces(model, parts), arrays, parts)
