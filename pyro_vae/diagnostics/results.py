"""Typed diagnosis results, their JSON form, and saving/loading a diagnosis folder."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import PyroVAEError
from ..store.files import write_atomic, write_text_atomic
from ..serialize import to_plain
from .arviz_io import load_netcdf, write_netcdf
from .settings import DiagnoseSettings, FORMAT

# a field kept beside diagnostics.json (netCDF or npz), never inside it
_FILE = {"file": True}


def _array(v) -> np.ndarray:
    """JSON numbers back to an array; None (a non-finite value in JSON) becomes NaN."""
    a = np.asarray(v)
    if a.dtype == object:
        a = np.array(v, dtype=object)
        a[np.equal(a, None)] = np.nan
        a = a.astype(float)
    return a


def _typed(tp, v):
    """A JSON value back into the type a field declares."""
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:  # Optional[X]
        return _typed(next(a for a in args if a is not type(None)), v)
    if tp is np.ndarray:
        return _array(v)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(v)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], Record):
        return [args[0].from_json(x) for x in v]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # Tuple[X, ...]: a frozen record's sequence
        return tuple(_typed(args[0], x) for x in v)
    return v


class Record:
    """``to_json`` (plain values) and ``from_json`` (typed fields back) for the result dataclasses."""

    def to_json(self) -> dict:
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if not f.metadata.get("file")}

    @classmethod
    def from_json(cls, d: dict):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _typed(hints[f.name], d[f.name]) for f in dataclasses.fields(cls)
                      if not f.metadata.get("file") and f.name in d})


@dataclass
class QSummary(Record):
    """The amortized q(z|x) on each point: moments of its draws and its ELBO."""

    mean: np.ndarray  # (points, latent)
    sd: np.ndarray  # (points, latent)
    elbo: np.ndarray  # (points,)
    elbo_se: np.ndarray  # (points,)


@dataclass
class KhatSummary(Record):
    """PSIS k-hat per point and how many points fall in each band; all None for a point-mass guide."""

    values: Optional[np.ndarray] = None  # (points,)
    median: Optional[float] = None
    max: Optional[float] = None
    good: Optional[int] = None  # k-hat <= KHAT_GOOD
    ok: Optional[int] = None  # KHAT_GOOD < k-hat <= KHAT_BAD
    bad: Optional[int] = None  # k-hat > KHAT_BAD


@dataclass
class LooCheck(Record):
    """Our k-hat and importance-sampled log p(x) per point against ArviZ's ``loo_approximate_posterior`` on the same draws.

    Only ArviZ >= 1.0 has that function; a diagnosis made with 0.x (or of a
    point-mass guide, which has no weights) holds None instead.
    """

    arviz: str  # the ArviZ version that computed ``khat`` and ``log_px_psis``
    khat: np.ndarray  # (points,) ArviZ's pareto_k
    khat_max_abs_diff: float  # max over points of |ours - ArviZ's|
    log_px: np.ndarray  # (points,) ours: log of the mean importance weight
    log_px_se: np.ndarray  # (points,) its delta-method standard error
    log_px_psis: np.ndarray  # (points,) ArviZ's: minus elpd_i, a PSIS-smoothed estimate of the same
    compared: int  # points with k-hat <= KHAT_BAD, where the standard error can be trusted
    log_px_max_z: Optional[float]  # max over those points of |ours - ArviZ's| / s.e.; None if there are none
    agree: bool  # k-hat within KHAT_TOLERANCE and log p(x) within LOG_PX_Z s.e. (diagnostics/loo_check.py)


@dataclass
class AmortizationGap(Record):
    """A q fitted to each point alone, its ELBO, and what amortization costs (per point, nats).

    Both ELBOs come from fresh draws (with common noise); where the fit does
    not beat the amortized q on independent draws, q itself is the best
    per-point q found and the gap is 0 exactly, when q lies in the per-point
    family; when it does not (``poorer_family`` says why), the gap there is
    not measured (NaN).
    """

    family: str
    elbo: np.ndarray
    elbo_se: np.ndarray
    gap: np.ndarray
    gap_se: np.ndarray
    elbo_q: Optional[np.ndarray] = None  # the amortized q's ELBO on the draws that scored the local q
    steps: Optional[int] = None  # Adam steps of the local fit
    converged: Optional[bool] = None  # its last blocks changed the ELBO by less than its s.e.
    # per point: the fit beat q on independent draws (elsewhere q itself is the best found, gap 0)
    local_better: Optional[np.ndarray] = None
    # where the guide is richer than the per-point family (diagnostics/within_family.py): why, and the gap is
    # measured (a lower bound) only where the fit beat q, NaN elsewhere
    poorer_family: Optional[str] = None


@dataclass
class GapSplit(Record):
    """The inference gap split by one family's per-point q* (Cremer et al. 2018), per point and in total (nats).

    approximation = log p(x) - ELBO(q*): what the family cannot express;
    amortization = ELBO(q*) - ELBO(q_encoder): what the encoder misses within
    it.  q* is the family's member fitted to each point alone, warm-started at
    the encoder's output; where it does not beat the encoder's q on independent
    draws, q* is the encoder's q (amortization 0 there).  Totals are means over
    the points, their s.e. from the per-point ones (independent points).
    """

    family: str  # the guide law q* is a member of ("normal", "lowrank", "fullrank", ...)
    elbo: np.ndarray  # (points,) ELBO(q*)
    elbo_se: np.ndarray
    approximation: np.ndarray
    approximation_se: np.ndarray
    amortization: np.ndarray
    amortization_se: np.ndarray  # paired draws (common random numbers) of q* and the encoder's q
    total_approximation: float
    total_approximation_se: float
    total_amortization: float
    total_amortization_se: float
    steps: int = 0  # Adam steps of the local fit
    converged: bool = False
    local_better: Optional[np.ndarray] = None  # (points,) the fit beat the encoder's q on independent draws


@dataclass
class InferenceGaps(Record):
    """log p(x) - ELBO(q_encoder) per point and in total, and its split by the guide's own family and richer ones.

    log p(x) is importance-sampled from the best q* found (the highest ELBO), on
    draws of its own, with its delta-method s.e. and PSIS k-hat per point."""

    points: List[int]  # the data rows (test rows) split
    draws: int  # draws per point behind each ELBO and log p(x)
    log_px: np.ndarray
    log_px_se: np.ndarray
    log_px_khat: np.ndarray
    log_px_proposal: str  # the family of the q* that proposed log p(x)'s draws
    elbo_q: np.ndarray  # ELBO(q_encoder)
    elbo_q_se: np.ndarray
    inference: np.ndarray
    inference_se: np.ndarray
    total_log_px: float
    total_log_px_se: float
    total_elbo_q: float
    total_elbo_q_se: float
    total_inference: float
    total_inference_se: float
    own: GapSplit  # q* of the guide's own family
    richer: List[GapSplit] = field(default_factory=list)  # q* of richer families (fullrank, ...)

    def splits(self) -> List[GapSplit]:
        return [self.own] + list(self.richer)


@dataclass
class NutsCheck(Record):
    """NUTS chains: mixing statistics per (point, latent dim) and, beside an exact grid, its errors against it."""

    chains: int
    draws: int
    warmup: int
    iterations: int
    seconds: float
    step_size: float
    divergences: int
    rhat: np.ndarray  # (points, latent)
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    rhat_max: float
    rhat_above: int  # pairs above RHAT_MAX
    ess_bulk_min: float
    ess_tail_min: float
    max_std_mean_error_vs_grid: Optional[float] = None
    max_sd_ratio_error_vs_grid: Optional[float] = None


@dataclass
class Reference(Record):
    """The reference posterior with the decoder fixed: how it was computed and its moments."""

    method: str  # nuts | grid | kalman (a linear-Gaussian chain's exact smoother) | none
    draws: Optional[int] = None  # per chain
    chains: Optional[int] = None
    seconds: Optional[float] = None
    cells: Optional[int] = None  # grid only
    edge_mass: Optional[float] = None  # grid only: the largest mass in the outermost cells
    mean: Optional[np.ndarray] = None  # (points, latent)
    sd: Optional[np.ndarray] = None
    nuts: Optional[NutsCheck] = None  # the sampler's statistics (method nuts), or NUTS checked against the grid

    @property
    def checks_nuts(self) -> bool:
        """Whether NUTS ran beside the exact grid, as a test of the sampler."""
        return self.method == "grid" and self.nuts is not None


@dataclass
class NodeComparison(Record):
    """The comparison restricted to one latent site's dimensions (a node of a graph), per point."""

    name: str
    dims: int
    mean_abs_error: np.ndarray
    std_mean_error: np.ndarray
    sd_ratio: np.ndarray
    kl_gauss: np.ndarray  # between the Gaussian fits of this site's marginals
    w2: np.ndarray


