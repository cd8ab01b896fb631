"""A trained model evaluated on data, one way for a run's final evaluation and for ``pyro-vae evaluate``: every estimate, then its classes."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data.arrays import as_matrix, read_array
from ..data.corpus import read_vocabulary
from ..errors import PyroVAEError
from ..evaluation import estimators
from ..evaluation.classes import ClassMetrics, class_metrics
from ..evaluation.estimators import DEFAULT_IW_SAMPLES
from ..evaluation.results import PointwiseEvaluation
from ..evaluation.streaming import DEFAULT_BUDGET
from ..evaluation.topics import TopicMetrics, topic_metrics
from ..models.protocol import model_device
from ..runtime import distributed, failures
from ..runtime.memory import with_halving_budget
from ..runtime.threads import ThreadChoice, ThreadSetting, check_setting, choose_threads, use_threads
from ..store.files import write_text_atomic
from .runs import load_run, load_run_data


@dataclass
class RunEvaluation:
    """One evaluation of a model on data: its per-point record, their summary, and the model's classes (None: it has
    none, or they were not asked for)."""

    points: PointwiseEvaluation
    summary: dict
    classes: Optional[ClassMetrics] = None
    topics: Optional[TopicMetrics] = None  # a topic model's top words, perplexity and coherence

    def metrics(self, **extra) -> dict:
        """metrics.json: the summary, then ``extra`` (a training run adds its seconds), then the class metrics and
        a topic model's topics."""
        metrics = dict(self.summary, **extra)
        if self.classes is not None:
            metrics["classes"] = self.classes.to_json()
        if self.topics is not None:
            metrics["topics"] = self.topics.to_json()
        return metrics


def density_data(model, data):
    """The held-out arrays log p(x) is computed on: a graph leaves out its partial nodes' labels (summed)."""
    return model.density_data(data) if hasattr(model, "density_data") else data


