"""Sites named per time step (``z_1 .. z_T``, as ``pyro.markov`` loops name them): grouped by step, and named short.

A chain's sites, the DMM's ``z_t`` and ``obs_x_t`` or a declared chain's
``z_t``, carry their step in their name.  The per-step profile averages each
site's ELBO term over the sequences that reach that step: a padded step is
masked, so its term is exactly 0 for the sequences that end before it, and
those are left out of its mean rather than counted as 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["step_of", "collapse_names", "is_chain", "row_unit", "collapse_terms", "StepProfile", "step_profile", "khat_length_note"]

_STEP = re.compile(r"^(.+?)_(\d+)$")
#: a run of at least this many consecutive steps is written first..last
MIN_RUN = 3


def step_of(name: str) -> Optional[Tuple[str, int]]:
    """(stem, step) of a site named per step (``"obs_x_12"`` -> ``("obs_x", 12)``), else None."""
    m = _STEP.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _runs(keys: Sequence[Optional[Tuple[str, int]]]) -> List[Tuple[int, int]]:
    """[start, end) index ranges of items whose keys share a stem and step up by one."""
    out, i = [], 0
    while i < len(keys):
        j = i + 1
        while (keys[i] is not None and j < len(keys) and keys[j] is not None and keys[j][0] == keys[i][0]
               and keys[j][1] == keys[j - 1][1] + 1):
            j += 1
        out.append((i, j))
        i = j
    return out


def collapse_names(names: Sequence[str]) -> List[str]:
    """Names with each run of consecutive steps of a stem written ``stem_1..stem_T``."""
    keys = [step_of(n) for n in names]
    out = []
    for i, j in _runs(keys):
        out += [f"{names[i]}..{names[j - 1]}"] if j - i >= MIN_RUN else list(names[i:j])
    return out


def is_chain(latents: Sequence[str]) -> bool:
    """Whether latent site names hold 3+ consecutive steps of one stem (``z_1 .. z_T``): a chain, each row of
    whose data is one sequence."""
    return any(".." in n for n in collapse_names(list(latents)))


def row_unit(latents: Sequence[str]) -> str:
    """What one row of a model with these latent sites (or their coordinates' labels, ``z_1[0]``) is called in a
    sentence: "sequence" or "point"."""
    sites = list(dict.fromkeys(name.split("[")[0] for name in latents))  # one name per site, in order
    return "sequence" if is_chain(sites) else "point"


def _template(term: str) -> Optional[Tuple[str, int]]:
    """(the term with its step written t, the step) when every step number in it is the same one."""
    steps = {int(m.group(2)) for m in re.finditer(r"\b([A-Za-z]\w*?)_(\d+)\b", term)}
    if len(steps) != 1:
        return None
    return re.sub(r"\b([A-Za-z]\w*?)_(\d+)\b", r"\1_t", term), steps.pop()


def collapse_terms(terms: Sequence[str]) -> List[str]:
    """Terms such as ``log p(obs_x_1|z_1)``, ``log p(obs_x_2|z_2)``, ... written ``sum_t=1..T log p(obs_x_t|z_t)``."""
    keys = [_template(t) for t in terms]
    out, i = [], 0
    while i < len(terms):
        j = i + 1
        while (keys[i] is not None and j < len(terms) and keys[j] is not None and keys[j][0] == keys[i][0]
               and keys[j][1] == keys[j - 1][1] + 1):
            j += 1
        if j - i >= MIN_RUN:
            out.append(f"sum_t={keys[i][1]}..{keys[j - 1][1]} {keys[i][0]}")
        else:
            out += list(terms[i:j])
        i = j
    return out


@dataclass
class StepProfile:
    """Per time step, each stem's ELBO term averaged over the sequences that reach the step.

    ``terms[stem][t - 1]``: an observed stem's E_q[log p(x_t | ...)] or a latent stem's KL term at step t (None where
    no sequence reaches it); ``sequences[t - 1]``: how many sequences reach step t; ``kinds[stem]``: "observed" or
    "latent".
    """

    steps: List[int]
    sequences: List[int]
    terms: Dict[str, List[Optional[float]]]
    kinds: Dict[str, str]
    lengths: List[int]  # per sequence: the steps it reaches

    def to_dict(self) -> dict:
        return {"steps": self.steps, "sequences": self.sequences, "terms": self.terms, "kinds": self.kinds}


def khat_length_note(khat, lengths: Sequence[int]) -> Optional[str]:
    """Whether the PSIS k-hat of the sequences grows with their length (Spearman's rank correlation), in words:
    importance sampling over T steps multiplies T ratios, so its weights grow heavier-tailed with T."""
    k = torch.as_tensor(khat, dtype=torch.float64)
    n = torch.as_tensor(list(lengths), dtype=torch.float64)
    ok = torch.isfinite(k)
    if int(ok.sum()) < 5 or float(n[ok].std()) == 0:
        return None
    rk = k[ok].argsort().argsort().double()
    rn = n[ok].argsort().argsort().double()
    r = float(torch.corrcoef(torch.stack([rk, rn]))[0, 1])
    long = n[ok] >= n[ok].median()
    bad = float((k[ok][long] > 0.7).double().mean())
    if r <= 0.3 and bad == 0:
        return None
    trend = ("grows with the length" if r > 0.3 else "shows no clear trend with the length")
    return (f"PSIS k-hat per sequence {trend} (Spearman r = {r:.2f}); {bad:.0%} of the longer half of the "
            "sequences has k-hat > 0.7. IS over T steps multiplies T weight ratios, whose tails grow heavier with T: "
            "trust log p(x) of long sequences less (raise iw_samples, or read the ELBO)")


def step_profile(site_terms) -> Optional[StepProfile]:
    """The profile of an evaluation's ``site_terms`` (evaluation/nodes.py), None without a stem of 3+ steps."""
    groups: Dict[str, Dict[int, object]] = {}
    for t in site_terms:
        key = step_of(t.name)
        if key is not None and t.kind in ("observed", "latent"):
            groups.setdefault(key[0], {})[key[1]] = t
    groups = {s: g for s, g in groups.items() if len(g) >= MIN_RUN}  # two numbered layers are not a sequence
    if not groups:
        return None
    last = max(max(g) for g in groups.values())
    n = next(iter(next(iter(groups.values())).values())).term.shape[0]
    reach = torch.zeros(last, n, dtype=torch.bool)  # (steps, sequences): some term of the step is not masked
    for g in groups.values():
        for step, t in g.items():
            reach[step - 1] |= t.term != 0
    terms: Dict[str, List[Optional[float]]] = {}
    for stem, g in groups.items():
        col = []
        for step in range(1, last + 1):
            t = g.get(step)
            k = reach[step - 1]
            col.append(None if t is None or not bool(k.any()) else float(t.term[k].mean()))
        terms[stem] = col
    kinds = {stem: next(iter(g.values())).kind for stem, g in groups.items()}
    return StepProfile(list(range(1, last + 1)), [int(v) for v in reach.sum(1)], terms, kinds,
                       [int(v) for v in reach.sum(0)])