@dataclass
class Comparison(Record):
    """How far q is from the reference, per point (averaged over latent dims), and per latent site."""

    mean_abs_error: np.ndarray
    std_mean_error: np.ndarray  # |mean error| / reference sd
    sd_ratio: np.ndarray  # geometric mean over dims of sd_q / sd_ref
    kl_gauss: np.ndarray  # KL between Gaussian fits; inf (NaN once saved) for a point mass
    w2: np.ndarray  # 1-D Wasserstein-2 per dim, averaged
    # the same per latent site, where there are two or more (a hierarchy's z1 and z2): which node q gets wrong
    nodes: List[NodeComparison] = field(default_factory=list)


@dataclass
class SbcResult(Record):
    """Simulation-based calibration: ranks of the true z, one uniformity p-value per latent dim."""

    sims: int = 0
    draws: int = 0
    ranks: Optional[np.ndarray] = None  # (sims, latent); -1 where the model masks the coordinate out
    pvalues: Optional[np.ndarray] = None  # NaN for a dimension masked out in every simulation (untested)
    tested: Optional[int] = None  # latent dimensions tested (those with a rank in some simulation)
    alpha: Optional[float] = None
    flagged: List[str] = field(default_factory=list)
    skipped: Optional[str] = None  # why the model could not be simulated


