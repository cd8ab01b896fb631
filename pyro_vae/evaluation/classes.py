"""Class metrics: a classifier's accuracy and confusion matrix, or a clustering's matched accuracy and contingency table.

A model with classes exposes ``class_node`` (the node whose classes a run
reports) and ``class_probabilities(data)`` (rows, classes), as a graph model
does.  What the classes are decides what is measured:

- a partial label (semi-supervised): argmax q(y|x) is a classifier, scored
  against the true labels with a binomial standard error;
- a categorical latent or mixture (clustering): the clusters carry no class
  names, so they are first matched to the classes, one to one (Hungarian) when
  there are no more clusters in use than classes, else each cluster to its
  majority class (many clusters may then share a class);
- an input label (a conditional model): nothing is inferred, so nothing is scored.

The true labels are the data's own array of the class node (a partial
label's), else the ``labels`` given (a Dataset's test labels, for clusters);
-1 marks a row without one, which is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import batch
from ..errors import PyroVAEError
from ..models.params import model_params
from ..models.protocol import eval_mode, model_dtype, model_device
from ..serialize import to_plain

#: rows per class_probabilities call: a test set of any size in bounded memory
CHUNK = 4096
#: the two matching rules of a clustering
ONE_TO_ONE = "one-to-one"
MAJORITY = "majority"


@dataclass(frozen=True, eq=False)
class ClassMetrics:
    """How well a model's classes agree with the true labels of the points it was given."""

    node: str  # the node whose classes these are
    kind: str  # "classifier" (a partial label's q(y|x)) or "clustering" (a categorical latent or mixture)
    num_points: int  # points with a label, the ones scored
    accuracy: float  # classifier: argmax q(y|x) == label; clustering: the matched cluster's class == label
    # classifier: sqrt(a (1 - a) / n).  None for a clustering: its matching is chosen on these very points to
    # maximise the agreement, so the binomial s.e. would understate the uncertainty
    accuracy_se: Optional[float]
    table: np.ndarray  # (classes, predicted classes or clusters) counts: rows true class, columns predicted/cluster
    clusters_used: Optional[int] = None  # clustering: clusters that hold at least one point
    matching: Optional[str] = None  # clustering: ONE_TO_ONE (Hungarian) or MAJORITY (more clusters used than classes)
    cluster_class: Optional[Tuple[int, ...]] = None  # clustering: the class each cluster is matched to (-1: none)
    class_names: Optional[Tuple[str, ...]] = None  # the name of class 0, 1, ...; None: the numbers

    @property
    def num_classes(self) -> int:
        return int(self.table.shape[0])

    @property
    def num_clusters(self) -> int:
        """Columns of the table: the model's classes (classifier) or clusters (clustering)."""
        return int(self.table.shape[1])

    def to_json(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_json(cls, d: dict) -> "ClassMetrics":
        return cls(node=d["node"], kind=d["kind"], num_points=int(d["num_points"]), accuracy=float(d["accuracy"]),
                   accuracy_se=d.get("accuracy_se"), table=np.asarray(d["table"], dtype=np.int64),
                   clusters_used=d.get("clusters_used"), matching=d.get("matching"),
                   cluster_class=None if d.get("cluster_class") is None else tuple(d["cluster_class"]),
                   class_names=None if d.get("class_names") is None else tuple(d["class_names"]))


def contingency(truth: np.ndarray, predicted: np.ndarray, num_classes: int, num_predicted: int) -> np.ndarray:
    """(num_classes, num_predicted) counts of (true class, predicted class or cluster) pairs."""
    table = np.zeros((num_classes, num_predicted), dtype=np.int64)
    np.add.at(table, (truth, predicted), 1)
    return table


def match_clusters(table: np.ndarray) -> Tuple[str, np.ndarray]:
    """(rule, the class of each cluster, -1 for none) for a (classes, clusters) contingency table.

    One to one (scipy's Hungarian solver, maximising the points on matched pairs) while the clusters in use
    are no more than the classes; else each cluster takes its majority class (ties: the lower class).
    """
    from scipy.optimize import linear_sum_assignment

    used = table.sum(0) > 0
    cluster_class = np.full(table.shape[1], -1, dtype=np.int64)
    if int(used.sum()) <= table.shape[0]:
        # unused clusters are empty columns: they add nothing to any matching, so solving on the full table
        # is solving on the clusters in use
        rows, cols = linear_sum_assignment(table, maximize=True)
        cluster_class[cols] = rows
        cluster_class[~used] = -1
        return ONE_TO_ONE, cluster_class
    cluster_class[used] = table[:, used].argmax(0)
    return MAJORITY, cluster_class


def _as_labels(labels, n: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dim() != 1 or labels.shape[0] != n:
        raise PyroVAEError(f"{what} must hold one integer class per data point ({n} rows), -1 where a point has none "
                           f"(got dtype {labels.dtype}, shape {tuple(labels.shape)}): pass the data's own labels")
    return labels.cpu()


def _truth(data, node: str, labels, class_names) -> Tuple[Optional[torch.Tensor], Optional[Tuple[str, ...]]]:
    """(the true classes, their names): the data's array of ``node`` where it has one, else ``labels``.

    ``class_names`` name the classes of ``labels``, so they name the truth when it is ``labels`` (or equal to it).
    """
    n = batch.num_rows(data)
    given = None if labels is None else _as_labels(labels, n, "the labels")
    names = None if class_names is None else tuple(str(c) for c in class_names)
    if node in data:
        own = _as_labels(data[node], n, f"the data's array {node!r}")
        return own, names if given is not None and torch.equal(own, given) else None
    return given, names if given is not None else None


@torch.no_grad()
def predicted_probabilities(model, data) -> torch.Tensor:
    """(rows, classes) class_probabilities of ``data``, a chunk at a time on the model's device, in eval mode."""
    device, dtype = model_device(model), model_dtype(model, batch.reference(data))
    n = batch.num_rows(data)
    parts = []
    with model_params(model), eval_mode(model):
        for start in range(0, n, CHUNK):
            rows = batch.to(batch.rows(data, slice(start, start + CHUNK)), device, dtype)
            parts.append(model.class_probabilities(rows).detach().cpu())
    return torch.cat(parts)


def class_metrics(model, data, labels=None, class_names: Optional[Sequence[str]] = None) -> Optional[ClassMetrics]:
    """The class metrics of ``model`` on ``data`` (named arrays); None when there is nothing to score.

    The truth is the data's own array of the class node (a partial label's),
    else ``labels``: the true class of each row (a Dataset's ``test_labels``,
    for clusters).  ``class_names``: the names of the classes of ``labels``.
    Nothing to score: a model without ``class_node``/``class_probabilities``,
    an input label, or no truth (neither array nor labels, or every label -1).
    """
    node = getattr(model, "class_node", None)
    if node is None or not hasattr(model, "class_probabilities"):
        return None
    # a model without a graph names no roles: its classes are inferred from the data alone, so they are clusters
    role = model.graph.nodes[node].role if hasattr(model, "graph") else "latent"
    if role == "input":
        return None
    truth, names = _truth(data, node, labels, class_names)
    if truth is None:
        return None
    keep = truth >= 0
    if not bool(keep.any()):
        return None
    probs = predicted_probabilities(model, data)
    predicted = probs.argmax(-1)[keep].numpy()
    truth = truth[keep].numpy()
    n, k = len(truth), int(probs.shape[-1])
    if role == "partial":
        if int(truth.max()) >= k:
            raise PyroVAEError(f"the labels hold class {int(truth.max())} but node {node!r} has {k} classes "
                               f"(0..{k - 1}): pass the labels the model was trained with")
        table = contingency(truth, predicted, k, k)
        acc = float(np.trace(table)) / n
        return ClassMetrics(node, "classifier", n, acc, math.sqrt(acc * (1 - acc) / n), table, class_names=names)
    classes = max(int(truth.max()) + 1, len(names) if names else 0)
    table = contingency(truth, predicted, classes, k)
    rule, cluster_class = match_clusters(table)
    matched = sum(int(table[c, j]) for j, c in enumerate(cluster_class) if c >= 0)
    return ClassMetrics(node, "clustering", n, matched / n, None, table, clusters_used=int((table.sum(0) > 0).sum()),
                        matching=rule, cluster_class=tuple(int(c) for c in cluster_class), class_names=names)
