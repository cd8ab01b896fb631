"""What a diagnosis computes (settings, thresholds) and what it looks at (subjects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


from ..errors import PyroVAEError

FORMAT = "pyro_vae.diagnostics/2"
REFERENCES = ("nuts", "grid", "none")
# elements of the largest per-chunk tensor (draws x points x decoder width)
BUDGET = 2**23

# Thresholds people read the numbers against (k-hat's: infer/psis.py; Vehtari et al. 2021,
# "Rank-normalization ..." for R-hat and ESS).
RHAT_MAX = 1.01
RHAT_FAIL = 1.05  # any R-hat above this: the chains clearly disagree
RHAT_FRACTION = 0.1  # or more than this share of (point, dim) pairs above RHAT_MAX
ESS_MIN = 100


@dataclass(frozen=True)
class DiagnoseSettings:
    """What :func:`diagnose` computes, and how hard it tries."""

    points: int = 16  # the first N test rows
    reference: str = "nuts"  # nuts (+ grid for a 2-D latent) | grid | none
    draws: int = 1000  # draws from q per point (k-hat, moments, ELBO)
    nuts_warmup: int = 200
    nuts_samples: int = 300  # per chain
    nuts_chains: int = 4  # vectorized: 4 chains cost little more than 2, and R-hat is steadier
    max_tree_depth: int = 8
    grid_size: int = 160  # fine grid cells per axis (2-D latents)
    local_steps: int = 300  # Adam steps of the per-point q
    local_lr: float = 0.05
    local_particles: int = 16
    sbc_sims: int = 200  # 0 skips simulation-based calibration
    sbc_draws: int = 99
    seed: int = 0
    # the inference gap split (diagnostics/gaps.py): two more local fits per run, the guide's family and fullrank
    gaps: bool = False

    def check(self) -> "DiagnoseSettings":
        """The settings themselves, once every count and rate is in range (else a one-line error naming the flag)."""
        if self.reference not in REFERENCES:
            raise PyroVAEError(f"reference {self.reference!r} is not valid: use one of {', '.join(REFERENCES)}")
        # (lowest, highest): the highest keeps a typo from asking for days of work or more memory than exists
        for name, low, high in (("points", 1, 10**5), ("draws", 20, 10**6), ("nuts_samples", 10, 10**6),
                                ("nuts_chains", 2, 64), ("max_tree_depth", 1, 16), ("grid_size", 16, 4096),
                                ("local_steps", 0, 10**6), ("local_particles", 1, 10**4), ("sbc_sims", 0, 10**5),
                                ("sbc_draws", 9, 10**5), ("nuts_warmup", 0, 10**6), ("seed", 0, 2**63 - 1)):
            v = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise PyroVAEError(f"{flag} must be an integer >= {low} (got {v!r})")
            if v > high:
                raise PyroVAEError(f"{flag} must be at most {high:,} (got {v}): pass a smaller value")
        if not isinstance(self.gaps, bool):
            raise PyroVAEError(f"gaps must be true or false (got {self.gaps!r})")
        if not self.local_lr > 0:
            raise PyroVAEError(f"local_lr must be > 0 (got {self.local_lr!r})")
        return self


@dataclass
class Subject:
    """One thing to diagnose: a model following the protocol and the points to look at."""

    name: str
    model: object
    x: object  # named arrays with one row per point (data/batch.py), or a (points, data dim) tensor
    point_index: List[int]  # row numbers of x in the test data
    run: Optional[object] = None  # a pyro_vae.run.Run, when the subject came from a run directory
    data: Optional[object] = None  # its Dataset
    info: dict = field(default_factory=dict)


