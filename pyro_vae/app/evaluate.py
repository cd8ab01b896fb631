"""A trained model evaluated on data, one way for a run's final evaluation and for ``pyro-vae evaluate``: every estimate, then its classes."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import batch
from ..config import Config
from ..diagnostics.gaps import RICHER, check_gaps_possible, inference_gaps
from ..diagnostics.results import InferenceGaps
from ..diagnostics.settings import DiagnoseSettings
from ..models.params import model_params, scratch_params
from ..data.sources import column_names
from ..errors import PyroVAEError
from ..evaluation import estimators
from ..evaluation.classes import ClassMetrics, class_metrics
from ..evaluation.estimators import DEFAULT_IW_SAMPLES
from ..evaluation.features import FeatureLogLikelihood, feature_log_likelihood
from ..evaluation.results import PointwiseEvaluation
from ..evaluation.streaming import DEFAULT_BUDGET
from ..infer.data_name import named_data
from ..evaluation.recovery import Recovery, recovery
from ..evaluation.topics import TopicMetrics, topic_metrics
from ..models.protocol import model_device
from ..runtime import distributed, failures
from ..runtime.memory import with_halving_budget
from ..runtime.threads import ThreadChoice, ThreadSetting, check_setting, choose_threads, use_threads
from ..store.files import write_text_atomic
from ..store.truth import read_truth
from .prepare import load_config_file
from .runs import load_run, load_run_data


@dataclass
class RunEvaluation:
    """One evaluation of a model on data: its per-point record, their summary, and the model's classes (None: it has
    none, or they were not asked for)."""

    points: PointwiseEvaluation
    summary: dict
    classes: Optional[ClassMetrics] = None
    gaps: Optional[InferenceGaps] = None  # ``evaluate --gaps``: the inference gap split on the first points
    topics: Optional[TopicMetrics] = None  # a topic model's top words, perplexity and coherence
    recovery: Optional[Recovery] = None  # a synthetic source's truth against what the model learned of it

    def metrics(self, **extra) -> dict:
        """metrics.json: the summary, then ``extra`` (a training run adds its seconds), then the class metrics,
        the gap split, a topic model's topics and what it recovered of a synthetic source's truth."""
        metrics = dict(self.summary, **extra)
        if self.classes is not None:
            metrics["classes"] = self.classes.to_json()
        if self.gaps is not None:
            metrics["gaps"] = self.gaps.to_json()
        if self.topics is not None:
            metrics["topics"] = self.topics.to_json()
        if self.recovery is not None:
            metrics["recovery"] = self.recovery.to_json()
        return metrics


@dataclass(frozen=True)
class GapOptions:
    """``evaluate --gaps``: on how many of the first points, and how hard each local fit tries."""

    points: int = 16
    steps: int = 300
    draws: int = 1000
    richer: tuple = RICHER

    def settings(self, seed: int) -> DiagnoseSettings:
        """The local fits' settings (one code path with diagnose's), checked: one line naming a bad flag."""
        for flag, value, low in (("--gap-points", self.points, 1), ("--gap-steps", self.steps, 0),
                                 ("--gap-draws", self.draws, 20)):
            if value < low:
                raise PyroVAEError(f"{flag} must be >= {low} (got {value})")
        return DiagnoseSettings(points=self.points, local_steps=self.steps, draws=self.draws, seed=seed).check()


def split_gaps(model, x, options: GapOptions, seed: int, progress, log) -> InferenceGaps:
    """The inference gap split of ``model`` on the first ``options.points`` rows of ``x`` (held-out arrays)."""
    x = density_data(model, x)
    n = min(options.points, batch.num_rows(x))
    rows = batch.prepare(batch.rows(x, slice(0, n)), "the gap split's points", model_device(model), torch.float32)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with model_params(model), scratch_params():
            return inference_gaps(model, rows, list(range(n)), options.settings(seed), richer=options.richer,
                                  progress=progress, name="gaps", log=log)
    finally:
        model.train(was_training)


def check_gaps(model, x) -> None:
    """Before any work: one line unless ``model``'s inference gap can be split (a density guide, a declared graph)."""
    x = density_data(model, x)
    rows = batch.prepare(batch.rows(x, slice(0, min(2, batch.num_rows(x)))), "the gap split's points",
                         model_device(model), torch.float32)
    with model_params(model), scratch_params():
        check_gaps_possible(model, rows)