@dataclass
class WorstPoint(Record):
    """One of the points the report names first (highest k-hat, or largest gap for a point-mass guide)."""

    point: int
    khat: Optional[float]
    gap: float
    std_mean_error: Optional[float]


@dataclass
class RunSummary(Record):
    """The scalars the report's tables show."""

    points: int
    elbo_q: float
    elbo_local: float
    gap: float
    gap_se: float
    active_dims: int
    worst: List[WorstPoint]
    mean_abs_error: Optional[float] = None
    std_mean_error: Optional[float] = None
    sd_ratio: Optional[float] = None
    kl_gauss: Optional[float] = None
    w2: Optional[float] = None
    sbc_min_p: Optional[float] = None
    sbc_flagged: Optional[int] = None
    sd_ratio_se: Optional[float] = None  # standard error of the geometric-mean sd ratio
    overconfident: Optional[bool] = None  # the sd ratio is at most 0.5, or clearly below 0.8
    overconfident_points: Optional[List[int]] = None  # the points whose own sd ratio is
    gap_note: Optional[str] = None  # why ``gap`` is not measured (NaN), where it is not


def coverage_line(latent_sites: List[str], summed_sites: List[str]) -> str:
    """Which sites a diagnosis covers, in words: the continuous ones, and the discrete ones summed out."""
    line = "covers " + (", ".join(latent_sites) if latent_sites else "no latent site")
    if summed_sites:
        line += "; sums out exactly (not diagnosed as coordinates) " + ", ".join(summed_sites)
    return line


@dataclass
class GridPosterior(Record):
    """The exact 2-D posterior on each point's fine grid: normalized log-probabilities and the boxes."""

    log_prob: np.ndarray  # (points, g, g)
    lo: np.ndarray  # (points, 2)
    hi: np.ndarray


@dataclass
class Generated(Record):
    """What the model generates, decoded at diagnose time so the report never runs a model."""

    data: np.ndarray  # (n, data dim): the first diagnosed points
    reconstructions: np.ndarray  # (n, data dim): decoder mean at q's mean
    samples: np.ndarray  # (64, data dim): decoder means of z ~ p(z)
    traversal: np.ndarray  # (dims * steps, data dim)
    traversal_dims: np.ndarray  # latent dims moved, most informative first
    traversal_steps: np.ndarray  # in prior standard deviations
    # per sample, the library size it was decoded with: a count likelihood with library = "observed" scales each
    # sample by a diagnosed row's total (decode_mean cycles them); empty for other models and older diagnoses
    sample_library: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # (samples, words) strings: each sample's most frequent words, where the columns are a vocabulary; else empty
    sample_words: np.ndarray = field(default_factory=lambda: np.asarray([], dtype=str))


