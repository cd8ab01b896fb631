"""Pyro's DMM example's data, as arrays named after its arguments: a synthetic polyphonic stand-in, or the JSB chorales.

The DMM's model and guide take ``mini_batch`` (N, T, notes) of 0/1 notes, ``mini_batch_reversed`` (each
sequence's valid steps in reverse order, zeros after), ``mini_batch_mask`` (N, T: 1 on valid steps) and
``mini_batch_seq_lengths`` (N,).  This script writes them as ``chorales_train.npz`` and ``chorales_test.npz``
next to itself, the arrays ``dmm.toml`` names.

The JSB chorales cannot be downloaded here, so by default the sequences are a stand-in with the same shape:
88 notes per step, a few chords held for a while, each chord's notes on with noise, and lengths that vary.
Given the chorales' pickle (``jsb_chorales.pickle``: a dict of train/valid/test lists of sequences, each step a
tuple of MIDI notes 21..108), ``--jsb FILE`` converts the real data instead.

Run:  python3 examples/own_sequence/make_data.py [--jsb jsb_chorales.pickle]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

NOTES = 88  # piano keys 21..108, as the chorales are stored
LOWEST = 21


def dmm_arrays(sequences: List[np.ndarray], pad_to: Optional[int] = None) -> Dict[str, np.ndarray]:
    """The DMM's arguments for ``sequences`` (each (T_i, notes)), padded with zeros to ``pad_to`` steps
    (default: the longest)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    steps = int(lengths.max()) if pad_to is None else int(pad_to)
    if steps < lengths.max():
        raise ValueError(f"pad_to = {steps} is shorter than the longest sequence ({lengths.max()} steps)")
    notes = sequences[0].shape[1]
    x = np.zeros((len(sequences), steps, notes), dtype=np.float32)
    rev = np.zeros_like(x)
    mask = np.zeros((len(sequences), steps), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
        rev[i, : len(s)] = s[::-1]
        mask[i, : len(s)] = 1.0
    return dict(mini_batch=x, mini_batch_reversed=rev, mini_batch_mask=mask, mini_batch_seq_lengths=lengths)


def stand_in(n: int, seed: int, notes: int = NOTES, min_len: int = 8, max_len: int = 32,
             chords: int = 6, hold: float = 0.8, noise: float = 0.02) -> List[np.ndarray]:
    """``n`` sequences of 0/1 notes: a chord held with probability ``hold`` per step (else another is drawn),
    its 3-4 notes on, each other note flipped on with probability ``noise``; lengths uniform in [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    shapes = np.zeros((chords, notes), dtype=np.float32)
    for c in range(chords):
        shapes[c, rng.choice(notes, size=rng.integers(3, 5), replace=False)] = 1.0
    out = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        c = int(rng.integers(chords))
        seq = np.empty((length, notes), dtype=np.float32)
        for t in range(length):
            if rng.random() > hold:
                c = int(rng.integers(chords))
            seq[t] = np.maximum(shapes[c], rng.random(notes) < noise)
        out.append(seq)
    return out


def jsb(path: Path, split: str) -> List[np.ndarray]:
    """The chorales' ``split`` as 0/1 piano rolls (steps, 88)."""
    with open(path, "rb") as f:
        raw = pickle.load(f)
    out = []
    for seq in raw[split]:
        roll = np.zeros((len(seq), NOTES), dtype=np.float32)
        for t, chord in enumerate(seq):
            for note in chord:
                roll[t, int(note) - LOWEST] = 1.0
        out.append(roll)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jsb", type=Path, help="the JSB chorales' pickle (default: the synthetic stand-in)")
    parser.add_argument("--train", type=int, default=229, help="stand-in training sequences (the chorales have 229)")
    parser.add_argument("--test", type=int, default=77, help="stand-in test sequences (the chorales have 77)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the .npz files")
    args = parser.parse_args(argv)
    if args.jsb is not None:
        parts = {"train": jsb(args.jsb, "train"), "test": jsb(args.jsb, "test")}
    else:
        parts = {"train": stand_in(args.train, seed=0), "test": stand_in(args.test, seed=1)}
    args.out.mkdir(parents=True, exist_ok=True)
    steps = max(len(s) for seqs in parts.values() for s in seqs)  # one T for both files: their arrays line up
    for split, seqs in parts.items():
        out = args.out / f"chorales_{split}.npz"
        arrays = dmm_arrays(seqs, pad_to=steps)
        np.savez(out, **arrays)
        lengths = arrays["mini_batch_seq_lengths"]
        print(f"wrote {out}: {len(seqs)} sequences of {lengths.min()}..{lengths.max()} steps, "
              f"{arrays['mini_batch'].shape[2]} notes")


if __name__ == "__main__":
    main()
