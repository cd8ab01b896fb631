"""NUTS on padded sequences: Pyro's DMM as written, the same 4 sequences padded to T = 6 and to 2T = 12, diagnosed
with --reference nuts; the padded steps are held fixed and left out, so the real coordinates' NUTS means and the
comparison of q with them must not change with the padding.

Run:  python3 examples/own_sequence/padded_nuts.py [--program dmm_mask]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

import pyro_vae as pv

HERE = Path(__file__).resolve().parent


def _load(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", choices=["dmm", "dmm_mask"], default="dmm",
                        help="dmm.py (Pyro's .mask()) or dmm_mask.py (poutine.mask) (default: dmm)")
    parser.add_argument("--warmup", type=int, default=100, help="NUTS warmup steps per chain (default: 100)")
    parser.add_argument("--draws", type=int, default=100, help="NUTS draws per chain (default: 100)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # dmm_mask.py imports dmm.py beside it
    dmm = _load(f"{args.program}_padded_nuts", HERE / f"{args.program}.py")
    data = _load("dmm_data_padded_nuts", HERE / "make_data.py")
    seqs = data.stand_in(4, seed=3, notes=10, min_len=3, max_len=6, chords=3)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = dmm.DMM(input_dim=10, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8)  # untrained, fixed
    print(f"lengths: {[len(s) for s in seqs]}")
    settings = pv.DiagnoseSettings(points=4, draws=200, reference="nuts", sbc_sims=0, nuts_chains=2,
                                   nuts_warmup=args.warmup, nuts_samples=args.draws, local_steps=20, gaps=False)
    means = {}
    for pad in (6, 12):
        arrays = {k: torch.as_tensor(v) for k, v in data.dmm_arrays(seqs, pad_to=pad).items()}
        t0 = time.perf_counter()
        r = pv.diagnose([pv.Subject("dmm", model, arrays, list(range(4)))], settings, progress=False).runs[0]
        ref, c = r.reference, r.comparison
        real = np.isfinite(ref.mean)
        means[pad] = (ref.mean[:, :18], ref.sd[:, :18])
        print(f"T = {pad}: {time.perf_counter() - t0:.0f} s; NUTS drew {int(real.sum())} of {real.size} coordinates "
              f"(the rest padded: absent); R-hat max {ref.nuts.rhat_max:.3f}, min bulk ESS {ref.nuts.ess_bulk_min:.0f}, "
              f"{ref.nuts.divergences} divergences")
        print(f"  q against NUTS per sequence: |mean error| / sd {np.round(c.std_mean_error, 3).tolist()}, "
              f"sd ratio {np.round(c.sd_ratio, 3).tolist()}")
    (m6, s6), (m12, _) = means[6], means[12]
    same = np.array_equal(np.isfinite(m6), np.isfinite(m12))
    diff = np.abs(m6 - m12)[np.isfinite(m6)] / s6[np.isfinite(m6)]
    print(f"T = 6 and 12: the same real coordinates: {same}; NUTS means differ by at most {diff.max():.3f} "
          f"posterior sds (median {np.median(diff):.3f})")


if __name__ == "__main__":
    main()