@dataclass
class SequenceFit(Record):
    """A chain's first diagnosed sequences for the report: steps past a sequence's length are padding, never drawn."""

    data: np.ndarray  # (m, T, D): the observed steps
    lengths: np.ndarray  # (m,): each sequence's real steps (T without a lengths array)
    reconstructions: np.ndarray  # (draws, m, T, D): mean of p(x_t | z_t), z ~ q
    z: np.ndarray  # (draws, m, T, Z): q's draws
    reference_mean: np.ndarray  # (m, T, Z): the Kalman smoother's means; empty (0,) for another reference
    reference_sd: np.ndarray

    def problem(self) -> Optional[str]:
        """What makes these arrays inconsistent (a file not written by diagnose), or None."""
        x, n, r, z = (np.asarray(a) for a in (self.data, self.lengths, self.reconstructions, self.z))
        if x.ndim != 3 or n.shape != x.shape[:1] or r.ndim != 4 or r.shape[1:] != x.shape or z.ndim != 4 \
                or z.shape[:3] != (r.shape[0], *x.shape[:2]):
            return "its arrays' shapes do not agree"
        if n.dtype.kind not in "iu" or (n < 1).any() or (n > x.shape[1]).any():
            return "its lengths are not whole step counts between 1 and the steps saved"
        ref = [np.asarray(self.reference_mean), np.asarray(self.reference_sd)]
        if not all(a.size == 0 or a.shape == z.shape[1:] for a in ref):
            return "its reference moments' shapes do not agree with q's draws"
        return None


def profile_problem(profile) -> Optional[str]:
    """What makes a saved per-step profile (evaluation/steps.py's ``to_dict``) unusable, or None."""
    if not isinstance(profile, dict) or not all(isinstance(profile.get(k), (list, dict))
                                                 for k in ("steps", "sequences", "terms", "kinds")):
        return "it is not a mapping of steps, sequences, terms and kinds"
    t = len(profile["steps"])
    if len(profile["sequences"]) != t or not isinstance(profile["terms"], dict) or not profile["terms"]:
        return "its steps and sequences differ in length, or it has no terms"
    for stem, col in profile["terms"].items():
        if not isinstance(col, list) or len(col) != t or profile["kinds"].get(stem) not in ("observed", "latent") \
                or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in col):
            return f"its term {stem!r} is not one number (or null) per step with a kind"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in profile["steps"] + profile["sequences"]):
        return "its steps and sequence counts are not whole numbers"
    return None


#: what a node of a model's graph is (ModelStructure.nodes)
LATENT = "latent"  # a sampled site with a density (continuous, or discrete with no finite support)
OBSERVED = "observed"  # observed wherever it is in the program
PARTLY_OBSERVED = "partly observed"  # observed on some rows (a given label), latent on the others
ENUMERATED = "enumerated"  # a latent with a finite support, summed out exactly (a mixture's component)
FACTOR = "factor"  # pyro.factor: a penalty in the joint, no variable
DETERMINISTIC = "deterministic"  # pyro.deterministic: a function of other sites, no density
INPUT = "input"  # a named data array no site observes: the program is conditioned on it (a CVAE's label)
KINDS = (LATENT, OBSERVED, PARTLY_OBSERVED, ENUMERATED, FACTOR, DETERMINISTIC, INPUT)


@dataclass(frozen=True)
class GraphNode(Record):
    """One node of a model's graph: a sample site of the model (or guide), or a data array it is given."""

    name: str  # the site's name, or the array's for an input
    kind: str  # one of KINDS
    distribution: Optional[str]  # the site's distribution without its Independent/expand/mask wrappers; None for an input
    event_shape: Tuple[int, ...]  # the site's event shape (an input's shape per row)
    size: int  # numbers per data point (per draw, for a site outside the data plate)
    plates: Tuple[str, ...]  # the vectorized plates it is in, outermost first
    discrete: bool  # its values are discrete (an integer input array)
    categories: Optional[int] = None  # how many values a finite discrete site takes
    in_model: bool = True
    in_guide: bool = False
    array: Optional[str] = None  # the named data array it observes, or is (an input); None for one array of data