def default_iw_samples(num_points: int) -> int:
    """K for a run's final log p(x): 1000 per point up to 2000 points, then about 2 million draws in all (>= 100)."""
    return DEFAULT_IW_SAMPLES if num_points <= 2000 else max(100, 2_000_000 // num_points)


def evaluate_model(model, x, *, iw_samples: Optional[int], seed: int, labels=None, class_names=None,
                   prior_samples: Optional[int] = None, budget: Optional[int] = None, progress: Optional[bool] = None,
                   classes: bool = True, log: Callable[[str], None], counts=None,
                   vocabulary=None) -> RunEvaluation:
    """``model`` on the rows of ``x``: every estimate of evaluation/estimators.py on its held-out arrays (the chunk
    budget halved on out-of-memory), then, with ``classes``, its classes against ``labels``, and, for a topic
    model given its word ``counts`` (``x``'s observations), its topics (``vocabulary``: the word of each column).

    Under torchrun every rank calls this (the estimates are sharded); ``classes`` only on the rank that reports.
    """
    points = with_halving_budget(
        # through the module, so that a test may stand in for it (running out of memory on purpose)
        lambda b: estimators.evaluate_points(model, density_data(model, x), iw_samples=iw_samples, seed=seed,
                                             prior_samples=prior_samples, budget=b, progress=progress, log=log),
        budget if budget is not None else DEFAULT_BUDGET, device=model_device(model), log=log)
    found = _class_metrics(model, x, labels, class_names, log) if classes else None
    topics = None
    if classes and counts is not None:
        topics = topic_metrics(model, counts, vocabulary, log_px=points.log_likelihood,
                               log_px_var=points.log_likelihood_var, elbo=points.elbo)
    return RunEvaluation(points, points.summary(), found, topics)


def _class_metrics(model, x, labels, class_names, log) -> Optional[ClassMetrics]:
    """The model's class metrics (a graph's partial label, categorical latent or mixture) against ``labels``, or
    None; a model whose classes cannot be read is noted, not failed, so that its evaluation still stands."""
    try:
        return class_metrics(model, x, labels, class_names)
    except PyroVAEError as e:
        log(f"note: no class metrics: {e}")
        return None


def evaluate_run(run_dir: os.PathLike, *, data: Optional[os.PathLike] = None, iw_samples: int = DEFAULT_IW_SAMPLES,
                 prior_samples: Optional[int] = None, seed: int = 0, budget: Optional[int] = None,
                 per_point: Optional[os.PathLike] = None, log: Callable[[str], None],
                 program_path: Optional[os.PathLike] = None, trust_code: bool = False,
                 progress: Optional[bool] = None, threads: Optional[ThreadSetting] = None) -> Optional[RunEvaluation]:
    """``pyro-vae evaluate``: a run's model on its test data (or the array file ``data``); nothing in the run changes.

    ``per_point``: a .csv file that gets one row of results per point.  ``progress``: as for training (progress.py:
    a bar on a terminal, a line every 10 s elsewhere, False for none).  ``threads``: torch's thread count while
    it evaluates ("auto" or a count; None: the run's ``train.threads``).  Under torchrun every process calls
    this and evaluates its block of the points (runtime/distributed.py); rank 0 gets the evaluation, the
    others None.
    """
    if threads is not None:
        threads = check_setting(threads, "threads")
    joined = not torch.distributed.is_initialized()
    try:
        with failures.claim_on_error():  # before the group closes under the other ranks
            group = distributed.init_from_env("auto")
            found = _evaluate_run(run_dir, data, iw_samples, prior_samples, seed, budget, per_point, group.is_main,
                                  log, program_path, trust_code, progress if group.is_main else False, threads)
    finally:
        if joined and torch.distributed.is_initialized():
            distributed.shutdown()
    return found if group.is_main else None


def _evaluate_run(run_dir, data, iw_samples, prior_samples, seed, budget, per_point, report, log, program_path,
                  trust_code, progress=None, threads=None) -> RunEvaluation:
    """:func:`evaluate_run` in one process; ``report`` False on the ranks of a torchrun job that do not report
    (they compute their share, and skip the class metrics and the file)."""
    per_point = Path(per_point) if per_point else None
    if per_point is not None:
        # checked before the (long) evaluation, so a typo costs nothing
        if per_point.suffix.lower() != ".csv":
            raise PyroVAEError(f"--per-point {per_point}: use a .csv file name")
        if not per_point.parent.exists():
            raise PyroVAEError(f"--per-point {per_point}: folder {str(per_point.parent)!r} does not exist")
    run = load_run(run_dir, program_path=program_path, trust_code=trust_code)
    vocabulary = None
    if data:
        x, labels, names = _data_file(run.model, data), None, None
        counts = x
        if run.config is not None and run.config.data.vocabulary is not None:
            vocabulary = read_vocabulary(run.config.data.vocabulary, x.shape[1])
    else:
        dataset = load_run_data(run)
        x, labels, names = dataset.test, dataset.test_labels, dataset.class_names
        counts, vocabulary = dataset.test_x, dataset.vocabulary
    for flag, value in (("--iw-samples", iw_samples), ("--prior-samples", prior_samples)):
        floor = 1 if flag == "--iw-samples" else 0
        if value is not None and value < floor:
            raise PyroVAEError(f"{flag} must be >= {floor} (got {value}): pass {flag} with a count of at least {floor}")
    choice = _threads(run, threads)
    with use_threads(choice):
        found = evaluate_model(run.model, x, iw_samples=iw_samples, seed=seed, labels=labels, class_names=names,
                               prior_samples=prior_samples, budget=budget, progress=progress, classes=report, log=log,
                               counts=counts, vocabulary=vocabulary)
    if report:  # said once the evaluation stands: a count it refused is the only line
        log(choice.line())
    if report and per_point is not None:
        write_per_point(found.points, per_point)
    return found


def _threads(run, threads: Optional[ThreadSetting]) -> ThreadChoice:
    """The thread count evaluating ``run`` uses: ``threads`` when given, else the run's ``train.threads``.

    Evaluation's work is batched large (draws x points), so under "auto" only the free cores bound the count.
    """
    key = "threads"
    if threads is None:
        key, threads = "train.threads", run.config.train.threads if run.config is not None else "auto"
    return choose_threads(threads, work=None, device=model_device(run.model).type, key=key)


def _data_file(model, path: os.PathLike):
    """``--data``: an array file, checked against the model's columns and its likelihood's support."""
    x = as_matrix(read_array(path, "--data"), f"--data ({Path(path).name})")
    dim = getattr(model, "data_dim", None)
    if dim is not None and x.shape[1] != dim:
        raise PyroVAEError(
            f"--data has shape {tuple(x.shape)} but the model expects {dim} columns: use data with {dim} columns"
        )
    lik = getattr(model, "likelihood", None)
    if hasattr(lik, "check_support"):
        lik.check_support(x, f"--data ({Path(path).name})")
    return x


def write_per_point(points: PointwiseEvaluation, path: Path) -> None:
    """One CSV row of results per point, numbered from 0 (atomically, as every file the library writes)."""
    rows = points.to_rows()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["index", *rows[0].keys()], lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(rows):
        w.writerow({"index": i, **r})
    write_text_atomic(path, buf.getvalue())
