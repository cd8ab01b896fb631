"""The own-program example's data: scikit-learn's 8x8 digits, binarized, written as digits.npz next to this file.

The file holds two arrays, ``x`` (1797 rows of 64 pixels, 0 or 1) and ``y`` (their integer labels 0..9),
the arrays ``cvae.toml`` names.

Run:  python3 examples/own_program/make_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> Path:
    x, y = load_digits(return_X_y=True)
    out = Path(__file__).resolve().with_name("digits.npz")
    # pixels 0..16 above half intensity are on: a Bernoulli likelihood's data
    np.savez(out, x=(x / 16.0 > 0.5).astype(np.float32), y=y.astype(np.int64))
    print(f"wrote {out}: x {x.shape} (0/1 pixels), y ({len(y)},) (labels 0..9)")
    return out


if __name__ == "__main__":
    main()