@dataclass(frozen=True)
class GraphEdge(Record):
    """``parent`` -> ``child``: the child's distribution reads the parent's value (or array)."""

    parent: str
    child: str


@dataclass(frozen=True)
class ModelStructure(Record):
    """A model's graph as its program runs: nodes, the model's edges, the guide's, traced on each pattern of rows."""

    nodes: Tuple[GraphNode, ...]  # inputs in data order, then the model's sites in trace order, then guide-only sites
    edges: Tuple[GraphEdge, ...]  # of the model p
    guide_edges: Tuple[GraphEdge, ...]  # of the guide q: what each of its sites reads (data arrays and latents)
    traced: Tuple[str, ...]  # the row patterns the program was traced on ("every array given", "without y")
    data_plate: Optional[str] = None  # the plate of the data points (None if no site is in it)
    note: Optional[str] = None  # what the graph may miss (dependencies that could not be traced)
    # Diagnoses saved by earlier versions also hold "svg", graphviz's drawing as markup: from_json drops it (a
    # report draws the graph from the fields above, and puts no markup read from a file into a page).

    def node(self, name: str) -> GraphNode:
        return next(n for n in self.nodes if n.name == name)


@dataclass
class RunDiagnosis(Record):
    """All diagnostics of one run; draws and decoded figures live in files beside the JSON."""

    name: str
    folder: str
    info: dict
    points: List[int]
    latent_labels: List[str]
    point_mass_guide: bool
    q: QSummary
    khat: KhatSummary
    prior_sd: np.ndarray
    local: AmortizationGap
    reference: Reference
    comparison: Optional[Comparison]
    contraction: np.ndarray  # per latent dim: 1 fully determined by x, 0 the prior
    sbc: Optional[SbcResult]
    summary: RunSummary
    warnings: List[str]
    timings: Dict[str, float]
    seconds: float
    history: Optional[List[dict]] = None  # the run's training history (epoch, train_loss, test_elbo, ...)
    image_shape: Optional[List[int]] = None
    # the continuous latent sites every diagnostic covers, and the discrete sites summed out of p and q exactly
    latent_sites: List[str] = field(default_factory=list)
    summed_sites: List[str] = field(default_factory=list)
    q_data: object = field(default=None, metadata=_FILE)  # ArviZ: draws from q(z|x)
    reference_data: object = field(default=None, metadata=_FILE)  # ArviZ: the reference's draws
    nuts_data: object = field(default=None, metadata=_FILE)  # ArviZ: NUTS draws when the grid is the reference
    grid: Optional[GridPosterior] = field(default=None, metadata=_FILE)
    generated: Optional[Generated] = field(default=None, metadata=_FILE)
    structure: Optional[ModelStructure] = None  # the model's graph (None in diagnoses saved before it was kept)
    loo_check: Optional[LooCheck] = None  # against ArviZ's loo_approximate_posterior (None before ArviZ 1.0)
    gaps: Optional[InferenceGaps] = None  # the inference gap split (None: a model it does not apply to, or older)
    sequences: Optional[SequenceFit] = field(default=None, metadata=_FILE)  # a chain's sequences, for its figures
    # a chain's ELBO terms per time step over the run's test data (evaluation/steps.py), as its metrics.json has it
    step_profile: Optional[dict] = None

    @property
    def coverage(self) -> str:
        """The sites covered and summed, as the report shows them."""
        return coverage_line(self.latent_sites, self.summed_sites)


_NETCDF = (("q", "q_data"), ("reference", "reference_data"), ("nuts", "nuts_data"))
_NPZ = (("grid", GridPosterior), ("generated", Generated), ("sequences", SequenceFit))


def _write_npz(path: Path, record) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f.name: np.asarray(getattr(record, f.name)) for f in dataclasses.fields(record)})
    write_atomic(path, lambda f: f.write(buf.getvalue()))


def _read_npz(path: Path, cls):
    try:
        with np.load(path) as z:
            # a field added since (it has a default) is missing from an older file: the default stands
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)
                          if f.name in z.files or f.default is dataclasses.MISSING
                          and f.default_factory is dataclasses.MISSING})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise PyroVAEError(f"{path} is not an .npz pyro_vae wrote ({type(e).__name__}: {str(e)[:120]}): re-run "
                           f"'pyro-vae diagnose RUN_DIR ... --out {path.parent.parent}'") from None


