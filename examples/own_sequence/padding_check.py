"""Pyro's DMM as written, on the same 4 sequences padded to T = 6 and to 2T = 12: log p(x), ELBO, the per-point q's
ELBO and the amortization gap per sequence, which the padding must not change.

Run:  python3 examples/own_sequence/padding_check.py [--program dmm_mask]
(``dmm_mask``: the same DMM masking its padded steps with ``poutine.mask`` instead of ``.mask()``.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

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
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # dmm_mask.py imports dmm.py beside it
    dmm = _load(f"{args.program}_padding_check", HERE / f"{args.program}.py")
    data = _load("dmm_data_padding_check", HERE / "make_data.py")
    seqs = data.stand_in(4, seed=3, notes=10, min_len=3, max_len=6, chords=3)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = dmm.DMM(input_dim=10, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8)  # untrained, fixed
    print(f"lengths: {[len(s) for s in seqs]}")
    for pad in (6, 12):
        arrays = {k: torch.as_tensor(v) for k, v in data.dmm_arrays(seqs, pad_to=pad).items()}
        ev = pv.evaluate_points(model, arrays, iw_samples=500, seed=0)
        d = pv.diagnose([pv.Subject("dmm", model, arrays, list(range(4)))],
                        pv.DiagnoseSettings(points=4, draws=100, reference="none", sbc_sims=0, local_steps=100))
        local = d.runs[0].local
        fmt = lambda v: " ".join(f"{float(a):8.2f}" for a in v)  # noqa: E731
        print(f"T = {pad:2d}  log p(x)       {fmt(ev.log_likelihood)}   (s.e. {fmt(ev.log_likelihood_var.sqrt())})")
        print(f"        ELBO (amortized) {fmt(ev.elbo)}")
        print(f"        ELBO (per-point) {fmt(local.elbo)}")
        print(f"        gap              {fmt(local.gap)}   (s.e. {fmt(local.gap_se)})")


if __name__ == "__main__":
    main()