def density_data(model, data):
    """The held-out arrays log p(x) is computed on: a graph leaves out its partial nodes' labels (summed)."""
    return model.density_data(data) if hasattr(model, "density_data") else data


def default_iw_samples(num_points: int) -> int:
    """K for a run's final log p(x): 1000 per point up to 2000 points, then about 2 million draws in all (>= 100)."""
    return DEFAULT_IW_SAMPLES if num_points <= 2000 else max(100, 2_000_000 // num_points)


def evaluate_model(model, x, *, iw_samples: Optional[int], seed: int, labels=None, class_names=None,
                   prior_samples: Optional[int] = None, budget: Optional[int] = None, progress: Optional[bool] = None,
                   classes: bool = True, log: Callable[[str], None], counts=None,
                   vocabulary=None, truth: Optional[dict] = None) -> RunEvaluation:
    """``model`` on the rows of ``x``: every estimate of evaluation/estimators.py on its held-out arrays (the chunk
    budget halved on out-of-memory), then, with ``classes``, its classes against ``labels``, and, for a topic
    model given its word ``counts`` (``x``'s observations), its topics (``vocabulary``: the word of each column),
    and, given a synthetic source's ``truth`` (store/truth.py's arrays), what it recovered of it.

    Under torchrun every rank calls this (the estimates are sharded); ``classes`` only on the rank that reports.
    """
    x = named_data(model, x)
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
    recovered = recovery(model, density_data(model, x), truth, seed=seed) if classes and truth else None
    return RunEvaluation(points, points.summary(), found, topics=topics, recovery=recovered)


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
                 per_feature: Optional[os.PathLike] = None,
                 program_path: Optional[os.PathLike] = None, trust_code: bool = False,
                 progress: Optional[bool] = None, threads: Optional[ThreadSetting] = None,
                 gaps: Optional[GapOptions] = None) -> Optional[RunEvaluation]:
    """``pyro-vae evaluate``: a run's model on its test data (or the array file ``data``); nothing in the run changes.

    ``per_point``: a .csv file that gets one row of results per point; ``per_feature``: one that gets each feature's
    E_q[log p(x_d | z)] and its s.e. (evaluation/features.py).  ``progress``: as for training (progress.py:
    a bar on a terminal, a line every 10 s elsewhere, False for none).  ``threads``: torch's thread count while
    it evaluates ("auto" or a count; None: the run's ``train.threads``).  ``gaps``: also split the inference
    gap on the first test points (diagnostics/gaps.py; in the process that reports).  Under torchrun every process calls
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
                                  log, program_path, trust_code, progress if group.is_main else False, threads, gaps,
                                  per_feature)
    finally:
        if joined and torch.distributed.is_initialized():
            distributed.shutdown()
    return found if group.is_main else None


def _checked_csv(path, flag: str) -> Optional[Path]:
    """``--per-point`` / ``--per-feature``: a .csv file in a folder that exists (checked before the evaluation)."""
    if not path:
        return None
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise PyroVAEError(f"{flag} {path}: use a .csv file name")
    if not path.parent.exists():
        raise PyroVAEError(f"{flag} {path}: folder {str(path.parent)!r} does not exist")
    return path


def _evaluate_run(run_dir, data, iw_samples, prior_samples, seed, budget, per_point, report, log, program_path,
                  trust_code, progress=None, threads=None, gaps=None, per_feature=None) -> RunEvaluation:
    """:func:`evaluate_run` in one process; ``report`` False on the ranks of a torchrun job that do not report
    (they compute their share, and skip the class metrics and the file)."""
    # checked before the (long) evaluation, so a typo costs nothing
    per_point = _checked_csv(per_point, "--per-point")
    per_feature = _checked_csv(per_feature, "--per-feature")
    run = load_run(run_dir, program_path=program_path, trust_code=trust_code)
    vocabulary = truth = None
    if data:
        x, labels, names = _data_file(run, data, log), None, None
        counts = x
        if run.config is not None and not isinstance(x, dict):  # its names file's, or its source's (genes, words, pixels)
            vocabulary = column_names(run.config.data, x.shape[1], run.image_shape)
    else:
        dataset = load_run_data(run)
        x, labels, names = dataset.test, dataset.test_labels, dataset.class_names
        counts, vocabulary = dataset.test_x, dataset.feature_names
        # the truth the run saved (truth.npz): recovery is read against what it trained on, on its own test rows
        truth = read_truth(run.run_dir) if report else None
    x = named_data(run.model, x)
    for flag, value in (("--iw-samples", iw_samples), ("--prior-samples", prior_samples)):
        floor = 1 if flag == "--iw-samples" else 0
        if value is not None and value < floor:
            raise PyroVAEError(f"{flag} must be >= {floor} (got {value}): pass {flag} with a count of at least {floor}")
    if gaps is not None:
        gaps.settings(seed)
        check_gaps(run.model, x)
    choice = _threads(run, threads)
    with use_threads(choice):
        found = evaluate_model(run.model, x, iw_samples=iw_samples, seed=seed, labels=labels, class_names=names,
                               prior_samples=prior_samples, budget=budget, progress=progress, classes=report, log=log,
                               counts=counts, vocabulary=vocabulary, truth=truth)
        if gaps is not None and report:
            found.gaps = split_gaps(run.model, x, gaps, seed, progress, log)
    if report:  # said once the evaluation stands: a count it refused is the only line
        log(choice.line())
    if report and per_point is not None:
        write_per_point(found.points, per_point)
    if report and per_feature is not None:
        with use_threads(choice):
            write_per_feature(feature_log_likelihood(run.model, density_data(run.model, x), seed=seed), per_feature,
                              vocabulary)
    return found


def _threads(run, threads: Optional[ThreadSetting]) -> ThreadChoice:
    """The thread count evaluating ``run`` uses: ``threads`` when given, else the run's ``train.threads``.

    Evaluation's work is batched large (draws x points), so under "auto" only the free cores bound the count.
    """
    key = "threads"
    if threads is None:
        key, threads = "train.threads", run.config.train.threads if run.config is not None else "auto"
    return choose_threads(threads, work=None, device=model_device(run.model).type, key=key)


def _data_file(run, path: os.PathLike, log: Callable[[str], None]):
    """``--data``: the file read as the run's data.train is (one reader: sequences with their lengths, sparse
    matrices, named arrays), then checked against the model's columns or arrays and its likelihood's support."""
    what = f"--data ({Path(path).name})"
    cfg = run.config if run.config is not None else Config()  # pv.fit's runs record no data section
    x, notes = load_config_file(cfg, path)
    for note in notes:
        log(f"note: {note}")
    model = run.model
    if isinstance(x, dict):  # sequences or named arrays, the observations first (as the readers give them)
        if hasattr(model, "check_data"):  # a graph: its data nodes (a chain's arrays over time) against the arrays
            model.check_data(x, what)
        observations = next(iter(x.values()))
    else:
        dim = getattr(model, "data_dim", None)
        if dim is not None and x.shape[1] != dim:
            read = " (read transposed, as the run's data.transpose = true reads its files)" if cfg.data.transpose else ""
            raise PyroVAEError(
                f"--data has shape {tuple(x.shape)}{read} but the model expects {dim} columns: use data with {dim} "
                "columns"
            )
        observations = x
    lik = getattr(model, "likelihood", None)
    if hasattr(lik, "check_support"):
        lik.check_support(observations, what)
    return x


def write_per_feature(found: FeatureLogLikelihood, path: Path, names=None) -> None:
    """One CSV row per feature (numbered from 0, named by data.feature_names or data.vocabulary, or by its source): its E_q[log p(x_d | z)]
    and s.e., atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["feature", "name", "log_likelihood", "se", "points", "draws"])
    for i, (m, se) in enumerate(zip(found.mean.tolist(), found.se.tolist())):
        w.writerow([i, "" if names is None else names[i], repr(m), repr(se), found.points, found.draws])
    write_text_atomic(path, buf.getvalue())


def write_per_point(points: PointwiseEvaluation, path: Path) -> None:
    """One CSV row of results per point, numbered from 0 (atomically, as every file the library writes)."""
    rows = points.to_rows()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["index", *rows[0].keys()], lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(rows):
        w.writerow({"index": i, **r})
    write_text_atomic(path, buf.getvalue())