@dataclass
class Diagnosis:
    """The diagnostics of several runs, with the settings they were computed with."""

    settings: DiagnoseSettings
    runs: List[RunDiagnosis]
    warnings: List[str]
    created: str = ""
    arviz: str = ""  # the ArviZ version the diagnosis was computed with ("" if not recorded)

    def to_json(self) -> dict:
        """The diagnosis as JSON-ready values (what ``diagnostics.json`` holds)."""
        return {"format": FORMAT, "created": self.created, "arviz": self.arviz,
                "settings": dataclasses.asdict(self.settings), "runs": [r.to_json() for r in self.runs],
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, raw: dict) -> "Diagnosis":
        """A diagnosis read back from :meth:`to_json`'s values."""
        known = {f.name for f in dataclasses.fields(DiagnoseSettings)}
        settings = DiagnoseSettings(**{k: v for k, v in raw["settings"].items() if k in known})
        return cls(settings, [RunDiagnosis.from_json(r) for r in raw["runs"]], raw.get("warnings", []),
                   raw.get("created", ""), raw.get("arviz", ""))

    def save(self, out_dir) -> Path:
        """Write ``diagnostics.json`` and, per run, ``<folder>/{q,reference,nuts}.nc`` and
        ``{grid,generated,sequences}.npz``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r in self.runs:
            folder = out / r.folder
            folder.mkdir(parents=True, exist_ok=True)
            files = [(folder / f"{label}.nc", getattr(r, attr), write_netcdf) for label, attr in _NETCDF]
            files += [(folder / f"{label}.npz", getattr(r, label), _write_npz) for label, _ in _NPZ]
            for path, value, write in files:
                if value is not None:
                    write(path, value)
                elif path.exists():
                    path.unlink()  # stale file from an earlier diagnosis in this folder
        path = out / "diagnostics.json"
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


#: what a run's folder in a diagnosis folder may be called (diagnostics/run.py writes such names)
_PLAIN_FOLDER = re.compile(r"[A-Za-z0-9_.-]+")


def load_diagnosis(folder) -> Diagnosis:
    """Read back what :meth:`Diagnosis.save` wrote."""
    folder = Path(folder)
    path = folder / "diagnostics.json"
    again = f"re-run 'pyro-vae diagnose RUN_DIR ... --out {folder}'"
    if not path.exists():
        raise PyroVAEError(f"no diagnostics.json in {str(folder)!r}: run 'pyro-vae diagnose RUN_DIR ... --out {folder}' first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PyroVAEError(f"{path} is not valid JSON ({e}): {again}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise PyroVAEError(f"{path} has format {found!r}, this pyro_vae reads {FORMAT!r}: {again}")
    try:
        d = Diagnosis.from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PyroVAEError(f"{path} is not a diagnosis pyro_vae wrote ({type(e).__name__}: {str(e)[:120]}): "
                           f"{again}") from None
    for r in d.runs:
        # the file names the folder of each run's draws: a plain name inside this folder, never a path elsewhere
        if not isinstance(r.folder, str) or not _PLAIN_FOLDER.fullmatch(r.folder) or r.folder in (".", ".."):
            raise PyroVAEError(f"{path} names the run folder {r.folder!r}, which is not a plain folder name inside "
                               f"{str(folder)!r}: the file was not written by pyro_vae; {again}")
        sub = folder / r.folder
        for label, attr in _NETCDF:
            if (sub / f"{label}.nc").exists():
                setattr(r, attr, load_netcdf(sub / f"{label}.nc"))
        for label, cls in _NPZ:
            if (sub / f"{label}.npz").exists():
                setattr(r, label, _read_npz(sub / f"{label}.npz", cls))
        why = r.sequences.problem() if r.sequences is not None else None
        if why:
            raise PyroVAEError(f"{sub / 'sequences.npz'}: {why}: the file was not written by pyro_vae; {again}")
        why = profile_problem(r.step_profile) if r.step_profile is not None else None
        if why:
            raise PyroVAEError(f"{path}: run {r.name!r}'s step_profile: {why}: the file was not written by pyro_vae; "
                               f"{again}")
    return d
